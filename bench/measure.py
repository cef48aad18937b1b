"""What the benchmark measures and how: processes seen through /proc, the exporter's and
blackbox_exporter's HTTP endpoints, Dovecot's logout lines, and an in-process IMAP session count.

Everything here observes from outside the measured process, except `count_imap_session`, which
runs one `MailboxRunner` in the bench process to see the IMAP dialogue line by line.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads, including ended ones)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A `kB` figure of /proc/PID/status, e.g. VmHWM (peak RSS) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 30.0, gzip: bool = False) -> tuple[bytes, float]:
    """The body (as sent: compressed when `gzip` and the server compressed it) and the
    client-side wall time of one GET."""
    began = time.perf_counter()
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
    return body, time.perf_counter() - began


def wait_http(url: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            http_get(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


class Process:
    """A child process with its log in `log_path`; stopped by its own pid only."""

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path = ROOT) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mib(self) -> float:
        return status_kib(self.pid, "VmHWM") / 1024

    def wait_idle(self, quiet: float = 1.0, timeout: float = 120.0) -> None:
        """Until the process used (almost) no CPU for `quiet` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            before = self.cpu()
            time.sleep(quiet)
            if self.cpu() - before <= 0.02 * quiet:
                return

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Exporter(Process):
    def __init__(
        self, config: Path, log_path: Path, extra: Sequence[str] = (), root: Path = ROOT
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                *extra,
            ],
            log_path,
            root,  # `python -m exporter` runs the tree in this directory
        )

    def start(self) -> None:
        super().start()
        wait_http(self.url + "/-/ready")

    def metrics(self) -> tuple[list[Sample], float]:
        body, seconds = http_get(self.url + "/metrics")
        return parse_metrics(body.decode()), seconds


# -- Prometheus text format ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if match:
            labels = dict(_LABEL_RE.findall(match.group(2) or ""))
            samples.append(Sample(match.group(1), labels, float(match.group(3))))
    return samples


def select(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


# -- Dovecot's logout lines ----------------------------------------------------------------------
_LOGOUT_RE = re.compile(
    r"imap\(([^)]+)\)<\d+><[^>]*>: Info: Disconnected: Logged out in=(\d+) out=(\d+)"
)


@dataclass
class Sessions:
    """IMAP sessions that ended (LOGOUT) in a window, from Dovecot's info log."""

    count: int = 0
    bytes_in: int = 0  # client -> server, after login (Dovecot's `in=`)
    bytes_out: int = 0  # server -> client, after login (`out=`)


class DovecotLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size

    def sessions(self, start: int, end: int, users: set[str]) -> Sessions:
        with self.path.open("rb") as handle:
            handle.seek(start)
            text = handle.read(end - start).decode(errors="replace")
        found = Sessions()
        for match in _LOGOUT_RE.finditer(text):
            if match.group(1).lower() in users:
                found.count += 1
                found.bytes_in += int(match.group(2))
                found.bytes_out += int(match.group(3))
        return found


# -- one IMAP session, seen from inside ----------------------------------------------------------
class ByteCountingProxy:
    """A loopback TCP relay that counts the bytes of each direction (TLS records included)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = 0  # client -> server
        self.received = 0  # server -> client
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in sel.select(timeout=30):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
                    with self._lock:
                        if source is client:
                            self.sent += len(data)
                        else:
                            self.received += len(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop = True
        self._server.close()


class CommandRecorder:
    """A TLS relay in front of Dovecot (the test bed's Exchange relay, transparent `dovecot`
    personality) that keeps every tagged command the client sends, in order: what reaches the
    server, whatever library sent it."""

    def __init__(self, ca: object, port: int) -> None:
        from tests.testbed.exchange_imap import ExchangeImapRelay

        recorder = self

        class _Relay(ExchangeImapRelay):
            def _answer_locally(
                self, session: object, tag: bytes, name: str, line: bytes
            ) -> bytes | None:
                words = line.split()[1:3]
                verb = words[0].decode("ascii", "replace").upper()
                if verb == "UID" and len(words) > 1:
                    verb += " " + words[1].decode("ascii", "replace").upper()
                recorder.commands.append(verb)
                return super()._answer_locally(session, tag, name, line)  # type: ignore[arg-type]

        self.commands: list[str] = []
        self.relay = _Relay(ca, "127.0.0.1", port, personality="dovecot").start()  # type: ignore[arg-type]
        self.port = self.relay.port

    def close(self) -> None:
        self.relay.stop()


@dataclass
class SessionCount:
    commands: list[str] = field(default_factory=list)  # command names in order
    wire_sent: int = 0  # bytes on the wire incl. TLS, client -> server
    wire_received: int = 0
    token_requests: int = 0  # HTTPS requests to the identity provider
    success: bool = False


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spin_until(predicate: object, timeout: float, step: float = 0.25) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(predicate) and predicate():
            return True
        time.sleep(step)
    return False


def probe_url(base: str, **params: str) -> str:
    return base + "/probe?" + urllib.parse.urlencode(params)
