"""MSAL applications, the persisted token cache, and one real token refresh per run.

Knows nothing of metrics. `MailboxAuth.refresh()` either returns a fresh `Token` or raises
`CheckFailed` with the contract's reason word, the AADSTS code and a remediation hint.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fcntl
import functools
import hashlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import msal
import msal.exceptions  # msal loads its submodule only from 1.32.1 on
import requests
import requests.adapters
import requests.utils
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from msal_extensions import FilePersistence, PersistedTokenCache
from msal_extensions.persistence import PersistenceNotFound
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from exporter.config import MailboxConfig, read_secret
from exporter.errors import SecretError, StateError
from exporter.failures import (
    DEVICE_CODE_ERRORS,
    PROGRAM,
    CheckFailed,
    Failure,
    aadsts_code,
    classify_token_error,
    fail,
    first_line,
    scrub,
)
from exporter.statefile import atomic_write
from exporter.tlsinfo import first_certificate_pem

log = logging.getLogger(__name__)

# ROPC is what the service desks use today; MSAL's deprecation notice on every run helps nobody
# (the README and `check` point to device_code / app-only as the ways forward).
warnings.filterwarnings(
    "ignore",
    message="This API has been deprecated for public client flows",
    category=DeprecationWarning,
)


class _WithholdResponseBodies(logging.Filter):
    """MSAL logs an answer it cannot parse whole, at ERROR ("Token response is not in json
    format: %s"). A token answer that a proxy cut short holds tokens, or pieces of them too
    short for `scrub`. The failure itself is reported as `protocol`; the body stays out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            count = len(record.args) if isinstance(record.args, tuple) else 1
            record.args = ("<response body withheld>",) * count
        return True


for _logger in ("msal.oauth2cli.oauth2", "msal.mex", "msal.wstrust_request"):
    logging.getLogger(_logger).addFilter(_WithholdResponseBodies())

# Hosts MSAL knows; any other authority_host gets instance discovery turned off so that
# no request ever goes to login.microsoftonline.com for it.
_MICROSOFT_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    }
)


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str
    expires_at: float  # unix time

    def __repr__(self) -> str:  # never print the token itself
        return f"Token(expires_at={self.expires_at:.0f})"


