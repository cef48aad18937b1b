"""The HTTP server cannot be starved: stalled and trickling clients are cut 30 s after they
connect, serving threads are bounded, slow /probe requests never hold up /metrics, and `:PORT`
listens on IPv4 and IPv6."""

from __future__ import annotations

import contextlib
import errno
import http.client
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from exporter.web import HttpLimits, HttpServer, make_http_server
from tests.conftest import ROOT, free_port, write_config
from tests.test_failure_reasons import hung_server  # noqa: F401 - fixture

STALLED = 400
TRICKLING = 6  # of the partial ones: one more byte every second, never a whole request line


@dataclass
class StalledClients:
    """Connections that never finish a request, and when the server closed each one."""

    sockets: list[socket.socket]
    kinds: list[str]  # "partial", "silent" or "trickle"
    opened_at: list[float]
    closed_at: dict[int, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def open_count(self) -> int:
        return len(self.sockets) - len(self.closed_at)

    def lifetimes(self) -> list[float]:
        return [self.closed_at[i] - self.opened_at[i] for i in sorted(self.closed_at)]

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        for sock in self.sockets:
            sock.close()


def open_stalled_clients(
    host: str, port: int, count: int = STALLED, trickling: int = TRICKLING
) -> StalledClients:
    """Half send a partial request line, half nothing; `trickling` of the partial ones keep
    sending one byte a second. A watcher records when the server closes each connection."""
    clients = StalledClients([], [], [])
    for index in range(count):
        sock = socket.create_connection((host, port), timeout=10)
        clients.opened_at.append(time.monotonic())
        if index % 2 == 0:
            sock.sendall(b"GET /metr")
            kind = "trickle" if index // 2 < trickling else "partial"
        else:
            kind = "silent"
        clients.sockets.append(sock)
        clients.kinds.append(kind)

    def watch() -> None:
        selector = selectors.DefaultSelector()
        for index, sock in enumerate(clients.sockets):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        while not clients.stop.is_set() and clients.open_count():
            for key, _ in selector.select(timeout=0.1):
                index = key.data
                try:
                    data = clients.sockets[index].recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    clients.closed_at[index] = time.monotonic()
                    selector.unregister(key.fileobj)
        selector.close()

    def trickle() -> None:
        while not clients.stop.wait(1.0):
            for index, sock in enumerate(clients.sockets):
                if clients.kinds[index] == "trickle" and index not in clients.closed_at:
                    try:
                        sock.send(b"a")
                    except OSError as err:
                        if err.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EAGAIN):
                            raise

    for target in (watch, trickle):
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        clients.threads.append(thread)
    return clients


