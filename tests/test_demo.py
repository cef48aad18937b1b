"""The README's first command: the demo starts the sandbox, the exporter, Prometheus and
Alertmanager; what it prints works.

* `--smoke`: Prometheus sees both mailboxes up.
* The running demo (as `make demo` runs it, with a short check interval): every link it prints
  answers 200 (Debian's Prometheus and Alertmanager packages: the classic UI, the API), its
  `amtool` line runs, each documented `touch WORKDIR/break-NAME-KIND` makes the documented check
  fail with the documented reason and code in /metrics and removing the file undoes it, and
  `junk-review` ranks the seeded Junk folder with the likely false positive on top.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port

READY_LINE = "Ctrl-C stops everything."
SWITCH_RE = re.compile(
    r"^\s*touch (?P<path>\S+/break-(?P<name>sales)-(?P<kind>[a-z-]+))\n"
    r"\s+.+\n"
    r"\s+-> (?P<check>\w+) fails: reason=(?P<reason>\w+) code=(?P<code>\S+)$",
    re.MULTILINE,
)


def test_demo_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.demo",
            "--smoke",
            f"--workdir={tmp_path / 'demo'}",
            f"--port={free_port()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "demo ok: Prometheus sees 2 mailboxes up"


class RunningDemo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.demo", f"--workdir={workdir}",
             f"--port={free_port()}", "--interval=3s"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        end = time.monotonic() + 90
        while READY_LINE not in self.output():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < end, self.output()
            time.sleep(0.1)
        self.explained = self.output()
        config = yaml.safe_load((workdir / "config.yml").read_text())
        self.config_path = workdir / "config.yml"
        self.ca_file = config["defaults"]["ca_file"]
        self.exporter = re.search(r"exporter metrics\s+(\S+)/metrics", self.explained)[1]  # type: ignore[index]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def get(self, url: str) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(url, timeout=10, context=context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = self.get(self.exporter + "/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    running = RunningDemo(tmp_path_factory.mktemp("demo") / "run")
    try:
        yield running
    finally:
        running.stop()
    assert running.proc.returncode == 0, running.output()
    assert "stopping ..." in running.output()


def test_every_printed_link_answers_200(demo: RunningDemo) -> None:
    links = re.findall(r"https?://\S+", demo.explained)
    paths = {urllib.parse.urlsplit(link).path for link in links}
    # Debian's Prometheus serves only its classic UI; Alertmanager only its API.
    assert {"/", "/metrics", "/classic/graph", "/classic/alerts", "/api/v2/alerts"} <= paths
    assert "/alerts" not in paths and "/graph" not in paths
    for link in links:
        if "--alertmanager.url=" in link:
            continue  # the amtool line: run below
        status, body = demo.get(link)
        assert status == 200, (link, body[:300])
    status, body = demo.get(re.search(r"Prometheus alerts\s+(\S+)", demo.explained)[1])  # type: ignore[index]
    assert b"O365MailboxTokenRefreshFailing" in body  # the rules are loaded


def test_amtool_line_runs(demo: RunningDemo) -> None:
    line = next(ln for ln in demo.explained.splitlines() if ln.strip().startswith("amtool "))
    proc = subprocess.run(
        shlex.split(line), capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["Alertname", "Starts"]


def test_junk_review_ranks_the_likely_false_positive_first(demo: RunningDemo) -> None:
    line = next(ln for ln in demo.explained.splitlines() if " junk-review " in ln)
    proc = subprocess.run(
        [*shlex.split(line), "--output=json"], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    messages: list[dict[str, Any]] = json.loads(proc.stdout)["messages"]
    assert len(messages) == 5
    verdicts = [m["verdict"] for m in messages]
    assert verdicts[:2] == ["likely false positive", "likely false positive"]
    assert verdicts[-1] == "spam"
    assert "[Ticket #4711]" in messages[0]["subject"]


def _wait(predicate: Any, what: str, demo: RunningDemo, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate(demo.samples()):
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout}s; demo said:\n{demo.output()[-3000:]}")


def test_each_switch_breaks_the_mailbox_as_documented_and_is_undone(demo: RunningDemo) -> None:
    switches = [m.groupdict() for m in SWITCH_RE.finditer(demo.explained)]
    assert {s["kind"] for s in switches} == {
        "ca", "password", "public-client", "consent", "smtp", "imap-hang"
    }  # fmt: skip
    up = ("o365_mailbox_up", frozenset({("mailbox", "sales")}))
    for switch in switches:
        code = "" if switch["code"] == '""' else switch["code"]
        failures = (
            "o365_mailbox_check_failures_total",
            frozenset({("mailbox", "sales"), ("check", switch["check"]),
                       ("reason", switch["reason"]), ("code", code)}),
        )  # fmt: skip
        success = (
            "o365_mailbox_check_success",
            frozenset({("mailbox", "sales"), ("check", switch["check"])}),
        )
        _wait(lambda s: s.get(up) == 1, "sales up before " + switch["kind"], demo)
        before = demo.samples().get(failures, 0.0)
        path = Path(switch["path"])
        path.touch()
        _wait(
            lambda s, before=before, failures=failures, success=success: (
                s.get(failures, 0.0) > before and s.get(success) == 0 and s.get(up) == 0
            ),
            f"{switch['kind']}: {switch['check']} failing with {failures}",
            demo,
        )
        path.unlink()
        _wait(
            lambda s, success=success: s.get(success) == 1 and s.get(up) == 1,
            f"{switch['kind']}: fixed after rm",
            demo,
        )
        assert f"sales: broken ({switch['kind']}:" in demo.output()
        assert f"sales: fixed ({switch['kind']})" in demo.output()