class HttpSession(requests.Session):
    """A requests session for MSAL with a fixed trust store, a timeout, a proxy decision made
    here, and connections that another thread can break.

    requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override `Session.verify` unless `verify`
    is passed per request, so it is passed per request here. The last response's status,
    Retry-After and Entra ID error fields are kept for classification (MSAL hides them).

    Deadlines: a peer that sends one byte every few tenths of a second never trips a per-read
    timeout, so the watchdog ends such a step from outside: `abort()` (and `close()`, which the
    runner's abort calls) shuts down the socket of every connection of this session, TLS
    handshakes and proxy tunnels included, and refuses new requests until `resume()` (the
    start of the next refresh), which then opens fresh connections.
    """

    def __init__(self, verify: str | bool, timeout: float, proxy_url: str | None = None) -> None:
        super().__init__()
        # Proxies and verify are passed with every request; requests' own reading of the
        # environment (proxies, .netrc, REQUESTS_CA_BUNDLE) walked all of os.environ several
        # times per refresh: 17 % of a run's CPU.
        self.trust_env = False
        # One connection pool per authority for every mailbox of the process (cookies stay
        # per session): 1,000 mailboxes keep a few kept-alive connections instead of 1,000,
        # and at a 60 s interval a refresh finds one still open instead of a new handshake.
        adapter = _shared_adapter()
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self.verify = verify
        self.default_timeout = timeout
        self.proxy_url = proxy_url
        self.last_status: int | None = None
        self.last_retry_after: float | None = None
        self.last_error: dict[str, Any] | None = None  # an error answer with an AADSTS code
        self.hooks["response"].append(self._remember)
        self._in_flight = _InFlight()

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("timeout", self.default_timeout)
        text_url = url.decode() if isinstance(url, bytes) else url
        proxies = self.proxies_for(text_url)
        kwargs.setdefault("proxies", proxies)
        # requests' timeout does not cover the DNS lookup (glibc waits 5 s per attempt, and
        # cannot be interrupted): look the host up under the deadline first. Through a proxy
        # that host is the proxy's: the authority's name is the proxy's to resolve (a client
        # behind one often cannot).
        proxy = requests.utils.select_proxy(text_url, proxies)
        if proxy:
            parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            default_port = 443 if parts.scheme == "https" else 80
        else:
            parts = urlsplit(text_url)
            default_port = 443
        host = parts.hostname or ""
        self._in_flight.check()
        try:
            resolve(host, parts.port or default_port, self.default_timeout)
        except TimeoutError as err:
            raise requests.exceptions.ConnectTimeout(str(err)) from err
        except OSError as err:
            what = "the proxy " if proxy else ""
            raise requests.exceptions.ConnectionError(
                f"cannot resolve {what}{host}: {err}"
            ) from err
        self._in_flight.check()
        token = _current_in_flight.set(self._in_flight)
        try:
            if not args and kwargs.keys() <= _DIRECT_ARGUMENTS:
                text_method = method.decode() if isinstance(method, bytes) else method
                response = self._send_directly(text_method, text_url, **kwargs)
                if response is not None:
                    return response
            return super().request(method, url, *args, **kwargs)
        finally:
            _current_in_flight.reset(token)

    def _send_directly(
        self,
        method: str,
        url: str,
        *,
        timeout: Any,
        verify: Any,
        proxies: dict[str, str],
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        json: Any = None,
        allow_redirects: bool = True,
    ) -> requests.Response | None:
        """MSAL's requests (a form POST, a GET with a query) straight to the transport
        adapter, or None for anything else (requests' whole path then takes it).

        requests' session layer (settings merged per request, runtime-checked protocols,
        cookies, redirects) cost more CPU than the HTTPS exchange itself: 12 % of a run. The
        authority needs no cookies and sends no redirects to a token client (a redirect is
        returned as it came: MSAL reports the answer it cannot read)."""
        if json is not None:
            return None
        if not url.isascii() or not url.startswith(("https://", "http://")) or " " in url:
            return None
        query = _form(params)
        if query is None:
            return None
        body = _form(data)
        if body is None:
            return None
        if query:
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        prepared = requests.PreparedRequest()
        prepared.method = method.upper()
        prepared.url = url
        merged: requests.structures.CaseInsensitiveDict[str] = (
            requests.structures.CaseInsensitiveDict({k: str(v) for k, v in self.headers.items()})
        )
        for name, value in (headers or {}).items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        if body:
            prepared.body = body.encode("ascii")
            merged.setdefault("Content-Type", "application/x-www-form-urlencoded")
            merged["Content-Length"] = str(len(prepared.body))
        elif prepared.method not in ("GET", "HEAD"):
            merged["Content-Length"] = "0"
        prepared.headers = merged
        response: requests.Response = self.get_adapter(url).send(
            prepared, stream=False, timeout=timeout, verify=verify, cert=None, proxies=proxies
        )
        _ = response.content  # the whole answer, under this session's deadline
        self._remember(response)
        return response

    def proxies_for(self, url: str) -> dict[str, str]:
        """The proxies for `url`: the mailbox's `proxy_url`, else requests' own reading of
        HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY (either case), so that NO_PROXY means
        exactly what it means to requests."""
        if self.proxy_url:
            return {"http": self.proxy_url, "https": self.proxy_url}
        parts = urlsplit(url)
        variables = tuple(os.environ.get(name) for name in _PROXY_VARIABLES)
        return dict(_environ_proxies(f"{parts.scheme}://{parts.netloc}", variables))

    def redact(self, text: str) -> str:
        """`text` without the proxy password (requests and urllib3 may quote a proxy URL)."""
        password = urlsplit(self.proxy_url).password if self.proxy_url else None
        if password:
            for form in {password, unquote(password)}:
                text = text.replace(form, "***")
        return text

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_status = response.status_code
        retry_after = response.headers.get("Retry-After", "")
        self.last_retry_after = float(retry_after) if retry_after.isdigit() else None
        self.last_error = _entra_error(response) if response.status_code >= 400 else None

    def forget(self) -> None:
        self.last_status = None
        self.last_retry_after = None
        self.last_error = None

    def abort(self) -> None:
        """Break every connection of this session now, and refuse new requests until
        `resume()`. Safe to call from any thread (the watchdog's)."""
        self._in_flight.abort()

    def resume(self) -> None:
        """Accept requests again after an `abort()`; they get fresh connections."""
        self._in_flight.resume()

    def close(self) -> None:
        """`abort()`. The pool is the process's (`drop_idle_connections()` empties it)."""
        self.abort()


# The arguments MSAL's `post()` and `get()` reach `request()` with (requests adds `json=None`
# and `allow_redirects`; this session `verify`, `timeout` and `proxies`): the requests that
# `_send_directly` can take.
_DIRECT_ARGUMENTS = frozenset(
    {"params", "data", "headers", "json", "allow_redirects", "timeout", "verify", "proxies"}
)


