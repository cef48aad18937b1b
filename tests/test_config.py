"""The config loader.

Invalid configs are a table in blackbox_exporter's manner: each `testdata/invalid-*.yml` paired
with its exact error lines. The file is copied to `config.yml` in a temporary working directory
that also holds the secret files the configs name (made here: git keeps no file modes), so the
FILE part reads `config.yml` and `{dir}` stands for that directory.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.config import (
    APP_ONLY_SCOPES,
    DELEGATED_SCOPES,
    AuthConfig,
    Config,
    Endpoint,
    Folders,
    MailboxConfig,
    default_checks,
    load_config,
    parse_duration,
    parse_size,
    read_secret,
)
from exporter.errors import ConfigError, SecretError

TESTDATA = Path(__file__).parent / "testdata"
TENANT = "b921b89c-a960-4187-9872-28191e34a8f3"
CLIENT = "46a662fb-0fed-4f72-a212-95216e5b0f28"
CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n"
ENVIRON = {
    "SERVICEDESK_PASSWORD": "hunter2",
    "EMPTY_PASSWORD": "",
    "KUNDENSERVICE_PASSWORD": "Kunde-2024",
    "REPORTS_CLIENT_SECRET": "8Q~not-a-real-secret",
}
FLOW_CHOICES = "must be one of password, device_code, client_secret, client_certificate"
CHECK_CHOICES = "must be one of token, imap_login, inbox, oversized, junk, smtp_login"
AUTHORITY_EXPECTED = (
    "must be https://host or https://host:port without a path, "
    "like https://login.microsoftonline.com"
)
PROXY_EXPECTED = "must be http://host:port or https://host:port (optionally user:password@host)"
APP_ONLY_SCOPE_PROBLEM = "is app-only and takes only a /.default scope like " + APP_ONLY_SCOPES[0]

INVALID: list[tuple[str, list[str]]] = [
    (  # the contract's example
        "invalid-flow-typo.yml",
        [f"config.yml:14: mailboxes[1].auth.flow: {FLOW_CHOICES}"],
    ),
    (
        "invalid-unknown-key.yml",
        [
            "config.yml:9: mailboxes[0].intervall: unknown key (did you mean interval?)",
            "config.yml:10: mailboxes[0].imap.prot: unknown key (did you mean port?)",
            "config.yml:11: mailboxes[0].colour: unknown key",
        ],
    ),
    (
        "invalid-duplicate-key.yml",
        ["config.yml:9: mailboxes[0].timeout: duplicate key (first at line 7)"],
    ),
    (
        "invalid-duplicate-name.yml",
        ['config.yml:10: mailboxes[2].name: duplicate name "servicedesk" (first at line 6)'],
    ),
    (
        "invalid-name.yml",
        [
            "config.yml:2: mailboxes[0].name: "
            "must match [A-Za-z0-9_.-]+ (it becomes the mailbox label)"
        ],
    ),
    ("invalid-missing-mailboxes.yml", ["config.yml:1: mailboxes: is required"]),
    ("invalid-empty-mailboxes.yml", ["config.yml:2: mailboxes: must list at least one mailbox"]),
    ("invalid-root.yml", ["config.yml:1: (root): must be a mapping"]),
    ("invalid-empty.yml", ["config.yml:1: (root): must be a mapping"]),
    (
        "invalid-yaml-syntax.yml",
        ["config.yml:5: yaml: expected ',' or ']', but got ':' (while parsing a flow sequence)"],
    ),
    (
        "invalid-duration.yml",
        [
            "config.yml:2: defaults.interval: '5 minutes' is not a duration (use 30s, 5m, 1h)",
            "config.yml:9: mailboxes[0].timeout: '30' is not a duration (use 30s, 5m, 1h)",
            "config.yml:15: mailboxes[1].interval: must be greater than 0",
        ],
    ),
    (  # the value written is repeated; a list is no value to repeat
        "invalid-duration-value.yml",
        [
            "config.yml:3: defaults.interval: '5 minutes' is not a duration (use 30s, 5m, 1h)",
            "config.yml:10: mailboxes[0].timeout: '1.5m' is not a duration (use 30s, 5m, 1h)",
            "config.yml:11: mailboxes[0].interval: must be a duration like 30s, 5m or 1h",
        ],
    ),
    (  # a key one level off says where it belongs
        "invalid-misplaced-key.yml",
        [
            "config.yml:7: mailboxes[0].flow: belongs under auth:",
            "config.yml:8: mailboxes[0].password_file: belongs under auth:",
            "config.yml:9: mailboxes[0].host: belongs under imap: or smtp:",
            "config.yml:10: mailboxes[0].junk: belongs under folders:",
            "config.yml:11: mailboxes[0].auth.flow: is required",
            "config.yml:12: mailboxes[0].auth.username: "
            "belongs to the mailbox itself, not under auth:",
        ],
    ),
    (  # what import-esm writes when the ESM settings name no user
        "invalid-placeholder-username.yml",
        [
            "config.yml:4: mailboxes[0].username: CHANGE-ME@contoso.onmicrosoft.com is a "
            "placeholder (import-esm writes one when the ESM settings name no user): put the "
            "mailbox's sign-in name there, like servicedesk@contoso.com",
            "config.yml:9: mailboxes[1].username: billing@example.invalid is a placeholder "
            "(import-esm writes one when the ESM settings name no user): put the mailbox's "
            "sign-in name there, like servicedesk@contoso.com",
        ],
    ),
    (  # blame the value the mailbox sets; the other one is what it conflicts with
        "invalid-timeout-exceeds-interval.yml",
        [
            "config.yml:9: mailboxes[0].interval: must not be shorter than timeout (45s)",
            "config.yml:13: mailboxes[1].timeout: must not exceed interval (1m)",
        ],
    ),
    (
        "invalid-size.yml",
        [
            "config.yml:8: mailboxes[0].oversized_bytes: must be a size like 25MiB or 26214400",
            "config.yml:11: mailboxes[1].oversized_bytes: must be greater than 0",
            "config.yml:14: mailboxes[2].oversized_bytes: must be a size like 25MiB or 26214400",
        ],
    ),
    (
        "invalid-port.yml",
        [
            "config.yml:8: mailboxes[0].imap.port: must be between 1 and 65535",
            "config.yml:10: mailboxes[0].smtp.host: "
            "must be a host name like outlook.office365.com (no scheme, path or port)",
            "config.yml:11: mailboxes[0].smtp.port: must be an integer",
        ],
    ),
    (
        "invalid-inline-password.yml",
        [
            "config.yml:6: mailboxes[0].auth: flow password needs password_file or password_env",
            "config.yml:8: mailboxes[0].auth.password: "
            "secrets may not be inline; use password_file or password_env",
        ],
    ),
    (
        "invalid-client-secret.yml",
        [
            "config.yml:6: mailboxes[0].auth: "
            "flow client_secret needs client_secret_file or client_secret_env",
            "config.yml:8: mailboxes[0].auth.client_secret: "
            "secrets may not be inline; use client_secret_file or client_secret_env",
            "config.yml:9: mailboxes[0].auth.client_secret_expires: must be a date like 2026-03-31",
        ],
    ),
    (
        "invalid-password-file-and-env.yml",
        [
            "config.yml:9: mailboxes[0].auth.password_env: "
            "only one of password_file and password_env may be set"
        ],
    ),
    (
        "invalid-missing-secret-file.yml",
        [
            "config.yml:8: mailboxes[0].auth.password_file: "
            "cannot read {dir}/secrets/no-such-file: No such file or directory"
        ],
    ),
    (
        "invalid-secret-mode.yml",
        [
            "config.yml:9: mailboxes[0].auth.password_file: "
            "{dir}/secrets/group-readable is readable by group or others (mode 0644); "
            "run chmod 600 {dir}/secrets/group-readable"
        ],
    ),
    (
        "invalid-unset-env.yml",
        [
            "config.yml:8: mailboxes[0].auth.client_secret_env: "
            "environment variable UNSET_CLIENT_SECRET is not set",
            "config.yml:15: mailboxes[1].auth.password_env: "
            "environment variable EMPTY_PASSWORD is empty",
        ],
    ),
    (
        "invalid-certificate.yml",
        [
            "config.yml:8: mailboxes[0].auth.certificate_file: "
            "{dir}/secrets/cert-only.pem holds no PRIVATE KEY block; "
            "it must hold the certificate and its private key (PEM)",
            "config.yml:9: mailboxes[0].ca_file: cannot read {dir}/secrets: Is a directory",
        ],
    ),
    (
        "invalid-short-scope.yml",
        [
            "config.yml:8: mailboxes[0].scopes[0]: needs its resource URL: use "
            "https://outlook.office365.com/IMAP.AccessAsUser.All "
            "(a bare scope fails with AADSTS70011)"
        ],
    ),
    (
        "invalid-reserved-scope.yml",
        [
            "config.yml:9: mailboxes[0].scopes[1]: is added by MSAL; remove it",
            "config.yml:10: mailboxes[0].scopes[2]: is added by MSAL; remove it",
        ],
    ),
    (  # an inherited scope names the mailbox whose flow rejects it
        "invalid-app-only-scope.yml",
        [
            f"config.yml:4: defaults.scopes[0]: flow client_secret {APP_ONLY_SCOPE_PROBLEM} "
            "(mailboxes[1] uses flow client_secret)",
            f"config.yml:15: mailboxes[2].scopes[0]: flow client_certificate "
            f"{APP_ONLY_SCOPE_PROBLEM}",
        ],
    ),
    (
        "invalid-authority-host.yml",
        [
            f"config.yml:8: mailboxes[0].authority_host: {AUTHORITY_EXPECTED}; "
            "the tenant goes in tenant_id",
            f"config.yml:11: mailboxes[1].authority_host: {AUTHORITY_EXPECTED}",
            f"config.yml:14: mailboxes[2].authority_host: {AUTHORITY_EXPECTED}",
        ],
    ),
    (  # the value is never quoted: it may hold the proxy's password
        "invalid-proxy-url.yml",
        [
            f"config.yml:8: mailboxes[0].proxy_url: {PROXY_EXPECTED}",
            f"config.yml:11: mailboxes[1].proxy_url: {PROXY_EXPECTED}: the port is missing",
            f"config.yml:14: mailboxes[2].proxy_url: {PROXY_EXPECTED}",
        ],
    ),
    (
        "invalid-unknown-check.yml",
        [
            f'config.yml:7: mailboxes[0].checks[1]: unknown check "imap-login"; {CHECK_CHOICES} '
            "(did you mean imap_login?)",
            f'config.yml:7: mailboxes[0].checks[3]: unknown check "spam"; {CHECK_CHOICES}',
        ],
    ),
    (
        "invalid-check-dependency.yml",
        [
            "config.yml:7: mailboxes[0].checks: inbox needs imap_login",
            "config.yml:7: mailboxes[0].checks: junk needs imap_login",
            'config.yml:12: mailboxes[0].checks[4]: duplicate check "token" (first at line 8)',
        ],
    ),
    (
        "invalid-other-flow-key.yml",
        [
            "config.yml:9: mailboxes[0].auth.client_secret_expires: not used by flow password",
            "config.yml:16: mailboxes[1].auth.certificate_file: not used by flow device_code",
        ],
    ),
    (
        "invalid-ids.yml",
        [
            "config.yml:3: mailboxes[0].username: must look like user@domain",
            "config.yml:4: mailboxes[0].tenant_id: "
            "must be the tenant's GUID or a domain name like contoso.onmicrosoft.com",
            "config.yml:5: mailboxes[0].client_id: "
            "must be a GUID: the app registration's Application (client) ID",
        ],
    ),
    (  # reported once at the defaults line although two mailboxes inherit each value
        "invalid-merged-defaults.yml",
        [
            "config.yml:5: defaults.auth.client_secret_env: not used by flow password",
            "config.yml:6: defaults.imap.port: must be between 1 and 65535",
            "config.yml:7: defaults.oversized_bytes: must be greater than 0",
        ],
    ),
    (
        "invalid-many.yml",
        [
            "config.yml:2: state_dir: must be a string",
            "config.yml:4: defaults.name: may not be set in defaults; set it in each mailbox",
            "config.yml:5: defaults.timeout: '30' is not a duration (use 30s, 5m, 1h)",
            "config.yml:6: defaults.folders: must be a mapping",
            "config.yml:8: mailboxes[0].tenant_id: is required",
            "config.yml:9: mailboxes[0].username: must be a string",
            "config.yml:11: mailboxes[0].auth: "
            "flow client_secret needs client_secret_file or client_secret_env",
            "config.yml:13: mailboxes[0].checks: must be a list of strings",
            "config.yml:14: mailboxes[0].ca_file: "
            "cannot read {dir}/certs/missing-ca.pem: No such file or directory",
            "config.yml:15: mailboxes[1]: must be a mapping",
            "config.yml:20: mailboxes[2].auth: must be a mapping",
            "config.yml:21: mailboxes[2].folders.junk: must not be empty",
        ],
    ),
]


def write_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory, holding the secret and CA files the testdata configs name."""
    write_file(tmp_path / "secrets/servicedesk", "hunter2\n")
    write_file(tmp_path / "secrets/app-secret", "s3cret\n")
    write_file(tmp_path / "secrets/app.pem", CERT_PEM + KEY_PEM)
    write_file(tmp_path / "secrets/cert-only.pem", CERT_PEM)
    write_file(tmp_path / "secrets/group-readable", "hunter2\n", 0o644)
    write_file(tmp_path / "ca.pem", CERT_PEM, 0o644)
    write_file(tmp_path / "trust/extra-ca.pem", CERT_PEM, 0o644)
    monkeypatch.chdir(tmp_path)
    return Path.cwd()  # as the loader sees it (symlinks resolved)


