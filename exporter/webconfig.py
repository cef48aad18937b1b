"""`--web.config.file`: TLS, client certificates and basic auth for the HTTP endpoints, in the
format of the Prometheus exporter-toolkit, so the file SREs already have works as it is:

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12                             # TLS10..TLS13
    basic_auth_users:
      prometheus: $2y$10$...                         # bcrypt hashes (htpasswd -nBC 10)

Python's TLS stack cannot request a client certificate without verifying it, so the toolkit's
`RequestClientCert` and `RequireAnyClientCert` are refused with that explanation rather than
silently weakened or strengthened.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.errors import ConfigError

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
}
_TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}


@dataclass(frozen=True)
class WebConfig:
    tls: ssl.SSLContext | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash


def load_web_config(path: str | Path) -> WebConfig:
    """Parse and validate the file; raises ConfigError listing every problem."""
    file = str(path)
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError([f"{file}: cannot read: {err.strerror}"]) from err
    except yaml.YAMLError as err:
        raise ConfigError([f"{file}: yaml: {' '.join(str(err).split())}"]) from err
    document = document or {}
    problems: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{file}: {key}: {text}")

    if not isinstance(document, dict):
        raise ConfigError([f"{file}: (root): must be a mapping"])
    for key in sorted(set(document) - _TOP_KEYS):
        problem(str(key), "unknown key")
    users: dict[str, bytes] = {}
    for user, hashed in (document.get("basic_auth_users") or {}).items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problem(f"basic_auth_users.{user}", "must be a bcrypt hash ($2y$...)")
        else:
            users[str(user)] = hashed.encode()
    tls = None
    section = document.get("tls_server_config")
    if section is not None:
        tls = _tls_context(section, Path(path).parent, problem)
    if problems:
        raise ConfigError(problems)
    return WebConfig(tls=tls, basic_auth_users=users)


def _tls_context(
    section: Any, base: Path, problem: Callable[[str, str], None]
) -> ssl.SSLContext | None:
    if not isinstance(section, dict):
        problem("tls_server_config", "must be a mapping")
        return None
    for key in sorted(set(section) - _TLS_KEYS):
        problem(f"tls_server_config.{key}", "unknown key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def path_of(key: str) -> Path | None:
        value = section.get(key)
        if value is None:
            return None
        candidate = Path(str(value))
        candidate = candidate if candidate.is_absolute() else base / candidate
        if not candidate.is_file():
            problem(f"tls_server_config.{key}", f"{candidate}: no such file")
            return None
        return candidate

    cert, key = path_of("cert_file"), path_of("key_file")
    if section.get("cert_file") is None or section.get("key_file") is None:
        problem("tls_server_config", "cert_file and key_file are both required")
    elif cert is not None and key is not None:
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as err:
            problem("tls_server_config.cert_file", f"cannot load certificate and key: {err}")
    auth_type = section.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH_TYPES:
        problem(
            "tls_server_config.client_auth_type",
            "must be one of "
            + ", ".join(CLIENT_AUTH_TYPES)
            + " (RequestClientCert and RequireAnyClientCert cannot be honoured by Python's TLS)",
        )
    else:
        context.verify_mode = CLIENT_AUTH_TYPES[auth_type]
    client_ca = path_of("client_ca_file")
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
    elif auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        problem("tls_server_config.client_ca_file", f"required with {auth_type}")
    for bound in ("min_version", "max_version"):
        version = section.get(bound)
        if version is None:
            continue
        if version not in TLS_VERSIONS:
            problem(f"tls_server_config.{bound}", "must be one of " + ", ".join(TLS_VERSIONS))
        elif bound == "min_version":
            context.minimum_version = TLS_VERSIONS[version]
        else:
            context.maximum_version = TLS_VERSIONS[version]
    return context


class BasicAuth:
    """WSGI middleware: HTTP basic auth against bcrypt hashes, with verified pairs cached
    (bcrypt is deliberately slow; a scrape every few seconds must not cost 100 ms each)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], users: dict[str, bytes]) -> None:
        self.app = app
        self.users = users
        self._verified: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def _allowed(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = (user, hashlib.sha256(hashed + b"\0" + password.encode()).digest())
        with self._lock:
            if key in self._verified:
                return True
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            self._verified.add(key)
        return True

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if self._allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return self.app(environ, start_response)
        body = b"Unauthorized\n"
        start_response(
            "401 Unauthorized",
            [
                ("WWW-Authenticate", 'Basic realm="o365-mailbox-exporter"'),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]