def _form(fields: Any) -> str | None:
    """`fields` (a dict of strings, or of lists of them; None values left out, as requests
    does) as application/x-www-form-urlencoded text, "" for none; None for anything else."""
    if not fields:
        return ""
    if not isinstance(fields, dict):
        return None
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is None:
                continue
            if not isinstance(name, str) or not isinstance(item, (str, int)):
                return None
            pairs.append((name, str(item)))
    return urlencode(pairs)


# The variables requests reads for an HTTP(S) proxy decision. The decision is cached per host
# and per value of these, so a changed environment (a test, a re-exec) is read again.
_PROXY_VARIABLES = (
    "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY",
    "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY",
)  # fmt: skip


@functools.lru_cache(maxsize=256)
def _environ_proxies(
    origin: str, _variables: tuple[str | None, ...]
) -> tuple[tuple[str, str], ...]:
    """requests' own reading of the proxy variables for `origin` (so NO_PROXY means what it
    means to requests), as a hashable tuple."""
    return tuple(sorted(requests.utils.get_environ_proxies(origin + "/").items()))


# Entra ID's error answers are small JSON objects; a larger body is not one of them.
_MAX_ERROR_BODY = 64 * 1024


def _entra_error(response: requests.Response) -> dict[str, Any] | None:
    """The OAuth error fields of an Entra ID error answer that carries an AADSTS code.

    MSAL turns a refused OIDC discovery (an unknown tenant: HTTP 400, AADSTS90002) into a bare
    ValueError; the code in the body says what to fix."""
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    if len(response.content) > _MAX_ERROR_BODY:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    fields = {k: body[k] for k in ("error", "error_description", "error_codes") if k in body}
    return fields if aadsts_code(fields) is not None else None


class _InFlight:
    """The sockets of one session's connections, for `abort()` from another thread.

    Each is a `dup()` of the connection's socket, taken when the TCP connection is made, or
    when a kept-alive connection is taken from the shared pool for this session's request
    (and dropped when it goes back, so another mailbox's abort never touches it):
    wrapping a socket in TLS detaches its file descriptor from the original object (so that
    object can no longer be shut down), while `shutdown()` on a duplicate acts on the shared
    socket at any stage (proxy tunnel, TLS handshake, request, answer). A duplicate is closed
    with its connection (or when the connection is collected), and shut down and closed only
    under the lock, so a descriptor number reused elsewhere is never touched.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._aborted = False

    def add(self, sock: socket.socket, owner: object) -> Callable[[], Any]:
        """Track `sock` for as long as `owner` (its connection) lives; returns the call that
        stops tracking it."""
        # A pooled connection's socket is already wrapped in TLS (an SSLSocket cannot dup()):
        # a plain socket object on a duplicate of its descriptor acts on the same socket.
        duplicate = socket.socket(fileno=os.dup(sock.fileno()))
        with self._lock:
            self._sockets.add(duplicate)
            if self._aborted:  # the abort came while this connection was being made
                _shut(duplicate)
        return weakref.finalize(owner, self._discard, duplicate)

    def _discard(self, duplicate: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(duplicate)
            duplicate.close()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            for duplicate in self._sockets:
                _shut(duplicate)

    def resume(self) -> None:
        with self._lock:
            self._aborted = False

    def check(self) -> None:
        with self._lock:
            aborted = self._aborted
        if aborted:
            raise requests.exceptions.ConnectionError("aborted at the run's deadline")


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# The session whose request is running in this thread: its connections register there.
_current_in_flight: contextvars.ContextVar[_InFlight | None] = contextvars.ContextVar(
    "o365_http_in_flight", default=None
)


class _Tracked:
    """Registers a urllib3 connection's socket with the session that opened it.

    `_new_conn()` (urllib3 1.26 and 2.x) makes the TCP connection, to the server or to the
    proxy; everything after it (CONNECT, TLS, the request) runs on that socket."""

    _untrack: Callable[[], Any] | None = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _register(self, sock)
        return sock

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            _unregister(self)


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    """urllib3's HTTP connection (to a proxy), its socket tracked."""


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    """urllib3's HTTPS connection, its socket tracked."""


def _register(conn: _Tracked, sock: socket.socket) -> None:
    _unregister(conn)
    in_flight = _current_in_flight.get()
    if in_flight is not None:
        conn._untrack = in_flight.add(sock, conn)


def _unregister(conn: _Tracked) -> None:
    untrack, conn._untrack = conn._untrack, None
    if untrack is not None:
        untrack()


