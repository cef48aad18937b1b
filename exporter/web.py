"""The HTTP side: a small WSGI app for /, /metrics, /probe, /-/healthy, /-/ready and
POST /-/reload, and the server that runs it without letting slow clients starve it (HttpServer:
one asyncio thread for every socket, bounded worker threads for the app)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gzip
import html
import io
import logging
import os
import queue
import shlex
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.collector import CONTENT_TYPE, MetricsText
from exporter.failures import PROGRAM
from exporter.results import MailboxSnapshot
from exporter.runner import runnable_checks
from exporter.service import Service
from exporter.webconfig import BasicAuth, ResponseHeaders, WebConfig

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

log = logging.getLogger("exporter.web")

# The monotonic time the server had the whole request; /probe counts its budget from here, so
# time spent waiting for a worker thread is not time the run may still spend.
REQUEST_STARTED_KEY = "exporter.request_started"


class ExporterApp:
    def __init__(self, service: Service, process_registry: CollectorRegistry | None = None) -> None:
        """`process_registry`: further collectors appended to /metrics (process metrics)."""
        self.service = service
        self.metrics = MetricsText(
            service.store,
            lambda: service.config,
            lambda: service.reload_ok,
            registry=process_registry,
            scheduled=service.scheduler.scheduled,
            reload_success_time=lambda: service.reload_success_time,
        )
        self._gzip = _GzipCache()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/probe":
            return self._probe(environ, start_response)
        if path == "/-/healthy":
            return self._reply(start_response, "200 OK", b"Healthy.\n")
        if path == "/-/ready":
            if self.service.ready:
                return self._reply(start_response, "200 OK", b"Ready.\n")
            return self._reply(start_response, "503 Service Unavailable", b"Not ready.\n")
        if path == "/-/reload":
            if method not in ("POST", "PUT"):
                return self._reply(
                    start_response, "405 Method Not Allowed", b"Use POST to reload.\n"
                )
            problems = self.service.reload()
            if problems:
                body = ("failed to reload config:\n" + "\n".join(problems) + "\n").encode()
                return self._reply(start_response, "500 Internal Server Error", body)
            return self._reply(start_response, "200 OK", b"Config reloaded.\n")
        if path == "/":
            page = render_landing(self.service.store.snapshot(), self.service)
            return self._reply(start_response, "200 OK", page.encode(), "text/html; charset=utf-8")
        return self._reply(start_response, "404 Not Found", b"Not found.\n")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The exposition, gzipped when the client accepts it (Prometheus does): at 1,000
        mailboxes 2.9 MB of text become about 0.2 MB. Compressed at level 1 (several times
        cheaper than 6, nearly as small on such repetitive text); a render equal to the last
        one reuses its compressed form."""
        body = self.metrics.render()
        headers = [("Content-Type", CONTENT_TYPE), ("Vary", "Accept-Encoding")]
        if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = self._gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    def _probe(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Multi-target mode (the blackbox pattern): run one mailbox's checks now, within the
        scrape's timeout, and answer with just its metrics."""
        started = float(environ.get(REQUEST_STARTED_KEY) or time.monotonic())
        query = parse_qs(environ.get("QUERY_STRING", ""))
        # `target` too: the Prometheus Operator's Probe object sends its targets that way.
        name = (query.get("mailbox") or query.get("target") or [""])[0]
        config = self.service.config
        mailbox = next((m for m in config.mailboxes if m.name == name), None) if config else None
        if config is None or mailbox is None:
            body = f"unknown mailbox {name!r} (not in this exporter's config or shard)\n"
            return self._reply(start_response, "400 Bad Request", body.encode())
        budget = _scrape_timeout(environ, default=mailbox.timeout * len(mailbox.checks))
        deadline = started + max(0.1, budget - PROBE_MARGIN_SECONDS)
        # If a run already going does not end in time, answer with the latest results.
        with contextlib.suppress(TimeoutError):
            self.service.scheduler.run_now(name, deadline)
        one = dataclasses.replace(config, mailboxes=(mailbox,))
        text = MetricsText(
            self.service.store, lambda: one, lambda: True, exporter_metrics=False, scheduled=False
        ).render()
        return self._reply(start_response, "200 OK", text, CONTENT_TYPE)

    @staticmethod
    def _reply(
        start_response: StartResponse,
        status: str,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
    ) -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


class _GzipCache:
    """gzip of the latest /metrics body, reused while the body stays the same (between runs,
    scrapes by several Prometheus servers or by Prometheus and a person see the same text)."""

    LEVEL = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plain = b""
        self._packed = b""

    def compress(self, body: bytes) -> bytes:
        with self._lock:
            if body == self._plain and self._packed:
                return self._packed
        packed = gzip.compress(body, compresslevel=self.LEVEL, mtime=0)
        with self._lock:
            self._plain, self._packed = body, packed
        return packed


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding value accepts gzip (`gzip`/`x-gzip`, else `*`; not q=0)."""
    named: float | None = None
    wildcard: float | None = None
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        quality = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
        if coding in ("gzip", "x-gzip"):
            named = max(named or 0.0, quality)
        elif coding == "*":
            wildcard = quality
    chosen = named if named is not None else wildcard
    return chosen is not None and chosen > 0


# Answer this much before Prometheus gives up on the scrape (encoding, network).
PROBE_MARGIN_SECONDS = 0.5


def _scrape_timeout(environ: dict[str, Any], default: float) -> float:
    header = environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS", "")
    try:
        value = float(header)
    except ValueError:
        return default
    return value if value > 0 else default


def _ago(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    seconds = max(0, int(now - timestamp))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


# The landing page reloads itself this often at most (and as often as the fastest mailbox is
# checked, but not more than every 5 s).
LANDING_REFRESH_SECONDS = 30
LANDING_REFRESH_MIN_SECONDS = 5


def landing_refresh_seconds(service: Service) -> int:
    config = service.config
    fastest = min((m.interval for m in config.mailboxes), default=None) if config else None
    if fastest is None:
        return LANDING_REFRESH_SECONDS
    return int(max(LANDING_REFRESH_MIN_SECONDS, min(LANDING_REFRESH_SECONDS, fastest)))


def _reload_failure(service: Service, now: float) -> str:
    """Why the last reload failed (every problem, escaped) and how to check a fix; empty
    after a good reload."""
    problems = service.reload_problems
    if not problems:
        return ""
    esc = html.escape
    items = "".join(f"<li><code>{esc(problem)}</code></li>" for problem in problems)
    config_file = shlex.quote(os.path.abspath(service.config_path))
    check = f"{PROGRAM} --config.check --config.file={config_file}"
    return (
        '<section class="reload-failed"><h2>Config reload failed</h2>'
        f"<p>The last reload ({esc(_ago(service.reload_failure_time, now))}) was refused; the "
        "exporter keeps running with the config it had before. Problems:</p>"
        f"<ul>{items}</ul>"
        f"<p>Check a fix with <code>{esc(check)}</code>, then reload "
        "(<code>POST /-/reload</code> or SIGHUP).</p></section>"
    )


def render_landing(snapshots: list[MailboxSnapshot], service: Service) -> str:
    """Each mailbox's checks, the last error and its hint. Everything is escaped; no secrets
    or message content are ever in the store, so none can reach this page."""
    now = time.time()
    esc = html.escape
    config = service.config
    by_name = {s.name: s for s in snapshots}
    rows: list[str] = []
    for mailbox in config.mailboxes if config else ():
        snap = by_name.get(mailbox.name)
        for check in runnable_checks(mailbox):
            result = snap.checks.get(check) if snap else None
            if result is None:
                status, detail, hint = "pending", "", ""
            elif result.success:
                status, detail, hint = "ok", "", ""
            else:
                failure = result.failure
                assert failure is not None
                status = f"FAIL: {failure.reason}" + (f" ({failure.code})" if failure.code else "")
                detail = failure.message
                hint = service.pasteable(failure.remediation, mailbox.name)
            last_ok = snap.last_success.get(check) if snap else None
            cls = "ok" if status == "ok" else ("pending" if status == "pending" else "fail")
            rows.append(
                f'<tr class="{cls}"><td>{esc(mailbox.name)}</td><td>{esc(check)}</td>'
                f"<td>{esc(status)}</td>"
                f"<td>{esc(_ago(result.ended_at if result else None, now))}</td>"
                f"<td>{esc(_ago(last_ok, now))}</td>"
                f"<td>{esc(detail)}</td><td>{esc(hint)}</td></tr>"
            )
    reload_state = "ok" if service.reload_ok else "FAILED (old config kept)"
    refresh = landing_refresh_seconds(service)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>o365 mailbox exporter</title>
<meta http-equiv="refresh" content="{refresh}">
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
tr.ok td:nth-child(3){{color:#176117}}tr.fail td:nth-child(3){{color:#b00020;font-weight:bold}}
tr.pending td:nth-child(3){{color:#777}}
.reload-failed{{border:2px solid #b00020;padding:.3em 1em;margin:1em 0}}
</style></head><body>
<h1>o365 mailbox exporter</h1>
<p>Version {esc(__version__)} &middot; config reload: {esc(reload_state)} &middot;
<a href="/metrics">Metrics</a> &middot; this page refreshes every {refresh}s</p>
{_reload_failure(service, now)}
<table><tr><th>Mailbox</th><th>Check</th><th>Status</th><th>Last run</th><th>Last success</th>
<th>Last error</th><th>What to do</th></tr>
{"".join(rows)}
</table></body></html>
"""


# --- the server ------------------------------------------------------------------------------
#
# One asyncio thread owns every socket: it accepts, does the TLS handshake, reads the request
# head and body under one deadline counted from accept, and writes the answer. Only a complete
# request reaches a thread: the app runs in a small pool, /probe (which may take the scrape's
# whole timeout) in a pool of its own, so slow probes never queue ahead of /metrics. A stalled
# client costs a few KiB and a descriptor, never a thread, and is cut when its time is up.


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    request_seconds: float = 30.0  # accept -> complete request (TLS handshake, head, body)
    response_seconds: float = 30.0  # a client must have taken its answer within this
    head_bytes: int = 64 * 1024  # request line + headers
    body_bytes: int = 64 * 1024  # no endpoint reads a body; this only bounds what is buffered
    app_threads: int = 4  # /metrics, /, /-/healthy, /-/ready, /-/reload
    slow_threads: int = 16  # /probe; cli.serve sizes it to --checks.max-concurrency
    slow_paths: frozenset[str] = frozenset({"/probe"})
    max_connections: int = 1024  # beyond this, the oldest connection still sending is cut
    backlog: int = 1024


class _WorkerPool:
    """At most `size` threads, started when needed. Daemon threads (unlike ThreadPoolExecutor's)
    so that a /probe still running at SIGTERM cannot hold up the exit."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        if self._idle.acquire(timeout=0):
            return
        with self._lock:
            if self._threads >= self._size:
                return
            self._threads += 1
            name = f"{self._name}-{self._threads}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
            self._idle.release()

    def shutdown(self) -> None:
        with self._lock:
            for _ in range(self._threads):
                self._jobs.put(None)


@dataclasses.dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""


class _BadRequest(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _parse_head(head: bytes) -> _Request:
    """Request line and header fields (RFC 9112), strictly: anything odd is a 400."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes every byte
        raise _BadRequest("400 Bad Request") from err
    line, *fields = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise _BadRequest("400 Bad Request")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest("505 HTTP Version Not Supported")
    headers: list[tuple[str, str]] = []
    for field in fields:
        name, colon, value = field.partition(":")
        if not colon or not name or name != name.strip() or field[0] in " \t":
            raise _BadRequest("400 Bad Request")  # no obs-fold, no space before the colon
        headers.append((name, value.strip(" \t")))
    return _Request(method, target, version, headers)


def _environ(request: _Request, connection: _Connection) -> dict[str, Any]:
    target = request.target
    if not target.startswith("/"):  # absolute form: http://host:port/path
        try:
            target = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
        except ValueError as err:
            raise _BadRequest("400 Bad Request") from err
    path, _, query = target.partition("?")
    server_name, server_port = connection.server.server_address[:2]
    peer = connection.peer
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "iso-8859-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": str(server_name),
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": request.version,
        "REMOTE_ADDR": str(peer[0]) if peer else "",
        "CONTENT_LENGTH": str(len(request.body)) if request.body else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if connection.server.tls else "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        REQUEST_STARTED_KEY: time.monotonic(),
    }
    for name, value in request.headers:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
            continue
        key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _respond(app: WsgiApp, environ: dict[str, Any]) -> bytes:
    """Run the app once and return the whole HTTP answer (our answers are small)."""
    reply: list[Any] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and reply:
            raise exc_info[1].with_traceback(exc_info[2])
        reply[:] = [status, headers]
        return chunks.append

    try:
        result = app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = reply
    except Exception:  # one broken request must answer 500, not end the server
        log.exception("http request failed", extra={"path": environ.get("PATH_INFO", "")})
        return _simple_answer("500 Internal Server Error", environ["REQUEST_METHOD"] == "HEAD")
    body = b"".join(chunks)
    return _encode_answer(status, headers, body, environ["REQUEST_METHOD"] == "HEAD")


