"""Typed, frozen configuration and its strict loader.

`load_config()` reads the YAML file as a node tree (`yaml.compose`), so that every problem can
name the file, the line and the dotted key. It validates everything, collects every problem and
raises one `ConfigError` whose lines are sorted by line number:

    config.yml:14: mailboxes[1].auth.flow: must be one of password, device_code, ...

Defaults live in one place (the `DEFAULT_*` constants and the dataclass defaults). A mailbox
inherits every key of `defaults` it does not set; the nested mappings `imap`, `smtp`, `folders`
and `auth` merge key by key. A problem in an inherited value is reported once, under its
`defaults.X` key and line.

`auth` merges key by key with one refinement, so that a mailbox can leave the shared setup: an
inherited auth key that the mailbox's flow does not use is dropped rather than reported (it
belongs to the defaults' flow), and so is an inherited secret source when the mailbox names the
other source of the pair itself (`password_env` in the mailbox replaces `password_file` from the
defaults). Keys written in the `defaults` section are still checked against the defaults' own
flow.

Secret sources are checked at load time (missing or unsafe file, unset variable, empty secret),
but only `read_secret()` hands out a secret, and no message ever contains one.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import re
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from exporter.errors import ConfigError, SecretError

FLOWS = ("password", "device_code", "client_secret", "client_certificate")
DELEGATED_SCOPES = (
    "https://outlook.office365.com/IMAP.AccessAsUser.All",
    "https://outlook.office365.com/SMTP.Send",
)
APP_ONLY_SCOPES = ("https://outlook.office365.com/.default",)
MICROSOFT_AUTHORITY_HOST = "https://login.microsoftonline.com"

DEFAULT_STATE_DIR = "./state"
DEFAULT_INTERVAL = "60s"
DEFAULT_TIMEOUT = "30s"
DEFAULT_OVERSIZED_BYTES = 25 * 1024 * 1024


def check_table() -> tuple[tuple[str, ...], dict[str, str], tuple[str, ...]]:
    """The checks' names in run order, the check each needs (the contract's `dependency`) and
    the default set, all from the one check table, `exporter.checks.CHECKS`."""
    from exporter.checks import CHECKS  # not at the top: exporter.checks imports this module

    names = tuple(CHECKS)
    needs = {name: spec.needs for name, spec in CHECKS.items() if spec.needs is not None}
    return names, needs, tuple(name for name, spec in CHECKS.items() if spec.default)


def default_checks() -> tuple[str, ...]:
    """The checks a mailbox runs when its config lists none."""
    return check_table()[2]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


DEFAULT_IMAP = Endpoint("outlook.office365.com", 993)
DEFAULT_SMTP = Endpoint("smtp.office365.com", 587)


@dataclass(frozen=True, slots=True)
class Folders:
    inbox: str = "INBOX"
    junk: str = "Junk Email"
    sent: str = "Sent Items"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    flow: str
    password_file: Path | None = None
    password_env: str | None = None
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    certificate_file: Path | None = None
    client_secret_expires: datetime.date | None = None

    @property
    def app_only(self) -> bool:
        """True for the client-credentials flows (no user, no refresh token)."""
        return self.flow in _APP_ONLY_FLOWS


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    name: str
    username: str
    tenant_id: str
    client_id: str
    auth: AuthConfig
    scopes: tuple[str, ...]
    authority_host: str  # no trailing slash
    imap: Endpoint
    smtp: Endpoint
    ca_file: Path | None
    folders: Folders
    checks: tuple[str, ...]  # in the check table's order
    interval: float  # seconds
    timeout: float  # seconds
    oversized_bytes: int
    # HTTPS to the authority goes through this proxy (else HTTPS_PROXY / NO_PROXY apply). Out
    # of the repr: it may hold the proxy's password.
    proxy_url: str | None = dataclasses.field(default=None, repr=False)

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    state_dir: Path
    mailboxes: tuple[MailboxConfig, ...]

    def mailbox(self, name: str) -> MailboxConfig:
        for mailbox in self.mailboxes:
            if mailbox.name == name:
                return mailbox
        raise KeyError(name)


# --- durations and sizes ---------------------------------------------------------------------

_DURATION_UNITS_MS = (
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
)
# Longer waits are no use to a monitor, and the scheduler's and watchdog's waits would overflow
# (threading.TIMEOUT_MAX is about 292 years; a 400-digit count does not even fit a float).
MAX_DURATION_SECONDS = 365 * 86_400
# Prometheus' grammar: units from largest to smallest, each at most once ("1h30m", not "30m1h").
_DURATION_RE = re.compile("".join(rf"(?:(\d+){unit})?" for unit, _ in _DURATION_UNITS_MS))


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as "500ms", "30s", "5m", "1h30m", "1d", "1w", "1y"."""
    if text == "0":
        return 0.0
    match = _DURATION_RE.fullmatch(text) if len(text) <= 64 else None
    if match is None or not any(match.groups()):
        raise ValueError(
            f'invalid duration "{text[:64]}": use numbers with units ms, s, m, h, d, w, y, '
            "largest first, like 30s, 5m or 1h30m"
        )
    millis = sum(
        int(count) * unit_ms
        for count, (_, unit_ms) in zip(match.groups(), _DURATION_UNITS_MS, strict=True)
        if count is not None
    )
    if millis > MAX_DURATION_SECONDS * 1000:  # also keeps the division below from overflowing
        raise ValueError(f'invalid duration "{text[:40]}": longer than a year')
    return millis / 1000


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_RE = re.compile(r"(\d+)\s*([A-Za-z]*)")


