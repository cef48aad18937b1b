"""An HTTPS reverse proxy in front of the FakeEntra for the faults the fake itself cannot produce.

The FakeEntra already answers 500 or 429 with Retry-After for one user (`set_error`), but its
`delay` slows every client of the session, it always answers with well-formed JSON, and its
certificate always has the right name. Pointing one mailbox's `authority_host` at this proxy
gives that mailbox alone:

| fault | what the client sees |
|---|---|
| `pass` | the FakeEntra (URLs in its answers rewritten to the proxy) |
| `refuse` | the port is closed: connection refused |
| `silent` | TCP and TLS are accepted, the request is read, no answer ever comes |
| `slow` | every answer comes `delay` seconds late |
| `malformed` | token requests get HTTP 200 with `body` (truncated JSON by default) |
| `trickle` | the request is read, then the answer comes one byte every `drip` seconds |
| `wrong_cert` | the TLS certificate is valid but issued for `wrong.example.net` |

Switching closes every open connection (MSAL's keep-alive connection would otherwise keep the
old certificate or the old fault).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trustme

KINDS = ("pass", "refuse", "silent", "slow", "malformed", "wrong_cert", "trickle")
# What a proxy or load balancer that cut the body short might deliver.
TRUNCATED_JSON = b'{"token_type": "Bearer", "scope": "https://outlook.office365.com/IMAP.Acc'


@dataclass(frozen=True)
class AuthorityFault:
    kind: str = "pass"
    delay: float = 3.0
    body: bytes = TRUNCATED_JSON
    drip: float = 0.3  # `trickle`: seconds between two bytes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown authority fault {self.kind!r}")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: AuthorityFaultProxy

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proxy = self.proxy
        fault = proxy.fault
        context = proxy._wrong_ctx if fault.kind == "wrong_cert" else proxy._server_ctx
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        proxy._track(tls, True)
        try:
            _Handler(tls, client_address, self)
        except OSError:
            pass
        finally:
            proxy._track(tls, False)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is what faults are about: stay quiet."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent, like the FakeEntra."""

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")

    def _forward(self, method: str) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = proxy.fault
        proxy.requests.append((method, self.path))
        if fault.kind == "silent":
            proxy._released.wait()
            self.close_connection = True
            return
        if fault.kind == "slow":
            time.sleep(fault.delay)
        if fault.kind == "trickle":
            self._trickle(method, body, fault.drip)
            return
        if fault.kind == "malformed" and method == "POST" and self.path.endswith("/token"):
            self._answer(200, fault.body, {"Content-Type": "application/json; charset=utf-8"})
            return
        status, data, headers = proxy._upstream(method, self.path, body, dict(self.headers))
        self._answer(status, data, headers)

    def _trickle(self, method: str, body: bytes, drip: float) -> None:
        """The real answer, one byte every `drip` seconds from the status line on: every
        read gets a byte before its timeout, so per-read timeouts never fire."""
        proxy = self.server.proxy
        released = proxy._released
        status, data, headers = proxy._upstream(method, self.path, body, dict(self.headers))
        head = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Unknown')}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"Content-Length: {len(data)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + data
        self.close_connection = True
        for index in range(len(raw)):
            if released.wait(drip):
                return
            self.connection.sendall(raw[index : index + 1])

    def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class AuthorityFaultProxy:
    """`url` is an authority_host whose answers come from `upstream_url` (the FakeEntra)."""

    def __init__(
        self,
        ca: trustme.CA,
        upstream_url: str,
        *,
        names: tuple[str, ...] = ("127.0.0.1",),
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.names = names
        self.upstream_url = upstream_url
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(self._server_ctx)
        self._wrong_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("wrong.example.net").configure_cert(self._wrong_ctx)
        self._client_ctx = ssl.create_default_context()
        ca.configure_trust(self._client_ctx)
        self.fault = AuthorityFault()
        self.requests: list[tuple[str, str]] = []
        self._released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._lock = threading.Lock()
        self._open: set[ssl.SSLSocket] = set()
        self.connections = 0  # TLS connections accepted, ever (a client's keep-alive reuse)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://{self.names[0]}:{self._port}"

    def start(self) -> AuthorityFaultProxy:
        server = _Server((self.host, self._port), _Handler)
        server.proxy = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"authority-proxy-{self._port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
        self._close_open()

    def set_fault(self, kind: str, *, keep_open: bool = False, **options: Any) -> None:
        """Switch to a fault (see the module docstring); `pass` removes it. `keep_open`: the
        client's kept-alive connections stay open and get the new fault on their next request
        (a connection that was fine when the pool kept it, and goes bad)."""
        fault = AuthorityFault(kind, **options)
        self._released.set()  # silent handlers give up their connection
        self._released = threading.Event()
        self.fault = fault
        if not keep_open:
            self._close_open()
        if kind == "refuse" and self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        elif kind != "refuse" and self._server is None:
            self.start()

    def _track(self, sock: ssl.SSLSocket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._open.add(sock)
                self.connections += 1
            else:
                self._open.discard(sock)

    def _close_open(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _upstream(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        upstream = urlsplit(self.upstream_url)
        connection = http.client.HTTPSConnection(
            upstream.hostname or "", upstream.port, context=self._client_ctx, timeout=30
        )
        forwarded = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
        try:
            connection.request(method, path, body=body or None, headers=forwarded)
            response = connection.getresponse()
            data = response.read()
            answer_headers = {
                k: v for k, v in response.getheaders()
                if k.lower() in ("content-type", "retry-after", "cache-control")
            }
            status = response.status
        finally:
            connection.close()
        # Discovery documents name the FakeEntra's own URL: keep the client on the proxy.
        data = data.replace(self.upstream_url.encode(), self.url.encode())
        return status, data, answer_headers
