"""The HTTP side: a small WSGI app for /, /metrics, /-/healthy, /-/ready and POST /-/reload."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.collector import CONTENT_TYPE, MetricsText
from exporter.failures import hint_for
from exporter.results import MailboxSnapshot
from exporter.runner import runnable_checks
from exporter.service import Service
from exporter.webconfig import BasicAuth, WebConfig

StartResponse = Callable[..., Any]


class ExporterApp:
    def __init__(self, service: Service, process_registry: CollectorRegistry | None = None) -> None:
        """`process_registry`: further collectors appended to /metrics (process metrics)."""
        self.service = service
        self.metrics = MetricsText(
            service.store,
            lambda: service.config,
            lambda: service.reload_ok,
            registry=process_registry,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return self._reply(start_response, "200 OK", self.metrics.render(), CONTENT_TYPE)
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

    def _probe(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Multi-target mode (the blackbox pattern): run one mailbox's checks now, within the
        scrape's timeout, and answer with just its metrics."""
        started = time.monotonic()
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
            self.service.store, lambda: one, lambda: True, exporter_metrics=False
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
                hint = failure.hint or hint_for(failure.reason, failure.code)
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
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>o365 mailbox exporter</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
tr.ok td:nth-child(3){{color:#176117}}tr.fail td:nth-child(3){{color:#b00020;font-weight:bold}}
tr.pending td:nth-child(3){{color:#777}}
</style></head><body>
<h1>o365 mailbox exporter</h1>
<p>Version {esc(__version__)} &middot; config reload: {esc(reload_state)} &middot;
<a href="/metrics">Metrics</a></p>
<table><tr><th>Mailbox</th><th>Check</th><th>Status</th><th>Last run</th><th>Last success</th>
<th>Last error</th><th>What to do</th></tr>
{"".join(rows)}
</table></body></html>
"""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: scrapes every few seconds would drown the check logs."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        # The handshake happens in the request's own thread (finish_request), so a slow or
        # hostile client never blocks the accept loop.
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(10)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return  # no client certificate, wrong CA, plain HTTP to a TLS port ...
            request.settimeout(None)
        super().finish_request(request, client_address)


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:9865`, `127.0.0.1:9865`, `[::1]:9865` -> (host, port). Raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address: {address!r} is not HOST:PORT")
    host = host.strip("[]")
    return host, int(port)


def make_http_server(
    address: str, app: ExporterApp, web_config: WebConfig | None = None
) -> WSGIServer:
    """The HTTP(S) server; `web_config` adds TLS and basic auth (see exporter/webconfig.py)."""
    host, port = parse_listen_address(address)
    server_class = _ThreadingWSGIServerV6 if ":" in host else _ThreadingWSGIServer
    wsgi: Any = app
    if web_config is not None and web_config.basic_auth_users:
        wsgi = BasicAuth(app, web_config.basic_auth_users)
    server = make_server(host or "0.0.0.0", port, wsgi, server_class, _QuietHandler)  # noqa: S104
    if web_config is not None and isinstance(server, _ThreadingWSGIServer):
        server.tls = web_config.tls
    return server