def parse_size(value: int | str) -> int:
    """Bytes in an int or in a string like "25MiB", "25MB", "512KiB", "1GB" or "123".

    KB, MB and GB count in 1000s, KiB, MiB and GiB in 1024s; units are case-insensitive.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid size {value!r}: must be an integer or a string like 25MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if len(value) <= 64 else None
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(
            f'invalid size "{value[:64]}": use bytes (26214400) or a number with a unit: '
            "KB, MB, GB (1000) or KiB, MiB, GiB (1024), like 25MiB"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


# --- secrets ---------------------------------------------------------------------------------

_APP_ONLY_FLOWS = frozenset({"client_secret", "client_certificate"})
# The auth keys each flow uses, the first ones being its secret sources (exactly one required).
_FLOW_SOURCES: dict[str, tuple[str, ...]] = {
    "password": ("password_file", "password_env"),
    "device_code": (),
    "client_secret": ("client_secret_file", "client_secret_env"),
    "client_certificate": ("certificate_file",),
}
_FLOW_KEYS: dict[str, tuple[str, ...]] = {
    **_FLOW_SOURCES,
    "client_secret": (*_FLOW_SOURCES["client_secret"], "client_secret_expires"),
}
_SOURCE_PARTNER = {
    "password_file": "password_env",
    "password_env": "password_file",
    "client_secret_file": "client_secret_env",
    "client_secret_env": "client_secret_file",
}
_PRIVATE_KEY_RE = re.compile(r"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----")


def read_secret(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> str:
    """The flow's secret: the password, the client secret, or the certificate file's PEM text.

    Device code has no secret (""). A file's trailing newlines are not part of the secret.
    Raises SecretError naming the key and the file or variable, never the secret.
    """
    environ = os.environ if environ is None else environ
    sources: tuple[tuple[str, Path | str | None], ...]
    if auth.flow == "device_code":
        return ""
    if auth.flow == "password":
        sources = (("password_file", auth.password_file), ("password_env", auth.password_env))
    elif auth.flow == "client_secret":
        sources = (
            ("client_secret_file", auth.client_secret_file),
            ("client_secret_env", auth.client_secret_env),
        )
    elif auth.flow == "client_certificate":
        sources = (("certificate_file", auth.certificate_file),)
    else:
        raise SecretError(f"flow: must be one of {', '.join(FLOWS)}")
    for key, source in sources:
        if source is None:
            continue
        try:
            if isinstance(source, Path):
                return _read_secret_file(source, certificate=key == "certificate_file")
            return _read_secret_env(source, environ)
        except SecretError as err:
            raise SecretError(f"{key}: {err}") from None
    raise SecretError(f"flow {auth.flow} needs {' or '.join(key for key, _ in sources)}")


def _read_secret_file(path: Path, *, certificate: bool) -> str:
    try:
        info = path.stat()
    except OSError as err:
        raise SecretError(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"{path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        what = "readable" if mode & 0o044 else "writable" if mode & 0o022 else "accessible"
        raise SecretError(
            f"{path} is {what} by group or others (mode {mode:04o}); run chmod 600 {path}"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise SecretError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SecretError(f"{path} is not UTF-8 text") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise SecretError(f"{path} is empty")
    if certificate:
        _check_certificate_pem(path, secret)
    return secret


def _check_certificate_pem(path: Path, text: str) -> None:
    needs = "it must hold the certificate and its private key (PEM)"
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise SecretError(f"{path} holds no CERTIFICATE block; {needs}")
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text:
        raise SecretError(
            f"{path} holds an encrypted private key; store it unencrypted (mode 0600)"
        )
    if _PRIVATE_KEY_RE.search(text) is None:
        raise SecretError(f"{path} holds no PRIVATE KEY block; {needs}")


def _read_secret_env(name: str, environ: Mapping[str, str]) -> str:
    value = environ.get(name)
    if value is None:
        raise SecretError(f"environment variable {name} is not set")
    if not value:
        raise SecretError(f"environment variable {name} is empty")
    return value


# --- the loader ------------------------------------------------------------------------------

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_NULL_TAG = "tag:yaml.org,2002:null"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_ROOT = "(root)"

_TOP_KEYS = ("state_dir", "defaults", "mailboxes")
_MAILBOX_KEYS = (
    "name",
    "username",
    "tenant_id",
    "client_id",
    "auth",
    "scopes",
    "authority_host",
    "imap",
    "smtp",
    "ca_file",
    "proxy_url",
    "folders",
    "checks",
    "interval",
    "timeout",
    "oversized_bytes",
)
_AUTH_KEYS = (
    "flow",
    "password_file",
    "password_env",
    "client_secret_file",
    "client_secret_env",
    "certificate_file",
    "client_secret_expires",
)
_GROUP_KEYS = {
    "imap": ("host", "port"),
    "smtp": ("host", "port"),
    "folders": ("inbox", "junk", "sent"),
    "auth": _AUTH_KEYS,
}
_INLINE_SECRETS = {
    "password": "secrets may not be inline; use password_file or password_env",
    "client_secret": "secrets may not be inline; use client_secret_file or client_secret_env",
}
# Keys of a nested mapping written at the mailbox level, and where they go.
_GROUP_MEMBERS = {
    **{key: "belongs under auth:" for key in _AUTH_KEYS},
    **{key: "belongs under imap: or smtp:" for key in ("host", "port")},
    **{key: "belongs under folders:" for key in ("inbox", "junk", "sent")},
}
_PER_MAILBOX_ONLY = {
    key: "may not be set in defaults; set it in each mailbox" for key in ("name", "username")
}
_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_USERNAME_RE = re.compile(rf"[^@\s]+@{_LABEL}(?:\.{_LABEL})*")
_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}\.)+[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?")
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?|[0-9A-Fa-f]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_DURATION_EXPECTED = "must be a duration like 30s, 5m or 1h"
_SIZE_EXPECTED = "must be a size like 25MiB or 26214400"


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the config file; raise ConfigError listing every problem."""
    file = os.fspath(path)
    try:
        raw = Path(file).read_bytes()
    except OSError as err:
        raise ConfigError([f"{file}: cannot read: {err.strerror or err}"]) from None
    root = _compose(file, raw)
    loader = _Loader(
        file=file,
        config_dir=Path(os.path.abspath(file)).parent,
        environ=os.environ if environ is None else environ,
    )
    state_dir, mailboxes = loader.load(root)
    if loader.problems:
        raise ConfigError(loader.problems.sorted())
    return Config(path=Path(file), state_dir=state_dir, mailboxes=mailboxes)


