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

Every key the toolkit accepts is either implemented or refused with the reason, never
ignored: `cipher_suites` (Go's names, mapped to OpenSSL's; like Go, for TLS 1.2 and older),
`prefer_server_cipher_suites`, `http_server_config.headers` (the toolkit's five security
headers) are implemented. Python's TLS stack cannot request a client certificate without
verifying it, nor choose the key-exchange groups, so `RequestClientCert`,
`RequireAnyClientCert` and `curve_preferences` are refused with that explanation rather than
silently weakened or strengthened; HTTP/2 is not served (`http2: true` is refused).

Problems are reported as `FILE:LINE: KEY: PROBLEM`, all at once. A certificate renewed in
place (cert-manager rotates the files) is picked up without a restart: `reload_certificate()`
loads the pair again when either file changed, and the HTTP server calls it every few seconds.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.errors import ConfigError

log = logging.getLogger(__name__)

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
_HTTP_KEYS = {"headers", "http2"}
# exporter-toolkit allows exactly these response headers in http_server_config.headers.
ALLOWED_HEADERS = (
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
)
# Go's crypto/tls names (what exporter-toolkit files carry) -> OpenSSL's. Go applies them to
# TLS 1.2 and older only (TLS 1.3's suites are fixed); so does OpenSSL's cipher list.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
_TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@dataclass
class _CertificatePair:
    cert: Path
    key: Path
    seen: tuple[int, int, int, int] = (0, 0, 0, 0)  # (mtime_ns, size) of cert and key

    def identity(self) -> tuple[int, int, int, int]:
        cert, key = os.stat(self.cert), os.stat(self.key)
        return (cert.st_mtime_ns, cert.st_size, key.st_mtime_ns, key.st_size)


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()  # added to every response
    certificate: _CertificatePair | None = None

    def reload_certificate(self) -> bool:
        """Load the certificate and key again if either file changed (renewed in place).
        Returns True when a new pair was loaded. A pair that does not load (a half-written
        rotation) keeps the old one and is tried again at the next call."""
        pair, context = self.certificate, self.tls
        if pair is None or context is None:
            return False
        try:
            identity = pair.identity()
            if identity == pair.seen:
                return False
            context.load_cert_chain(str(pair.cert), str(pair.key))
        except (OSError, ssl.SSLError) as err:
            log.warning(
                "cannot load the renewed TLS certificate; keeping the old one",
                extra={"path": str(pair.cert), "error": str(err)},
            )
            return False
        pair.seen = identity
        log.info("TLS certificate reloaded", extra={"path": str(pair.cert)})
        return True


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line, for every mapping key of the document."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key))
    return lines


def load_web_config(path: str | Path) -> WebConfig:
    """Parse and validate the file; raises ConfigError listing every problem as
    `FILE:LINE: KEY: PROBLEM`."""
    file = str(path)
    try:
        text = Path(path).read_text()
        document = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text) or yaml.MappingNode("", []))
    except OSError as err:
        raise ConfigError([f"{file}: cannot read: {err.strerror}"]) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        raise ConfigError([f"{where}: yaml: {' '.join(str(err).split())}"]) from err
    document = document or {}
    problems: list[str] = []

    def problem(key: str, text: str) -> None:
        where = key
        while where not in lines and "." in where:  # a missing key: the line of its section
            where = where.rsplit(".", 1)[0]
        problems.append(f"{file}:{lines.get(where, 1)}: {key}: {text}")

    if not isinstance(document, dict):
        raise ConfigError([f"{file}:1: (root): must be a mapping"])
    for key in sorted(set(document) - _TOP_KEYS, key=str):
        problem(str(key), "unknown key")
    users: dict[str, bytes] = {}
    section_users = document.get("basic_auth_users") or {}
    if not isinstance(section_users, dict):
        problem("basic_auth_users", "must be a mapping of user names to bcrypt hashes")
        section_users = {}
    for user, hashed in section_users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problem(f"basic_auth_users.{user}", "must be a bcrypt hash ($2y$...)")
        else:
            users[str(user)] = hashed.encode()
    headers = _http_server_config(document.get("http_server_config"), problem)
    tls, certificate = None, None
    section = document.get("tls_server_config")
    if section is not None:
        tls, certificate = _tls_context(section, Path(path).parent, problem)
    if problems:
        raise ConfigError(problems)
    return WebConfig(tls=tls, basic_auth_users=users, headers=headers, certificate=certificate)


