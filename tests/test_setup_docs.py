"""docs/setup.md agrees with the code it describes.

- every AADSTS code it names is in exporter/failures.py's table, under the same reason, and the
  guide's fix for it says what the table's hint says (the key words of the hint);
- the IMAP/SMTP answers it names are the ones the exporter classifies, with the same fix;
- every `doctor` step it names is one of doctor's steps;
- every exporter config it shows loads with `load_config` (what `--config.check` runs), with
  secret files created here, and every config key it names exists;
- its ESM table covers every property `import-esm` reads, and names no other;
- every PowerShell cmdlet it names is one of those the setup needs;
- every relative link in it, in docs/deployment.md and in the README resolves, anchors included.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.admin import doctor, esm_import
from exporter.config import AuthConfig, Endpoint, Folders, MailboxConfig, load_config
from exporter.failures import AADSTS, REASONS
from exporter.smtp import SMTP_HINTS
from tests.markdown import anchors

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "docs" / "setup.md"
LINKED_DOCS = [SETUP, ROOT / "docs" / "deployment.md", ROOT / "README.md"]
TEXT = SETUP.read_text()

# -- the summary table ("What a missed step answers") ------------------------------------------


def table_after(heading: str, text: str = TEXT) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after `heading`."""
    start = text.index(heading)
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


ANSWERS = table_after("## 12. What a missed step answers")
AADSTS_ROWS = {
    int(match.group(1)): row
    for row in ANSWERS
    if (match := re.fullmatch(r"`AADSTS(\d+)`", row[0])) is not None
}

# What each hint in exporter/failures.py tells the admin to do, in a few words: the guide's fix
# must say the same. A word listed here that is missing from the table's own hint fails too, so
# this list cannot drift away from the code.
HINT_WORDS: dict[int, tuple[str, ...]] = {
    7000218: ("Allow public client flows", "Advanced settings"),
    7000215: ("new secret", "Value"),
    7000222: ("expired", "Value"),
    700027: ("upload the certificate",),
    50126: ("password file",),
    50053: ("locked", "sign-in logs"),
    50055: ("expired", "password file"),
    50057: ("re-enable",),
    50034: ("username", "tenant_id"),
    50076: ("exclude", "device_code", "app-only"),
    50079: ("exclude", "device_code", "app-only"),
    53003: ("Conditional Access", "exclude", "device_code", "app-only"),
    65001: ("Grant admin consent",),
    700016: ("client_id", "tenant_id", "authority_host"),
    90002: ("tenant_id", "authority_host"),
    70011: ("full resource URLs", ".default"),
    700082: ("90 days", "login"),
    50173: ("revoked", "login", "password file"),
    70016: ("expired", "login", "new code"),
    70019: ("expired", "login", "new code"),
}

# What a fix for one failure must never say: the remedy of another one.
WRONG_REMEDIES = {
    "public_client_disabled": ("consent", "password file", "secret"),
    "consent_required": ("public client", "password file"),
}


def plain(text: str) -> str:
    return text.replace("`", "").replace("*", "").casefold()


def test_every_aadsts_code_in_the_guide_is_in_the_table_of_failures() -> None:
    named = {int(code) for code in re.findall(r"AADSTS(\d+)", TEXT)}
    assert named, "the guide names no AADSTS code"
    assert named - set(AADSTS) == set(), "codes the exporter does not know"
    assert named == set(AADSTS_ROWS), "codes missing from 'What a missed step answers'"
    assert set(HINT_WORDS) >= named, "add the hint's key words for the new code here"


@pytest.mark.parametrize("code", sorted(AADSTS_ROWS))
def test_the_guides_fix_for_a_code_says_what_the_exporter_says(code: int) -> None:
    _answer, reason, _step, _missed, fix = AADSTS_ROWS[code]
    table_reason, hint = AADSTS[code]
    assert reason == f"`{table_reason}`", f"AADSTS{code}: the exporter reports {table_reason}"
    for word in HINT_WORDS[code]:
        assert plain(word) in plain(hint), f"AADSTS{code}: {word!r} is not in the hint: {hint}"
        assert plain(word) in plain(fix), f"AADSTS{code}: the guide's fix lacks {word!r}: {fix}"
    for wrong in WRONG_REMEDIES.get(table_reason, ()):
        assert wrong not in plain(fix), f"AADSTS{code}: {wrong!r} is another failure's fix"


def test_every_code_in_the_table_of_failures_is_explained_or_cannot_happen_in_setup() -> None:
    """The guide covers every AADSTS code the exporter knows: each is a setup step missed."""
    assert set(AADSTS) - set(AADSTS_ROWS) == set()