def problems_of(path: str | Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENVIRON if environ is None else environ)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- invalid configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), INVALID, ids=[name for name, _ in INVALID])
def test_invalid_config_lists_every_problem_exactly(
    config_dir: Path, name: str, expected: list[str]
) -> None:
    shutil.copy(TESTDATA / name, config_dir / "config.yml")

    problems = problems_of("config.yml")

    assert problems == [line.replace("{dir}", str(config_dir)) for line in expected]


def test_every_invalid_testdata_file_has_its_expected_error() -> None:
    on_disk = sorted(path.name for path in TESTDATA.glob("invalid-*.yml"))
    assert on_disk == sorted(name for name, _ in INVALID)
    assert len(on_disk) >= 18


def test_file_is_named_as_the_caller_gave_it(config_dir: Path) -> None:
    path = config_dir / "config.yml"
    shutil.copy(TESTDATA / "invalid-flow-typo.yml", path)

    assert problems_of(path) == [f"{path}:14: mailboxes[1].auth.flow: {FLOW_CHOICES}"]


def test_unreadable_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yml"
    assert problems_of(missing) == [f"{missing}: cannot read: No such file or directory"]
    assert problems_of(tmp_path) == [f"{tmp_path}: cannot read: Is a directory"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"a: b: c\n", "config.yml:1: yaml: mapping values are not allowed here"),
        (
            b"a: 1\n\tb: 2\n",
            "config.yml:2: yaml: found character '\\t' that cannot start any "
            "token (while scanning for the next token)",
        ),
        (
            b"a: 1\n---\nb: 2\n",
            "config.yml:2: yaml: expected a single document in the stream, "
            "but found another document",
        ),
        (b"a: 1\nb: \xff\n", "config.yml:2: yaml: not UTF-8 text"),
        (
            b"a: 1\nb: \x01\n",
            "config.yml:2: yaml: unacceptable character #x0001: special characters are not allowed",
        ),
        (b"---\n", "config.yml:1: (root): must be a mapping"),
        (b"just text\n", "config.yml:1: (root): must be a mapping"),
    ],
)
def test_yaml_errors_are_one_line_each(config_dir: Path, content: bytes, problem: str) -> None:
    (config_dir / "config.yml").write_bytes(content)
    assert problems_of("config.yml") == [problem]