def _compose(file: str, raw: bytes) -> Node | None:
    """The YAML node tree; a syntax error becomes `FILE:LINE: yaml: PROBLEM`."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError([f"{file}:{line}: yaml: not UTF-8 text"]) from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = _yaml_problem(err)
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        problem = f"unacceptable character #x{err.character:04x}: {err.reason}"
    except yaml.YAMLError as err:
        line, problem = 1, str(err).splitlines()[0]
    except RecursionError:
        line, problem = 1, "nested too deeply"
    raise ConfigError([f"{file}:{line}: yaml: {problem}"])


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem on one line, with its context where that helps."""
    if err.problem is None:
        return err.context or "invalid YAML"
    if err.context is None:
        return err.problem
    if err.problem.startswith("but "):  # "expected a single document ..., but found another"
        return f"{err.context}, {err.problem}"
    return f"{err.problem} ({err.context})"


def _line(node: Node) -> int:
    return node.start_mark.line + 1 if node.start_mark is not None else 1


@dataclass(frozen=True, slots=True)
class _Field:
    """A value in the file: its dotted key, the line of the key (or list item), its node."""

    key: str
    line: int
    node: Node

    @property
    def rank(self) -> int:
        """2 when set in the mailbox itself, 1 when inherited from `defaults`."""
        return 1 if self.key.startswith("defaults.") else 2

    @property
    def text(self) -> str | None:
        """The value when the node is a YAML string (possibly empty), else None."""
        node = self.node
        if isinstance(node, ScalarNode) and node.tag == _STR_TAG:
            return str(node.value)
        return None


@dataclass(frozen=True, slots=True)
class _Section:
    """A mailbox (or the defaults) after key checks: its fields and nested mappings."""

    key: str  # "defaults" or "mailboxes[N]"
    line: int
    fields: dict[str, _Field]
    groups: dict[str, dict[str, _Field]]  # imap, smtp, folders, auth

    def get(self, key: str) -> _Field | None:
        return self.fields.get(key)


_NO_DEFAULTS = _Section("defaults", 1, {}, {})


