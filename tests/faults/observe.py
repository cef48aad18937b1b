"""Watching a running exporter from outside: its metrics, how fast /metrics answers, and each
mailbox's runs (start = `last_run_timestamp - duration`, per check)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, ExporterProcess, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class NamespacedExporter(ExporterProcess):
    """`python -m exporter` started behind a command prefix (e.g. `unshare` for private DNS)."""

    def __init__(self, config: Path, log_path: Path, prefix: list[str], *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "exporter", f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{self.port}", *extra],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.wait_http("/-/ready")


@dataclass(frozen=True)
class Run:
    """One check's latest result as seen in a scrape."""

    check: str
    start: float  # unix time
    end: float
    success: bool


@dataclass
class Scrape:
    samples: Samples
    latency: float  # seconds for GET /metrics

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def run(self, mailbox: str, check: str) -> Run | None:
        end = self.value("o365_mailbox_check_last_run_timestamp_seconds", mailbox=mailbox,
                         check=check)
        duration = self.value("o365_mailbox_check_duration_seconds", mailbox=mailbox,
                              check=check)
        success = self.value("o365_mailbox_check_success", mailbox=mailbox, check=check)
        if end is None or duration is None or success is None:
            return None
        return Run(check, round(end - duration, 3), end, success == 1.0)

    def failures(self, mailbox: str) -> dict[tuple[str, str, str], float]:
        """(check, reason, code) -> failed runs, for one mailbox."""
        found = {}
        for (name, labels), value in self.samples.items():
            fields = dict(labels)
            if name == "o365_mailbox_check_failures_total" and fields.get("mailbox") == mailbox:
                found[(fields["check"], fields["reason"], fields["code"])] = value
        return found

    def series(self) -> set[tuple[str, frozenset[tuple[str, str]]]]:
        return set(self.samples)


def scrape(exporter: ExporterProcess) -> Scrape:
    started = time.monotonic()
    status, body = exporter.get("/metrics", timeout=10)
    latency = time.monotonic() - started
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples, latency)


@dataclass
class Watch:
    """Scrapes an exporter every `period` seconds and remembers every run it saw."""

    exporter: ExporterProcess
    mailboxes: Iterable[str]
    checks: Iterable[str]
    period: float = 0.1
    latencies: list[float] = field(default_factory=list)
    runs: dict[tuple[str, str], dict[float, Run]] = field(default_factory=dict)
    last: Scrape | None = None

    def poll(self) -> Scrape:
        current = scrape(self.exporter)
        self.latencies.append(current.latency)
        for mailbox in self.mailboxes:
            for check in self.checks:
                run = current.run(mailbox, check)
                if run is not None:
                    self.runs.setdefault((mailbox, check), {})[run.start] = run
        self.last = current
        return current

    def poll_for(self, seconds: float) -> Scrape:
        end = time.monotonic() + seconds
        current = self.poll()
        while time.monotonic() < end:
            time.sleep(self.period)
            current = self.poll()
        return current

    def runs_of(self, mailbox: str, check: str, since: float = 0.0) -> list[Run]:
        """Runs seen, by start time, that started at or after `since` (unix time)."""
        found = self.runs.get((mailbox, check), {})
        return [found[start] for start in sorted(found) if start >= since]