def test_reason_words_and_doctor_steps_are_the_exporters() -> None:
    mailbox = MailboxConfig(
        name="x",
        username="x@contoso.com",
        tenant_id="contoso.com",
        client_id="46a662fb-0fed-4f72-a212-95216e5b0f28",
        auth=AuthConfig(flow="password"),
        scopes=(),
        authority_host="https://login.microsoftonline.com",
        imap=Endpoint("outlook.office365.com", 993),
        smtp=Endpoint("smtp.office365.com", 587),
        ca_file=None,
        folders=Folders(),
        checks=("token",),
        interval=60,
        timeout=30,
        oversized_bytes=1,
    )
    steps = {re.sub(r" \(.*\)$", "", name) for name, _ in doctor.steps_for(mailbox)}
    for row in ANSWERS:
        for reason in re.findall(r"`([a-z_]+)`", row[1]):
            assert reason in REASONS, row
        for step in (s.strip() for s in row[2].split(",")):
            assert step in steps or step.startswith("—"), f"doctor has no step {step!r}: {row}"


def test_imap_and_smtp_answers_match_the_exporters_classification() -> None:
    imap_rows = {row[0]: row for row in ANSWERS if row[0].startswith("IMAP ")}
    assert set(imap_rows) == {
        "IMAP `NO AUTHENTICATE failed.`",
        "IMAP `BAD User is authenticated but not connected.`",
    }
    assert "FullAccess" in imap_rows["IMAP `NO AUTHENTICATE failed.`"][4]
    assert (
        "Enterprise application"
        in imap_rows["IMAP `BAD User is authenticated but not connected.`"][4]
    )
    smtp_rows = {
        match.group(1): row
        for row in ANSWERS
        if (match := re.fullmatch(r"SMTP `535 (\d\.\d\.\d+)`", row[0])) is not None
    }
    assert set(smtp_rows) == set(SMTP_HINTS)
    assert "-SmtpClientAuthenticationDisabled $false" in smtp_rows["5.7.139"][4]
    assert "-SmtpClientAuthenticationDisabled $false" in SMTP_HINTS["5.7.139"]
    assert "SMTP.Send" in smtp_rows["5.7.3"][4] and "SMTP.Send" in SMTP_HINTS["5.7.3"]
    for row in [*imap_rows.values(), *smtp_rows.values()]:
        assert row[1] == "`auth_rejected`"


def missed_paragraphs(section: str) -> list[str]:
    """Each paragraph starting with "Missed", with the list that follows it."""
    found: list[str] = []
    lines = section.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("Missed"):
            continue
        taken = [line]
        for following in lines[index + 1 :]:
            if following.startswith(("#", "```")) or (
                following and not following.startswith(("-", " ")) and not taken[-1]
            ):
                break
            taken.append(following)
        found.append("\n".join(taken))
    return found


def test_every_step_of_the_guide_names_what_a_miss_answers() -> None:
    """Each numbered setup section (2-8) that has a "Missed" paragraph names a code or an
    IMAP/SMTP answer in it."""
    sections = re.split(r"^## ", TEXT, flags=re.M)
    for section in sections:
        title = section.splitlines()[0]
        if not re.match(r"[2-8]\. ", title):
            continue
        misses = missed_paragraphs(section)
        assert misses or "AADSTS" in section, f"section {title!r} names no failure"
        for miss in misses:
            assert re.search(r"AADSTS\d+|AUTHENTICATE|5\.7\.|not connected|doctor", miss), (
                f"{title}: {miss[:200]}"
            )


# -- config snippets ----------------------------------------------------------------------------


def code_blocks(language: str, text: str = TEXT) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def config_blocks() -> list[str]:
    return [block for block in code_blocks("yaml") if re.search(r"^mailboxes:", block, re.M)]


def certificate_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "service desk mailbox monitor")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode() + key_pem.decode()


PATH_KEYS = {"password_file", "client_secret_file", "certificate_file", "ca_file"}


def localize(node: Any, tmp: Path, pem: str) -> Any:
    """The snippet with every file it names created under tmp (secrets 0600)."""
    if isinstance(node, list):
        return [localize(item, tmp, pem) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in PATH_KEYS and isinstance(value, str):
            path = tmp / "files" / value.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(pem if key in {"certificate_file", "ca_file"} else "s3cret\n")
            path.chmod(0o600)
            out[key] = str(path)
        elif key == "state_dir":
            out[key] = str(tmp / "state")
        else:
            out[key] = localize(value, tmp, pem)
    return out


def test_the_guide_shows_a_config_for_every_flow() -> None:
    flows = {
        mailbox["auth"]["flow"]
        for block in config_blocks()
        for mailbox in yaml.safe_load(block)["mailboxes"]
    }
    assert flows == {"password", "device_code", "client_secret", "client_certificate"}


@pytest.mark.parametrize("index", range(len(config_blocks())))
def test_every_config_in_the_guide_passes_config_check(index: int, tmp_path: Path) -> None:
    snippet = yaml.safe_load(config_blocks()[index])
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(localize(snippet, tmp_path, certificate_pem())))
    config = load_config(path, environ={})  # raises ConfigError listing every problem
    assert [m.name for m in config.mailboxes] == [m["name"] for m in snippet["mailboxes"]]