def _encode_answer(status: str, headers: list[tuple[str, str]], body: bytes, head: bool) -> bytes:
    names = {name.lower() for name, _ in headers}
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
    if "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if "date" not in names:
        lines.append(f"Date: {formatdate(usegmt=True)}")
    lines.append("Connection: close")  # one request per connection: nothing idles
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def _simple_answer(status: str, head: bool = False) -> bytes:
    body = (status.split(" ", 1)[1] + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    return _encode_answer(status, headers, body, head)


class _Connection(asyncio.Protocol):
    """One client: head and body are read under the deadline counted from accept, then the
    app runs in a worker thread and the answer is written; the connection then closes."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        # Created at accept, before the TLS handshake (whose own timeout is the same limit).
        self.deadline = self.loop.time() + server.limits.request_seconds
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.buffer = bytearray()
        self.request: _Request | None = None
        self.body_length = 0
        self.reading = True
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.timer = self.loop.call_at(self.deadline, transport.abort)
        self.server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server.closed(self)

    def data_received(self, data: bytes) -> None:
        if not self.reading:
            return  # one request per connection; anything after it is ignored
        self.buffer += data
        try:
            if self.request is None:
                end = self.buffer.find(b"\r\n\r\n", 0, self.server.limits.head_bytes + 4)
                if end < 0:
                    if len(self.buffer) > self.server.limits.head_bytes:
                        raise _BadRequest("431 Request Header Fields Too Large")
                    return
                self.request = _parse_head(bytes(self.buffer[:end]))
                del self.buffer[: end + 4]
                self.body_length = self._body_length(self.request)
            if len(self.buffer) < self.body_length:
                return
        except _BadRequest as bad:
            self._finish(_simple_answer(bad.status))
            return
        self.request.body = bytes(self.buffer[: self.body_length])
        self.buffer.clear()
        try:
            environ = _environ(self.request, self)
        except _BadRequest as bad:
            self._finish(_simple_answer(bad.status))
            return
        self._dispatch(environ)

    def eof_received(self) -> bool:
        # A client may half-close after its request and still wait for the answer (TLS
        # transports cannot stay half-open; there a close_notify ends the connection).
        return not self.reading and self.server.tls is None

    def _body_length(self, request: _Request) -> int:
        fields = {name.lower(): value for name, value in request.headers}
        if "transfer-encoding" in fields:
            raise _BadRequest("501 Not Implemented")  # no endpoint takes a streamed body
        length = fields.get("content-length", "0")
        if not length.isdigit():
            raise _BadRequest("400 Bad Request")
        if int(length) > self.server.limits.body_bytes:
            raise _BadRequest("413 Content Too Large")
        if int(length) and fields.get("expect", "").lower() == "100-continue":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return int(length)

    def _dispatch(self, environ: dict[str, Any]) -> None:
        assert self.transport is not None
        self.reading = False
        if self.timer is not None:
            self.timer.cancel()  # the request is complete: the app's time is the app's
        self.transport.pause_reading()
        slow = environ["PATH_INFO"] in self.server.limits.slow_paths
        pool = self.server.slow_pool if slow else self.server.app_pool
        app = self.server.app
        loop = self.loop

        def job() -> None:
            answer = _respond(app, environ)
            with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
                loop.call_soon_threadsafe(self._finish, answer)

        pool.submit(job)

    def _finish(self, answer: bytes) -> None:
        self.reading = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.timer is not None:
            self.timer.cancel()
        # A client that does not read its answer is cut, like one that does not send.
        self.timer = self.loop.call_later(self.server.limits.response_seconds, transport.abort)
        transport.write(answer)
        transport.close()

    @property
    def sending(self) -> bool:
        """Still sending its request (stalled clients look like this)."""
        return self.reading

    def abort(self) -> None:
        self.reading = False
        if self.transport is not None:
            self.transport.abort()


CERTIFICATE_CHECK_SECONDS = 5.0


class HttpServer:
    """The exporter's HTTP(S) server. `serve_forever()` runs it in the calling thread until
    `shutdown()` (callable from any thread); `server_close()` releases the listening sockets."""

    def __init__(
        self,
        sockets: list[socket.socket],
        app: WsgiApp,
        tls: ssl.SSLContext | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.sockets = sockets
        self.app = app
        self.tls = tls
        self.limits = limits or HttpLimits()
        self.server_address: tuple[str, int] = sockets[0].getsockname()[:2]
        self.app_pool = _WorkerPool(self.limits.app_threads, "http")
        self.slow_pool = _WorkerPool(self.limits.slow_threads, "http-probe")
        self._connections: dict[_Connection, None] = {}  # oldest first
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # Called every CERTIFICATE_CHECK_SECONDS in the event loop's thread (the one that
        # starts every TLS session, so a reload never races a handshake's setup).
        self.tls_reload: Callable[[], object] | None = None

    def serve_forever(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        reloading = asyncio.ensure_future(self._reload_certificates())
        servers = []
        for sock in self.sockets:
            tls_options: dict[str, Any] = {}
            if self.tls is not None:
                tls_options = {
                    "ssl": self.tls,
                    "ssl_handshake_timeout": self.limits.request_seconds,
                    "ssl_shutdown_timeout": 5.0,
                }
            servers.append(
                await self._loop.create_server(
                    lambda: _Connection(self),
                    sock=sock,
                    backlog=self.limits.backlog,
                    **tls_options,
                )
            )
        try:
            if not self._stopping.is_set():
                await self._wake.wait()
        finally:
            for server in servers:
                server.close()
            for connection in list(self._connections):
                connection.abort()
            reloading.cancel()
            self.app_pool.shutdown()
            self.slow_pool.shutdown()
            await asyncio.sleep(0)  # let the aborts run their connection_lost
            self._loop = None

    async def _reload_certificates(self) -> None:
        """A certificate renewed in place (cert-manager) serves new handshakes within seconds."""
        while self.tls_reload is not None:
            await asyncio.sleep(CERTIFICATE_CHECK_SECONDS)
            self.tls_reload()

    def shutdown(self) -> None:
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(wake.set)

    def server_close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def opened(self, connection: _Connection) -> None:
        self._connections[connection] = None
        if len(self._connections) <= self.limits.max_connections:
            return
        # Too many at once: make room by cutting the client that has been sending longest.
        oldest = next((c for c in self._connections if c.sending), connection)
        self._connections.pop(oldest)
        oldest.abort()

    def closed(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:9865`, `127.0.0.1:9865`, `[::1]:9865` -> (host, port). Raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address: {address!r} is not HOST:PORT")
    host = host.strip("[]")
    return host, int(port)


def bind_listen_address(address: str, backlog: int = 1024) -> list[socket.socket]:
    """`:PORT` listens on every address, IPv6 and IPv4 on one dual-stack socket (IPv4 only on
    a machine without IPv6); `HOST:PORT` and `[V6]:PORT` on just that address."""
    host, port = parse_listen_address(address)
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [socket.create_server((host, port), family=family, backlog=backlog)]
    if socket.has_dualstack_ipv6():
        try:
            return [
                socket.create_server(
                    ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=backlog
                )
            ]
        except OSError as err:
            if err.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise
    return [socket.create_server(("0.0.0.0", port), backlog=backlog)]  # noqa: S104


def make_http_server(
    address: str,
    app: WsgiApp,
    web_config: WebConfig | None = None,
    limits: HttpLimits | None = None,
) -> HttpServer:
    """The HTTP(S) server, bound (errors are raised here, not in serve_forever); `web_config`
    adds TLS and basic auth (see exporter/webconfig.py)."""
    limits = limits or HttpLimits()
    wsgi: WsgiApp = app
    if web_config is not None and web_config.basic_auth_users:
        wsgi = BasicAuth(app, web_config.basic_auth_users)
    if web_config is not None and web_config.headers:
        wsgi = ResponseHeaders(wsgi, web_config.headers)
    sockets = bind_listen_address(address, limits.backlog)
    server = HttpServer(sockets, wsgi, web_config.tls if web_config else None, limits)
    if web_config is not None and web_config.certificate is not None:
        server.tls_reload = web_config.reload_certificate
    return server
