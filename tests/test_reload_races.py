"""Reload without races: a config change never runs a mailbox twice at once, a late result
never brings a removed mailbox back, and the counters of a removed check go with it."""

from __future__ import annotations

import threading
import time

from exporter.config import load_config
from exporter.results import CheckResult, ResultStore
from exporter.scheduler import Scheduler
from tests.conftest import free_port, write_config
from tests.content import seed_standard
from tests.faults.imap_proxy import ImapFaultProxy

ALL = ["token", "imap_login", "inbox", "oversized", "junk"]


def test_changed_config_waits_for_the_old_run(
    make_mailbox, entra, dovecot, ca, tmp_path, exporter_process
):
    proxy = ImapFaultProxy(ca, "127.0.0.1", dovecot.port).start()
    try:
        mailbox = make_mailbox("box", imap={"host": "127.0.0.1", "port": proxy.port})
        seed_standard(dovecot, mailbox.upn)  # messages, so that the inbox check FETCHes
        proxy.set_fault("hang", command="FETCH")
        config = write_config(tmp_path, entra, dovecot, [mailbox], interval="5s", timeout="4s")
        exporter = exporter_process(config)
        # Wait until a run hangs in the inbox check's FETCH.
        end = time.monotonic() + 10
        while time.monotonic() < end and not proxy._live:
            time.sleep(0.02)
        assert len(proxy._live) == 1
        time.sleep(0.3)

        # Change the mailbox's config while its run hangs: the new config's first run waits.
        write_config(tmp_path, entra, dovecot, [mailbox], interval="5s", timeout="4s",
                     oversized_bytes="1MiB")
        assert exporter.post("/-/reload")[0] == 200
        most = 0
        end = time.monotonic() + 5
        while time.monotonic() < end:
            most = max(most, len(proxy._live))
            time.sleep(0.01)
        assert most == 1, f"{most} IMAP sessions of one mailbox at once"
        # The old run ended (timeout) and the new config runs.
        exporter.wait_for("o365_mailbox_oversized_threshold_bytes", 2.0**20, mailbox="box")
        proxy.set_fault("pass")
        exporter.wait_for("o365_mailbox_up", 1.0, mailbox="box", timeout=15)
    finally:
        proxy.stop()


def test_failure_counters_of_a_removed_check_disappear(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    closed = free_port()  # nothing listens: smtp_login fails with `connection`
    mailbox = make_mailbox("box", checks=[*ALL, "smtp_login"],
                           smtp={"host": "127.0.0.1", "port": closed})
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="1s")
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_check_failures_total", mailbox="box", check="smtp_login",
                      reason="connection", code="")
    mailbox.settings["checks"] = ALL
    write_config(tmp_path, entra, dovecot, [mailbox], interval="1s")
    assert exporter.post("/-/reload")[0] == 200
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="box")
    smtp_series = [
        (name, labels) for name, labels in exporter.metrics() if ("check", "smtp_login") in labels
    ]
    assert smtp_series == []


class _SlowStore(ResultStore):
    """A store whose writes wait for a signal: the widest window a late result can have."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.proceed = threading.Event()

    def record(self, mailbox: str, result: CheckResult) -> None:
        self.writing.set()
        self.proceed.wait(10)
        super().record(mailbox, result)


def test_a_late_result_never_brings_a_removed_mailbox_back(
    make_mailbox, entra, dovecot, tmp_path
):
    kept, removed = make_mailbox("kept"), make_mailbox("removed")
    both = load_config(write_config(tmp_path, entra, dovecot, [kept, removed]))
    store = _SlowStore()
    scheduler = Scheduler(store, scheduled=False)
    scheduler.apply(both)
    probe = threading.Thread(
        target=scheduler.run_now, args=("removed", time.monotonic() + 20), daemon=True
    )
    probe.start()
    assert store.writing.wait(10)  # the run's first result is on its way into the store
    applied = threading.Event()

    def reload() -> None:
        scheduler.apply(load_config(write_config(tmp_path, entra, dovecot, [kept])))
        applied.set()

    threading.Thread(target=reload, daemon=True).start()
    time.sleep(0.3)
    store.proceed.set()
    probe.join(20)
    assert applied.wait(10)
    assert [s.name for s in store.snapshot()] == []
    assert store.snapshot_of("removed") is None
    scheduler.stop()
