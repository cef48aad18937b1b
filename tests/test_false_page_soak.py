"""A false-page soak with the real Prometheus and Alertmanager, then a fault in each mailbox.

Three mailboxes at different intervals (1 s, 5 s, 15 s: 30 s, 2.5 m and 7.5 m scaled
down by SCALE) and the rules rendered from mixin/config.yml with the cadence's durations scaled
the same way (the mail's own thresholds, such as a message an hour old, stay as shipped); a
busy service desk works in the 1 s mailbox's inbox the whole time. Every alert, warning or
critical, is routed to the webhook. Healthy for SOAK_SECONDS: not one notification. Then
one fault at a time — a wrong password, an IMAP server refusing the token, a hung IMAP server,
a stopped exporter — each must page within its bound and resolve after the fix, and no other
alert may fire meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mixin import rules
from tests.conftest import ExporterProcess, free_port, write_config
from tests.faults.imap_proxy import ImapFaultProxy
from tests.helpers_prometheus import WebhookReceiver, start_alertmanager, start_prometheus
from tests.testbed import make_message
from tests.testbed.desk import BusyDesk

SCALE = 30  # the soak's durations are the shipped ones divided by this
SCRAPE = 1  # Prometheus' scrape and evaluation interval here (s)
NOTIFY = 4  # Alertmanager's group_wait (1 s) and the webhook, with room for a loaded machine


def _seconds(duration: str) -> int:
    return int(duration.removesuffix("s"))


def sign_in_bound(interval: int) -> int:
    """The runbook's bound for the sign-in pages, 2 x I + 2 x S, plus the notification."""
    return 2 * interval + 2 * SCRAPE + NOTIFY
SOAK_SECONDS = float(os.environ.get("SOAK_FALSE_PAGE_SECONDS", "180"))
INTERVALS = {"fast": 1, "mid": 5, "slow": 15}  # seconds
TIMEOUTS = {"fast": "1s", "mid": "2s", "slow": "4s"}


# The durations that follow the check cadence and the scrape: scaled like the intervals. The
# others are about the mail itself (a message an hour old, a secret expiring in 30 days) and
# keep their meaning at any interval, so they stay as shipped.
CADENCE = ("stale_margin", "default_interval", "failure_lookback", "check_failing_for",
           "exporter_down_for", "exporter_absent_for", "reload_failed_for", "token_expired_for")


def scaled_config() -> rules.Config:
    """mixin/config.yml with the cadence's durations divided by SCALE (at least 1 s)."""
    config = rules.load_config(Path(rules.__file__).parent / "config.yml")
    thresholds: dict[str, Any] = dict(config.thresholds)
    for name in CADENCE:
        thresholds[name] = f"{max(1, rules.seconds(thresholds[name]) // SCALE)}s"
    thresholds["max_interval"] = f"{max(INTERVALS.values())}s"
    return dataclasses.replace(config, thresholds=thresholds)


def _deliver_fresh(dovecot: Any, upn: str, count: int) -> None:
    for i in range(count):
        dovecot.deliver(upn, "INBOX", make_message(f"Ticket {i}", "customer@example.com"),
                        internaldate=datetime.now(UTC))


def _firing(webhook: WebhookReceiver, since: float) -> list[dict[str, Any]]:
    return [alert for arrived, alert in webhook.alerts() if arrived >= since]