def config_keys() -> set[str]:
    """Every key the loader accepts, dotted where nested (auth.flow, imap.host)."""
    top = {"state_dir", "defaults", "mailboxes"}
    mailbox = {f.name for f in dataclasses.fields(MailboxConfig)}
    nested = {
        "auth": {f.name for f in dataclasses.fields(AuthConfig)},
        "imap": {f.name for f in dataclasses.fields(Endpoint)},
        "smtp": {f.name for f in dataclasses.fields(Endpoint)},
        "folders": {f.name for f in dataclasses.fields(Folders)},
    }
    dotted = {f"{group}.{key}" for group, keys in nested.items() for key in keys}
    return top | mailbox | dotted


def test_every_config_key_the_tables_name_exists() -> None:
    keys = config_keys()
    named: set[str] = set()
    for heading in ("## 9. Where each value goes", "## 10. From ESM's settings"):
        for row in table_after(heading):
            named |= set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)(?:: [a-z_]+)?`", row[-1]))
    # A check name, a flow name and the scopes MSAL adds, in the tables' prose.
    named -= {"smtp_login", "password"} | esm_import.RESERVED_SCOPES
    assert named, "no config key found in the tables"
    assert named - keys == set()


# -- ESM properties ------------------------------------------------------------------------------


def test_the_esm_table_names_every_property_import_esm_reads_and_no_other() -> None:
    source = Path(esm_import.__file__).read_text()
    read = set(re.findall(r'"(mail\.[a-z.]+)"', source))
    testdata = set()
    for name in ("esm-platform.properties", "esm-mailtask.properties"):  # ESM's own exports
        text = (ROOT / "tests" / "testdata" / name).read_text()
        testdata |= {prop.key for prop in esm_import.parse_properties(text)}
    documented: set[str] = set()
    for row in table_after("## 10. From ESM's settings"):
        documented |= set(re.findall(r"`(mail\.[a-z.]+)`", row[0]))
    assert read - documented == set(), "properties import-esm reads that the guide omits"
    assert documented - read - testdata == set(), "properties the guide invents"
    assert testdata - documented == set(), "properties of the ESM samples the guide omits"


# -- PowerShell ---------------------------------------------------------------------------------

ALLOWED_CMDLETS = {
    "Install-Module",
    "Import-Module",
    "Connect-ExchangeOnline",
    "New-ServicePrincipal",
    "Get-ServicePrincipal",
    "Remove-ServicePrincipal",
    "Add-MailboxPermission",
    "Get-MailboxPermission",
    "Get-CASMailbox",
    "Set-CASMailbox",
    "Get-TransportConfig",
    "Format-List",
}
CMDLET_RE = re.compile(
    r"\b(?:Get|Set|New|Add|Remove|Connect|Disconnect|Install|Import|Format|Where|Select|"
    r"Update|Enable|Disable|Grant|Revoke)-[A-Z][A-Za-z]+\b"
)


def test_every_cmdlet_named_is_an_allowed_one() -> None:
    named = set(CMDLET_RE.findall(TEXT))
    assert named - ALLOWED_CMDLETS == set()
    # The ones the app-only setup cannot do without.
    assert {"Connect-ExchangeOnline", "New-ServicePrincipal", "Add-MailboxPermission"} <= named


def test_the_service_principal_is_created_with_the_enterprise_applications_object_id() -> None:
    block = next(b for b in code_blocks("powershell") if "New-ServicePrincipal" in b)
    assert re.search(r"New-ServicePrincipal -AppId \S+ -ObjectId \$ObjectId", block)
    assert re.search(r"\$ObjectId\s*=.*Enterprise applications", block)
    assert "-AccessRights FullAccess" in block and "Get-MailboxPermission" in block
    assert "-SmtpClientAuthenticationDisabled $false" in TEXT


# -- links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: {link}: no such file"
        if anchor:
            assert path.suffix == ".md", f"{doc.name}: {link}: anchor into a non-Markdown file"
            assert anchor in anchors(path), f"{doc.name}: {link}: no such heading"


def test_the_files_the_guide_loads_exist() -> None:
    for name in re.findall(r"`((?:alerts|dashboards)/[\w./-]+)`", TEXT):
        if name.endswith("/"):
            name = name.rstrip("/")
        assert (ROOT / name).exists(), name
    rules = yaml.safe_load(next(b for b in code_blocks("yaml") if "rule_files:" in b))
    assert rules["scrape_configs"][0]["job_name"] == "o365-mailbox-exporter"
    assert [Path(f).name for f in rules["rule_files"]] == ["o365-mailbox.rules.yml"]
