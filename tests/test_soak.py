"""Soak: thousands of check runs against the bed while faults switch on and off.

20 mailboxes (6 at a 500 ms interval, 14 at 1 s): 11 healthy, 4 behind the IMAP fault proxy,
2 behind the authority fault proxy, 1 with Entra ID answering 500 / 429 now and then, 1 with
a wrong password, 1 device-code mailbox nobody signed in. After a warm-up the exporter's
threads, open file descriptors and memory are measured; then two minutes of switching faults;
then, with every fault removed, measured again. Asserted: growth within the stated bounds, no
metric series lost, no mailbox run twice at once or faster than its interval, /metrics always
within a second. The figures are printed (run with `-s`) for docs/reliability.md.
"""

from __future__ import annotations

import itertools
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import write_secret
from tests.content import seed_standard
from tests.faults import AuthorityFaultProxy, ImapFaultProxy
from tests.faults.observe import NamespacedExporter, Watch
from tests.faults.process import process_stats

WARM_UP = 20.0
SOAK = float(os.environ.get("SOAK_SECONDS", "120"))  # longer by hand: SOAK_SECONDS=1800
SETTLE = 10.0
SWITCH = 4.0  # seconds a fault lasts; then as long without
CHECKS = ("token", "imap_login", "inbox", "oversized", "junk")
# Growth allowed between the measurement after the warm-up and the one after the soak.
THREADS_BOUND = 4  # per-request HTTP threads and DNS helpers come and go
FDS_BOUND = 8  # keep-alive connections to the authority are opened and closed
RSS_BOUND = 24 * 2**20  # allocator slack; a leak of 1 kB per run would be 20 MB here

IMAP_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("hang", {"command": "FETCH"}), ("garbage", {"command": "EXAMINE"}), ("literal", {}),
    ("drop", {}), ("trickle", {"command": "LOGOUT"}), ("silent", {}), ("refuse", {}),
    ("garbage", {"command": "AUTHENTICATE"}), ("trickle", {"command": "FETCH"}),
]
AUTHORITY_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("slow", {"delay": 2.0}), ("malformed", {}), ("silent", {}), ("wrong_cert", {}),
    ("refuse", {}),
]


def _user(entra: Any, dovecot: Any, name: str) -> tuple[str, str, str]:
    upn = f"{name}-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"
    client_id = str(uuid.uuid4())
    password = f"Pw-{uuid.uuid4().hex}"
    entra.add_user(upn, password)
    entra.add_app(client_id)
    dovecot.reset_mailbox(upn)
    seed_standard(dovecot, upn)
    return upn, client_id, password