def _page(webhook: WebhookReceiver, alertname: str, mailbox: str | None, status: str,
          since: float, timeout: float) -> float:
    """Seconds from `since` to the notification of `alertname` with `status`."""
    def matches(alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        return (alert["status"] == status and labels.get("alertname") == alertname
                and (mailbox is None or labels.get("mailbox") == mailbox))

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for arrived, alert in webhook.alerts():
            if arrived >= since and matches(alert):
                return arrived - since
        time.sleep(0.1)
    raise AssertionError(f"no {status} {alertname} for {mailbox} within {timeout:.0f}s; "
                         f"got {[a['labels'] for a in _firing(webhook, since)]}")


@pytest.fixture
def bed(make_mailbox, entra, dovecot, ca, tmp_path: Path) -> Iterator[dict[str, Any]]:
    proxy = ImapFaultProxy(ca, "127.0.0.1", dovecot.port).start()
    boxes = {}
    for name, interval in INTERVALS.items():
        settings: dict[str, Any] = {"interval": f"{interval}s", "timeout": TIMEOUTS[name]}
        if name == "slow":  # its IMAP goes through the proxy that can hang
            settings["imap"] = {"host": "127.0.0.1", "port": proxy.port}
        boxes[name] = make_mailbox(name, **settings)
        _deliver_fresh(dovecot, boxes[name].upn, 3)
    config = write_config(tmp_path, entra, dovecot, list(boxes.values()))
    rule_file = tmp_path / "rules.yml"
    scaled = scaled_config()
    rule_file.write_text(rules.render_rule_file(scaled, rules.variants(scaled)["scheduled"]))
    webhook = WebhookReceiver()
    port = free_port()
    started: list[Any] = []
    try:
        alertmanager = start_alertmanager(tmp_path / "alertmanager", webhook.url, wait=False)
        started.append(alertmanager)
        # Every alert, warning or critical, goes to the webhook: a false notification of any
        # kind counts.
        exporter = ExporterProcess(config, tmp_path / "exporter.log", port=port)
        started.append(exporter)
        prometheus = start_prometheus(tmp_path / "prometheus", [exporter.url], [rule_file],
                                      alertmanager_url=alertmanager.url, wait=False)
        started.append(prometheus)
        alertmanager.wait_ready()
        prometheus.wait_ready()
        yield {"boxes": boxes, "proxy": proxy, "webhook": webhook, "prometheus": prometheus,
               "exporter": exporter, "config": config, "port": port, "tmp_path": tmp_path,
               "started": started}
    finally:
        for server in reversed(started):
            server.stop()
        webhook.stop()
        proxy.stop()


@pytest.mark.timeout(900)
def test_no_false_page_then_every_fault_pages_and_resolves(bed, entra, dovecot):
    boxes, webhook, prometheus = bed["boxes"], bed["webhook"], bed["prometheus"]
    prometheus.wait_for("o365_mailbox_up == 1", lambda r: len(r) == 3, timeout=60)

    # -- healthy, with a busy desk in the 1 s mailbox: not one notification
    desk = BusyDesk(dovecot, boxes["fast"].upn, move_to=("Archive",),
                    max_seconds=SOAK_SECONDS + 30).start()
    soak_started = time.monotonic()
    try:
        while time.monotonic() - soak_started < SOAK_SECONDS:
            time.sleep(1)
            assert _firing(webhook, 0) == [], "false notification during the soak"
    finally:
        desk.stop()
    pending = [a["labels"]["alertname"] for a in prometheus.alerts()]
    assert pending == [], f"alerts pending or firing after the soak: {pending}"
    print(f"\nSOAK {SOAK_SECONDS:.0f}s: 0 notifications; desk did {dict(desk.done)}")

    figures = {}
    # -- a wrong password (1 s mailbox): the token page, then resolved by the fixed file
    fast = boxes["fast"]
    new_password = f"Pw-{uuid.uuid4().hex}"
    broken = time.monotonic()
    entra.set_password(fast.upn, new_password)
    figures["wrong password"] = _page(webhook, "O365MailboxTokenRefreshFailing", "fast",
                                      "firing", broken, timeout=sign_in_bound(1))
    fast.set_password_file(new_password)
    fixed = time.monotonic()
    figures["wrong password fixed"] = _page(webhook, "O365MailboxTokenRefreshFailing", "fast",
                                            "resolved", fixed, timeout=1 + 2 * SCRAPE + NOTIFY)

    # -- IMAP refuses the token (5 s mailbox)
    mid = boxes["mid"]
    broken = time.monotonic()
    entra.reject_imap_users.add(mid.upn)
    figures["IMAP rejection"] = _page(webhook, "O365MailboxImapLoginFailing", "mid", "firing",
                                      broken, timeout=sign_in_bound(5))
    entra.reject_imap_users.discard(mid.upn)
    fixed = time.monotonic()
    # A refused token is retried within 4 intervals: the fix shows by then.
    figures["IMAP rejection fixed"] = _page(webhook, "O365MailboxImapLoginFailing", "mid",
                                            "resolved", fixed, timeout=4 * 5 + 2 * SCRAPE + NOTIFY)

    # -- a hung IMAP server (15 s mailbox): TCP and TLS accepted, no greeting
    proxy = bed["proxy"]
    broken = time.monotonic()
    proxy.set_fault("silent")
    # A run against a server that does not answer reports at its deadline: T more.
    figures["hung IMAP server"] = _page(webhook, "O365MailboxImapLoginFailing", "slow",
                                        "firing", broken,
                                        timeout=sign_in_bound(15) + _seconds(TIMEOUTS["slow"]))
    proxy.set_fault("pass")
    fixed = time.monotonic()
    figures["hung IMAP server fixed"] = _page(webhook, "O365MailboxImapLoginFailing", "slow",
                                              "resolved", fixed, timeout=15 + 2 * SCRAPE + NOTIFY)

    # -- the exporter stops: one exporter-level page, not one per mailbox
    exporter = bed["exporter"]
    broken = time.monotonic()
    exporter.stop()
    down_for = rules.seconds(scaled_config().thresholds["exporter_down_for"])
    figures["exporter stopped"] = _page(webhook, "O365MailboxExporterDown", None, "firing",
                                        broken, timeout=down_for + 2 * SCRAPE + NOTIFY)
    restarted = ExporterProcess(bed["config"], bed["tmp_path"] / "exporter-2.log",
                                port=bed["port"])
    bed["started"].append(restarted)
    fixed = time.monotonic()
    figures["exporter restarted"] = _page(webhook, "O365MailboxExporterDown", None, "resolved",
                                          fixed, timeout=2 * SCRAPE + NOTIFY)

    names = {a["labels"]["alertname"] for _t, a in webhook.alerts()}
    assert names == {"O365MailboxTokenRefreshFailing", "O365MailboxImapLoginFailing",
                     "O365MailboxExporterDown"}, names
    down_pages = [a for _t, a in webhook.alerts()
                  if a["labels"]["alertname"] == "O365MailboxExporterDown"
                  and a["status"] == "firing"]
    assert len({a["fingerprint"] for a in down_pages}) == 1  # one exporter, one page
    print("PAGES " + "; ".join(f"{k}: {v:.1f}s" for k, v in figures.items()))
