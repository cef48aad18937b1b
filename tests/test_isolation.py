"""A hung mailbox never delays another mailbox or a scrape."""

from __future__ import annotations

import time

from tests.conftest import write_config
from tests.test_failure_reasons import hung_server  # noqa: F401 - fixture


def test_hung_mailbox_does_not_delay_others_or_scrapes(
    make_mailbox, entra, dovecot, tmp_path, exporter_process, hung_server  # noqa: F811
):
    healthy = make_mailbox("healthy")
    stuck = make_mailbox("stuck", imap={"host": "127.0.0.1", "port": hung_server},
                         timeout="3s", interval="4s")
    config = write_config(tmp_path, entra, dovecot, [healthy, stuck], interval="1s",
                          timeout="1s")
    exporter = exporter_process(config, "--checks.max-concurrency=2")
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="healthy")

    runs_before = exporter.value("o365_mailbox_check_last_run_timestamp_seconds",
                                 mailbox="healthy", check="inbox")
    slowest = 0.0
    for _ in range(20):
        started = time.monotonic()
        exporter.metrics()
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.2)
    runs_after = exporter.value("o365_mailbox_check_last_run_timestamp_seconds",
                                mailbox="healthy", check="inbox")

    assert slowest < 1.0
    assert runs_before is not None and runs_after is not None
    assert runs_after - runs_before >= 2.0  # kept its 1 s schedule while `stuck` hung
    exporter.wait_for("o365_mailbox_check_failures_total", timeout=10, mailbox="stuck",
                      check="imap_login", reason="timeout", code="")