class _TrackedPool:
    """A pool whose connections serve whichever session's request takes them: a kept-alive
    connection is registered with the requesting session while it serves the request."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        sock = getattr(conn, "sock", None)
        if sock is not None and sock.fileno() >= 0:  # kept alive (new ones: _new_conn)
            _register(conn, sock)
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            _unregister(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _TrackedHTTPConnectionPool(_TrackedPool, HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSConnectionPool(_TrackedPool, HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_TRACKED_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _TrackedHTTPConnectionPool,
    "https": _TrackedHTTPSConnectionPool,
}


# Lookups still waiting for a dead resolver, at most: each holds a thread until glibc gives up.
_pending_lookups = threading.BoundedSemaphore(32)


def resolve(host: str, port: int, timeout: float) -> list[tuple[str, int]]:
    """The (address, port) pairs of `host`, or TimeoutError after `timeout` seconds.

    Every network step has a deadline, the DNS lookup too: glibc's resolver waits 5 s per
    attempt (10 s and more in all) and a blocked `getaddrinfo` cannot be interrupted by the
    watchdog. So the lookup runs on a helper thread and the caller stops waiting at its
    deadline; the thread ends when glibc gives up. At most 32 lookups wait at once, so a dead
    resolver costs a bounded number of threads. Nothing is cached: the next call asks again.
    Raises `socket.gaierror` when the name does not resolve.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [(host, port)]
    if not _pending_lookups.acquire(blocking=False):
        raise TimeoutError(f"the DNS lookup of {host} cannot start: the resolver is not answering")
    future: Future[list[tuple[str, int]]] = Future()
    threading.Thread(
        target=_lookup, args=(host, port, future), name="dns-lookup", daemon=True
    ).start()
    try:
        return future.result(timeout)
    except FutureTimeout:
        raise TimeoutError(f"the DNS lookup of {host} took longer than {timeout:g}s") from None


def _lookup(host: str, port: int, future: Future[list[tuple[str, int]]]) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        future.set_result([(str(info[4][0]), int(info[4][1])) for info in infos])
    except OSError as err:
        future.set_exception(err)
    finally:
        _pending_lookups.release()


def system_ca_file() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def combined_ca_bundle(ca_file: Path, state_dir: Path) -> str:
    """A PEM bundle of the system CAs plus `ca_file`, for requests (which takes one path)."""
    extra = ca_file.read_bytes()
    system = system_ca_file()
    system_pem = Path(system).read_bytes() if system else b""
    digest = hashlib.sha256(system_pem + extra).hexdigest()[:16]
    bundle = state_dir / f"ca-bundle-{digest}.pem"
    if not bundle.exists():
        atomic_write(bundle, system_pem + b"\n" + extra, 0o644)
    return str(bundle)


