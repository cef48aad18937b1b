"""`import-esm`: ESM platform settings / mailtask properties to a mailbox config snippet.

Valid files are paired with their exact output (`esm-*.expected.yml`), which `load_config`
accepts; invalid ones (`esm-invalid-*.properties`) with their exact error lines, as the config
tests do it. `{file}` stands for the path given on the command line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exporter.admin.esm_import import parse_properties
from exporter.config import DELEGATED_SCOPES, default_checks, load_config
from tests.conftest import run_cli, write_secret

TESTDATA = Path(__file__).parent / "testdata"
FORM = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize"
IMAP = "https://outlook.office365.com/IMAP.AccessAsUser.All"
SMTP = "https://outlook.office365.com/SMTP.Send"

INVALID: list[tuple[str, list[str]]] = [
    ("esm-invalid-placeholders.properties", [
        "{file}:2: mail.oauth.authorize.endpoint: still holds the placeholder {tenantID}: put the "
        "Directory (tenant) ID from the app registration's Overview there",
        "{file}:3: mail.oauth.client.id: still holds a placeholder: put the Application (client) "
        "ID there",
    ]),
    ("esm-invalid-typos.properties", [
        "{file}:1: mail.store.oauth.enabled: must be true or false (ESM reads 'yes' as false)",
        "{file}:3: mail.oauth.authorize.endpoint: is the v1.0 endpoint; use the v2.0 one: "
        + FORM,
        "{file}:4: mail.oauth.client.id: must be the Application (client) ID, a GUID like "
        "46a662fb-0fed-4f72-a212-95216e5b0f28 (not the app's display name)",
        "{file}:5: mail.oauth.scopes: https://outlook.office365.com/IMAP.AccesAsUser.All: unknown "
        f"scope; did you mean {IMAP}?",
        "{file}:5: mail.oauth.scopes: https://graph.microsoft.com/SMTP.Send: is a Microsoft Graph "
        f"scope; IMAP and SMTP take Exchange Online's: {SMTP}",
        "{file}:6: mail.imap.user: must be the mailbox's sign-in name (user@domain) for XOAUTH2",
        "{file}:7: mail.imap.port: must be a port number between 1 and 65535",
    ]),
    ("esm-invalid-common.properties", [
        "{file}:3: mail.oauth.authorize.endpoint: uses the multi-tenant 'common' endpoint; the "
        "exporter signs in to one tenant: put the Directory (tenant) ID there",
        f"{{file}}:5: mail.oauth.scopes: IMAP.AccessAsUser.All: needs its resource URL: {IMAP} "
        "(a bare scope fails with AADSTS70011)",
        "{file}:5: mail.oauth.scopes: has no SMTP.Send although mail.transport.oauth.enabled is "
        f"true: add {SMTP}",
    ]),
    ("esm-invalid-endpoint.properties", [
        f"{{file}}:3: mail.oauth.authorize.endpoint: must use https, like {FORM}",
    ]),
    ("esm-invalid-token-endpoint.properties", [
        "{file}:2: mail.oauth.authorize.endpoint: is the token endpoint; ESM wants the authorize "
        f"endpoint: {FORM}",
    ]),
    ("esm-invalid-value-apart.properties", [
        "{file}:6: mail.oauth.client.id: has no value; the value on line 8 looks like it belongs "
        "to it (put it right after the '=')",
    ]),
    ("esm-invalid-missing.properties", [
        f"{{file}}: mail.oauth.authorize.endpoint: missing; expected {FORM}",
        "{file}: mail.oauth.client.id: missing; the Application (client) ID",
        f"{{file}}: mail.oauth.scopes: missing; expected {IMAP},{SMTP}",
    ]),
]  # fmt: skip

VALID = ["esm-platform.properties", "esm-mailtask.properties", "esm-guide-layout.properties"]


@pytest.mark.parametrize(("name", "expected"), INVALID, ids=[name for name, _ in INVALID])
def test_invalid_properties_are_reported_not_copied(name, expected, capsys):
    path = str(TESTDATA / name)

    code, out, err = run_cli(capsys, "import-esm", path)

    assert code == 2
    assert out == ""
    assert err.splitlines() == [line.replace("{file}", path) for line in expected]


def test_every_esm_testdata_file_is_in_a_table():
    on_disk = sorted(p.name for p in TESTDATA.glob("esm-*.properties"))
    assert on_disk == sorted([name for name, _ in INVALID] + VALID)


@pytest.mark.parametrize("name", VALID)
def test_valid_properties_give_the_expected_snippet(name, capsys):
    code, out, _err = run_cli(capsys, "import-esm", str(TESTDATA / name))

    assert code == 0
    assert out == (TESTDATA / name.replace(".properties", ".expected.yml")).read_text()


def test_the_snippet_loads_as_a_config(tmp_path, capsys):
    secret = tmp_path / "servicedesk.password"
    write_secret(secret, "pw")
    code, out, err = run_cli(capsys, "import-esm", str(TESTDATA / "esm-platform.properties"),
                             "--name=desk", f"--password-file={secret}")  # fmt: skip
    assert code == 0, err
    config_file = tmp_path / "config.yml"
    config_file.write_text(out)

    (mailbox,) = load_config(config_file).mailboxes

    assert mailbox.name == "desk"
    assert mailbox.username == "servicedesk@contoso.com"
    assert mailbox.tenant_id == "b921b89c-a960-4187-9872-28191e34a8f3"
    assert mailbox.client_id == "46a662fb-0fed-4f72-a212-95216e5b0f28"
    assert mailbox.auth.flow == "password" and mailbox.auth.password_file == secret
    assert mailbox.scopes == DELEGATED_SCOPES
    assert mailbox.checks == (*default_checks(), "smtp_login")
    assert (mailbox.imap.host, mailbox.smtp.host) == ("outlook.office365.com", "smtp.office365.com")


def test_the_mailtask_snippet_loads_with_its_own_scopes(tmp_path, capsys):
    shutil.copy(TESTDATA / "esm-mailtask.expected.yml", tmp_path / "config.yml")
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    text = (tmp_path / "config.yml").read_text().replace("/run/secrets/support", str(secrets / "s"))
    (tmp_path / "config.yml").write_text(text)
    write_secret(secrets / "s", "pw")

    (mailbox,) = load_config(tmp_path / "config.yml").mailboxes

    assert mailbox.scopes == (IMAP,)
    assert mailbox.checks == default_checks()
    assert mailbox.tenant_id == "fabrikam.onmicrosoft.com"


def test_hosts_other_than_exchange_online_are_kept(tmp_path, capsys):
    properties = tmp_path / "esm.properties"
    properties.write_text(
        "mail.store.oauth.enabled=true\n"
        f"mail.oauth.authorize.endpoint={FORM.replace('{tenant}', 'contoso.com')}\n"
        "mail.oauth.client.id=46a662fb-0fed-4f72-a212-95216e5b0f28\n"
        f"mail.oauth.scopes={IMAP}\n"
        "mail.imap.host=imap.proxy.contoso.com\n"
        "mail.imap.port=143\n"
        "mail.user=desk@contoso.com\n"
    )

    code, out, err = run_cli(capsys, "import-esm", str(properties))

    assert code == 0
    assert "    imap: {host: imap.proxy.contoso.com, port: 993}\n" in out
    assert err == (
        "note: ESM uses IMAP port 143; the exporter connects with implicit TLS on 993, as "
        "Exchange Online offers\n"
    )


def test_unreadable_file(tmp_path, capsys):
    missing = tmp_path / "nope.properties"
    code, out, err = run_cli(capsys, "import-esm", str(missing))
    assert (code, out, err) == (2, "", f"{missing}: cannot read: No such file or directory\n")


def test_java_properties_syntax():
    text = (
        "# comment\n! comment\n  key1 = value one \nkey2:value2\nkey3 value3\n"
        "list = a,\\\n    b,\\\n    c\nescaped\\ key = x\\:y\\u00e4\nempty\n"
    )
    assert [(p.key, p.value, p.line) for p in parse_properties(text)] == [
        ("key1", "value one ", 3),
        ("key2", "value2", 4),
        ("key3", "value3", 5),
        ("list", "a,b,c", 6),
        ("escaped key", "x:y\u00e4", 9),
        ("empty", "", 10),
    ]


def test_a_value_on_the_line_after_its_key_is_read_and_noted(capsys):
    code, out, err = run_cli(capsys, "import-esm", str(TESTDATA / "esm-guide-layout.properties"))

    assert code == 0
    assert "    tenant_id: contoso.onmicrosoft.com\n" in out
    assert "    client_id: 46a662fb-0fed-4f72-a212-95216e5b0f28\n" in out
    assert "scopes:" not in out  # the default pair, read whole from line 9
    assert err.splitlines()[:3] == [
        f"note: line {key_line}: {key} has its value on line {key_line + 1}; read as one (a "
        ".properties reader takes only the key's own line: keep them on one)"
        for key_line, key in ((4, "mail.oauth.authorize.endpoint"), (6, "mail.oauth.client.id"),
                              (8, "mail.oauth.scopes"))
    ]


def test_an_empty_value_is_named_at_its_line(tmp_path, capsys):
    properties = tmp_path / "esm.properties"
    properties.write_text(
        "mail.store.oauth.enabled=true\n"
        f"mail.oauth.authorize.endpoint={FORM.replace('{tenant}', 'contoso.com')}\n"
        "mail.oauth.client.id=\n"
        f"mail.oauth.scopes={IMAP}\n"
    )

    code, _out, err = run_cli(capsys, "import-esm", str(properties))

    assert code == 2
    assert err == (
        f"{properties}:3: mail.oauth.client.id: has no value; the Application (client) ID\n"
    )


def test_the_placeholder_username_fails_config_check_until_replaced(tmp_path, capsys):
    secret = tmp_path / "servicedesk.password"
    write_secret(secret, "pw")
    code, out, _err = run_cli(capsys, "import-esm",
                              str(TESTDATA / "esm-guide-layout.properties"),
                              f"--password-file={secret}")  # fmt: skip
    assert code == 0
    config = tmp_path / "config.yml"
    config.write_text(out)

    code, _out, err = run_cli(capsys, "--config.check", f"--config.file={config}")

    assert code == 2
    assert err.splitlines() == [
        f"{config}:9: mailboxes[0].username: CHANGE-ME@contoso.onmicrosoft.com is a placeholder "
        "(import-esm writes one when the ESM settings name no user): put the mailbox's sign-in "
        "name there, like servicedesk@contoso.com"
    ]
    config.write_text(out.replace("CHANGE-ME@", "servicedesk@"))
    code, _out, err = run_cli(capsys, "--config.check", f"--config.file={config}")
    assert code == 0, err