def proc_status(pid: int) -> dict[str, int]:
    """Threads and VmRSS (KiB) of a process, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def timed_get(url: str, timeout: float = 5.0) -> tuple[float, str]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode()
    return time.monotonic() - started, body


def last_run(body: str, mailbox: str) -> float:
    pattern = (
        r'^o365_mailbox_check_last_run_timestamp_seconds\{check="token",mailbox="'
        + re.escape(mailbox)
        + r'"\} (\S+)$'
    )
    found = re.search(pattern, body, re.MULTILINE)
    assert found, body
    return float(found.group(1))


@dataclass
class Scrapes:
    """/metrics polled every 0.2 s from another thread: latency, process figures, last runs."""

    url: str
    pid: int
    latencies: list[float] = field(default_factory=list)
    runs: list[tuple[float, float]] = field(default_factory=list)  # (scraped at, last run)
    peak: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        while not self.stop.wait(0.2):
            latency, body = timed_get(self.url + "/metrics")
            self.latencies.append(latency)
            self.runs.append((time.time(), last_run(body, "box")))
            status = proc_status(self.pid)
            self.peak = {key: max(self.peak.get(key, 0), status[key]) for key in status}

    @contextlib.contextmanager
    def running(self) -> Iterator[Scrapes]:
        errors: list[BaseException] = []

        def poll() -> None:
            try:
                self.poll()
            except BaseException as err:  # surfaced in the test's thread
                errors.append(err)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join()
        if errors:
            raise errors[0]


def test_stalled_clients_cannot_starve_metrics_and_are_cut_at_30s(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("box")], interval="1s")
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="box")
    pid = exporter.proc.pid
    time.sleep(1.0)  # let the exporter settle
    before = proc_status(pid)

    with Scrapes(exporter.url, pid).running() as scrapes:
        time.sleep(1.0)
        clients = open_stalled_clients("127.0.0.1", exporter.port)
        opening = clients.opened_at[-1] - clients.opened_at[0]
        try:
            while clients.open_count() and time.monotonic() - clients.opened_at[-1] < 40:
                time.sleep(0.2)
            lifetimes = clients.lifetimes()
        finally:
            clients.close()
    peak, latencies, runs = scrapes.peak, scrapes.latencies, scrapes.runs
    print(
        f"\n{STALLED} stalled clients opened in {opening:.1f} s; /metrics max "
        f"{max(latencies) * 1000:.0f} ms over {len(latencies)} scrapes; threads "
        f"{before['Threads']} -> {peak['Threads']}; RSS {before['VmRSS'] / 1024:.1f} -> "
        f"{peak['VmRSS'] / 1024:.1f} MiB; closed {len(lifetimes)}/{STALLED}"
        + (f" after {min(lifetimes):.1f}-{max(lifetimes):.1f} s" if lifetimes else "")
    )

    assert max(latencies) < 1.0
    assert len(lifetimes) == STALLED  # every stalled connection was closed by the server ...
    assert min(lifetimes) >= 29.5 and max(lifetimes) <= 35.0  # ... 30 s after it connected
    assert peak["Threads"] <= before["Threads"] + 4
    assert peak["VmRSS"] - before["VmRSS"] < 64 * 1024
    # The mailbox kept its 1 s schedule the whole time: its last run was never older than 3 s.
    assert runs[-1][0] - runs[0][0] > 29
    assert all(scraped - value < 3.0 for scraped, value in runs)
    assert runs[-1][1] - runs[0][1] > 25


def test_slow_probes_never_hold_up_metrics(
    make_mailbox,
    entra,
    dovecot,
    tmp_path,
    exporter_process,
    hung_server,  # noqa: F811
):
    """20 /probe requests for a mailbox whose IMAP server never answers fill the probe
    threads; /metrics still answers at once, and the probes answer within their timeout."""
    stuck = make_mailbox("stuck", imap={"host": "127.0.0.1", "port": hung_server})
    config = write_config(tmp_path, entra, dovecot, [stuck], timeout="20s")
    exporter = exporter_process(config, "--probe.only", "--checks.max-concurrency=4")
    before = proc_status(exporter.proc.pid)
    answers: list[tuple[int, float]] = []

    def probe() -> None:
        request = urllib.request.Request(f"{exporter.url}/probe?mailbox=stuck")
        request.add_header("X-Prometheus-Scrape-Timeout-Seconds", "4")
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            answers.append((response.status, time.monotonic() - started))

    probes = [threading.Thread(target=probe) for _ in range(20)]
    for thread in probes:
        thread.start()
    time.sleep(0.5)
    latencies = [timed_get(exporter.url + "/metrics")[0] for _ in range(10)]
    threads = proc_status(exporter.proc.pid)["Threads"]
    for thread in probes:
        thread.join()

    assert max(latencies) < 1.0
    assert threads <= before["Threads"] + 4 + 2  # 4 probe threads, a watchdog, a DNS helper
    assert sorted(status for status, _ in answers) == [200] * 20
    # Four at a time: each waits at most its own 4 s budget counted from its arrival.
    assert max(elapsed for _, elapsed in answers) < 4.5


@pytest.fixture
def short_limits_server() -> Iterator[tuple[HttpServer, list[dict[str, Any]], threading.Event]]:
    """An in-process server with a 2 s request limit around a small WSGI app that records what
    it was given; /probe blocks until the test sets the event."""
    seen: list[dict[str, Any]] = []
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append({**environ, "body": environ["wsgi.input"].read()})
        if environ["PATH_INFO"] == "/probe":
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello " + environ["PATH_INFO"].encode()]

    limits = HttpLimits(request_seconds=2.0, response_seconds=2.0, app_threads=2, slow_threads=2)
    server = make_http_server("127.0.0.1:0", app, None, limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, seen, release
    release.set()
    server.shutdown()
    thread.join(5)
    assert not thread.is_alive()
    server.server_close()


def exchange(port: int, request: bytes, per_byte: float = 0.0) -> tuple[bytes, float]:
    """Send `request` (one byte every `per_byte` seconds if given), read until the server
    closes; returns what came back and when the close came (seconds after connecting)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        try:
            if per_byte:
                for byte in request:
                    sock.sendall(bytes([byte]))
                    time.sleep(per_byte)
            else:
                sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer, time.monotonic() - started


def test_request_limit_counts_from_accept_not_per_read(short_limits_server):
    server, seen, _ = short_limits_server
    port = server.server_address[1]
    # One byte every 0.3 s: every read is quick, the request never ends; cut at 2 s.
    answer, closed_after = exchange(port, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 20, 0.3)
    assert answer == b""
    assert 1.9 <= closed_after < 3.0
    assert seen == []
    # A slow request that does end within the limit is answered.
    answer, _ = exchange(port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n", 0.03)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nhello /slow")
    assert b"\r\nConnection: close\r\n" in answer