# TLS contexts are shared, one per trust source: each holds a parsed copy of the system CA
# store (about 0.8 MiB and 18 ms of CPU to build), and a context is safe to share across
# threads. A changed file (by mtime and size) gets a new context.
_contexts: dict[tuple[str, str, int, int], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _shared_context(kind: str, path: str | None) -> ssl.SSLContext:
    stat = os.stat(path) if path else None
    key = (kind, path or "", stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    with _contexts_lock:
        context = _contexts.get(key)
        if context is None:
            if kind == "bundle":  # requests' verify=PATH: that bundle alone
                context = ssl.create_default_context(cafile=path)
                # urllib3 (1.26 and 2.x) matches the host name itself when the context does
                # not (CERT_REQUIRED stays); urllib3 1.26 sends no server_hostname for an IP
                # address, which a checking context refuses.
                context.check_hostname = False
            else:  # IMAP/SMTP: the system store plus the extra CA
                context = ssl.create_default_context()
                if path:
                    context.load_verify_locations(cafile=path)
            _contexts[key] = context
        return context


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """System trust plus the mailbox's extra CA, for IMAP and SMTP (shared per file)."""
    return _shared_context("extra", str(ca_file) if ca_file is not None else None)


class _SharedContextAdapter(requests.adapters.HTTPAdapter):
    """Verifies with one shared SSLContext per trust bundle. Left alone, requests has urllib3
    build a context and parse the whole bundle for every new connection (at a 60 s interval
    every refresh is a new connection): 20 ms of CPU and 0.8 MiB a time. The subclassing
    points are the ones requests documents for a custom SSLContext."""

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[Any, Any]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if isinstance(verify, str) and not os.path.isdir(verify):
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs["ssl_context"] = _shared_context("bundle", verify)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        if isinstance(verify, str) and not os.path.isdir(verify):
            conn.ca_certs = None  # the shared context already holds the bundle


class _SessionAdapter(_SharedContextAdapter):
    """Pools (direct and through a proxy) whose connections register their sockets with the
    session (see `HttpSession.abort`). `pool_classes_by_scheme` is the PoolManager's (and
    ProxyManager's) table of pool classes in urllib3 1.26 and 2.x; SOCKS proxies keep their
    own pools."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _TRACKED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _TRACKED_POOLS
        return manager


# Kept-alive connections per authority (and per trust bundle and proxy): more than the
# scheduler's default concurrency, so that a busy minute never discards a connection.
_POOL_SIZE = 64
_adapter: _SessionAdapter | None = None
_adapter_lock = threading.Lock()


def _shared_adapter() -> _SessionAdapter:
    """The process's one adapter, and so its one pool per authority, for every mailbox."""
    global _adapter
    with _adapter_lock:
        if _adapter is None:
            _adapter = _SessionAdapter(pool_connections=_POOL_SIZE, pool_maxsize=_POOL_SIZE)
        return _adapter


def drop_idle_connections() -> None:
    """Close the kept-alive connections to every authority (the next requests reconnect)."""
    adapter = _shared_adapter()
    adapter.poolmanager.clear()
    for manager in list(adapter.proxy_manager.values()):
        manager.clear()


class AtomicFilePersistence(FilePersistence):  # type: ignore[misc]
    """msal-extensions' file persistence, written by atomic replace with mode 0600.

    A crash mid-write leaves the previous cache, never a torn file.
    """

    def save(self, content: str) -> None:
        atomic_write(Path(self.get_location()), content.encode("utf-8"), 0o600)

    def load(self) -> str:
        """The cache text; a corrupt file (not a JSON object, not even UTF-8) is set aside and
        treated as empty, so a damaged cache costs one password sign-in, never a crash or a
        permanent failure."""
        try:
            content: str = super().load()
            if not isinstance(json.loads(content), dict):
                raise ValueError("not a JSON object")
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
            location = Path(self.get_location())
            aside = location.with_name(f"{location.name}.corrupt-{int(time.time())}")
            try:
                os.replace(location, aside)
            except FileNotFoundError:  # another process set it aside first
                pass
            else:
                log.warning("token cache is corrupt; set aside", extra={"path": str(aside)})
            raise PersistenceNotFound(location=str(location)) from None
        return content


def ensure_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (state_dir / "tokens").mkdir(mode=0o700, exist_ok=True)
    except OSError as err:
        raise StateError(f"state_dir {state_dir}: {err.strerror}") from err


class FlockTokenCache(PersistedTokenCache):  # type: ignore[misc]
    """msal-extensions' persisted cache, its writes serialized by flock(2).

    Without `portalocker`, msal-extensions locks by creating `NAME.json.lockfile` and deleting
    it afterwards. A process killed inside that lock (kill -9, the OOM killer) leaves the file
    behind, and every later write by any process waits 5 s and fails ("Unable to obtain
    lock"): the mailbox's token check failed on every run until someone deleted the file. The
    kernel releases a flock when its process dies, so a crash never leaves a lock behind. The
    lock file (`NAME.json.lock`, empty, 0600) stays in place; reads stay lock-free (every
    write is an atomic replace).

    One serialisation and one durable write per token answer: MSAL records an answer with a
    `modify()` per credential type (access token, refresh token, ID token, account, app
    metadata), and msal-extensions reloads, serialises, writes and fsyncs the whole cache for
    each of them. Here `add()` (one answer) applies them in memory and writes once, under the
    flock; as do the removals of access tokens that come just before a new one (app-only
    flows: `remove_tokens_for_client`), which ride along with the next write; a refresh-token
    grant's answer rides along with the rotated refresh token's `update_rt()` that MSAL makes
    right after it (should a server send no new refresh token, with the next write: the file
    then keeps the still valid old one). Another process
    (`login`, `check`) that wrote the file meanwhile is not overwritten: its version is loaded
    under the lock and this process's changes are applied on top, as msal-extensions does per
    `modify()`. Every other change (a removed refresh token or account) is written at once.
    """

    LOCK_WAIT_SECONDS = 5.0

    def __init__(self, persistence: Any, lock_location: str | None = None) -> None:
        super().__init__(persistence, lock_location)
        self._deferring = False
        self._pending: list[tuple[Any, Any, Any]] = []  # modify() calls not yet written

    def add(self, event: Any, **kwargs: Any) -> None:
        self._deferring = True
        try:
            super().add(event, **kwargs)
        finally:
            self._deferring = False
        # A refresh-token grant's answer comes without its new refresh token: MSAL stores that
        # right after, by update_rt() (a modify() written at once), so both go in one write.
        response = event.get("response") if isinstance(event, dict) else None
        rotating = (
            event.get("grant_type") == "refresh_token"
            and isinstance(response, dict)
            and "refresh_token" not in response
        )
        if self._pending and not rotating:
            with self._flock():
                self._write_pending()

    def modify(
        self,
        credential_type: Any,
        old_entry: Any,
        new_key_value_pairs: Any = None,
    ) -> None:
        # The grandparent's modify changes memory only (the parent's would lock and write).
        change = (credential_type, old_entry, new_key_value_pairs)
        removes_access_token = (
            credential_type == self.CredentialType.ACCESS_TOKEN and new_key_value_pairs is None
        )
        if self._deferring or removes_access_token:
            super(PersistedTokenCache, self).modify(*change)
            self._pending.append(change)
            return
        with self._flock():
            self._pending.append(change)
            self._write_pending()

    def serialize(self) -> str:
        """The cache as compact JSON. MSAL's own (`indent=4`) runs json's pure-Python encoder:
        6 % of a run's CPU; without an indent the C encoder does it."""
        with self._lock:
            self.has_state_changed = False
            return json.dumps(self._cache, separators=(",", ":"))

    def _write_pending(self) -> None:
        """Under the flock: the file's latest version (if another process changed it), this
        process's pending changes on top, one write."""
        self._reload_if_necessary()
        # Replayed even when nothing was reloaded: a search() in the middle of add() may have
        # reloaded the file over changes made before it. A replay is idempotent.
        for change in self._pending:
            super(PersistedTokenCache, self).modify(*change)
        self._persistence.save(self.serialize())
        self._last_sync = time.time()
        self._pending.clear()

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        location = self._persistence.get_location() + ".lock"
        fd = os.open(location, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            give_up = time.monotonic() + self.LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        raise StateError(f"token cache {location} stayed locked") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock


def token_cache(state_dir: Path, mailbox: str) -> PersistedTokenCache:
    """The mailbox's token cache file, shared safely by `serve`, `check` and `login`."""
    ensure_state_dir(state_dir)
    location = state_dir / "tokens" / f"{mailbox}.json"
    return FlockTokenCache(AtomicFilePersistence(str(location)))


def _certificate_credential(pem: str) -> dict[str, str]:
    certificate_pem = first_certificate_pem(pem)
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    return {
        "private_key": pem,
        "thumbprint": certificate.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - Entra's x5t
        "public_certificate": certificate_pem,
    }


class MailboxAuth:
    """One mailbox's MSAL application and token cache, kept across runs.

    Not thread-safe by design: the scheduler never runs one mailbox twice at once.
    """

    def __init__(self, mailbox: MailboxConfig, state_dir: Path) -> None:
        self.mailbox = mailbox
        self.state_dir = state_dir
        verify: str | bool = True
        if mailbox.ca_file is not None:
            ensure_state_dir(state_dir)
            verify = combined_ca_bundle(mailbox.ca_file, state_dir)
        self.session = HttpSession(verify, mailbox.timeout, mailbox.proxy_url)
        self.cache = token_cache(state_dir, mailbox.name)
        # MSAL replays an error answer from memory instead of asking again: a 400 for 60 s, a
        # 429/5xx for Retry-After or 60 s. The exporter has its own retry policy (the credential
        # backoff, which honours Retry-After), and every run must be a real refresh: a replayed
        # 500 made a mailbox look down for a minute after Entra ID had recovered, reported as
        # `protocol`. So MSAL gets this dict as its HTTP cache and it is emptied before each
        # refresh.
        self._http_cache: dict[Any, Any] = {}
        self._app: msal.ClientApplication | None = None
        self._app_secret_digest = ""
        self._lock = threading.Lock()

    # -- application -------------------------------------------------------------------------
    def _secret(self) -> str:
        try:
            return read_secret(self.mailbox.auth)
        except SecretError as err:
            raise fail("invalid_client", str(err), hint="Fix the secret file or variable.") from err

    def _application(self, secret: str) -> msal.ClientApplication:
        """Build (or reuse) the MSAL application. The constructor fetches OIDC discovery."""
        digest = hashlib.sha256(secret.encode()).hexdigest()
        same_secret = not self.mailbox.auth.app_only or digest == self._app_secret_digest
        if self._app is not None and same_secret:
            return self._app
        mailbox = self.mailbox
        host = urlsplit(mailbox.authority_host).hostname or ""
        common: dict[str, Any] = {
            "authority": mailbox.authority,
            "token_cache": self.cache,
            "http_client": self.session,
            "instance_discovery": host in _MICROSOFT_HOSTS,
            "timeout": mailbox.timeout,
            "http_cache": self._http_cache,
        }
        credential: str | dict[str, str]
        try:
            if mailbox.auth.app_only:
                credential = (
                    _certificate_credential(secret)
                    if mailbox.auth.flow == "client_certificate"
                    else secret
                )
                app: msal.ClientApplication = msal.ConfidentialClientApplication(
                    mailbox.client_id, client_credential=credential, **common
                )
            else:
                app = msal.PublicClientApplication(mailbox.client_id, **common)
        except ValueError as err:  # MSAL reports a bad authority/OIDC answer as ValueError
            raise _network_failure(err, self.session) from err
        except (requests.RequestException, msal.exceptions.MsalError) as err:  # 5xx: MsalError
            raise _network_failure(err, self.session) from err
        self._app = app
        self._app_secret_digest = digest
        return app

    def abort(self) -> None:
        """Break the authority connections of the running step (from the watchdog's thread);
        the next `refresh()` starts afresh."""
        self.session.abort()

    # -- the token check ---------------------------------------------------------------------
    def refresh(self, timeout: float | None = None) -> Token:
        """Obtain a new access token from the network, never from the cache.

        `timeout` bounds each HTTP request (default: the mailbox's timeout)."""
        with self._lock:
            self.session.default_timeout = timeout or self.mailbox.timeout
            self.session.resume()
            secret = self._secret()
            self.session.forget()
            self._http_cache.clear()
            app = self._application(secret)
            try:
                result = self._acquire(app, secret)
            except requests.RequestException as err:
                raise _network_failure(err, self.session) from err
            except (ValueError, msal.exceptions.MsalError) as err:
                raise _network_failure(err, self.session) from err
            return self._token_from(result)

    def _acquire(self, app: msal.ClientApplication, secret: str) -> dict[str, Any] | None:
        mailbox = self.mailbox
        scopes = list(mailbox.scopes)
        if isinstance(app, msal.ConfidentialClientApplication):
            app.remove_tokens_for_client()  # a cached app token does not count
            result: dict[str, Any] | None = app.acquire_token_for_client(scopes)
            return result
        account = self._account(app)
        result = None
        if account is not None:
            result = app.acquire_token_silent_with_error(scopes, account, force_refresh=True)
            if result is not None and "access_token" in result:
                return result
        if mailbox.auth.flow == "password" and _may_fall_back_to_password(result):
            # ROPC: no refresh token yet, or it expired/was revoked: sign in with the password.
            self.session.forget()
            result = app.acquire_token_by_username_password(mailbox.username, secret, scopes)
        return result

    def _account(self, app: msal.ClientApplication) -> dict[str, Any] | None:
        accounts = app.get_accounts(username=self.mailbox.username)
        return accounts[0] if accounts else None

    def _token_from(self, result: dict[str, Any] | None) -> Token:
        if result is None:
            raise fail(
                "interaction_required",
                "no signed-in account in the token cache",
                hint="Run `o365-mailbox-exporter login` to sign in with a device code.",
            )
        if "access_token" not in result:
            failure = classify_token_error(
                result, self.session.last_status, self.session.last_retry_after
            )
            raise CheckFailed(failure)
        expires_in = float(result.get("expires_in", 0))
        return Token(result["access_token"], time.time() + expires_in)

    # -- `login`: device code ----------------------------------------------------------------
    def device_code_login(self, show: Callable[[DeviceCodePrompt], None]) -> DeviceLogin:
        """Interactive device-code sign-in; seeds the token cache with a refresh token.

        Only the configured user may seed the cache: a code approved in a browser signed in as
        someone else (typically the admin running `login`) is refused, and that account's
        tokens are removed from the cache file again (`WrongAccountError`). An expired or
        declined code fails with `interaction_required` and a hint of its own."""
        self.session.resume()
        app = self._application("")
        flow = app.initiate_device_flow(scopes=list(self.mailbox.scopes))
        if "user_code" not in flow:
            raise CheckFailed(classify_token_error(flow, self.session.last_status))
        expires_in = float(flow.get("expires_in") or 0)
        show(
            DeviceCodePrompt(
                message=str(flow["message"]),
                user_code=str(flow["user_code"]),
                expires_in=expires_in,
                expires_at=float(flow.get("expires_at") or time.time() + expires_in),
            )
        )
        result = app.acquire_token_by_device_flow(flow)
        if result is not None and "access_token" not in result:
            # A device-code answer is an OAuth error, not an HTTP failure: no "HTTP 400" in it.
            device_error = result.get("error") in (*DEVICE_CODE_ERRORS, *_PENDING)
            status = None if device_error else self.session.last_status
            failure = classify_token_error(result, status)
            if result.get("error") in (*_PENDING, "expired_token", "code_expired"):
                minutes = f" ({expires_in / 60:.0f} minutes)" if expires_in else ""
                message = f"the device code expired{minutes} before the sign-in was approved"
                failure = dataclasses.replace(failure, message=message)
            raise CheckFailed(failure)
        signed_in = _signed_in_username(result)
        wanted = self.mailbox.username
        if signed_in is not None and signed_in.casefold() != wanted.casefold():
            for account in app.get_accounts(username=signed_in):
                app.remove_account(account)  # its refresh token must not stay in the cache
            raise WrongAccountError(signed_in, wanted)
        token = self._token_from(result)
        return DeviceLogin(token, signed_in or wanted)


@dataclass(frozen=True, slots=True)
class DeviceCodePrompt:
    """What `login` shows: Entra ID's instruction (URL and code) and how long the code lasts."""

    message: str
    user_code: str
    expires_in: float  # seconds
    expires_at: float  # unix time


@dataclass(frozen=True, slots=True)
class DeviceLogin:
    token: Token
    username: str  # the account that actually signed in


class WrongAccountError(CheckFailed):
    """The device code was approved by an account other than the mailbox's `username`."""

    def __init__(self, signed_in: str, wanted: str) -> None:
        super().__init__(
            Failure(
                "interaction_required",
                "",
                f"the device code was approved in a browser signed in as {signed_in}, "
                f"not as {wanted}; nothing was kept in the token cache",
                f"Sign out of {signed_in} in that browser, or open a private window, run "
                f"`{PROGRAM} login` again and sign in as {wanted}.",
            )
        )
        self.signed_in = signed_in
        self.wanted = wanted


# What Entra ID answers while nobody has approved the code yet; MSAL returns it when the code's
# lifetime is over.
_PENDING = ("authorization_pending", "slow_down")


def _signed_in_username(result: dict[str, Any] | None) -> str | None:
    """The account a token answer is for: the id_token's preferred_username (what MSAL records
    as the account's username), else its upn or email."""
    claims = (result or {}).get("id_token_claims") or {}
    for claim in ("preferred_username", "upn", "email"):
        value = claims.get(claim)
        if isinstance(value, str) and value:
            return value
    return None


def _may_fall_back_to_password(result: dict[str, Any] | None) -> bool:
    if result is None or "access_token" in result:
        return True
    failure = classify_token_error(result)
    return failure.reason == "invalid_grant"


def _network_failure(err: BaseException, session: HttpSession) -> CheckFailed:
    """Classify an exception raised while talking to the authority.

    `code` carries only an AADSTS code, never an HTTP status (the status is in the message).
    """
    status = session.last_status
    detail = session.redact(scrub(first_line(err)))
    if isinstance(err, requests.exceptions.SSLError):
        return fail("tls", f"TLS to the authority failed: {detail}")
    if isinstance(err, requests.exceptions.Timeout):
        return fail("timeout", "the authority did not answer in time")
    if isinstance(err, requests.exceptions.ProxyError):
        return fail("connection", f"cannot reach the authority through the proxy: {detail}")
    if isinstance(err, requests.exceptions.ConnectionError):
        return fail("connection", f"cannot reach the authority: {detail}")
    if session.last_error is not None:
        # MSAL hides the body of a refused OIDC discovery (ValueError): classify by its AADSTS
        # code, e.g. an unknown tenant_id (HTTP 400, AADSTS90002).
        return CheckFailed(
            classify_token_error(session.last_error, status, session.last_retry_after)
        )
    if status == 429:
        return CheckFailed(
            Failure(
                "throttled",
                "",
                "the authority is throttling requests (HTTP 429)",
                retry_after=session.last_retry_after,
            )
        )
    if status is not None and status >= 500:
        return fail("unknown", f"the authority answered HTTP {status}")
    return fail("protocol", f"unexpected answer from the authority: {detail}")


__all__ = [
    "AtomicFilePersistence",
    "DeviceCodePrompt",
    "DeviceLogin",
    "Failure",
    "HttpSession",
    "MailboxAuth",
    "Token",
    "WrongAccountError",
    "ensure_state_dir",
    "tls_context",
    "token_cache",
]