def test_default_environment_is_the_process_environment(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(TESTDATA / "invalid-unset-env.yml", config_dir / "config.yml")
    monkeypatch.setenv("UNSET_CLIENT_SECRET", "from-the-environment")
    monkeypatch.setenv("EMPTY_PASSWORD", "also-set")

    config = load_config("config.yml")

    assert config.mailbox("servicedesk").auth.client_secret_env == "UNSET_CLIENT_SECRET"


# --- valid configs -----------------------------------------------------------------------------


def test_full_example_loads_to_exact_values(config_dir: Path) -> None:
    shutil.copy(TESTDATA / "valid-full.yml", config_dir / "config.yml")

    config = load_config("config.yml", environ=ENVIRON)

    servicedesk = MailboxConfig(
        name="servicedesk",
        username="servicedesk@contoso.com",
        tenant_id=TENANT,
        client_id=CLIENT,
        auth=AuthConfig("password", password_file=config_dir / "secrets/servicedesk"),
        scopes=DELEGATED_SCOPES,
        authority_host="https://login.microsoftonline.com",
        imap=Endpoint("outlook.office365.com", 993),
        smtp=Endpoint("smtp.office365.com", 587),
        ca_file=config_dir / "ca.pem",
        folders=Folders("INBOX", "Junk Email", "Sent Items"),
        checks=default_checks(),
        interval=120.0,
        timeout=45.0,
        oversized_bytes=20 * 1024 * 1024,
    )  # everything but name and username from `defaults`
    assert config == Config(
        path=Path("config.yml"),
        state_dir=config_dir / "state",
        mailboxes=(
            servicedesk,
            MailboxConfig(
                name="kundenservice",
                username="kundenservice@contoso.de",
                tenant_id="contoso.onmicrosoft.com",
                client_id="0f8fad5b-d9cb-469f-a165-70867728950e",
                # password_env replaces the inherited password_file
                auth=AuthConfig("password", password_env="KUNDENSERVICE_PASSWORD"),
                scopes=("https://outlook.office365.us/IMAP.AccessAsUser.All",),
                authority_host="https://login.microsoftonline.us",
                imap=Endpoint("outlook.office365.us", 1993),
                smtp=Endpoint("smtp.office365.us", 2587),
                ca_file=config_dir / "trust/extra-ca.pem",
                folders=Folders("Posteingang", "Junk-E-Mail", "Gesendete Elemente"),
                checks=("token", "imap_login", "inbox", "oversized", "junk", "smtp_login"),
                interval=5400.0,
                timeout=0.5,
                oversized_bytes=26214400,
            ),
            replace(
                servicedesk,
                name="billing.app-only",
                username="billing@contoso.com",
                auth=AuthConfig(
                    "client_certificate", certificate_file=config_dir / "secrets/app.pem"
                ),
                scopes=APP_ONLY_SCOPES,
            ),
            replace(
                servicedesk,
                name="reports_2",
                username="reports@contoso.com",
                auth=AuthConfig(
                    "client_secret",
                    client_secret_env="REPORTS_CLIENT_SECRET",
                    client_secret_expires=datetime.date(2026, 3, 31),
                ),
                scopes=APP_ONLY_SCOPES,
            ),
            replace(
                servicedesk,
                name="mfa",
                username="mfa.user@contoso.com",
                auth=AuthConfig("device_code"),  # the default password_file is not its flow's
                checks=("token",),
            ),
        ),
    )
    assert config.mailbox("reports_2").auth.app_only
    assert not config.mailbox("mfa").auth.app_only
    assert config.mailbox("servicedesk").authority == f"https://login.microsoftonline.com/{TENANT}"
    with pytest.raises(KeyError):
        config.mailbox("nope")


def test_built_in_defaults(config_dir: Path) -> None:
    (config_dir / "config.yml").write_text(
        "mailboxes:\n"
        "  - name: servicedesk\n"
        "    username: servicedesk@contoso.com\n"
        f"    tenant_id: {TENANT}\n"
        f"    client_id: {CLIENT}\n"
        "    auth: {flow: device_code}\n"
    )

    config = load_config("config.yml", environ={})

    assert config.state_dir == config_dir / "state"
    assert config.mailboxes == (
        MailboxConfig(
            name="servicedesk",
            username="servicedesk@contoso.com",
            tenant_id=TENANT,
            client_id=CLIENT,
            auth=AuthConfig("device_code"),
            scopes=DELEGATED_SCOPES,
            authority_host="https://login.microsoftonline.com",
            imap=Endpoint("outlook.office365.com", 993),
            smtp=Endpoint("smtp.office365.com", 587),
            ca_file=None,
            folders=Folders(),
            checks=("token", "imap_login", "inbox", "oversized", "junk"),
            interval=60.0,
            timeout=30.0,
            oversized_bytes=26214400,
        ),
    )


def test_defaults_merge_key_by_key(config_dir: Path) -> None:
    (config_dir / "config.yml").write_text(
        "defaults:\n"
        f"  tenant_id: {TENANT}\n"
        f"  client_id: {CLIENT}\n"
        "  auth: {flow: client_secret, client_secret_file: secrets/app-secret}\n"
        "  imap: {host: imap.contoso.test, port: 1993}\n"
        "  folders: {junk: Spam}\n"
        "mailboxes:\n"
        "  - name: app\n"
        "    username: app@contoso.com\n"
        "    auth: {client_secret_expires: 2026-03-31}\n"
        "    imap: {host: imap2.contoso.test}\n"
        "    folders: {sent: Gesendet}\n"
        "  - name: person\n"
        "    username: person@contoso.com\n"
        "    auth: {flow: password, password_env: SERVICEDESK_PASSWORD}\n"
    )

    app, person = load_config("config.yml", environ=ENVIRON).mailboxes

    assert app.imap == Endpoint("imap2.contoso.test", 1993)  # the default port is kept
    assert app.folders == Folders(inbox="INBOX", junk="Spam", sent="Gesendet")
    assert app.auth == AuthConfig(
        "client_secret",
        client_secret_file=config_dir / "secrets/app-secret",
        client_secret_expires=datetime.date(2026, 3, 31),
    )
    assert app.scopes == APP_ONLY_SCOPES
    # Another flow does not inherit the defaults' client_secret_file.
    assert person.auth == AuthConfig("password", password_env="SERVICEDESK_PASSWORD")
    assert person.scopes == DELEGATED_SCOPES
    assert person.imap == Endpoint("imap.contoso.test", 1993)


def test_yaml_merge_keys_count(config_dir: Path) -> None:
    (config_dir / "config.yml").write_text(
        "mailboxes:\n"
        "  - &first\n"
        "    name: one\n"
        "    username: one@contoso.com\n"
        f"    tenant_id: {TENANT}\n"
        f"    client_id: {CLIENT}\n"
        "    auth: {flow: device_code}\n"
        "  - <<: *first\n"
        "    name: two\n"
        "    username: two@contoso.com\n"
    )

    one, two = load_config("config.yml", environ={}).mailboxes

    assert (two.name, two.username, two.tenant_id) == ("two", "two@contoso.com", TENANT)
    assert two.auth == one.auth


def test_relative_paths_resolve_against_the_config_directory(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    absolute_secret = write_file(elsewhere / "absolute.secret", "pw\n")
    (config_dir / "config.yml").write_text(
        "state_dir: var/state\n"
        "mailboxes:\n"
        "  - name: servicedesk\n"
        "    username: servicedesk@contoso.com\n"
        f"    tenant_id: {TENANT}\n"
        f"    client_id: {CLIENT}\n"
        "    auth: {flow: password, password_file: secrets/servicedesk}\n"
        "    ca_file: trust/extra-ca.pem\n"
        "  - name: other\n"
        "    username: other@contoso.com\n"
        f"    tenant_id: {TENANT}\n"
        f"    client_id: {CLIENT}\n"
        f"    auth: {{flow: password, password_file: {absolute_secret}}}\n"
    )
    monkeypatch.chdir(elsewhere)

    config = load_config(os.path.relpath(config_dir / "config.yml"), environ={})

    assert config.state_dir == config_dir / "var/state"
    assert config.mailboxes[0].auth.password_file == config_dir / "secrets/servicedesk"
    assert config.mailboxes[0].ca_file == config_dir / "trust/extra-ca.pem"
    assert config.mailboxes[1].auth.password_file == absolute_secret


# --- durations and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1y", 31536000.0),
        ("2h45m30s250ms", 9930.25),
        ("0", 0.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5 m", "1.5h", "30m1h", "-5s", "1hh", "30S", "5min"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == (
        f'invalid duration "{text}": use numbers with units ms, s, m, h, d, w, y, '
        "largest first, like 30s, 5m or 1h30m"
    )


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (26214400, 26214400),
        (0, 0),
        ("123", 123),
        ("123B", 123),
        ("10KB", 10_000),
        ("512KiB", 524_288),
        ("25MB", 25_000_000),
        ("25MiB", 26_214_400),
        ("25 MiB", 26_214_400),
        ("25mib", 26_214_400),
        ("1GB", 1_000_000_000),
        ("1GiB", 1_073_741_824),
    ],
)
def test_parse_size(value: int | str, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "MiB", "25 megabytes", "2.5MiB", "25TiB", "-1", "1e6"])
def test_parse_size_rejects_text(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert str(caught.value) == (
        f'invalid size "{value}": use bytes (26214400) or a number with a unit: '
        "KB, MB, GB (1000) or KiB, MiB, GiB (1024), like 25MiB"
    )


def test_parse_size_rejects_negative_and_bool() -> None:
    with pytest.raises(ValueError, match=r"^invalid size -1: must not be negative$"):
        parse_size(-1)
    with pytest.raises(ValueError, match=r"^invalid size True: must be an integer or a string"):
        parse_size(True)


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        ("hunter2\n", "hunter2"),
        ("hunter2\r\n", "hunter2"),
        ("hunter2\n\n\r\n", "hunter2"),
        ("hunter2", "hunter2"),
        ("  pass word\t \n", "  pass word\t "),  # only the trailing newline goes
        ("\nline one\nline two\n", "\nline one\nline two"),
    ],
)
def test_read_secret_strips_only_trailing_newlines(
    tmp_path: Path, content: str, secret: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    path.chmod(0o600)

    assert read_secret(AuthConfig("password", password_file=path)) == secret
    assert read_secret(AuthConfig("client_secret", client_secret_file=path)) == secret


def test_read_secret_per_flow(tmp_path: Path) -> None:
    pem = write_file(tmp_path / "app.pem", CERT_PEM + KEY_PEM)
    environ = {"PW": "from-env\n"}

    assert read_secret(AuthConfig("device_code"), environ) == ""
    assert read_secret(AuthConfig("password", password_env="PW"), environ) == "from-env\n"
    assert read_secret(AuthConfig("client_secret", client_secret_env="PW"), environ) == (
        "from-env\n"
    )
    assert read_secret(AuthConfig("client_certificate", certificate_file=pem)) == (
        CERT_PEM + KEY_PEM.rstrip("\n")
    )


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (0o644, "is readable by group or others (mode 0644)"),
        (0o640, "is readable by group or others (mode 0640)"),
        (0o604, "is readable by group or others (mode 0604)"),
        (0o620, "is writable by group or others (mode 0620)"),
    ],
)
def test_read_secret_refuses_a_file_others_can_open(
    tmp_path: Path, mode: int, problem: str
) -> None:
    path = write_file(tmp_path / "secret", "Summer2024!\n", mode)

    with pytest.raises(SecretError) as caught:
        read_secret(AuthConfig("password", password_file=path))

    assert str(caught.value) == f"password_file: {path} {problem}; run chmod 600 {path}"