def test_requests_are_parsed_and_bounded(short_limits_server):
    server, seen, _ = short_limits_server
    port = server.server_address[1]
    answer, _ = exchange(
        port,
        b"POST /-/reload?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Two: 1\r\n"
        b"X-Two: 2\r\n\r\nhello",
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    environ = seen[-1]
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]) == (
        "POST",
        "/-/reload",
        "x=1",
    )
    assert (environ["body"], environ["HTTP_X_TWO"], environ["CONTENT_LENGTH"]) == (
        b"hello",
        "1,2",
        "5",
    )

    head, _ = exchange(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 14\r\n" in head and head.endswith(b"\r\n\r\n")

    huge, _ = exchange(port, b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431 ")
    big_body, _ = exchange(port, b"POST /x HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
    assert big_body.startswith(b"HTTP/1.1 413 ")
    garbage, _ = exchange(port, b"\x16\x03\x01 hello\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    chunked, _ = exchange(port, b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 501 ")
    absolute, _ = exchange(port, b"GET http://a:1/abs?q=2 HTTP/1.1\r\n\r\n")
    assert absolute.endswith(b"hello /abs") and seen[-1]["QUERY_STRING"] == "q=2"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /half-closed HTTP/1.0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # as `nc -N` does: the answer must still come
        assert sock.makefile("rb").read().endswith(b"hello /half-closed")
    assert len(seen) == 4  # only the good requests reached the app


def test_blocked_probe_threads_leave_the_app_threads_free(short_limits_server):
    server, seen, release = short_limits_server
    port = server.server_address[1]
    threads_before = threading.active_count()
    probes = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    for sock in probes:
        sock.sendall(b"GET /probe HTTP/1.1\r\n\r\n")
    time.sleep(0.3)
    threads = threading.active_count()
    started = time.monotonic()
    answer, _ = exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert time.monotonic() - started < 0.5
    assert answer.endswith(b"hello /metrics")
    assert sum(1 for e in seen if e["PATH_INFO"] == "/probe") == 2  # two probe threads
    assert threads == threads_before + 2  # ten probes waiting, two probe threads
    release.set()
    for sock in probes:
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        sock.close()


def test_too_many_connections_cut_the_oldest_still_sending(monkeypatch):
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    server = make_http_server("127.0.0.1:0", app, None, HttpLimits(max_connections=10))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(15)]
        time.sleep(0.3)  # all accepted: five over the limit
        answer, _ = exchange(port, b"GET / HTTP/1.1\r\n\r\n")  # the sixth over it
        assert answer.endswith(b"\r\n\r\nok")
        closed = []
        for sock in stalled:
            sock.settimeout(0.5)
            try:
                closed.append(sock.recv(10) == b"")
            except ConnectionResetError:
                closed.append(True)
            except TimeoutError:
                closed.append(False)
            sock.close()
        assert closed == [True] * 6 + [False] * 9  # the oldest went first
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
            return sock.recv(100).startswith(b"HTTP/1.1 200 OK")
    except OSError:
        return False


def test_empty_host_listens_on_ipv4_and_ipv6_and_sigterm_is_quick(
    make_mailbox, entra, dovecot, tmp_path
):
    assert socket.has_ipv6 and answers_on_loopback_v6()
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("box")])
    port = free_port()
    log = (tmp_path / "exporter.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            f"--config.file={config}",
            f"--web.listen-address=:{port}",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        end = time.monotonic() + 15
        while not answers("127.0.0.1", port) and time.monotonic() < end:
            time.sleep(0.05)
        assert answers("127.0.0.1", port)
        assert answers("::1", port)
        conn = http.client.HTTPConnection("::1", port, timeout=5)
        conn.request("GET", "/metrics")
        assert b"o365_mailbox_exporter_build_info" in conn.getresponse().read()
        conn.close()
        stalled = open_stalled_clients("::1", port, count=50, trickling=2)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 2.0
        stalled.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def answers_on_loopback_v6() -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            return False
    return True


def test_a_named_address_binds_just_that_address(monkeypatch):
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    def serving(address: str) -> Iterator[int]:
        server = make_http_server(address, app)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join(5)
            server.server_close()

    for port in serving("127.0.0.1:0"):
        assert answers("127.0.0.1", port) and not answers("::1", port)
    for port in serving("[::1]:0"):
        assert answers("::1", port) and not answers("127.0.0.1", port)
    # A machine without IPv6: `:PORT` falls back to IPv4 alone.
    monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
    server = make_http_server(":0", app)
    assert [s.family for s in server.sockets] == [socket.AF_INET]
    server.server_close()