@pytest.mark.timeout(WARM_UP + SOAK + SETTLE + 240)
def test_soak(entra, dovecot, ca, tmp_path: Path) -> None:
    imap = ImapFaultProxy(ca, "127.0.0.1", dovecot.port).start()
    authority = AuthorityFaultProxy(ca, entra.url, host=entra.host, names=(entra.host,)).start()
    mailboxes: list[dict[str, Any]] = []
    intervals: dict[str, float] = {}

    def add(name: str, interval: float, **entry: Any) -> None:
        intervals[name] = interval
        text = f"{int(interval * 1000)}ms"
        mailboxes.append({"name": name, "interval": text, "timeout": text, **entry})

    def password_mailbox(name: str, interval: float, password: str | None = None,
                         **entry: Any) -> tuple[str, str]:
        upn, client_id, real = _user(entra, dovecot, name)
        write_secret(tmp_path / f"{name}.password", password or real)
        add(name, interval, username=upn, client_id=client_id,
            auth={"flow": "password", "password_file": str(tmp_path / f"{name}.password")},
            **entry)
        return upn, client_id

    for index in range(11):
        password_mailbox(f"healthy{index}", 0.5 if index < 6 else 1.0)
    for index in range(4):
        password_mailbox(f"imapfault{index}", 1.0, imap={"host": "127.0.0.1", "port": imap.port})
    for index in range(2):
        upn, _, _ = _user(entra, dovecot, f"authfault{index}")
        app, secret = str(uuid.uuid4()), f"Secret-{uuid.uuid4().hex}"
        entra.add_app(app, public_client=False, client_secret=secret, mailbox=upn)
        write_secret(tmp_path / f"authfault{index}.secret", secret)
        add(f"authfault{index}", 1.0, username=upn, client_id=app,
            authority_host=authority.url,
            auth={"flow": "client_secret",
                  "client_secret_file": str(tmp_path / f"authfault{index}.secret")})
    _, flaky_client = password_mailbox("entraflaky", 1.0)
    wrong_upn, _ = password_mailbox("wrongpw", 1.0, password="not-the-password")
    upn, client_id, _ = _user(entra, dovecot, "nobodysignedin")
    add("nobodysignedin", 1.0, username=upn, client_id=client_id, auth={"flow": "device_code"})
    assert len(mailboxes) == 20

    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "defaults": {"authority_host": entra.url, "tenant_id": "contoso.onmicrosoft.com",
                     "ca_file": str(entra.ca_file),
                     "imap": {"host": "127.0.0.1", "port": dovecot.port}},
        "mailboxes": mailboxes,
    }, sort_keys=False))
    names = list(intervals)
    exporter_started = time.monotonic()
    exporter = NamespacedExporter(config, tmp_path / "exporter.log", [], "--log.level=debug")
    watch = Watch(exporter, names, CHECKS, period=0.15)
    imap_cycle = itertools.cycle(IMAP_FAULTS)
    authority_cycle = itertools.cycle(AUTHORITY_FAULTS)
    entra_cycle = itertools.cycle(["500", "429", "pass"])

    def faults_on() -> None:
        kind, options = next(imap_cycle)
        imap.set_fault(kind, **options)
        kind, options = next(authority_cycle)
        authority.set_fault(kind, **options)
        entra.clear_errors()
        match next(entra_cycle):
            case "500":
                entra.set_error(None, error="server_error", status=500, client_id=flaky_client)
            case "429":
                entra.set_error(90055, retry_after=1, client_id=flaky_client)

    def faults_off() -> None:
        imap.set_fault("pass")
        authority.set_fault("pass")
        entra.clear_errors()

    rss_samples: list[tuple[float, int]] = []

    def run_phase(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            faults_on()
            watch.poll_for(min(SWITCH, end - time.monotonic()))
            faults_off()
            watch.poll_for(min(SWITCH, max(0.0, end - time.monotonic())))
            rss_samples.append((time.monotonic(), process_stats(exporter.proc.pid).rss_bytes))

    def check_runs(log: str) -> int:
        return log.count('msg="check passed"') + log.count('msg="check failed"')

    try:
        run_phase(WARM_UP)  # the pool, the caches and every fault path warmed up once
        watch.poll_for(3.0)
        before = process_stats(exporter.proc.pid)
        series_before = watch.last.series() if watch.last else set()
        runs_before = check_runs(exporter.log_path.read_text())
        soak_started = time.time()
        started = time.monotonic()
        run_phase(SOAK)
        soaked = time.monotonic() - started
        faults_off()
        watch.poll_for(SETTLE)
        soak_ended = time.time()
        after = process_stats(exporter.proc.pid)
        final = watch.last
        runs_after = check_runs(exporter.log_path.read_text())
        attempts_wrong = entra.attempts(username=wrong_upn)
    finally:
        faults_off()
        exporter.stop()
        imap.stop()
        authority.stop()

    assert final is not None
    check_runs_soaked = runs_after - runs_before
    mailbox_runs = {name: len(watch.runs_of(name, "token", soak_started)) for name in names}
    print(f"\nSOAK {soaked:.0f}s, 20 mailboxes: {check_runs_soaked} check runs "
          f"({sum(mailbox_runs.values())} mailbox runs seen), /metrics max "
          f"{max(watch.latencies) * 1000:.0f}ms over {len(watch.latencies)} scrapes")
    print(f"SOAK before: {before}")
    print(f"SOAK after:  {after}")
    print(f"SOAK growth: threads {after.threads - before.threads:+d} (bound {THREADS_BOUND}), "
          f"fds {after.fds - before.fds:+d} (bound {FDS_BOUND}), rss "
          f"{(after.rss_bytes - before.rss_bytes) / 2**20:+.1f}MiB "
          f"(bound {RSS_BOUND / 2**20:.0f}MiB); peak rss {after.peak_rss_bytes / 2**20:.1f}MiB; "
          f"wrong-password sign-ins over the whole run: {attempts_wrong}")

    assert exporter.proc.returncode is not None  # stopped by us, not crashed before
    assert check_runs_soaked >= 2000
    assert max(watch.latencies) < 1.0
    assert after.threads - before.threads <= THREADS_BOUND
    assert after.fds - before.fds <= FDS_BOUND
    assert after.rss_bytes - before.rss_bytes <= RSS_BOUND
    assert after.peak_rss_bytes < 200 * 2**20  # no gigantic literal was ever buffered

    # No metric series lost (failure counters may only have been added).
    lost = series_before - final.series()
    assert not lost, sorted(lost)[:10]
    for name in names:
        if name not in ("wrongpw", "nobodysignedin"):
            assert final.value("o365_mailbox_up", mailbox=name) == 1.0, (name, final.failures(name))

    # No duplicate scheduling: a mailbox's runs never overlap (each check's run starts after
    # its previous run ended), never come faster than the interval on average, and the healthy
    # ones kept their pace.
    # (A run's start may lag its due time a little on a loaded machine, so single gaps can be
    # a bit under the interval; a duplicate run would show as a gap near zero.)
    smallest_gap = {}
    for name in names:
        for check in CHECKS:
            runs = watch.runs_of(name, check, soak_started)
            for previous, current in itertools.pairwise(runs):
                assert current.start >= previous.end - 0.002, (name, check, previous, current)
        starts = [r.start for r in watch.runs_of(name, "token", soak_started)]
        smallest_gap[name] = min(b - a for a, b in itertools.pairwise(starts))
        assert smallest_gap[name] >= 0.5 * intervals[name], (name, smallest_gap[name])
        expected = (soak_ended - soak_started) / intervals[name]
        assert mailbox_runs[name] <= expected + 2, (name, mailbox_runs[name], expected)
        if name.startswith("healthy"):
            assert mailbox_runs[name] >= 0.8 * expected, (name, mailbox_runs[name], expected)
    print("SOAK rss every 8 s (MiB): "
          + " ".join(f"{rss / 2**20:.1f}" for _t, rss in rss_samples))
    print("SOAK smallest gap between runs / interval: "
          f"{min(smallest_gap[n] / intervals[n] for n in names):.2f}")

    # The Smart Lockout guard held under load: at a 1 s interval, floor(log2(seconds + 2)).
    assert attempts_wrong <= math.floor(math.log2(time.monotonic() - exporter_started + 2))