def test_read_secret_errors_name_the_source_never_the_secret(tmp_path: Path) -> None:
    secret = "Summer2024!"
    missing = tmp_path / "missing"
    empty = write_file(tmp_path / "empty", "\r\n")
    cert_only = write_file(tmp_path / "cert.pem", CERT_PEM + secret)
    cases = [
        (
            AuthConfig("password", password_file=missing),
            {},
            f"password_file: cannot read {missing}: No such file or directory",
        ),
        (AuthConfig("password", password_file=empty), {}, f"password_file: {empty} is empty"),
        (
            AuthConfig("password", password_env="PW"),
            {},
            "password_env: environment variable PW is not set",
        ),
        (
            AuthConfig("client_secret", client_secret_env="PW"),
            {"PW": ""},
            "client_secret_env: environment variable PW is empty",
        ),
        (
            AuthConfig("client_certificate", certificate_file=cert_only),
            {},
            f"certificate_file: {cert_only} holds no PRIVATE KEY block; "
            "it must hold the certificate and its private key (PEM)",
        ),
        (AuthConfig("password"), {}, "flow password needs password_file or password_env"),
    ]
    for auth, environ, message in cases:
        with pytest.raises(SecretError) as caught:
            read_secret(auth, environ)
        assert str(caught.value) == message
        assert secret not in str(caught.value)
