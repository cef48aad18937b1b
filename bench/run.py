"""Benchmark: what one exporter costs, from one mailbox to a thousand, and next to
blackbox_exporter's TLS probe of the same IMAP server.

    python -m bench.run [--quick] [--only KEY,...] [--workdir DIR] [--no-profile]

Not a test: it prints a table, ratios and issue 7's targets, each met or not, and writes them
to WORKDIR/results.md and results.json. It starts the test bed (fake Entra ID + a private
Dovecot, see docs/testbed.md) with small inboxes for 1, 100 and 1,000 mailboxes and single
inboxes of 100, 10,000 and 100,000 messages, runs the exporter as a separate process for each
configuration and measures that process only (/proc/PID/stat, VmHWM); IMAP sessions and their
bytes come from Dovecot's log, commands from one in-process run with imapclient's debug log.

Needs root (the fake Entra ID also listens on port 443), Dovecot, prometheus-blackbox-exporter
and py-spy. The full run takes about 10 minutes on 2 cores; --quick about 40 seconds.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.bed import BenchBed, small_inbox, steady_inbox, storm_inbox
from bench.measure import (
    ROOT,
    DovecotLog,
    Exporter,
    Process,
    Sample,
    SessionCount,
    Sessions,
    free_port,
    http_get,
    median,
    parse_metrics,
    probe_url,
    select,
    spin_until,
    wait_http,
)

BLACKBOX = "prometheus-blackbox-exporter"


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    shape: str  # which inbox: small, steady-N, storm-N
    mailboxes: int
    interval: float  # seconds between runs of a mailbox
    window: float  # seconds measured (a whole number of intervals)
    timeout: float = 0.0  # per check; 0 = the interval
    probe_rate: float = 0.0  # > 0: --probe.only, driven through /probe at this rate
    profile: float = 0.0  # seconds of py-spy after the window
    naive: bool = False  # the naive msal + imapclient script (bench/naive.py) instead
    root: Path | None = None  # another exporter tree (--baseline): the "before" rows


@dataclass
class Result:
    key: str
    label: str
    mailboxes: int
    inbox: int
    runs: int = 0
    cpu_ms_per_run: float = float("nan")
    cpu_percent: float = float("nan")  # of one core over the window
    wall_ms: float = float("nan")  # median of the runs' summed check durations
    imap_commands: int = 0
    wire_kib: float = float("nan")  # both directions, TLS included, one run
    imap_in: float = float("nan")  # Dovecot's post-login in= per session
    imap_out: float = float("nan")
    peak_rss_mib: float = float("nan")
    metrics_ms: float = float("nan")  # median of 20 GETs of /metrics when idle
    metrics_kib: float = float("nan")
    metrics_gzip_kib: float = float("nan")  # the same scrape with Accept-Encoding: gzip
    metrics_gzip_ms: float = float("nan")
    startup_peak_percent: float = float("nan")  # busiest second of the first cycle
    startup_seconds: float = float("nan")  # start until every mailbox's first run ended
    startup_cpu_s: float = float("nan")  # CPU seconds of that first cycle
    failures: int = 0
    notes: list[str] = field(default_factory=list)


def full_scenarios() -> list[Scenario]:
    return [
        Scenario("m1", "1 mailbox", "small", 1, interval=1, window=30),
        Scenario(
            "naive", "naive msal + imapclient script", "small", 1, interval=1, window=30, naive=True
        ),
        Scenario("m100", "100 mailboxes", "small", 100, interval=10, window=30),
        Scenario(
            "m1000",
            "1,000 mailboxes",
            "small",
            1000,
            interval=60,
            window=120,
            timeout=30,
            profile=60,
        ),
        Scenario("i100", "inbox 100", "steady-100", 1, interval=1, window=30),
        Scenario("i10k", "inbox 10,000", "steady-10000", 1, interval=1, window=30),
        Scenario("i100k", "inbox 100,000", "steady-100000", 1, interval=1, window=30),
        Scenario("storm", "inbox 100,000, all today", "storm-100000", 1, interval=10, window=30),
        Scenario(
            "probe",
            "1 mailbox via /probe",
            "small",
            1,
            interval=60,
            window=20,
            timeout=10,
            probe_rate=10,
        ),
    ]


def quick_scenarios() -> list[Scenario]:
    return [
        Scenario("m1", "1 mailbox", "small", 1, interval=1, window=4),
        Scenario(
            "naive", "naive msal + imapclient script", "small", 1, interval=1, window=4, naive=True
        ),
        Scenario("m10", "10 mailboxes", "small", 10, interval=2, window=4),
        Scenario("i100", "inbox 100", "steady-100", 1, interval=1, window=4),
        Scenario("i10k", "inbox 10,000", "steady-10000", 1, interval=1, window=4),
        Scenario(
            "probe",
            "1 mailbox via /probe",
            "small",
            1,
            interval=60,
            window=3,
            timeout=10,
            probe_rate=10,
        ),
    ]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, workdir: Path, scenarios: list[Scenario], profile: bool) -> None:
        self.workdir = workdir
        self.scenarios = scenarios
        self.profile = profile
        self.bed = BenchBed(workdir / "bed")
        self.names: dict[str, list[str]] = {}  # shape -> mailbox names
        self.counts: dict[str, SessionCount] = {}  # shape -> one run seen from inside
        self.results: list[Result] = []
        self.blackbox: dict[str, float] = {}
        self.profile_lines: list[str] = []
        self.check_cpu: dict[str, float] = {}  # check -> median thread CPU ms, in-process
        self.connection_cpu: dict[str, float] = {}  # authority connection kept / new -> ms
        self.python_probe_ms = float("nan")  # blackbox's probe done in Python, CPU ms
        self.cprofile_lines: list[str] = []

    # -- set-up ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        began = time.monotonic()
        self.bed.start()
        small = max((s.mailboxes for s in self.scenarios if s.shape == "small"), default=0)
        now = self.bed.now
        self.names["small"] = [f"desk{i:04d}" for i in range(small)]
        for name in self.names["small"]:
            self.bed.add_mailbox(name, small_inbox(now))
        for shape in sorted({s.shape for s in self.scenarios} - {"small"}):
            kind, count = shape.split("-")
            name = f"{kind}{count}"
            make = steady_inbox if kind == "steady" else storm_inbox
            self.bed.add_mailbox(name, make(int(count), now))
            self.bed.index(name)
            self.names[shape] = [name]
        say(f"bed ready in {time.monotonic() - began:.1f}s: {len(self.bed.mailboxes)} mailboxes")

    def inside(self, quick: bool) -> None:
        """One run of each inbox shape seen from inside, and where one run's CPU goes."""
        for shape, names in self.names.items():
            if names:
                self.counts[shape] = self.bed.count_imap_session(names[0])
        if self.names.get("small"):
            name = self.names["small"][0]
            self.check_cpu = self.bed.cpu_by_check(name, runs=10 if quick else 100)
            self.python_probe_ms = self.bed.python_banner_probe(runs=10 if quick else 100)
            self.connection_cpu = self.bed.cpu_by_connection(name, runs=10 if quick else 50)
            if not quick:
                self.cprofile_lines = self.bed.cprofile(name, runs=200)

    # -- one configuration -----------------------------------------------------------------------
    def run(self, scenario: Scenario) -> Result:
        names = self.names[scenario.shape][: scenario.mailboxes]
        inbox = 5 if scenario.shape == "small" else int(scenario.shape.split("-")[1])
        result = Result(scenario.key, scenario.label, len(names), inbox)
        config = self.bed.write_config(
            self.workdir / f"{scenario.key}.yml",
            names,
            interval=scenario.interval,
            timeout=scenario.timeout or scenario.interval,
        )
        if scenario.naive:
            self._measure_naive(config, scenario, names[0], result)
            return result
        extra = ["--probe.only"] if scenario.probe_rate else []
        exporter = Exporter(
            config, self.workdir / f"{scenario.key}.log", extra, root=scenario.root or ROOT
        )
        started = time.monotonic()
        exporter.start()
        startup = StartupSampler(exporter, started)
        try:
            if scenario.probe_rate:
                self._measure_probe(exporter, scenario, names[0], result)
            else:
                self._measure_schedule(exporter, scenario, names, result, startup)
            result.peak_rss_mib = exporter.peak_rss_mib()
            if scenario.profile and self.profile:
                self.profile_lines = profile(exporter, scenario.profile, self.workdir)
        finally:
            exporter.stop()
        count = self.counts.get(scenario.shape)
        if count is not None:
            result.imap_commands = len(count.commands)
            result.wire_kib = (count.wire_sent + count.wire_received) / 1024
        return result

    def _wait_first_runs(
        self, exporter: Exporter, names: list[str], timeout: float, startup: StartupSampler
    ) -> None:
        def all_ran() -> bool:
            startup.sample()
            samples, _ = exporter.metrics()
            done = select(samples, "o365_mailbox_check_last_run_timestamp_seconds", check="junk")
            return len(done) >= len(names)

        if not spin_until(all_ran, timeout, step=1.0):
            raise SystemExit(f"bench: not every mailbox ran within {timeout:.0f}s")
        startup.sample()

    def _measure_naive(self, config: Path, scenario: Scenario, name: str, result: Result) -> None:
        """The naive script (bench/naive.py) on the same mailbox: CPU over the window per
        IMAP session that ended in it (Dovecot's log), as for the exporter."""
        process = Process(
            [sys.executable, "-m", "bench.naive", str(config), name, f"{scenario.interval:g}"],
            self.workdir / f"{scenario.key}.log",
        )
        log = DovecotLog(self.bed.dovecot.log_path if self.bed.dovecot else Path())
        users = {self.bed.users[name]}
        offset = log.offset()
        process.start()
        try:
            ok = spin_until(lambda: log.sessions(offset, log.offset(), users).count >= 2, 60)
            if not ok:
                raise SystemExit("bench: the naive script did not run")
            began, cpu0, offset0 = time.monotonic(), process.cpu(), log.offset()
            time.sleep(scenario.window)
            cpu1, offset1, ended = process.cpu(), log.offset(), time.monotonic()
            result.peak_rss_mib = process.peak_rss_mib()
        finally:
            process.stop()
        record_window(result, log.sessions(offset0, offset1, users), cpu1 - cpu0, ended - began)

    def _measure_schedule(
        self,
        exporter: Exporter,
        scenario: Scenario,
        names: list[str],
        result: Result,
        startup: StartupSampler,
    ) -> None:
        self._wait_first_runs(exporter, names, 3 * scenario.interval + 120, startup)
        result.startup_peak_percent = startup.peak_percent
        result.startup_seconds = startup.elapsed
        result.startup_cpu_s = startup.cpu
        if scenario.interval >= 10:
            exporter.wait_idle(quiet=1.0, timeout=2 * scenario.interval)
        users = {self.bed.users[name] for name in names}
        log = DovecotLog(self.bed.dovecot.log_path if self.bed.dovecot else Path())
        scrape_every = min(scenario.interval, 15.0)
        walls: dict[tuple[str, float], float] = {}
        began, cpu0, offset0 = time.monotonic(), exporter.cpu(), log.offset()
        scrapes = 0
        while True:
            samples, _seconds = exporter.metrics()
            scrapes += 1
            collect_walls(samples, walls)
            left = began + scenario.window - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(scrape_every, left))
        cpu1, offset1, ended = exporter.cpu(), log.offset(), time.monotonic()
        record_window(result, log.sessions(offset0, offset1, users), cpu1 - cpu0, ended - began)
        result.wall_ms = 1000 * median(list(walls.values()))
        result.notes.append(f"{scrapes} scrapes of /metrics in the window, every {scrape_every:g}s")
        last, _ = exporter.metrics()
        failures = select(last, "o365_mailbox_check_failures_total")
        result.failures = int(sum(s.value for s in failures))
        up = sum(1 for s in select(last, "o365_mailbox_up") if s.value == 1)
        if up != len(names):
            result.notes.append(f"only {up} of {len(names)} mailboxes up")
        if scenario.interval >= 10:
            exporter.wait_idle(quiet=0.5, timeout=2 * scenario.interval)
        timings = []
        body = b""
        for _ in range(20):
            body, seconds = http_get(exporter.url + "/metrics")
            timings.append(seconds)
        result.metrics_ms = 1000 * median(timings)
        result.metrics_kib = len(body) / 1024
        timings = []
        for _ in range(20):
            body, seconds = http_get(exporter.url + "/metrics", gzip=True)
            timings.append(seconds)
        result.metrics_gzip_ms = 1000 * median(timings)
        result.metrics_gzip_kib = len(body) / 1024

    def _measure_probe(
        self, exporter: Exporter, scenario: Scenario, name: str, result: Result
    ) -> None:
        url = probe_url(exporter.url, mailbox=name)
        http_get(url)  # the first run signs in with the password
        http_get(url)
        log = DovecotLog(self.bed.dovecot.log_path if self.bed.dovecot else Path())
        offset0 = log.offset()
        cpu, seconds, walls, failed = drive(exporter, url, scenario.probe_rate, scenario.window)
        sessions = log.sessions(offset0, log.offset(), {self.bed.users[name]})
        result.runs = len(walls)
        result.cpu_ms_per_run = 1000 * cpu / len(walls)
        result.cpu_percent = 100 * cpu / seconds
        result.wall_ms = 1000 * median(walls)
        result.failures = failed
        if sessions.count:
            result.imap_in = sessions.bytes_in / sessions.count
            result.imap_out = sessions.bytes_out / sessions.count
        result.notes.append(
            f"driven at {scenario.probe_rate:g}/s; wall = client-side time of one /probe"
        )

    # -- blackbox_exporter -----------------------------------------------------------------------
    def run_blackbox(self, rate: float, window: float) -> None:
        binary = shutil.which(BLACKBOX)
        if binary is None:
            say(f"bench: {BLACKBOX} not installed (apt-get install {BLACKBOX}); skipped")
            return
        assert self.bed.dovecot is not None
        config = self.workdir / "blackbox.yml"
        config.write_text(
            "modules:\n"
            "  imap_tls:\n"
            "    prober: tcp\n"
            "    timeout: 5s\n"
            "    tcp:\n"
            "      tls: true\n"
            "      tls_config:\n"
            f"        ca_file: {self.bed.dovecot.ca_file}\n"
            "      query_response:\n"
            '        - expect: "^\\\\* OK"\n'
        )
        port = free_port()
        process = Process(
            [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
            self.workdir / "blackbox.log",
        )
        process.start()
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/-/healthy")
            target = f"127.0.0.1:{self.bed.dovecot.port}"
            url = probe_url(base, module="imap_tls", target=target)
            for _ in range(5):
                http_get(url)
            cpu, _seconds, walls, failed = drive(process, url, rate, window, blackbox=True)
            self.blackbox = {
                "probes": len(walls),
                "cpu_ms_per_probe": 1000 * cpu / len(walls),
                "probe_ms": 1000 * median(walls),
                "failed": failed,
                "peak_rss_mib": process.peak_rss_mib(),
                "rate": rate,
            }
        finally:
            process.stop()


class StartupSampler:
    """The exporter's CPU from its start until every first run ended: the busiest second (as %
    of one core) and the total. First runs start at most about ten a second, by name."""

    def __init__(self, process: Process, started: float) -> None:
        self.process = process
        self.started = started
        self.last_at = started
        self.last_cpu = 0.0  # a new process: CPU counted from zero
        self.peak_percent = 0.0
        self.cpu = 0.0
        self.elapsed = 0.0

    def sample(self) -> None:
        now, cpu = time.monotonic(), self.process.cpu()
        if now - self.last_at >= 0.5:
            self.peak_percent = max(
                self.peak_percent, 100 * (cpu - self.last_cpu) / (now - self.last_at)
            )
            self.last_at, self.last_cpu = now, cpu
        self.cpu = cpu
        self.elapsed = now - self.started


def record_window(result: Result, sessions: Sessions, cpu: float, seconds: float) -> None:
    """CPU per run and IMAP bytes per session over a window: `cpu` seconds of the process in
    `seconds`, runs counted from Dovecot's log (`sessions`)."""
    result.runs = sessions.count
    result.cpu_percent = 100 * cpu / seconds
    if sessions.count:
        result.cpu_ms_per_run = 1000 * cpu / sessions.count
        result.imap_in = sessions.bytes_in / sessions.count
        result.imap_out = sessions.bytes_out / sessions.count


def collect_walls(samples: list[Sample], walls: dict[tuple[str, float], float]) -> None:
    """Per (mailbox, end of its latest run): the sum of its checks' wall times."""
    ended = {
        s.labels["mailbox"]: s.value
        for s in select(samples, "o365_mailbox_check_last_run_timestamp_seconds", check="junk")
    }
    sums: dict[str, float] = collections.defaultdict(float)
    for s in select(samples, "o365_mailbox_check_duration_seconds"):
        sums[s.labels["mailbox"]] += s.value
    for mailbox, at in ended.items():
        walls.setdefault((mailbox, at), sums[mailbox])


def drive(
    process: Process, url: str, rate: float, window: float, blackbox: bool = False
) -> tuple[float, float, list[float], int]:
    """GET `url` at a fixed rate for `window` seconds: (CPU s, elapsed s, walls, failures)."""
    walls: list[float] = []
    failed = 0
    began, cpu0 = time.monotonic(), process.cpu()
    n = 0
    while time.monotonic() < began + window:
        due = began + n / rate
        time.sleep(max(0.0, due - time.monotonic()))
        body, seconds = http_get(url)
        n += 1
        samples = parse_metrics(body.decode())
        if blackbox:
            ok = any(s.value == 1 for s in select(samples, "probe_success"))
            duration = select(samples, "probe_duration_seconds")
            walls.append(duration[0].value if duration else seconds)
        else:
            ok = any(s.value == 1 for s in select(samples, "o365_mailbox_up"))
            walls.append(seconds)
        failed += 0 if ok else 1
    return process.cpu() - cpu0, time.monotonic() - began, walls, failed


# -- profile ---------------------------------------------------------------------------------------
def profile(exporter: Exporter, seconds: float, workdir: Path) -> list[str]:
    """py-spy on the exporter for `seconds`; the functions with the most samples."""
    spy = shutil.which("py-spy")
    if spy is None:
        return ["py-spy not installed (pip install py-spy): no profile"]
    out = workdir / "profile.txt"
    subprocess.run(
        [
            spy,
            "record",
            "--pid",
            str(exporter.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--gil",
            "--full-filenames",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return summarize_profile(out.read_text())


def _frame_key(frame: str) -> str:
    """'ssl.py:do_handshake (1342)'-like keys: function and file, line dropped."""
    frame = frame.strip()
    if " (" in frame and frame.endswith(")"):
        function, _, where = frame.rpartition(" (")
        path = where[:-1].rsplit(":", 1)[0]
        return f"{function} ({_short_path(path)})"
    return frame


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.basename(path)


AREAS: list[tuple[str, Callable[[str], bool]]] = [
    (
        "TLS handshakes (ssl do_handshake, wrap_socket)",
        lambda f: "do_handshake" in f or "wrap_socket" in f,
    ),
    ("msal (token refresh, cache)", lambda f: "(msal/" in f or "(msal_extensions/" in f),
    (
        "requests / urllib3 (HTTPS to the authority)",
        lambda f: "(requests/" in f or "(urllib3/" in f,
    ),
    ("imapclient / imaplib (IMAP dialogue)", lambda f: "(imapclient/" in f or "(imaplib.py" in f),
    (
        "/metrics rendering (collector, exposition)",
        lambda f: "collector.py" in f or "exposition.py" in f,
    ),
    ("logging", lambda f: "(logging/" in f),
]


def summarize_profile(raw: str, top: int = 15) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for key in set(frames):
            inclusive[key] += count
        for area, matches in AREAS:
            if any(matches(f) for f in frames):
                areas[area] += count
    if not total:
        return ["no samples"]
    lines = [f"{total} samples of threads holding the GIL (py-spy --gil, 200 Hz)", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {key}" for key, n in own.most_common(top)]
    lines += ["", "inclusive time by area (a sample may count in several):"]
    lines += [f"  {100 * areas[a] / total:5.1f}%  {a}" for a, _ in AREAS]
    lines += ["", "inclusive time, exporter functions:"]
    mine = [(k, n) for k, n in inclusive.most_common() if "(exporter/" in k]
    lines += [f"  {100 * n / total:5.1f}%  {key}" for key, n in mine[:top]]
    return lines


# -- report ----------------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def table(results: list[Result]) -> str:
    header = [
        "configuration",
        "mailboxes",
        "inbox msgs",
        "runs",
        "CPU ms/run",
        "CPU % core",
        "wall ms/run",
        "IMAP cmds/run",
        "wire KiB/run",
        "IMAP B in/out",
        "peak RSS MiB",
        "/metrics ms",
        "/metrics KiB plain/gzip",
        "failures",
    ]
    rows = [header]
    for r in results:
        rows.append(
            [
                r.label,
                f"{r.mailboxes:,}",
                f"{r.inbox:,}",
                f"{r.runs:,}",
                _fmt(r.cpu_ms_per_run, 2),
                _fmt(r.cpu_percent),
                _fmt(r.wall_ms),
                str(r.imap_commands or "-"),
                _fmt(r.wire_kib),
                f"{_fmt(r.imap_in, 0)}/{_fmt(r.imap_out, 0)}",
                _fmt(r.peak_rss_mib),
                _fmt(r.metrics_ms),
                f"{_fmt(r.metrics_kib, 0)}/{_fmt(r.metrics_gzip_kib, 0)}",
                str(r.failures),
            ]
        )
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
    return "\n".join(lines)


def targets(
    results: dict[str, Result], blackbox: dict[str, float], counts: dict[str, SessionCount]
) -> list[str]:
    """Issue 13's targets, as ratios measured in this run."""
    lines = []

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    small_count = counts.get("small")
    if small_count is not None:
        after_login = len(small_count.commands) - small_count.commands.count("CAPABILITY") - 1
        lines.append(
            f"- IMAP commands per steady-state run after the login (Junk and Sent): "
            f"{after_login} (target <= 10): {verdict(after_login <= 10)}; in all "
            f"{len(small_count.commands)}: {' '.join(small_count.commands)}"
        )
    naive = results.get("naive")
    for key in ("m1", "m1000", "probe"):
        ours = results.get(key)
        if ours is None:
            continue
        if blackbox:
            per_probe = blackbox["cpu_ms_per_probe"]
            ratio = ours.cpu_ms_per_run / per_probe
            lines.append(
                f"- CPU per mailbox run / blackbox TLS banner probe, {ours.label}: "
                f"{ours.cpu_ms_per_run:.2f} / {per_probe:.2f} = {ratio:.2f}x "
                f"(target <= 2.0x, stretch 1.5x): {verdict(ratio <= 2.0)}"
            )
        if naive is not None and key != "m1000":
            ratio = ours.cpu_ms_per_run / naive.cpu_ms_per_run
            lines.append(
                f"- CPU per mailbox run / naive msal + imapclient script, {ours.label}: "
                f"{ours.cpu_ms_per_run:.2f} / {naive.cpu_ms_per_run:.2f} = {ratio:.2f}x "
                f"(target < 1): {verdict(ratio < 1)}"
            )
    if blackbox:
        lines.append(
            f"- blackbox_exporter TLS IMAP banner probe: {blackbox['cpu_ms_per_probe']:.2f} ms "
            f"CPU per probe ({blackbox['probes']:.0f} probes at {blackbox['rate']:g}/s, median "
            f"{blackbox['probe_ms']:.1f} ms, peak RSS {blackbox['peak_rss_mib']:.0f} MiB, "
            f"{blackbox['failed']:.0f} failed)"
        )
    many = results.get("m1000")
    if many:
        lines.append(
            f"- 1,000 mailboxes at 60s: {many.cpu_percent:.1f}% of a core (target <= 15%): "
            f"{verdict(many.cpu_percent <= 15)}"
        )
        lines.append(
            f"- 1,000 mailboxes: peak RSS {many.peak_rss_mib:.0f} MiB (target <= 150): "
            f"{verdict(many.peak_rss_mib <= 150)}; per mailbox about "
            f"{(many.peak_rss_mib - 50) / many.mailboxes:.3f} MiB above a 50 MiB process"
        )
        lines.append(
            f"- start-up: first runs of all 1,000 within {many.startup_seconds:.0f}s, "
            f"{many.startup_cpu_s:.1f} CPU s, busiest second {many.startup_peak_percent:.0f}% "
            "of a core"
        )
        lines.append(
            f"- /metrics at 1,000 mailboxes: {many.metrics_ms:.1f} ms plain "
            f"({many.metrics_kib:.0f} KiB), {many.metrics_gzip_ms:.1f} ms gzip "
            f"({many.metrics_gzip_kib:.0f} KiB) (target < 100 ms): "
            f"{verdict(max(many.metrics_ms, many.metrics_gzip_ms) < 100)}"
        )
    small, large = results.get("i100"), results.get("i100k")
    if small and large:
        ratio = large.cpu_ms_per_run / small.cpu_ms_per_run
        lines.append(
            f"- inbox 100,000 vs 100 (issue 7): CPU {ratio:.2f}x (target <= 1.5x): "
            f"{verdict(ratio <= 1.5)}; IMAP commands {large.imap_commands} vs "
            f"{small.imap_commands}"
        )
    return lines


def source() -> str:
    """Which exporter was measured: the commit, and whether exporter/ had local changes."""
    from exporter import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "exporter"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"exporter {__version__} (not a git checkout)"
    return f"exporter {__version__}, commit {commit}" + (" + local changes" if dirty else "")


def report(bench: Bench, elapsed: float) -> str:
    by_key = {r.key: r for r in bench.results}
    parts = [
        f"o365-mailbox-exporter benchmark: {source()}; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs",
        "",
        table(bench.results),
        "",
        "Targets (issue 13):",
        *targets(by_key, bench.blackbox, bench.counts),
    ]
    parts += ["", "One steady-state run, seen from inside (in-process, a recording relay):"]
    for shape, count in bench.counts.items():
        parts.append(
            f"- {shape}: {len(count.commands)} commands ({' '.join(count.commands)}); "
            f"wire {count.wire_sent:,} B sent / {count.wire_received:,} B received; "
            f"{count.token_requests} token request(s); passed: {count.success}"
        )
    if bench.check_cpu:
        parts += ["", "Where one run's CPU goes (small inbox, in-process, median thread CPU ms):"]
        parts += [f"- {check}: {ms:.2f}" for check, ms in bench.check_cpu.items()]
        parts.append(
            f"- for comparison, blackbox's probe done in Python (connect, TLS handshake, "
            f"read the greeting): {bench.python_probe_ms:.2f}"
        )
    if bench.connection_cpu:
        parts += ["", "A whole run by the state of its HTTPS connection to the authority (ms):"]
        parts += [f"- {label}: {ms:.2f}" for label, ms in bench.connection_cpu.items()]
    notes = [f"- {r.label}: {n}" for r in bench.results for n in r.notes]
    if notes:
        parts += ["", "Notes:", *notes]
    if bench.profile_lines:
        parts += ["", "Profile of the 1,000-mailbox exporter (one interval):", *bench.profile_lines]
    if bench.cprofile_lines:
        parts += ["", "cProfile of 200 runs of one mailbox (timer: thread CPU), by own time:"]
        parts += bench.cprofile_lines
    parts += ["", f"bench run took {elapsed:.0f}s"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small configurations, short windows")
    parser.add_argument("--only", default="", help="comma-separated scenario keys (m1,i100k,...)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of an earlier release: its rows (m1, m1000, probe) measured too",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("bench: run as root (the fake Entra ID also listens on port 443)")
        return 2
    scenarios = quick_scenarios() if args.quick else full_scenarios()
    if args.only:
        wanted = set(args.only.split(","))
        scenarios = [s for s in scenarios if s.key in wanted]
    if args.baseline is not None:  # the same configurations run by an older tree, interleaved
        with_before = []
        for scenario in scenarios:
            if scenario.key in ("m1", "m1000", "probe"):
                with_before.append(
                    dataclasses.replace(
                        scenario,
                        key=scenario.key + "-before",
                        label=scenario.label + " (before)",
                        root=args.baseline.resolve(),
                        profile=0.0,
                    )
                )
            with_before.append(scenario)
        scenarios = with_before
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="o365-bench-"))).resolve()
    bench = Bench(workdir, scenarios, profile=not args.no_profile and not args.quick)
    began = time.monotonic()
    try:
        bench.prepare()
        bench.inside(args.quick)
        for scenario in scenarios:
            say(f"measuring {scenario.label} ...")
            bench.results.append(bench.run(scenario))
        rate, window = (10.0, 3.0) if args.quick else (10.0, 20.0)
        if not args.only or "blackbox" in args.only:
            say("measuring blackbox_exporter ...")
            bench.run_blackbox(rate, window)
    finally:
        bench.bed.stop()
    text = report(bench, time.monotonic() - began)
    print(text, flush=True)
    (workdir / "results.md").write_text(text + "\n")
    (workdir / "results.json").write_text(
        json.dumps(
            {
                "results": [asdict(r) for r in bench.results],
                "blackbox": bench.blackbox,
                "imap": {shape: asdict(count) for shape, count in bench.counts.items()},
                "profile": bench.profile_lines,
                "cpu_by_check_ms": bench.check_cpu,
                "python_banner_probe_ms": bench.python_probe_ms,
                "run_by_authority_connection_ms": bench.connection_cpu,
                "cprofile": bench.cprofile_lines,
            },
            indent=2,
        )
    )
    say(f"results in {workdir}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
