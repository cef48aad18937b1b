"""`import-esm FILE`: turn ESM platform settings or mailtask properties into a mailbox config.

Efecte ESM keeps its Microsoft 365 mail settings as Java properties (Platform Settings > Mail
Settings, or a mail task's properties):

    mail.store.oauth.enabled = true            (IMAP with OAuth2; older ESM: mail.oauth.enabled)
    mail.transport.oauth.enabled = true        (SMTP with OAuth2)
    mail.oauth.authorize.endpoint = https://login.microsoftonline.com/{tenantID}/oauth2/v2.0/authorize
    mail.oauth.client.id = {clientId}
    mail.oauth.scopes = https://outlook.office365.com/IMAP.AccessAsUser.All,https://outlook.office365.com/SMTP.Send

and, when present, the Jakarta Mail keys `mail.imap(s).host|port|user`, `mail.smtp(s).host|
port|user`, `mail.user`. The same values go into the exporter's config; a malformed endpoint,
a client ID that is not a GUID or a scope with a typo is reported as `FILE:LINE: KEY: PROBLEM`
(every problem at once, exit 2) and never copied. Passwords are never copied either.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import yaml

from exporter.admin.common import EXIT_OK, EXIT_USAGE
from exporter.config import (
    DEFAULT_IMAP,
    DEFAULT_SMTP,
    DELEGATED_SCOPES,
    PLACEHOLDER_USER,
    default_checks,
)

AUTHORIZE_FORM = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize"
# Entra ID authority hosts (public cloud, US government, China).
AUTHORITY_HOSTS = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.partner.microsoftonline.cn",
    "login.chinacloudapi.cn",
)
EXCHANGE_RESOURCES = ("https://outlook.office365.com", "https://outlook.office.com")
KNOWN_SCOPES = tuple(
    f"{resource}/{permission}"
    for resource in EXCHANGE_RESOURCES
    for permission in ("IMAP.AccessAsUser.All", "SMTP.Send", "POP.AccessAsUser.All")
)
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
IMAP_SCOPE = "IMAP.AccessAsUser.All"
SMTP_SCOPE = "SMTP.Send"

_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")
_PLACEHOLDER_RE = re.compile(r"\{[^}]*\}|<[^>]*>")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_BOOLEANS = {"true": True, "false": False}
_OAUTH_SWITCHES = ("mail.store.oauth.enabled", "mail.transport.oauth.enabled", "mail.oauth.enabled")
_PASSWORD_KEYS = ("mail.password", "mail.imap.password", "mail.imaps.password",
                  "mail.smtp.password", "mail.smtps.password")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Property:
    key: str
    value: str
    line: int
    raw: str = ""  # the logical line as written (leading blanks removed)
    last_line: int = 0  # its last physical line (a backslash continues a line)
    separator: bool = False  # written with `=` or `:` after the key


@dataclass
class Problems:
    file: str
    lines: list[tuple[int, str]] = field(default_factory=list)

    def at(self, prop: Property, problem: str) -> None:
        self.lines.append((prop.line, f"{self.file}:{prop.line}: {prop.key}: {problem}"))

    def missing(self, key: str, problem: str) -> None:
        self.lines.append((0, f"{self.file}: {key}: {problem}"))

    def absent(self, props: dict[str, Property], key: str, expected: str) -> None:
        """`key` is not there, or has no value (named once, at its line)."""
        prop = props.get(key)
        if prop is None:
            self.missing(key, f"missing; {expected}")
        elif not any(text.startswith(f"{self.file}:{prop.line}: {key}:") for _, text in self.lines):
            self.at(prop, f"has no value; {expected}")

    def sorted(self) -> list[str]:
        return [text for _line, text in sorted(self.lines, key=lambda item: item[0])]


# -- Java properties --------------------------------------------------------------------------
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _split_key(line: str) -> tuple[str, str, bool]:
    """Key and value of one logical line, as java.util.Properties.load reads them: the key ends
    at the first unescaped `=`, `:` or blank; blanks and one `=` or `:` separate the value.
    The flag says whether an `=` or `:` was there."""
    end = 0
    while end < len(line) and line[end] not in "=: \t\f":
        end += 2 if line[end] == "\\" else 1
    end = min(end, len(line))
    start = end
    while start < len(line) and line[start] in " \t\f":
        start += 1
    separator = start < len(line) and line[start] in "=:"
    if separator:
        start += 1
        while start < len(line) and line[start] in " \t\f":
            start += 1
    return _unescape(line[:end]), _unescape(line[start:]), separator


def parse_properties(text: str) -> list[Property]:
    """Java `.properties`: comments (# !), `key=value` / `key: value` / `key value`,
    backslash continuation lines and escapes; each property keeps its first line number."""
    properties: list[Property] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        start = index
        logical = lines[index].lstrip(" \t\f")
        index += 1
        if not logical or logical[0] in "#!":
            continue
        while _continues(logical) and index < len(lines):
            logical = logical[:-1] + lines[index].lstrip(" \t\f")
            index += 1
        if _continues(logical):
            logical = logical[:-1]
        key, value, separator = _split_key(logical)
        properties.append(Property(key, value, start + 1, logical, index, separator))
    return properties


def _reads_as_false(value: str) -> str:
    """What ESM makes of a switch that is not true/false. The value is quoted only when it is
    one short word (`yes`, `on`): a backslash continuation can pull the next line, a password
    line too, into a switch's value."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,12}", value):
        return f"ESM reads {value!r} as false"
    return "ESM reads anything but true as false"


def _looks_like_a_value(prop: Property) -> bool:
    """A line that holds a bare value (a GUID, a URL, a list of scopes) rather than a
    `key=value`: one word, no `=`, and a `:` only in `://`."""
    raw = prop.raw.strip()
    if not raw or any(blank in raw for blank in " \t\f") or "=" in raw:
        return False
    return ":" not in raw.replace("://", "") and not raw.startswith("mail.")


def attach_dangling_values(
    file: str, properties: list[Property]
) -> tuple[list[Property], list[str], Problems]:
    """Values written on the line after `key=`, as guides lay them out for width.

    java.util.Properties reads `mail.oauth.client.id=` and the GUID on the next line as two
    properties (the first empty); the value on the very next line is read as the key's value
    (with a note), one further away is named as a problem."""
    problems = Problems(file)
    notes: list[str] = []
    joined: list[Property] = []
    index = 0
    while index < len(properties):
        prop = properties[index]
        following = properties[index + 1] if index + 1 < len(properties) else None
        if (
            following is None
            or prop.value
            or not prop.separator
            or not _looks_like_a_value(following)
        ):
            joined.append(prop)
            index += 1
            continue
        if following.line == prop.last_line + 1:
            value = _unescape(following.raw.strip())
            joined.append(Property(prop.key, value, prop.line, prop.raw, following.last_line, True))
            notes.append(
                f"line {prop.line}: {prop.key} has its value on line {following.line}; read "
                "as one (a .properties reader takes only the key's own line: keep them on one)"
            )
        else:
            problems.at(
                prop,
                f"has no value; the value on line {following.line} looks like it belongs to it "
                "(put it right after the '=')",
            )
            joined.append(prop)
        index += 2
    return joined, notes, problems


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


# -- validation -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MailboxSnippet:
    name: str
    username: str | None
    tenant_id: str
    client_id: str
    authority_host: str | None  # None: Microsoft's public cloud (the default)
    scopes: tuple[str, ...]
    imap: tuple[str, int] | None  # None: the default endpoint
    smtp: tuple[str, int] | None
    smtp_login: bool
    notes: tuple[str, ...]


def _endpoint_problem(value: str) -> tuple[str | None, str | None, str | None]:
    """(problem, tenant, authority host) of an authorize endpoint."""
    expected = f"must look like {AUTHORIZE_FORM}"
    placeholder = _PLACEHOLDER_RE.search(value)
    if placeholder:
        return (
            f"still holds the placeholder {placeholder.group(0)}: put the Directory (tenant) ID "
            "from the app registration's Overview there",
            None,
            None,
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return expected, None, None
    if parts.scheme != "https":
        return f"must use https, like {AUTHORIZE_FORM}", None, None
    host = (parts.hostname or "").lower()
    if host not in AUTHORITY_HOSTS or port not in (None, 443) or parts.query or parts.fragment:
        return f"{expected} (Entra ID's authority host, no query)", None, None
    segments = parts.path.split("/")
    if len(segments) == 4 and segments[2:] == ["oauth2", "authorize"]:
        return (
            f"is the v1.0 endpoint; use the v2.0 one: {AUTHORIZE_FORM}",
            None,
            None,
        )
    if len(segments) == 5 and segments[2:4] == ["oauth2", "v2.0"] and segments[4] == "token":
        return (
            f"is the token endpoint; ESM wants the authorize endpoint: {AUTHORIZE_FORM}",
            None,
            None,
        )
    if len(segments) != 5 or segments[0] != "" or segments[2:] != ["oauth2", "v2.0", "authorize"]:
        return expected, None, None
    tenant = segments[1]
    if tenant.lower() in ("common", "organizations", "consumers"):
        return (
            f"uses the multi-tenant {tenant!r} endpoint; the exporter signs in to one tenant: "
            "put the Directory (tenant) ID there",
            None,
            None,
        )
    if not (_GUID_RE.fullmatch(tenant) or _DOMAIN_RE.fullmatch(tenant)):
        return (
            f"tenant {tenant!r} is neither a tenant ID (a GUID) nor a verified domain",
            None,
            None,
        )
    return None, tenant, None if host == AUTHORITY_HOSTS[0] else f"https://{host}"


def _scope_problem(scope: str) -> tuple[str | None, str | None]:
    """(problem, scope meant): the canonical scope, or the one a broken scope most likely meant
    (None when unclear, and for scopes MSAL adds itself)."""
    if scope.lower() in RESERVED_SCOPES:
        return None, None
    for known in KNOWN_SCOPES:
        if scope.casefold() == known.casefold():
            return None, known
    expected = f"unknown scope; expected {' or '.join(KNOWN_SCOPES[:2])}"
    if "://" not in scope:
        full = f"{EXCHANGE_RESOURCES[0]}/{scope.lstrip('/')}"
        close = difflib.get_close_matches(full, KNOWN_SCOPES, n=1, cutoff=0.85)
        if close:
            problem = f"needs its resource URL: {close[0]} (a bare scope fails with AADSTS70011)"
            return problem, close[0]
        return expected, None
    if scope.lower().startswith("https://graph.microsoft.com/"):
        meant = f"{EXCHANGE_RESOURCES[0]}/{scope.rsplit('/', 1)[-1]}"
        return f"is a Microsoft Graph scope; IMAP and SMTP take Exchange Online's: {meant}", meant
    close = difflib.get_close_matches(scope, KNOWN_SCOPES, n=1, cutoff=0.8)
    if close:
        return f"unknown scope; did you mean {close[0]}?", close[0]
    return expected, None


def _first(props: dict[str, Property], *keys: str) -> Property | None:
    for key in keys:
        if key in props and props[key].value:
            return props[key]
    return None


def _port(problems: Problems, prop: Property | None) -> int | None:
    if prop is None:
        return None
    if not prop.value.isdigit() or not 1 <= int(prop.value) <= 65535:
        problems.at(prop, "must be a port number between 1 and 65535")
        return None
    return int(prop.value)


def build_snippet(
    file: str, properties: list[Property], name: str | None
) -> tuple[MailboxSnippet | None, list[str]]:
    properties, notes, problems = attach_dangling_values(file, properties)
    props: dict[str, Property] = {}
    for prop in properties:
        props[prop.key] = prop  # the last one wins, as in java.util.Properties

    switches: dict[str, bool] = {}
    for key in _OAUTH_SWITCHES:
        if key in props:
            value = props[key].value.strip().lower()
            if value not in _BOOLEANS:
                problems.at(props[key], f"must be true or false ({_reads_as_false(value)})")
            switches[key] = _BOOLEANS.get(value, False)
    legacy = switches.get("mail.oauth.enabled", False)
    store = switches.get("mail.store.oauth.enabled", legacy)
    transport = switches.get("mail.transport.oauth.enabled", legacy)
    if switches and not store and not transport:
        notes.append(
            "OAuth is switched off in this file (mail.store.oauth.enabled / "
            "mail.transport.oauth.enabled): ESM still signs in with a password"
        )

    tenant = authority_host = None
    endpoint = props.get("mail.oauth.authorize.endpoint")
    if endpoint is None or not endpoint.value:
        problems.absent(props, "mail.oauth.authorize.endpoint", f"expected {AUTHORIZE_FORM}")
    else:
        problem, tenant, authority_host = _endpoint_problem(endpoint.value.strip())
        if problem:
            problems.at(endpoint, problem)

    client_id = ""
    client = props.get("mail.oauth.client.id")
    if client is None or not client.value:
        problems.absent(props, "mail.oauth.client.id", "the Application (client) ID")
    elif _PLACEHOLDER_RE.search(client.value):
        problems.at(client, "still holds a placeholder: put the Application (client) ID there")
    elif not _GUID_RE.fullmatch(client.value.strip()):
        problems.at(
            client,
            "must be the Application (client) ID, a GUID like "
            "46a662fb-0fed-4f72-a212-95216e5b0f28 (not the app's display name)",
        )
    else:
        client_id = client.value.strip().lower()

    scopes: list[str] = []
    scope_prop = props.get("mail.oauth.scopes")
    if scope_prop is None or not scope_prop.value:
        problems.absent(props, "mail.oauth.scopes", f"expected {','.join(DELEGATED_SCOPES)}")
    else:
        meant: set[str] = set()  # permissions asked for, typos included
        for scope in (s for s in re.split(r"[,\s]+", scope_prop.value.strip()) if s):
            problem, canonical = _scope_problem(scope)
            if problem:
                problems.at(scope_prop, f"{scope}: {problem}")
            elif canonical and canonical not in scopes:
                scopes.append(canonical)
            if canonical:
                meant.add(canonical.rsplit("/", 1)[-1])
        if IMAP_SCOPE not in meant:
            problems.at(
                scope_prop,
                f"has no {IMAP_SCOPE}: add {EXCHANGE_RESOURCES[0]}/{IMAP_SCOPE} "
                "(the exporter and ESM read the mailbox over IMAP)",
            )
        if transport and SMTP_SCOPE not in meant:
            problems.at(
                scope_prop,
                f"has no {SMTP_SCOPE} although mail.transport.oauth.enabled is true: add "
                f"{EXCHANGE_RESOURCES[0]}/{SMTP_SCOPE}",
            )

    user = _first(props, "mail.imaps.user", "mail.imap.user", "mail.user", "mail.smtp.user",
                  "mail.smtps.user")  # fmt: skip
    username = user.value.strip() if user else None
    if user is not None and username and "@" not in username:
        problems.at(user, "must be the mailbox's sign-in name (user@domain) for XOAUTH2")
    smtp_user = _first(props, "mail.smtp.user", "mail.smtps.user")
    if username and smtp_user and smtp_user.value.strip().casefold() != username.casefold():
        notes.append(
            f"IMAP and SMTP users differ ({username}, {smtp_user.value.strip()}); "
            f"the snippet checks {username}"
        )
    if user is None:
        notes.append(
            "no user key (mail.imap.user, mail.user): replace the placeholder username "
            "(--config.check refuses it until then)"
        )

    imap_host = _first(props, "mail.imaps.host", "mail.imap.host", "mail.host")
    imap_port = _port(problems, _first(props, "mail.imaps.port", "mail.imap.port"))
    imap: tuple[str, int] | None = None
    if imap_port is not None and imap_port != DEFAULT_IMAP.port:
        notes.append(
            f"ESM uses IMAP port {imap_port}; the exporter connects with implicit TLS on "
            f"{DEFAULT_IMAP.port}, as Exchange Online offers"
        )
    if imap_host is not None and imap_host.value.strip().lower() != DEFAULT_IMAP.host:
        imap = (imap_host.value.strip(), DEFAULT_IMAP.port)
    smtp_host = _first(props, "mail.smtp.host", "mail.smtps.host")
    smtp_port = _port(problems, _first(props, "mail.smtp.port", "mail.smtps.port"))
    smtp: tuple[str, int] | None = None
    host = smtp_host.value.strip() if smtp_host else DEFAULT_SMTP.host
    port = smtp_port or DEFAULT_SMTP.port
    if (host.lower(), port) != (DEFAULT_SMTP.host, DEFAULT_SMTP.port):
        smtp = (host, port)
    if any(key in props for key in _PASSWORD_KEYS):
        notes.append("a password key is present; it is not copied: put the password in the file")

    if problems.lines:
        return None, problems.sorted()
    assert tenant is not None
    mailbox_name = name or _name_from(username)
    return (
        MailboxSnippet(
            name=mailbox_name,
            username=username,
            tenant_id=tenant,
            client_id=client_id,
            authority_host=authority_host,
            scopes=tuple(scopes),
            imap=imap,
            smtp=smtp,
            smtp_login=transport,
            notes=tuple(notes),
        ),
        [],
    )


def _name_from(username: str | None) -> str:
    if not username:
        return "servicedesk"
    local = _NAME_RE.sub("-", username.partition("@")[0]).strip("-.")
    return local or "servicedesk"


# -- output -----------------------------------------------------------------------------------
def _scalar(value: str) -> str:
    """A YAML scalar: plain when it reads back as the same string, else double-quoted."""
    plain = re.fullmatch(r"[A-Za-z0-9_./@:-]+", value) is not None and not value.startswith(
        ("-", ":", "@")
    )
    if plain and yaml.safe_load(value) == value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def placeholder_username(tenant_id: str) -> str:
    """What the snippet says when the settings name no user; `--config.check` refuses it
    until it is replaced. In the tenant's domain when the tenant is given as one."""
    domain = tenant_id if _DOMAIN_RE.fullmatch(tenant_id) else "example.invalid"
    return f"{PLACEHOLDER_USER}@{domain}"


def render_yaml(snippet: MailboxSnippet, source: str, password_file: str | None) -> str:
    secret = password_file or f"/run/secrets/{snippet.name}"
    lines = [
        f"# Generated by o365-mailbox-exporter import-esm from {source}.",
        "# Add the mailbox to your config's `mailboxes:` list, or use this file as it is.",
    ]
    lines += [f"# Note: {note}." for note in snippet.notes]
    lines += [
        "mailboxes:",
        f"  - name: {_scalar(snippet.name)}",
        f"    username: {_scalar(snippet.username or placeholder_username(snippet.tenant_id))}"
        + ("" if snippet.username else "  # FILL IN the mailbox's sign-in name"),
        f"    tenant_id: {_scalar(snippet.tenant_id)}",
        f"    client_id: {_scalar(snippet.client_id)}",
        "    auth:",
        "      flow: password",
        f"      password_file: {_scalar(secret)}"
        + ("" if password_file else "  # the mailbox's password, chmod 600"),
    ]
    if tuple(snippet.scopes) != DELEGATED_SCOPES:
        lines.append("    scopes:")
        lines += [f"      - {_scalar(scope)}" for scope in snippet.scopes]
    if snippet.authority_host:
        lines.append(f"    authority_host: {_scalar(snippet.authority_host)}")
    if snippet.imap:
        lines.append(f"    imap: {{host: {_scalar(snippet.imap[0])}, port: {snippet.imap[1]}}}")
    if snippet.smtp:
        lines.append(f"    smtp: {{host: {_scalar(snippet.smtp[0])}, port: {snippet.smtp[1]}}}")
    if snippet.smtp_login:
        checks = [*default_checks(), "smtp_login"]
        lines.append(f"    checks: [{', '.join(checks)}]")
    return "\n".join(lines) + "\n"


def run(
    file: str,
    name: str | None,
    password_file: str | None,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    try:
        text = Path(file).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = Path(file).read_text(encoding="latin-1")  # Java's historical .properties encoding
    except OSError as err:
        stderr.write(f"{file}: cannot read: {err.strerror or err}\n")
        return EXIT_USAGE
    if name is not None and (not name or _NAME_RE.search(name)):
        stderr.write(f"--name {name!r}: must match [A-Za-z0-9_.-]+\n")
        return EXIT_USAGE
    snippet, problems = build_snippet(file, parse_properties(text), name)
    if snippet is None:
        for problem in problems:
            stderr.write(problem + "\n")
        return EXIT_USAGE
    for note in snippet.notes:
        stderr.write(f"note: {note}\n")
    stdout.write(render_yaml(snippet, Path(file).name, password_file))
    return EXIT_OK