def _http_server_config(
    section: Any, problem: Callable[[str, str], None]
) -> tuple[tuple[str, str], ...]:
    if section is None:
        return ()
    if not isinstance(section, dict):
        problem("http_server_config", "must be a mapping")
        return ()
    for key in sorted(set(section) - _HTTP_KEYS, key=str):
        problem(f"http_server_config.{key}", "unknown key")
    http2 = section.get("http2", False)
    if not isinstance(http2, bool):
        problem("http_server_config.http2", "must be true or false")
    elif http2:
        problem(
            "http_server_config.http2",
            "HTTP/2 is not served (HTTP/1.1 only; Prometheus scrapes over HTTP/1.1): "
            "set it to false or remove it",
        )
    headers = section.get("headers") or {}
    if not isinstance(headers, dict):
        problem("http_server_config.headers", "must be a mapping of header names to values")
        return ()
    allowed = {name.lower(): name for name in ALLOWED_HEADERS}
    chosen: list[tuple[str, str]] = []
    for name, value in headers.items():
        key = f"http_server_config.headers.{name}"
        if str(name).lower() not in allowed:
            problem(key, "not one of the headers that may be set: " + ", ".join(ALLOWED_HEADERS))
        elif not isinstance(value, str) or not value or "\n" in value or "\r" in value:
            problem(key, "must be a one-line string")
        else:
            chosen.append((allowed[str(name).lower()], value))
    return tuple(chosen)


def _tls_context(
    section: Any, base: Path, problem: Callable[[str, str], None]
) -> tuple[ssl.SSLContext | None, _CertificatePair | None]:
    if not isinstance(section, dict):
        problem("tls_server_config", "must be a mapping")
        return None, None
    for key in sorted(set(section) - _TLS_KEYS, key=str):
        problem(f"tls_server_config.{key}", "unknown key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def path_of(key: str) -> Path | None:
        value = section.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            problem(f"tls_server_config.{key}", "must be a file name")
            return None
        candidate = Path(value)
        candidate = candidate if candidate.is_absolute() else base / candidate
        if not candidate.is_file():
            problem(f"tls_server_config.{key}", f"{candidate}: no such file")
            return None
        return candidate

    pair = None
    cert, key = path_of("cert_file"), path_of("key_file")
    if section.get("cert_file") is None or section.get("key_file") is None:
        problem("tls_server_config", "cert_file and key_file are both required")
    elif cert is not None and key is not None:
        pair = _CertificatePair(cert, key)
        try:
            seen = pair.identity()
            context.load_cert_chain(str(cert), str(key))
            pair.seen = seen
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
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError) as err:
            problem("tls_server_config.client_ca_file", f"cannot load the CA certificates: {err}")
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
    _cipher_suites(context, section, problem)
    prefer = section.get("prefer_server_cipher_suites")
    if prefer is not None:
        if not isinstance(prefer, bool):
            problem("tls_server_config.prefer_server_cipher_suites", "must be true or false")
        elif prefer:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if section.get("curve_preferences") is not None:
        problem(
            "tls_server_config.curve_preferences",
            "cannot be honoured: Python's ssl module cannot choose the key-exchange groups; "
            "remove it (OpenSSL's defaults apply: X25519, P-256, P-384, P-521)",
        )
    return context, pair


def _cipher_suites(
    context: ssl.SSLContext, section: dict[str, Any], problem: Callable[[str, str], None]
) -> None:
    suites = section.get("cipher_suites")
    if suites is None:
        return
    key = "tls_server_config.cipher_suites"
    if not isinstance(suites, list) or not suites:
        problem(
            key,
            "must be a list of cipher suite names, e.g. [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]",
        )
        return
    names: list[str] = []
    for suite in suites:
        if suite in _TLS13_SUITES:
            problem(key, f"{suite}: TLS 1.3 suites cannot be configured (as in Go)")
        elif suite not in CIPHER_SUITES:
            problem(
                key,
                f"{suite!s}: not a supported cipher suite (one of: "
                + ", ".join(sorted(CIPHER_SUITES))
                + ")",
            )
        else:
            names.append(CIPHER_SUITES[suite])
    if names and len(names) == len(suites):
        try:
            context.set_ciphers(":".join(dict.fromkeys(names)))
        except ssl.SSLError as err:
            problem(key, f"none of them is available in this OpenSSL: {err}")


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


class ResponseHeaders:
    """WSGI middleware: `http_server_config.headers` on every response (401s included)."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], headers: tuple[tuple[str, str], ...]
    ) -> None:
        self.app = app
        self.headers = list(headers)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        def with_headers(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            return start_response(status, [*headers, *self.headers], *args)

        return self.app(environ, with_headers)