class _Problems:
    """Problem lines, deduplicated (an inherited default is checked once per mailbox)."""

    def __init__(self, file: str) -> None:
        self._file = file
        self._found: list[tuple[int, str]] = []
        self._seen: set[str] = set()

    def add(self, line: int, key: str, problem: str) -> None:
        text = f"{self._file}:{line}: {key}: {problem}"
        if text not in self._seen:
            self._seen.add(text)
            self._found.append((line, text))

    def at(self, field: _Field, problem: str) -> None:
        self.add(field.line, field.key, problem)

    def __bool__(self) -> bool:
        return bool(self._found)

    def sorted(self) -> list[str]:
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]


class _Loader:
    """Walks the node tree; every reader records its problems and returns a fallback value."""

    def __init__(self, *, file: str, config_dir: Path, environ: Mapping[str, str]) -> None:
        self.problems = _Problems(file)
        self._config_dir = config_dir
        self._environ = environ
        self._constructor = SafeConstructor()

    # --- the document ---

    def load(self, root: Node | None) -> tuple[Path, tuple[MailboxConfig, ...]]:
        state_dir = self._resolve(DEFAULT_STATE_DIR)
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
            self.problems.add(1, _ROOT, "must be a mapping")
            return state_dir, ()
        root_field = _Field(_ROOT, _line(root), root)
        entries = self._mapping(root_field)
        if entries is None:
            return state_dir, ()
        fields = self._known(entries, _TOP_KEYS)
        if "state_dir" in fields:
            state_dir = self._state_dir(fields["state_dir"])

        defaults = _NO_DEFAULTS
        defaults_field = fields.get("defaults")
        if defaults_field is not None and not _is_null(defaults_field.node):
            defaults = self._section(defaults_field, in_defaults=True) or _NO_DEFAULTS
            # Check what the defaults say on their own, once, even where every mailbox overrides.
            self._mailbox(defaults, _NO_DEFAULTS, standalone=True)

        mailboxes: list[MailboxConfig] = []
        first_line_of_name: dict[str, int] = {}
        for item in self._mailbox_items(root_field, fields.get("mailboxes")):
            section = self._section(item, in_defaults=False)
            if section is None:
                continue
            mailbox = self._mailbox(section, defaults, standalone=False)
            name_field = section.get("name")
            if name_field is not None and mailbox.name:
                if mailbox.name in first_line_of_name:
                    first = first_line_of_name[mailbox.name]
                    self.problems.at(
                        name_field, f'duplicate name "{mailbox.name}" (first at line {first})'
                    )
                else:
                    first_line_of_name[mailbox.name] = name_field.line
            mailboxes.append(mailbox)
        return state_dir, tuple(mailboxes)

    def _state_dir(self, field: _Field) -> Path:
        text = self._string(field)
        if text is None:
            return self._resolve(DEFAULT_STATE_DIR)
        path = self._resolve(text)
        if path.exists() and not path.is_dir():
            self.problems.at(field, f"{path} exists and is not a directory")
        return path

    def _mailbox_items(self, root: _Field, field: _Field | None) -> list[_Field]:
        if field is None:
            self.problems.add(root.line, "mailboxes", "is required")
            return []
        if _is_null(field.node):
            self.problems.at(field, "must list at least one mailbox")
            return []
        items = self._sequence(field, "must be a list of mailboxes")
        if items is not None and not items:
            self.problems.at(field, "must list at least one mailbox")
        return items or []

    def _section(self, field: _Field, *, in_defaults: bool) -> _Section | None:
        entries = self._mapping(field)
        if entries is None:
            return None
        special = {**_INLINE_SECRETS, **(_PER_MAILBOX_ONLY if in_defaults else {})}
        fields = self._known(entries, _MAILBOX_KEYS, {**_GROUP_MEMBERS, **special})
        groups: dict[str, dict[str, _Field]] = {}
        for group, keys in _GROUP_KEYS.items():
            group_field = fields.get(group)
            if group_field is None:
                continue
            group_entries = self._mapping(group_field)
            if group_entries is not None:
                inline = _INLINE_SECRETS if group == "auth" else {}
                misplaced = {
                    key: f"belongs to the mailbox itself, not under {group}:"
                    for key in _MAILBOX_KEYS
                    if key not in keys
                }
                groups[group] = self._known(group_entries, keys, {**misplaced, **inline})
        return _Section(field.key, field.line, fields, groups)

    # --- one mailbox ---

    def _mailbox(self, own: _Section, defaults: _Section, *, standalone: bool) -> MailboxConfig:
        """The mailbox `own` on top of `defaults`.

        `standalone` checks the defaults section on its own: no key is required there, and
        checks that weigh one key against another (timeout against interval, scopes against
        the flow) wait for the mailboxes that inherit the values.
        """

        def pick(key: str) -> _Field | None:
            return own.get(key) or defaults.get(key)

        def pick_group(group: str) -> dict[str, _Field]:
            return {**defaults.groups.get(group, {}), **own.groups.get(group, {})}

        def required(key: str, check: Callable[[str], str | None]) -> str:
            field = pick(key)
            if field is None:
                if not standalone:
                    self.problems.add(own.line, f"{own.key}.{key}", "is required")
                return ""
            return self._checked_string(field, check) or ""

        name = required("name", _name_problem)
        username = required("username", _username_problem)
        tenant_id = required("tenant_id", _tenant_problem)
        client_id = required("client_id", _client_id_problem)
        auth, flow_field = self._auth(own, defaults, standalone=standalone)
        scopes = self._scopes(own, pick("scopes"), auth.flow if not standalone else "", flow_field)
        authority_host = self._authority_host(pick("authority_host"))
        imap = self._endpoint(pick_group("imap"), DEFAULT_IMAP)
        smtp = self._endpoint(pick_group("smtp"), DEFAULT_SMTP)
        ca_file_field = pick("ca_file")
        ca_file = self._ca_file(ca_file_field) if ca_file_field is not None else None
        proxy_url_field = pick("proxy_url")
        proxy_url = (
            self._checked_string(proxy_url_field, _proxy_url_problem)
            if proxy_url_field is not None
            else None
        )
        folders = self._folders(pick_group("folders"))
        checks = self._checks(pick("checks"))
        interval_field, timeout_field = pick("interval"), pick("timeout")
        interval = self._duration(interval_field, DEFAULT_INTERVAL)
        timeout = self._duration(timeout_field, DEFAULT_TIMEOUT)
        if not standalone and interval is not None and timeout is not None:
            self._check_timeout(interval_field, interval, timeout_field, timeout)
        oversized_bytes = self._size(pick("oversized_bytes"), DEFAULT_OVERSIZED_BYTES)
        return MailboxConfig(
            name=name,
            username=username,
            tenant_id=tenant_id,
            client_id=client_id,
            auth=auth,
            scopes=scopes,
            authority_host=authority_host,
            imap=imap,
            smtp=smtp,
            ca_file=ca_file,
            folders=folders,
            checks=checks,
            interval=interval[0] if interval is not None else 0.0,
            timeout=timeout[0] if timeout is not None else 0.0,
            oversized_bytes=oversized_bytes,
            proxy_url=proxy_url,
        )

    def _auth(
        self, own: _Section, defaults: _Section, *, standalone: bool
    ) -> tuple[AuthConfig, _Field | None]:
        own_auth = own.groups.get("auth", {})
        default_auth = defaults.groups.get("auth", {})
        flow_field = own_auth.get("flow") or default_auth.get("flow")
        flow = ""
        if flow_field is not None:
            text = self._string(flow_field)
            if text is not None and text not in FLOWS:
                self.problems.at(flow_field, f"must be one of {', '.join(FLOWS)}")
            elif text is not None:
                flow = text
        elif not standalone:
            auth_field = own.get("auth") or defaults.get("auth")
            if auth_field is None:
                self.problems.add(own.line, f"{own.key}.auth", "is required")
            elif "auth" in own.groups or "auth" in defaults.groups:  # else: not a mapping
                line = own.fields["auth"].line if "auth" in own.fields else own.line
                self.problems.add(line, f"{own.key}.auth.flow", "is required")

        merged = dict(own_auth)
        for key, field in default_auth.items():
            belongs_elsewhere = bool(flow) and key != "flow" and key not in _FLOW_KEYS[flow]
            replaced = _SOURCE_PARTNER.get(key) in own_auth
            if key not in merged and not belongs_elsewhere and not replaced:
                merged[key] = field

        if flow:
            for key, field in merged.items():
                if key != "flow" and key not in _FLOW_KEYS[flow]:
                    self.problems.at(field, f"not used by flow {flow}")
            sources = _FLOW_SOURCES[flow]
            present = sorted((merged[key] for key in sources if key in merged), key=_by_line)
            if sources and not present and not standalone:
                line = own.fields["auth"].line if "auth" in own.fields else own.line
                self.problems.add(
                    line, f"{own.key}.auth", f"flow {flow} needs {' or '.join(sources)}"
                )
            if len(present) > 1:
                self.problems.at(present[-1], f"only one of {' and '.join(sources)} may be set")

        def used(key: str) -> _Field | None:
            field = merged.get(key)
            return field if field is not None and (not flow or key in _FLOW_KEYS[flow]) else None

        auth = AuthConfig(
            flow=flow,
            password_file=self._secret_file(used("password_file")),
            password_env=self._secret_env(used("password_env")),
            client_secret_file=self._secret_file(used("client_secret_file")),
            client_secret_env=self._secret_env(used("client_secret_env")),
            certificate_file=self._secret_file(used("certificate_file"), certificate=True),
            client_secret_expires=self._date(used("client_secret_expires")),
        )
        return auth, flow_field

    def _secret_file(self, field: _Field | None, *, certificate: bool = False) -> Path | None:
        if field is None:
            return None
        text = self._string(field)
        if text is None:
            return None
        path = self._resolve(text)
        try:
            _read_secret_file(path, certificate=certificate)
        except SecretError as err:
            self.problems.at(field, str(err))
        return path

    def _secret_env(self, field: _Field | None) -> str | None:
        if field is None:
            return None
        name = self._string(field)
        if name is None:
            return None
        if _ENV_NAME_RE.fullmatch(name) is None:
            self.problems.at(field, "must be an environment variable name like MAILBOX_PASSWORD")
            return name
        try:
            _read_secret_env(name, self._environ)
        except SecretError as err:
            self.problems.at(field, str(err))
        return name

    def _date(self, field: _Field | None) -> datetime.date | None:
        if field is None:
            return None
        node = field.node
        try:
            if isinstance(node, ScalarNode) and node.tag == _TIMESTAMP_TAG:
                value = self._constructor.construct_yaml_timestamp(node)
                if not isinstance(value, datetime.datetime):
                    return value
            elif field.text is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", field.text):
                return datetime.date.fromisoformat(field.text)
        except ValueError:
            pass
        self.problems.at(field, "must be a date like 2026-03-31")
        return None

    def _scopes(
        self, own: _Section, field: _Field | None, flow: str, flow_field: _Field | None
    ) -> tuple[str, ...]:
        app_only = flow in _APP_ONLY_FLOWS
        if field is None:
            return APP_ONLY_SCOPES if app_only else DELEGATED_SCOPES
        items = self._strings(field)
        if items is None:
            return ()
        if not items:
            self.problems.at(field, "must list at least one scope")
        scopes: list[str] = []
        for item, scope in items:
            problem = _scope_problem(scope)
            if problem is None and app_only and not scope.endswith("/.default"):
                problem = (
                    f"flow {flow} is app-only and takes only a /.default scope "
                    f"like {APP_ONLY_SCOPES[0]}"
                )
                if item.rank < (flow_field.rank if flow_field is not None else 0):
                    problem += f" ({own.key} uses flow {flow})"
            if problem is None and scope in scopes:
                problem = "duplicate scope"
            if problem is not None:
                self.problems.at(item, problem)
            scopes.append(scope)
        return tuple(scopes)

    def _authority_host(self, field: _Field | None) -> str:
        if field is None:
            return MICROSOFT_AUTHORITY_HOST
        text = self._string(field)
        if text is None:
            return MICROSOFT_AUTHORITY_HOST
        host = text.rstrip("/")
        problem = _authority_host_problem(host)
        if problem is not None:
            self.problems.at(field, problem)
        return host

    def _endpoint(self, fields: dict[str, _Field], default: Endpoint) -> Endpoint:
        host, port = default.host, default.port
        if "host" in fields:
            host = self._checked_string(fields["host"], _host_problem) or host
        if "port" in fields:
            value = self._integer(fields["port"])
            if value is not None and not 1 <= value <= 65535:
                self.problems.at(fields["port"], "must be between 1 and 65535")
            elif value is not None:
                port = value
        return Endpoint(host, port)

    def _ca_file(self, field: _Field) -> Path | None:
        text = self._string(field)
        if text is None:
            return None
        path = self._resolve(text)
        try:
            data = path.read_bytes()
        except OSError as err:
            self.problems.at(field, f"cannot read {path}: {err.strerror}")
        else:
            if b"-----BEGIN CERTIFICATE-----" not in data:
                self.problems.at(field, f"{path} holds no PEM certificate (BEGIN CERTIFICATE)")
        return path

    def _folders(self, fields: dict[str, _Field]) -> Folders:
        default = Folders()
        return Folders(
            inbox=self._optional_string(fields.get("inbox")) or default.inbox,
            junk=self._optional_string(fields.get("junk")) or default.junk,
            sent=self._optional_string(fields.get("sent")) or default.sent,
        )

    def _checks(self, field: _Field | None) -> tuple[str, ...]:
        names, needs, default = check_table()
        if field is None:
            return default
        items = self._strings(field)
        if items is None:
            return default
        if not items:
            self.problems.at(field, "must list at least one check")
        chosen: dict[str, _Field] = {}
        all_known = True
        for item, check in items:
            if check not in names:
                all_known = False
                self.problems.at(
                    item,
                    f'unknown check "{check}"; must be one of {", ".join(names)}'
                    + _did_you_mean(check, names),
                )
            elif check in chosen:
                self.problems.at(
                    item, f'duplicate check "{check}" (first at line {chosen[check].line})'
                )
            else:
                chosen[check] = item
        if all_known:  # a misspelt check already explains a missing dependency
            for check, needed in needs.items():
                if check in chosen and needed not in chosen:
                    self.problems.at(field, f"{check} needs {needed}")
        return tuple(check for check in names if check in chosen)

    def _duration(self, field: _Field | None, default: str) -> tuple[float, str] | None:
        """(seconds, text as written), or None when invalid."""
        if field is None:
            return parse_duration(default), default
        text = field.text
        try:
            seconds = parse_duration(text) if text is not None else None
        except ValueError:
            seconds = None
        if text is None or seconds is None:
            match = _DURATION_RE.fullmatch(text or "")
            too_long = match is not None and any(match.groups())
            self.problems.at(field, "must be at most 1y" if too_long else _not_a_duration(field))
            return None
        if seconds <= 0:
            self.problems.at(field, "must be greater than 0")
            return None
        return seconds, text

    def _check_timeout(
        self,
        interval_field: _Field | None,
        interval: tuple[float, str],
        timeout_field: _Field | None,
        timeout: tuple[float, str],
    ) -> None:
        if timeout[0] <= interval[0]:
            return
        # Blame the value set closest to the mailbox; the other one is what it conflicts with.
        interval_rank = interval_field.rank if interval_field is not None else 0
        if timeout_field is not None and timeout_field.rank >= interval_rank:
            self.problems.at(timeout_field, f"must not exceed interval ({interval[1]})")
        elif interval_field is not None:
            self.problems.at(interval_field, f"must not be shorter than timeout ({timeout[1]})")

    def _size(self, field: _Field | None, default: int) -> int:
        if field is None:
            return default
        node, text = field.node, field.text
        if text is not None:
            try:
                value = parse_size(text)
            except ValueError:
                self.problems.at(field, _SIZE_EXPECTED)
                return default
        elif isinstance(node, ScalarNode) and node.tag == _INT_TAG:
            value = self._integer(field) or 0
        else:
            self.problems.at(field, _SIZE_EXPECTED)
            return default
        if value <= 0:
            self.problems.at(field, "must be greater than 0")
            return default
        return value

    # --- generic readers ---

    def _mapping(self, field: _Field) -> dict[str, _Field] | None:
        if not isinstance(field.node, MappingNode):
            self.problems.at(field, "must be a mapping")
            return None
        return self._entries(field.node, field.key, frozenset())

    def _entries(
        self, node: MappingNode, prefix: str, merging: frozenset[int]
    ) -> dict[str, _Field]:
        """The mapping's keys; YAML merge keys (`<<: *anchor`) count, own keys win."""
        own: dict[str, _Field] = {}
        merged: dict[str, _Field] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for source in self._merge_sources(key_node, value_node, prefix):
                    if id(source) not in merging:
                        inherited = self._entries(source, prefix, merging | {id(node)})
                        merged = {**inherited, **merged}
                continue
            if not isinstance(key_node, ScalarNode):
                self.problems.add(_line(key_node), prefix, "keys must be strings")
                continue
            name = str(key_node.value)
            key = name if prefix == _ROOT else f"{prefix}.{name}"
            if name in own:
                first = own[name].line
                self.problems.add(_line(key_node), key, f"duplicate key (first at line {first})")
                continue
            own[name] = _Field(key, _line(key_node), value_node)
        return {**merged, **own}

    def _merge_sources(self, key_node: Node, value: Node, prefix: str) -> list[MappingNode]:
        if isinstance(value, MappingNode):
            return [value]
        if isinstance(value, SequenceNode) and all(
            isinstance(item, MappingNode) for item in value.value
        ):
            return list(value.value)
        key = "<<" if prefix == _ROOT else f"{prefix}.<<"
        self.problems.add(_line(key_node), key, "must be a mapping or a list of mappings")
        return []

    def _known(
        self,
        entries: dict[str, _Field],
        allowed: Collection[str],
        special: Mapping[str, str] | None = None,
    ) -> dict[str, _Field]:
        """The entries whose keys are allowed; the others are reported."""
        known: dict[str, _Field] = {}
        for name, field in entries.items():
            if special is not None and name in special:
                self.problems.at(field, special[name])
            elif name not in allowed:
                self.problems.at(field, "unknown key" + _did_you_mean(name, allowed))
            else:
                known[name] = field
        return known

    def _sequence(self, field: _Field, expected: str) -> list[_Field] | None:
        node = field.node
        if not isinstance(node, SequenceNode):
            self.problems.at(field, expected)
            return None
        return [
            _Field(f"{field.key}[{index}]", _line(item), item)
            for index, item in enumerate(node.value)
        ]

    def _strings(self, field: _Field) -> list[tuple[_Field, str]] | None:
        """A list of non-empty strings; items that are not are reported and left out."""
        items = self._sequence(field, "must be a list of strings")
        if items is None:
            return None
        strings: list[tuple[_Field, str]] = []
        for item in items:
            text = self._string(item)
            if text is not None:
                strings.append((item, text))
        return strings

    def _string(self, field: _Field) -> str | None:
        text = field.text
        if text is None:
            self.problems.at(field, "must be a string")
        elif not text.strip():
            self.problems.at(field, "must not be empty")
            return None
        return text

    def _optional_string(self, field: _Field | None) -> str | None:
        return self._string(field) if field is not None else None

    def _checked_string(self, field: _Field, check: Callable[[str], str | None]) -> str | None:
        text = self._string(field)
        if text is None:
            return None
        problem = check(text)
        if problem is not None:
            self.problems.at(field, problem)
        return text

    def _integer(self, field: _Field) -> int | None:
        node = field.node
        if isinstance(node, ScalarNode) and node.tag == _INT_TAG:
            try:
                return self._constructor.construct_yaml_int(node)
            except ValueError:
                pass
        self.problems.at(field, "must be an integer")
        return None

    def _resolve(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self._config_dir / path


# --- value checks: None when fine, else the problem ------------------------------------------


def _name_problem(name: str) -> str | None:
    if _NAME_RE.fullmatch(name) is None:
        return "must match [A-Za-z0-9_.-]+ (it becomes the mailbox label)"
    return None


# What `import-esm` writes when the properties name no user: it must not pass as a real one.
PLACEHOLDER_USER = "CHANGE-ME"


def _username_problem(username: str) -> str | None:
    if _USERNAME_RE.fullmatch(username) is None:
        return "must look like user@domain"
    local, _, domain = username.rpartition("@")
    if local.casefold() == PLACEHOLDER_USER.casefold() or domain.casefold().endswith(".invalid"):
        return (
            f"{username} is a placeholder (import-esm writes one when the ESM settings name no "
            "user): put the mailbox's sign-in name there, like servicedesk@contoso.com"
        )
    return None


def _not_a_duration(field: _Field) -> str:
    """The problem of a duration that is none, repeating what was written when it is a value."""
    node = field.node
    if not isinstance(node, ScalarNode) or _is_null(node):
        return _DURATION_EXPECTED
    written = str(node.value)
    if len(written) > 40:
        written = written[:40] + "..."
    return f"{written!r} is not a duration (use 30s, 5m, 1h)"


def _tenant_problem(tenant_id: str) -> str | None:
    if _GUID_RE.fullmatch(tenant_id) or _DOMAIN_RE.fullmatch(tenant_id):
        return None
    return "must be the tenant's GUID or a domain name like contoso.onmicrosoft.com"


def _client_id_problem(client_id: str) -> str | None:
    if _GUID_RE.fullmatch(client_id) is None:
        return "must be a GUID: the app registration's Application (client) ID"
    return None


def _host_problem(host: str) -> str | None:
    if _HOST_RE.fullmatch(host) is None:
        return "must be a host name like outlook.office365.com (no scheme, path or port)"
    return None


def _scope_problem(scope: str) -> str | None:
    if scope.lower() in _RESERVED_SCOPES:
        return "is added by MSAL; remove it"
    if any(char.isspace() for char in scope):
        return "must be a single scope; list each scope as its own item"
    if "://" not in scope:
        full = f"https://outlook.office365.com/{scope.lstrip('/')}"
        return f"needs its resource URL: use {full} (a bare scope fails with AADSTS70011)"
    return None


def _authority_host_problem(url: str) -> str | None:
    expected = (
        f"must be https://host or https://host:port without a path, like {MICROSOFT_AUTHORITY_HOST}"
    )
    try:
        parts = urlsplit(url)
        bad_port = parts.port == 0  # .port raises ValueError for a malformed or too large port
    except ValueError:
        return expected
    if bad_port or parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        return expected
    if parts.path:
        return f"{expected}; the tenant goes in tenant_id"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return expected
    return None


def _proxy_url_problem(url: str) -> str | None:
    """http(s)://[user:password@]host:port and nothing else. Never quotes the value: it may
    hold a password."""
    expected = "must be http://host:port or https://host:port (optionally user:password@host)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a malformed or too large port
    except ValueError:
        return expected
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return expected
    if _HOST_RE.fullmatch(parts.hostname) is None:
        return expected
    if port is None or port == 0:
        return f"{expected}: the port is missing"
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"{expected}: no path"
    return None


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _by_line(field: _Field) -> int:
    return field.line
