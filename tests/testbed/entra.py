"""A fake Microsoft Entra ID (Azure AD) token service for tests.

It speaks just enough of the v2.0 endpoints for the real ``msal`` library (ROPC, refresh,
client credentials with a secret or a certificate, device code) and offers an RFC 7662-style
introspection endpoint that Dovecot's ``oauth2`` passdb uses to validate XOAUTH2 tokens.

Behaviour follows Entra ID where it matters to the exporter: error bodies carry ``AADSTSnnnn``
codes, ``error_codes``, ``suberror``, trace and correlation IDs; refresh tokens rotate; a
password change revokes refresh tokens (AADSTS50173); confidential apps need a credential
(AADSTS7000218); tokens are audience-bound (a Graph token does not open IMAP).

Nothing here prints; secrets never reach the request log.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import http.server
import json
import os
import re
import secrets
import socket
import ssl
import string
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    import requests

__all__ = [
    "AADSTS_ERRORS",
    "CLIENT_ASSERTION_TYPE",
    "EXCHANGE_RESOURCE",
    "EXTRA_NAMES",
    "GRANT_CLIENT_CREDENTIALS",
    "GRANT_DEVICE_CODE",
    "GRANT_PASSWORD",
    "GRANT_REFRESH_TOKEN",
    "GRAPH_RESOURCE",
    "AadError",
    "AppCertificate",
    "EntraUnavailableError",
    "ErrorRule",
    "FakeEntra",
    "LoggedRequest",
    "make_app_certificate",
    "start_fake_entra",
]

#: Names the certificate holds besides the address, by default: a name only a proxy can
#: resolve (``login.fabrikam.test``, see ``tests/faults/connect_proxy.py``).
#: ``TESTBED_ENTRA_NAMES`` (comma-separated) replaces them.
EXTRA_NAMES = ("login.fabrikam.test",)
# The Host header of an authority request: a DNS name or address, optionally with a port.
_HOST_HEADER_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?"
)

GRANT_PASSWORD = "password"
GRANT_REFRESH_TOKEN = "refresh_token"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
_GRANT_ALIASES = {"device_code": GRANT_DEVICE_CODE, "ropc": GRANT_PASSWORD}
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

EXCHANGE_RESOURCE = "https://outlook.office365.com"
GRAPH_RESOURCE = "https://graph.microsoft.com"
# Audiences Exchange Online accepts for IMAP/SMTP (resource URLs and the app ID).
_EXCHANGE_AUDIENCES = frozenset(
    {EXCHANGE_RESOURCE, "https://outlook.office.com", "00000002-0000-0ff1-ce00-000000000000"}
)
_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_SPECIAL_TENANTS = frozenset({"common", "organizations", "consumers"})
_CLAIMS_SUPPORTED = [
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "acr",
    "nonce",
    "preferred_username",
    "name",
    "tid",
    "ver",
    "at_hash",
    "c_hash",
    "email",
]


class AadError(NamedTuple):
    """How Entra ID answers a given AADSTS code at the token endpoint."""

    error: str
    description: str  # text after "AADSTSnnnn: "; {client_id} {username} {tenant} {scope}
    suberror: str | None = None
    status: int = 400
    claims: str | None = None


_MFA_CLAIMS = '{"access_token":{"capolids":{"essential":true,"values":["f1e2d3c4-0000-4000-8000-000000000001"]}}}'  # noqa: E501

#: Realistic token-endpoint answers, by AADSTS code (wording from Entra ID responses quoted in
#: Microsoft's docs and issue threads; see docs/testbed.md). ``set_error(code)`` uses them.
AADSTS_ERRORS: dict[int, AadError] = {
    7000218: AadError(
        "invalid_client",
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    ),
    7000215: AadError(
        "invalid_client",
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app "
        "'{client_id}'.",
        status=401,
    ),
    7000222: AadError(
        "invalid_client",
        "The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
        "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider "
        "using certificate credentials for added security: https://aka.ms/certCreds.",
        status=401,
    ),
    700027: AadError(
        "invalid_client",
        "The certificate with identifier used to sign the client assertion is not registered "
        "on application. [Reason - The key was not found.]",
        status=401,
    ),
    700016: AadError(
        "unauthorized_client",
        "Application with identifier '{client_id}' was not found in the directory "
        "'{tenant}'. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You may have "
        "sent your authentication request to the wrong tenant.",
    ),
    90002: AadError(
        "invalid_request",
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
        "are signing into the correct cloud. Check with your subscription administrator, "
        "this may happen if there are no active subscriptions for the tenant.",
    ),
    50126: AadError(
        "invalid_grant",
        "Error validating credentials due to invalid username or password.",
    ),
    50034: AadError(
        "invalid_grant",
        "The user account {{EUII Hidden}} does not exist in the {tenant} directory. To sign "
        "into this application, the account must be added to the directory.",
    ),
    50053: AadError(
        "invalid_grant",
        "The account is locked, you've tried to sign in too many times with an incorrect "
        "user ID or password.",
    ),
    50055: AadError(
        "invalid_grant",
        "The password is expired.",
        suberror="user_password_expired",
    ),
    50057: AadError("invalid_grant", "The user account is disabled."),
    50076: AadError(
        "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must use multi-factor authentication to access "
        "'00000002-0000-0ff1-ce00-000000000000'.",
        suberror="basic_action",
        claims=_MFA_CLAIMS,
    ),
    50079: AadError(
        "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must enroll in multi-factor authentication to access "
        "'00000002-0000-0ff1-ce00-000000000000'.",
        suberror="basic_action",
        claims=_MFA_CLAIMS,
    ),
    53003: AadError(
        "interaction_required",
        "Access has been blocked by Conditional Access policies. The access policy does not "
        "allow token issuance.",
        suberror="message_only",
    ),
    65001: AadError(
        "invalid_grant",
        "The user or administrator has not consented to use the application with ID "
        "'{client_id}' named 'Mailbox Exporter'. Send an interactive authorization request "
        "for this user and resource.",
        suberror="consent_required",
    ),
    70011: AadError(
        "invalid_scope",
        "The provided request must include a 'scope' input parameter. The provided value for "
        "the input parameter 'scope' is not valid. The scope {scope} is not valid.",
    ),
    1002012: AadError(
        "invalid_scope",
        "The provided value for scope {scope} is not valid. Client credential flows must have "
        "a scope value with /.default suffixed to the resource identifier (application ID "
        "URI).",
    ),
    28000: AadError(
        "invalid_scope",
        "Provided value for the input parameter scope is not valid because it contains more "
        "than one resource. Scope {scope} is not valid.",
    ),
    700082: AadError(
        "invalid_grant",
        "The refresh token has expired due to inactivity. The token was issued on "
        "{issued} and was inactive for 90.00:00:00.",
    ),
    50173: AadError(
        "invalid_grant",
        "The provided grant has expired due to it being revoked, a fresh auth token is "
        "needed. The user might have changed or reset their password. The grant was issued "
        "on '{issued}' and the TokensValidFrom date (before which tokens are not valid) for "
        "this user is '{valid_from}'.",
    ),
    9002313: AadError("invalid_grant", "Invalid request. Request is malformed or invalid."),
    70000: AadError("invalid_grant", "Provided grant is invalid or malformed."),
    70016: AadError(
        "authorization_pending",
        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
    ),
    70019: AadError("expired_token", "Verification code expired."),
    90055: AadError(
        "temporarily_unavailable",
        "TenantThrottlingError - There are too many incoming requests.",
        status=429,
    ),
}


class LoggedRequest(NamedTuple):
    """One request the fake IdP served. ``who`` is the username or client_id, never a secret."""

    method: str
    path: str
    grant_type: str | None
    who: str | None


@dataclass
class ErrorRule:
    """An injected error (see :meth:`FakeEntra.set_error`). ``hits`` counts answers given."""

    code: int | None
    error: str
    description: str
    status: int
    retry_after: float | None
    suberror: str | None
    claims: str | None
    username: str | None
    client_id: str | None
    grant_types: frozenset[str] | None
    remaining: int | None
    hits: int = 0

    def matches(self, grant_type: str, username: str | None, client_id: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.grant_types is not None and grant_type not in self.grant_types:
            return False
        if self.client_id is not None and self.client_id != client_id:
            return False
        return self.username is None or (username is not None and self.username == username.lower())


# Entra ID's answer to a poll after the user declined the device-code sign-in (RFC 8628 3.5).
_DECLINED = ErrorRule(
    code=None,
    error="authorization_declined",
    description="The end user denied the authorization request.",
    status=400,
    retry_after=None,
    suberror=None,
    claims=None,
    username=None,
    client_id=None,
    grant_types=None,
    remaining=None,
)


class EntraUnavailableError(RuntimeError):
    """Port 443 on the requested loopback address could not be bound."""


@dataclass
class _Tenant:
    name: str
    id: str
    domains: set[str]


@dataclass
class _User:
    upn: str
    password: str
    tenant: str
    oid: str
    tokens_valid_from: float = 0.0
    failed_passwords: int = 0
    locked_until: float = 0.0


@dataclass
class _App:
    client_id: str
    tenant: str
    public_client: bool
    client_secret: str | None
    certificate: x509.Certificate | None
    mailbox: str | None


@dataclass
class _AccessToken:
    subject: str | None  # UPN (delegated) or the app's mailbox (app-only)
    client_id: str
    app_only: bool
    audience: str
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class _RefreshToken:
    upn: str
    client_id: str
    tenant: str
    scopes: tuple[str, ...]
    issued_at: float
    expired: bool = False
    superseded: bool = False


@dataclass
class _DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    tenant: str | None
    scopes: tuple[str, ...]
    expires_at: float
    approved_upn: str | None = None
    declined: bool = False
    issued_at: float = field(default_factory=time.time)


@dataclass
class _Attempt:
    grant_type: str
    username: str | None
    client_id: str


class _Reply(Exception):
    """Raised inside request handling to answer with a given status and JSON body."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = dict(body)
        self.headers = dict(headers or {})


@dataclass
class _Ctx:
    """Values an error description may mention."""

    client_id: str = ""
    username: str = ""
    tenant: str = ""
    scope: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(obj: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _resource_of(scope: str) -> str:
    """The resource a scope belongs to (bare names are Microsoft Graph permissions)."""
    if "://" in scope or scope.startswith("api://"):
        return scope.rsplit("/", 1)[0]
    if scope.count("/") == 1 and not scope.startswith("/"):  # e.g. "<app-guid>/.default"
        return scope.split("/", 1)[0]
    return GRAPH_RESOURCE


def _norm_grant(grant: str) -> str:
    return _GRANT_ALIASES.get(grant, grant)


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], entra: FakeEntra, context: ssl.SSLContext) -> None:
        self.entra = entra
        self.ssl_context = context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the worker thread, so a stuck client never blocks accept().
        request.settimeout(30)
        # Headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add
        # ~40 ms to every answer on a keep-alive connection.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer (the exporter shuts an overrunning request's
        # socket on purpose) is no bug of the fake: only other exceptions are recorded.
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLEOFError, TimeoutError)):
            return
        self.entra._record_server_error(traceback.format_exc())


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer
    server_version = "FakeEntra/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: request lines could carry user names."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        entra = self.server.entra
        try:
            status, payload, headers = entra._handle(
                method, self.path, body, {k.lower(): v for k, v in self.headers.items()}
            )
        except Exception:  # keep the fake alive; surface the bug through server_errors
            entra._record_server_error(traceback.format_exc())
            status, payload, headers = 500, {"error": "server_error"}, {}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store, no-cache")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class FakeEntra:
    """A local Entra ID for msal and Dovecot, over HTTPS with a certificate from ``ca``.

    Serves on a random port of ``host`` (``url``) and on port 443 of the same host, because
    msal drops the port for user-realm discovery. Use ``url + "/<tenant>"`` as the authority
    (with ``instance_discovery=False``) and :attr:`ca_file` to trust it. The certificate also
    names ``names`` (default :data:`EXTRA_NAMES`); like Entra ID, the URLs in discovery
    answers and the issuer are built from the request's ``Host`` header, so a client that came
    by a name (through a proxy) stays on that name.
    """

    def __init__(
        self, ca: trustme.CA, host: str = "127.0.0.1", names: Iterable[str] | None = None
    ) -> None:
        self.ca = ca
        self.host = host
        if names is None:
            configured = os.environ.get("TESTBED_ENTRA_NAMES")
            names = configured.split(",") if configured is not None else EXTRA_NAMES
        self.names = tuple(name for name in names if name and name != host)
        self._request_base = threading.local()  # the base URL the running request came by
        # Switches a test may flip (restored by reset_switches()).
        self.access_token_lifetime: int = 3600
        self.device_code_lifetime: int = 900
        self.device_code_interval: int = 1
        self.delay: float = 0.0
        self.auto_approve_device_code: str | None = None
        self.reject_imap_tokens: bool = False
        self.reject_imap_users: set[str] = set()
        self.introspection_status: int = 200
        self.lockout_threshold: int | None = None
        self.lockout_duration: float = 60.0

        self._lock = threading.RLock()
        self._tenants: dict[str, _Tenant] = {}
        self._users: dict[str, _User] = {}
        self._apps: dict[str, _App] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._device_codes: dict[str, _DeviceCode] = {}
        self._rules: list[ErrorRule] = []
        self._attempts: list[_Attempt] = []
        self._requests: list[LoggedRequest] = []
        self._server_errors: list[str] = []
        self._servers: list[_TLSServer] = []
        self._threads: list[threading.Thread] = []
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeEntra:
        if self._servers:
            return self
        cert = self.ca.issue_cert(self.host, *self.names)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert.configure_cert(context)
        main = _TLSServer((self.host, 0), self, context)
        try:
            well_known = _TLSServer((self.host, 443), self, context)
        except OSError as exc:
            main.server_close()
            raise EntraUnavailableError(
                f"FakeEntra needs port 443 on {self.host} (msal calls "
                f"https://{self.host}/common/userrealm/... without the port) but cannot bind "
                f"it: {exc}. Run as root, free the port, or use another loopback address "
                "(see start_fake_entra)."
            ) from exc
        self._servers = [main, well_known]
        self._port = main.server_address[1]
        self._tmpdir = tempfile.TemporaryDirectory(prefix="fake-entra-")
        ca_path = Path(self._tmpdir.name) / "ca.pem"
        ca_path.write_bytes(self.ca.cert_pem.bytes())
        ca_path.chmod(0o644)
        Path(self._tmpdir.name).chmod(0o755)
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-entra-{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> FakeEntra:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeEntra is not started")
        return self._port

    @property
    def url(self) -> str:
        """``https://HOST:PORT`` — the authority host; append ``/<tenant>`` for msal."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        """Path of a PEM file holding the CA certificate (world-readable, for Dovecot too)."""
        if self._tmpdir is None:
            raise RuntimeError("FakeEntra is not started")
        return str(Path(self._tmpdir.name) / "ca.pem")

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def authority(self, tenant: str = "contoso") -> str:
        return f"{self.url}/{tenant}"

    def http_session(self) -> requests.Session:
        """A ``requests.Session`` for msal's ``http_client`` that trusts only :attr:`ca_file`.

        ``trust_env`` is off: this machine exports REQUESTS_CA_BUNDLE, which would otherwise
        override ``verify``.
        """
        import requests

        session = requests.Session()
        session.trust_env = False
        session.verify = self.ca_file
        return session

    # ------------------------------------------------------------------ directory

    def tenant_id(self, tenant: str = "contoso") -> str:
        with self._lock:
            return self._tenant(tenant).id

    def _tenant(self, name: str) -> _Tenant:
        key = name.lower()
        tenant = self._tenants.get(key)
        if tenant is None:
            tid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{key}.onmicrosoft.com"))
            tenant = _Tenant(key, tid, {f"{key}.onmicrosoft.com"})
            self._tenants[key] = tenant
        return tenant

    def _resolve_tenant(self, segment: str) -> _Tenant | None:
        seg = segment.lower()
        for tenant in self._tenants.values():
            if seg in (tenant.name, tenant.id) or seg in tenant.domains:
                return tenant
        return None

    def add_user(self, upn: str, password: str, *, tenant: str = "contoso") -> None:
        """Create (or replace) a user. The UPN's domain becomes a domain of ``tenant``."""
        with self._lock:
            t = self._tenant(tenant)
            t.domains.add(upn.rsplit("@", 1)[-1].lower())
            old = self._users.get(upn.lower())
            oid = old.oid if old else str(uuid.uuid4())
            self._users[upn.lower()] = _User(upn, password, t.name, oid)

    def set_password(self, upn: str, password: str) -> None:
        """Change a password; like Entra ID this revokes the user's refresh tokens (50173)."""
        with self._lock:
            user = self._user(upn)
            user.password = password
            user.failed_passwords = 0
            user.tokens_valid_from = time.time()

    def revoke_refresh_tokens(self, upn: str) -> None:
        """Like ``Revoke-MgUserSignInSession``: later refresh grants get AADSTS50173."""
        with self._lock:
            self._user(upn).tokens_valid_from = time.time()

    def expire_refresh_tokens(self, upn: str) -> None:
        """Make the user's existing refresh tokens idle-expired (AADSTS700082)."""
        with self._lock:
            for rt in self._refresh_tokens.values():
                if rt.upn.lower() == upn.lower():
                    rt.expired = True

    def expire_access_tokens(self, upn: str | None = None) -> None:
        """Expire issued access tokens (all, or those for one UPN/mailbox)."""
        with self._lock:
            for at in self._access_tokens.values():
                if upn is None or (at.subject or "").lower() == upn.lower():
                    at.expires_at = 0.0

    def unlock_user(self, upn: str) -> None:
        with self._lock:
            user = self._user(upn)
            user.failed_passwords = 0
            user.locked_until = 0.0

    def is_locked(self, upn: str) -> bool:
        with self._lock:
            return self._user(upn).locked_until > time.time()

    def latest_refresh_token(self, upn: str, client_id: str | None = None) -> str | None:
        """The newest refresh token issued to ``upn`` (to check the caller persisted it)."""
        with self._lock:
            found = None
            for token, rt in self._refresh_tokens.items():  # insertion order = issue order
                if rt.upn.lower() == upn.lower() and client_id in (None, rt.client_id):
                    found = token
            return found

    def mint_access_token(
        self,
        upn: str,
        *,
        client_id: str = "testbed-helper",
        scopes: Iterable[str] = (f"{EXCHANGE_RESOURCE}/IMAP.AccessAsUser.All",),
    ) -> str:
        """An Exchange access token for ``upn`` issued without a sign-in.

        For the bed's own helpers (e.g. :meth:`Dovecot.imap_snapshot`): it does not count as
        an attempt and appears in no log; only IMAP's introspection of it is recorded.
        """
        with self._lock:
            user = self._users.get(upn.lower())
            tenant = self._tenant(user.tenant if user else "contoso")
            scope_tuple = tuple(scopes)
            return self._new_access_token(
                subject=user.upn if user else upn,
                client_id=client_id,
                app_only=False,
                audience=self._audience(scope_tuple, self._no_fail),
                scopes=scope_tuple,
                tenant=tenant,
                oid=user.oid if user else str(uuid.uuid4()),
            )

    @staticmethod
    def _no_fail(code: int) -> _Reply:
        raise ValueError(f"scopes rejected with AADSTS{code}")

    def _user(self, upn: str) -> _User:
        user = self._users.get(upn.lower())
        if user is None:
            raise KeyError(f"no such user: {upn}")
        return user

    def add_app(
        self,
        client_id: str,
        *,
        public_client: bool = True,
        client_secret: str | None = None,
        certificate_pem: str | bytes | None = None,
        mailbox: str | None = None,
        tenant: str = "contoso",
    ) -> None:
        """Register an app. ``mailbox`` is the UPN its app-only tokens may open over IMAP."""
        cert = None
        if certificate_pem is not None:
            pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            cert = x509.load_pem_x509_certificate(pem)
        with self._lock:
            t = self._tenant(tenant)
            self._apps[client_id] = _App(
                client_id, t.name, public_client, client_secret, cert, mailbox
            )

    # ------------------------------------------------------------------ error switch

    def set_error(
        self,
        code: int | None,
        *,
        error: str | None = None,
        description: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        username: str | None = None,
        client_id: str | None = None,
        grant_types: str | Iterable[str] | None = None,
        times: int | None = None,
        suberror: str | None = None,
    ) -> ErrorRule:
        """Answer matching token requests with an Entra-style error until cleared.

        Defaults for ``error``, ``description``, ``status`` and ``suberror`` come from
        :data:`AADSTS_ERRORS` (so ``set_error(65001)`` alone is realistic), else
        ``invalid_grant`` / 400. Filters: ``username`` (for refresh grants, the token's
        owner), ``client_id``, ``grant_types`` (``"password"``, ``"refresh_token"``,
        ``"client_credentials"``, ``"device_code"``). ``times`` limits the answers. The
        newest matching rule wins.
        """
        known = AADSTS_ERRORS.get(code) if code is not None else None
        if isinstance(grant_types, str):
            grant_types = [grant_types]
        rule = ErrorRule(
            code=code,
            error=error or (known.error if known else "invalid_grant"),
            description=description
            if description is not None
            else (known.description if known else "Injected error."),
            status=status or (known.status if known else 400),
            retry_after=retry_after,
            suberror=suberror if suberror is not None else (known.suberror if known else None),
            claims=known.claims if known else None,
            username=username.lower() if username else None,
            client_id=client_id,
            grant_types=frozenset(_norm_grant(g) for g in grant_types)
            if grant_types is not None
            else None,
            remaining=times,
        )
        with self._lock:
            self._rules.insert(0, rule)
        return rule

    def clear_errors(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset_switches(self) -> None:
        """Clear injected errors and restore every behaviour switch to its default."""
        with self._lock:
            self._rules.clear()
            self.access_token_lifetime = 3600
            self.device_code_lifetime = 900
            self.device_code_interval = 1
            self.delay = 0.0
            self.auto_approve_device_code = None
            self.reject_imap_tokens = False
            self.reject_imap_users = set()
            self.introspection_status = 200
            self.lockout_threshold = None
            self.lockout_duration = 60.0

    # ------------------------------------------------------------------ counters

    def attempts(
        self,
        username: str | None = None,
        client_id: str | None = None,
        grant_type: str | None = None,
    ) -> int:
        """Token-endpoint requests that match every given filter (sign-in attempts)."""
        grant = _norm_grant(grant_type) if grant_type else None
        with self._lock:
            return sum(
                1
                for a in self._attempts
                if (username is None or (a.username or "").lower() == username.lower())
                and (client_id is None or a.client_id == client_id)
                and (grant is None or a.grant_type == grant)
            )

    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log: (method, path, grant_type, username or client_id)."""
        with self._lock:
            return list(self._requests)

    @property
    def server_errors(self) -> list[str]:
        """Tracebacks of bugs inside the fake (should stay empty)."""
        with self._lock:
            return list(self._server_errors)

    def introspect(self, token: str) -> dict[str, Any]:
        """What the introspection endpoint answers for ``token`` (for in-process peers such as
        the Exchange-like SMTP server)."""
        return self._introspect({"token": token})

    def introspections(self, username: str | None = None) -> int:
        """How many introspection calls (one per IMAP XOAUTH2 login) were made."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if r.path == "/introspect"
                and (username is None or (r.who or "").lower() == username.lower())
            )

    def reset_counters(self) -> None:
        with self._lock:
            self._attempts.clear()
            self._requests.clear()

    def _record_server_error(self, text: str) -> None:
        with self._lock:
            self._server_errors.append(text)

    # ------------------------------------------------------------------ device code

    def approve_device_code(self, user_code: str | None, upn: str) -> None:
        """Complete a device-code sign-in as ``upn`` (``None``: the latest code issued). Any
        user of the tenant may approve any code, as in a browser already signed in as them."""
        with self._lock:
            self._user(upn)
            self._device_code(user_code).approved_upn = upn

    def decline_device_code(self, user_code: str | None = None) -> None:
        """The user declines the sign-in ("Cancel" / "No, this wasn't me"): the next poll is
        answered ``authorization_declined``."""
        with self._lock:
            self._device_code(user_code).declined = True

    def expire_device_code(self, user_code: str | None = None) -> None:
        """Let the code run out now: the next poll is answered ``expired_token`` (70019)."""
        with self._lock:
            self._device_code(user_code).expires_at = 0.0

    def wait_for_device_code(self, since: float | None = None, timeout: float = 10.0) -> str:
        """The user code of the first device code issued at or after ``since`` (default: now),
        as a user reads it off the terminal."""
        since = time.time() if since is None else since
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                issued = [c for c in self._device_codes.values() if c.issued_at >= since]
                if issued:
                    return issued[0].user_code
            time.sleep(0.02)
        raise TimeoutError("no device code was issued")

    def _device_code(self, user_code: str | None) -> _DeviceCode:
        codes = list(self._device_codes.values())
        if user_code is None:
            if not codes:
                raise KeyError("no device code has been issued")
            return codes[-1]
        matches = [c for c in codes if c.user_code == user_code]
        if not matches:
            raise KeyError(f"unknown user code {user_code}")
        return matches[0]

    # ------------------------------------------------------------------ HTTP handling

    def _handle(
        self, method: str, raw_path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        host_header = headers.get("host", "")
        self._request_base.url = (
            f"https://{host_header}" if _HOST_HEADER_RE.fullmatch(host_header) else self.url
        )
        url = urlsplit(raw_path)
        path = url.path
        parts = [unquote(p) for p in path.split("/") if p]
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        try:
            if method == "POST" and path == "/introspect":
                return 200, self._introspect(form), {}
            if method == "GET" and len(parts) == 3 and parts[:2] == ["common", "userrealm"]:
                self._log(method, path, None, parts[2])
                return 200, self._user_realm(parts[2]), {}
            if method == "GET" and parts == ["common", "discovery", "instance"]:
                self._log(method, path, None, None)
                return 200, self._instance_discovery(url.query), {}
            if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                self._log(method, path, None, None)
                return 200, self._openid_configuration(parts[0]), {}
            if len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"]:
                self._log(method, path, None, None)
                return 200, {"keys": []}, {}
            if method == "POST" and len(parts) == 4 and parts[1:3] == ["oauth2", "v2.0"]:
                if parts[3] == "token":
                    return 200, self._token(parts[0], path, form, headers), {}
                if parts[3] == "devicecode":
                    self._log(method, path, None, form.get("client_id"))
                    return 200, self._device_authorization(parts[0], form), {}
            self._log(method, path, None, None)
            return 404, {"error": "not_found", "error_description": f"No route {path}"}, {}
        except _Reply as reply:
            return reply.status, reply.body, reply.headers

    def _log(self, method: str, path: str, grant: str | None, who: str | None) -> None:
        with self._lock:
            self._requests.append(LoggedRequest(method, path, grant, who))

    def _error(
        self,
        code: int | None,
        ctx: _Ctx,
        *,
        rule: ErrorRule | None = None,
        correlation_id: str | None = None,
    ) -> _Reply:
        if rule is not None:
            spec = AadError(rule.error, rule.description, rule.suberror, rule.status, rule.claims)
        else:
            assert code is not None
            spec = AADSTS_ERRORS[code]
        values = {
            "client_id": ctx.client_id,
            "username": ctx.username,
            "tenant": ctx.tenant,
            "scope": ctx.scope,
            "issued": _fmt_time(time.time() - 86400),
            "valid_from": _fmt_time(time.time()),
            **ctx.extra,
        }
        try:
            text = spec.description.format(**values)
        except (KeyError, IndexError, ValueError):
            text = spec.description
        now = time.time()
        trace_id = str(uuid.uuid4())
        corr = correlation_id or str(uuid.uuid4())
        prefix = f"AADSTS{code}: " if code is not None else ""
        body: dict[str, Any] = {
            "error": spec.error,
            "error_description": f"{prefix}{text}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {corr}\r\nTimestamp: {_fmt_time(now)}",
            "error_codes": [code] if code is not None else [],
            "timestamp": _fmt_time(now),
            "trace_id": trace_id,
            "correlation_id": corr,
        }
        if code is not None:
            body["error_uri"] = f"https://login.microsoftonline.com/error?code={code}"
        if spec.suberror:
            body["suberror"] = spec.suberror
        if spec.claims:
            body["claims"] = spec.claims
        reply_headers = {}
        if rule is not None and rule.retry_after is not None:
            reply_headers["Retry-After"] = str(int(rule.retry_after))
        return _Reply(spec.status, body, reply_headers)

    # --- discovery

    def _user_realm(self, username: str) -> dict[str, Any]:
        domain = username.rsplit("@", 1)[-1].lower()
        with self._lock:
            known = any(domain in t.domains for t in self._tenants.values())
        realm: dict[str, Any] = {
            "ver": "1.0",
            "account_type": "Managed" if known else "Unknown",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_audience_urn": "urn:federation:MicrosoftOnline",
        }
        if known:
            realm["domain_name"] = domain
        return realm

    def _instance_discovery(self, query: str) -> dict[str, Any]:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        endpoint = params.get("authorization_endpoint", "")
        tenant = "common"
        seg = urlsplit(endpoint).path.split("/")
        if len(seg) > 1 and seg[1]:
            tenant = seg[1]
        return {
            "tenant_discovery_endpoint": f"{self._base_url()}/{tenant}/v2.0/.well-known/"
            "openid-configuration",
            "api-version": "1.1",
            "metadata": [
                {
                    "preferred_network": self.host,
                    "preferred_cache": self.host,
                    "aliases": [self.host],
                }
            ],
        }

    def _base_url(self) -> str:
        """``https://`` + the Host header of the request being answered (else :attr:`url`)."""
        base: str = getattr(self._request_base, "url", "") or self.url
        return base

    def _openid_configuration(self, segment: str) -> dict[str, Any]:
        base = self._base_url()
        if segment.lower() in _SPECIAL_TENANTS:
            tid, issuer = segment.lower(), f"{base}/{{tenantid}}/v2.0"
        else:
            with self._lock:
                tenant = self._resolve_tenant(segment)
            if tenant is None:
                reply = self._error(90002, _Ctx(tenant=segment))
                reply.body["error"] = "invalid_tenant"
                raise reply
            tid = tenant.id
            issuer = f"{base}/{tid}/v2.0"
        return {
            "token_endpoint": f"{base}/{tid}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/{tid}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{tid}/oauth2/v2.0/logout",
            "claims_supported": list(_CLAIMS_SUPPORTED),
            "kerberos_endpoint": f"{base}/{tid}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    # --- token endpoint

    def _token(
        self, segment: str, path: str, form: dict[str, str], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        grant = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        correlation_id = headers.get("client-request-id")
        with self._lock:
            username = self._subject_of(grant, form)
            self._attempts.append(_Attempt(grant, username, client_id))
            self._requests.append(LoggedRequest("POST", path, grant, username or client_id))
            rule = next((r for r in self._rules if r.matches(grant, username, client_id)), None)
            if rule is not None:
                rule.hits += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
        if self.delay:
            time.sleep(self.delay)
        ctx = _Ctx(client_id=client_id, username=username or "", tenant=segment,
                   scope=form.get("scope", ""))  # fmt: skip
        if rule is not None:
            raise self._error(rule.code, ctx, rule=rule, correlation_id=correlation_id)

        def fail(code: int) -> _Reply:
            return self._error(code, ctx, correlation_id=correlation_id)

        with self._lock:
            tenant: _Tenant | None = None
            if segment.lower() not in _SPECIAL_TENANTS:
                tenant = self._resolve_tenant(segment)
                if tenant is None:
                    raise fail(90002)
            app = self._apps.get(client_id)
            if app is None or (tenant is not None and app.tenant != tenant.name):
                raise fail(700016)
            ctx.tenant = tenant.name if tenant else segment
            scopes = tuple(form.get("scope", "").split())
            if grant == GRANT_CLIENT_CREDENTIALS:
                self._authenticate_client(app, form, path, required=True, fail=fail)
                if not scopes or not all(s.endswith("/.default") for s in scopes):
                    raise fail(1002012)
                return self._issue_app_only(app, scopes, tenant or self._tenant(app.tenant), fail)
            self._authenticate_client(app, form, path, required=not app.public_client, fail=fail)
            if grant == GRANT_PASSWORD:
                user = self._users.get(form.get("username", "").lower())
                if user is None or (tenant is not None and user.tenant != tenant.name):
                    raise fail(50034)
                now = time.time()
                if user.locked_until > now:
                    raise fail(50053)
                if not secrets.compare_digest(
                    user.password.encode(), form.get("password", "").encode()
                ):
                    user.failed_passwords += 1
                    if (
                        self.lockout_threshold is not None
                        and user.failed_passwords >= self.lockout_threshold
                    ):
                        user.locked_until = now + self.lockout_duration
                    raise fail(50126)
                user.failed_passwords = 0
                return self._issue_delegated(user, app, scopes, fail)
            if grant == GRANT_REFRESH_TOKEN:
                rt = self._refresh_tokens.get(form.get("refresh_token", ""))
                if rt is None:
                    raise fail(9002313)
                if rt.client_id != client_id:
                    raise fail(70000)
                rt_user = self._users.get(rt.upn.lower())
                if rt_user is None:
                    raise fail(50034)
                if rt.issued_at < rt_user.tokens_valid_from:
                    ctx.extra["issued"] = _fmt_time(rt.issued_at)
                    ctx.extra["valid_from"] = _fmt_time(rt_user.tokens_valid_from)
                    raise fail(50173)
                if rt.expired:
                    ctx.extra["issued"] = _fmt_time(rt.issued_at)
                    raise fail(700082)
                rt.superseded = True
                return self._issue_delegated(rt_user, app, scopes or rt.scopes, fail)
            if grant == GRANT_DEVICE_CODE:
                dc = self._device_codes.get(form.get("device_code", ""))
                if dc is None or dc.client_id != client_id:
                    raise fail(70000)
                if dc.expires_at < time.time():
                    raise fail(70019)
                if dc.declined:
                    raise self._error(None, ctx, rule=_DECLINED, correlation_id=correlation_id)
                if dc.approved_upn is None and self.auto_approve_device_code:
                    dc.approved_upn = self.auto_approve_device_code
                if dc.approved_upn is None:
                    raise fail(70016)
                dc_user = self._users.get(dc.approved_upn.lower())
                if dc_user is None:
                    raise fail(50034)
                del self._device_codes[dc.device_code]
                return self._issue_delegated(dc_user, app, dc.scopes, fail)
        reply = self._error(None, ctx)
        reply.body.update(
            error="unsupported_grant_type",
            error_description=f"AADSTS70003: The app requested an unsupported grant type "
            f"'{grant}'.",
            error_codes=[70003],
        )
        raise reply

    def _subject_of(self, grant: str, form: Mapping[str, str]) -> str | None:
        if grant == GRANT_PASSWORD:
            return form.get("username") or None
        if grant == GRANT_REFRESH_TOKEN:
            rt = self._refresh_tokens.get(form.get("refresh_token", ""))
            return rt.upn if rt else None
        if grant == GRANT_DEVICE_CODE:
            dc = self._device_codes.get(form.get("device_code", ""))
            if dc is not None:
                return dc.approved_upn or self.auto_approve_device_code
        return None

    def _authenticate_client(
        self,
        app: _App,
        form: Mapping[str, str],
        path: str,
        *,
        required: bool,
        fail: Callable[[int], _Reply],
    ) -> None:
        if form.get("client_assertion"):
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                raise fail(700027)
            if not self._assertion_ok(app, form["client_assertion"], path):
                raise fail(700027)
            return
        if form.get("client_secret"):
            if app.client_secret is None or not secrets.compare_digest(
                app.client_secret.encode(), form["client_secret"].encode()
            ):
                raise fail(7000215)
            return
        if required:
            raise fail(7000218)

    def _assertion_ok(self, app: _App, assertion: str, path: str) -> bool:
        cert = app.certificate
        if cert is None:
            return False
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return False
        x5t = header.get("x5t")
        x5t256 = header.get("x5t#S256")
        if x5t is None and x5t256 is None:
            return False
        if x5t is not None and x5t.rstrip("=") != _b64url(cert.fingerprint(hashes.SHA1())):
            return False
        if x5t256 is not None and x5t256.rstrip("=") != _b64url(cert.fingerprint(hashes.SHA256())):
            return False
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256", "PS256"],
                options={"verify_aud": False, "require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.PyJWTError:
            return False
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        return (
            claims.get("iss") == app.client_id
            and claims.get("sub") == app.client_id
            and any(isinstance(a, str) and a.endswith("/oauth2/v2.0/token") for a in auds)
        )

    def _audience(self, scopes: Iterable[str], fail: Callable[[int], _Reply]) -> str:
        resources = {_resource_of(s) for s in scopes if s not in _RESERVED_SCOPES}
        if len(resources) > 1:
            raise fail(28000)
        resource = resources.pop() if resources else GRAPH_RESOURCE
        return _GRAPH_APP_ID if resource == GRAPH_RESOURCE else resource

    def _new_access_token(
        self,
        *,
        subject: str | None,
        client_id: str,
        app_only: bool,
        audience: str,
        scopes: tuple[str, ...],
        tenant: _Tenant,
        oid: str,
    ) -> str:
        now = int(time.time())
        lifetime = int(self.access_token_lifetime)
        header = {
            "typ": "JWT",
            "nonce": _b64url(secrets.token_bytes(32)),
            "alg": "RS256",
            "x5t": _b64url(secrets.token_bytes(20)),
            "kid": _b64url(secrets.token_bytes(20)),
        }
        payload: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tenant.id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": client_id,
            "oid": oid,
            "sub": _b64url(hashlib.sha256(f"{oid}{client_id}".encode()).digest()),
            "tid": tenant.id,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        names = " ".join(s.rsplit("/", 1)[-1] for s in scopes if s not in _RESERVED_SCOPES)
        if app_only:
            payload["roles"] = ["IMAP.AccessAsApp", "SMTP.SendAsApp"]
        else:
            payload.update(upn=subject, unique_name=subject, scp=names)
        token = (
            f"{_b64url_json(header)}.{_b64url_json(payload)}.{_b64url(secrets.token_bytes(256))}"
        )
        self._access_tokens[token] = _AccessToken(
            subject, client_id, app_only, audience, scopes, time.time() + lifetime
        )
        return token

    def _issue_delegated(
        self, user: _User, app: _App, scopes: tuple[str, ...], fail: Callable[[int], _Reply]
    ) -> dict[str, Any]:
        tenant = self._tenant(user.tenant)
        audience = self._audience(scopes, fail)
        access_token = self._new_access_token(
            subject=user.upn, client_id=app.client_id, app_only=False, audience=audience,
            scopes=scopes, tenant=tenant, oid=user.oid,
        )  # fmt: skip
        refresh_token = "0.A" + _b64url(secrets.token_bytes(96))
        self._refresh_tokens[refresh_token] = _RefreshToken(
            user.upn, app.client_id, tenant.name, scopes, time.time()
        )
        now = int(time.time())
        id_claims = {
            "aud": app.client_id,
            "iss": f"{self._base_url()}/{tenant.id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.upn.split("@")[0],
            "oid": user.oid,
            "preferred_username": user.upn,
            "sub": _b64url(hashlib.sha256(f"{user.oid}{app.client_id}".encode()).digest()),
            "tid": tenant.id,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "2.0",
        }
        id_token = f"{_b64url_json({'typ': 'JWT', 'alg': 'none'})}.{_b64url_json(id_claims)}."
        granted = [s for s in scopes if s not in _RESERVED_SCOPES] or list(scopes)
        lifetime = int(self.access_token_lifetime)
        return {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "id_token": id_token,
            "client_info": _b64url_json({"uid": user.oid, "utid": tenant.id}),
        }

    def _issue_app_only(
        self, app: _App, scopes: tuple[str, ...], tenant: _Tenant, fail: Callable[[int], _Reply]
    ) -> dict[str, Any]:
        audience = self._audience(scopes, fail)
        sp_oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{app.client_id}"))
        access_token = self._new_access_token(
            subject=app.mailbox, client_id=app.client_id, app_only=True, audience=audience,
            scopes=scopes, tenant=tenant, oid=sp_oid,
        )  # fmt: skip
        lifetime = int(self.access_token_lifetime)
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }

    # --- device authorization

    def _device_authorization(self, segment: str, form: Mapping[str, str]) -> dict[str, Any]:
        client_id = form.get("client_id", "")
        ctx = _Ctx(client_id=client_id, tenant=segment, scope=form.get("scope", ""))
        with self._lock:
            tenant = None
            if segment.lower() not in _SPECIAL_TENANTS:
                tenant = self._resolve_tenant(segment)
                if tenant is None:
                    raise self._error(90002, ctx)
            app = self._apps.get(client_id)
            if app is None or (tenant is not None and app.tenant != tenant.name):
                raise self._error(700016, ctx)
            alphabet = string.ascii_uppercase + string.digits
            user_code = "".join(secrets.choice(alphabet) for _ in range(9))
            device_code = "DAQABIQEAAA" + _b64url(secrets.token_bytes(96))
            lifetime = int(self.device_code_lifetime)
            self._device_codes[device_code] = _DeviceCode(
                device_code, user_code, client_id, tenant.name if tenant else None,
                tuple(form.get("scope", "").split()), time.time() + lifetime,
            )  # fmt: skip
        verification_uri = "https://microsoft.com/devicelogin"
        return {
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": verification_uri,
            "expires_in": lifetime,
            "interval": int(self.device_code_interval),
            "message": f"To sign in, use a web browser to open the page {verification_uri} "
            f"and enter the code {user_code} to authenticate.",
        }

    # --- introspection (Dovecot)

    def _introspect(self, form: Mapping[str, str]) -> dict[str, Any]:
        token = form.get("token", "")
        with self._lock:
            record = self._access_tokens.get(token)
            subject = record.subject if record else None
            self._requests.append(LoggedRequest("POST", "/introspect", None, subject))
            if self.introspection_status != 200:
                raise _Reply(self.introspection_status, {"error": "temporarily_unavailable"})
            if (
                record is None
                or subject is None
                or record.expires_at <= time.time()
                or record.audience not in _EXCHANGE_AUDIENCES
                or self.reject_imap_tokens
                or subject.lower() in {u.lower() for u in self.reject_imap_users}
            ):
                return {"active": False}
            return {
                "active": True,
                "username": subject,
                "client_id": record.client_id,
                "scope": " ".join(record.scopes),
                "token_type": "Bearer",
                "exp": int(record.expires_at),
                "aud": record.audience,
            }


class AppCertificate(NamedTuple):
    """An RSA certificate credential for an app registration (see :func:`make_app_certificate`)."""

    cert_pem: str
    key_pem: str
    sha1_thumbprint: str  # hex, as the Entra portal shows it
    sha256_thumbprint: str

    @property
    def combined_pem(self) -> bytes:
        """Certificate followed by key, the usual single-file form."""
        return (self.cert_pem + self.key_pem).encode()


def make_app_certificate(common_name: str = "exporter.contoso.example") -> AppCertificate:
    """A self-issued **RSA** certificate + key for ``client_credential``.

    trustme issues ECDSA keys by default, which msal cannot use (it signs assertions with
    PS256/RS256 and raises ``InvalidKeyError``); Entra ID accepts RSA certificates only.
    """
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        common_name, key_type=trustme.KeyType.RSA
    )
    cert_pem = leaf.cert_chain_pems[0].bytes().decode()
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return AppCertificate(
        cert_pem,
        leaf.private_key_pem.bytes().decode(),
        cert.fingerprint(hashes.SHA1()).hex().upper(),
        cert.fingerprint(hashes.SHA256()).hex().upper(),
    )


def start_fake_entra(ca: trustme.CA, hosts: Iterable[str] | None = None) -> FakeEntra:
    """Start a FakeEntra on the first loopback address whose port 443 is free.

    Two test sessions on one machine cannot both own 127.0.0.1:443; every 127.0.0.0/8
    address is local on Linux, so the next session moves to 127.0.0.2 and so on.
    """
    candidates = list(hosts) if hosts is not None else [f"127.0.0.{i}" for i in range(1, 17)]
    last: EntraUnavailableError | None = None
    for host in candidates:
        entra = FakeEntra(ca, host)
        try:
            return entra.start()
        except EntraUnavailableError as exc:
            last = exc
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EACCES:
                break  # not root: another address will not help
    assert last is not None
    raise last
