"""End to end with the real tools: the test bed, the exporter, Prometheus with the alert rules,
Alertmanager and a webhook as the pager.

A password changed in Entra ID (the exporter still holds the old one) must page with the
mailbox, the reason and the AADSTS code; putting the new password into the secret file must
resolve the page. While the mailbox is broken, every PromQL expression of every dashboard panel
must return data from the same Prometheus.

The rules are the shipped ones with every `for:` shortened to 2s (`rules_for_quick_test`);
the exporter checks every second, Prometheus scrapes and evaluates every second, Alertmanager
groups with 1s timers.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import write_config
from tests.helpers_prometheus import (
    DASHBOARD_FILE,
    WebhookReceiver,
    dashboard_queries,
    grafana_to_promql,
    rules_for_quick_test,
    start_alertmanager,
    start_prometheus,
)
from tests.testbed import make_message

TOKEN_ALERT = "O365MailboxTokenRefreshFailing"


def _is(alert: dict, status: str, alertname: str, mailbox: str) -> bool:
    labels = alert["labels"]
    return (
        alert["status"] == status
        and labels.get("alertname") == alertname
        and labels.get("mailbox") == mailbox
    )


def test_auth_page_fires_and_resolves_and_dashboards_return_data(
    make_mailbox, entra, dovecot, tmp_path: Path, exporter_process
):
    started = time.monotonic()
    now = datetime.now(UTC)
    desk = make_mailbox("servicedesk", oversized_bytes=100_000)
    hr = make_mailbox("hr")
    # Something for every panel: an old unseen inbox message, an oversized one, old Junk.
    dovecot.deliver(desk.upn, "INBOX", make_message("Printer on fire", "user@example.com"),
                    internaldate=now - timedelta(hours=2))
    dovecot.deliver(desk.upn, "INBOX", make_message("Scan", "copier@example.com", size=200_000),
                    internaldate=now - timedelta(minutes=5), flags=["\\Seen"])
    dovecot.deliver(desk.upn, "Junk Email", make_message("You won", "spam@spam.example"),
                    internaldate=now - timedelta(days=8))
    # The broken mailbox loses its folder metrics (they come from the latest run): the healthy
    # one has some of everything too, so the panels have data throughout.
    dovecot.deliver(hr.upn, "INBOX", make_message("Holiday", "user@example.com"),
                    internaldate=now - timedelta(minutes=1))
    dovecot.deliver(hr.upn, "Junk Email", make_message("Cheap pills", "spam@spam.example"),
                    internaldate=now - timedelta(days=2))
    config = write_config(tmp_path, entra, dovecot, [desk, hr], interval="1s")

    webhook = WebhookReceiver()
    servers = []
    try:
        alertmanager = start_alertmanager(tmp_path / "alertmanager", webhook.url, wait=False)
        servers.append(alertmanager)
        exporter = exporter_process(config)
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            [exporter.url],
            [rules_for_quick_test(tmp_path / "rules-quick.yml")],
            alertmanager_url=alertmanager.url,
            wait=False,
        )
        servers.append(prometheus)
        alertmanager.wait_ready()
        prometheus.wait_ready()
        assert {g["name"] for g in prometheus.rule_groups()} == {
            "o365-mailbox.auth", "o365-mailbox.backlog", "o365-mailbox.junk-oversized",
            "o365-mailbox.exporter",
        }
        prometheus.wait_for("o365_mailbox_up == 1", lambda r: len(r) == 2, timeout=30)
        healthy_at = time.monotonic()

        # -- break: the password changes in Entra ID (the refresh token is revoked with it),
        # the exporter's password file still holds the old one.
        new_password = f"Pw-{uuid.uuid4().hex}"
        entra.set_password(desk.upn, new_password)
        broken_at = time.monotonic()
        paged_at, page = webhook.wait_for_alert(
            lambda a: _is(a, "firing", TOKEN_ALERT, "servicedesk"), timeout=40
        )
        labels, annotations = page["labels"], page["annotations"]
        assert labels["severity"] == "critical"
        assert labels["reason"] == "invalid_grant"
        assert labels["code"] == "50126"
        assert "servicedesk" in annotations["summary"]
        assert "servicedesk" in annotations["description"]
        assert "invalid_grant" in annotations["description"]
        assert "AADSTS50126" in annotations["description"]
        assert annotations["runbook_url"].endswith("docs/runbook.md#o365mailboxtokenrefreshfailing")

        # -- every dashboard query returns data from this Prometheus while the mailbox is broken
        dashboard = json.loads(DASHBOARD_FILE.read_text())
        assert sorted(prometheus.label_values("mailbox", "o365_mailbox_up")) == [
            "hr", "servicedesk"
        ]
        empty = {}
        deadline = time.monotonic() + 15
        for title, expr in dashboard_queries(dashboard):
            promql = grafana_to_promql(expr)
            result = prometheus.query(promql)
            while not result and time.monotonic() < deadline:
                time.sleep(0.2)
                result = prometheus.query(promql)
            if not result:
                empty[title + ": " + promql] = result
        assert not empty, f"dashboard queries without data: {list(empty)}"
        last_error = prometheus.query(
            'o365_mailbox_check:failure_reason:latest{mailbox="servicedesk", check="token"}'
        )
        assert [(r["metric"]["reason"], r["metric"]["code"]) for r in last_error] == [
            ("invalid_grant", "50126")
        ]
        dashboards_checked_at = time.monotonic()

        # -- fix: the new password goes into the secret file; the exporter retries at once
        desk.password = new_password
        desk.set_password_file(new_password)
        fixed_at = time.monotonic()
        resolved_at, resolved = webhook.wait_for_alert(
            lambda a: _is(a, "resolved", TOKEN_ALERT, "servicedesk"), timeout=40
        )
        assert resolved["labels"] == labels

        # One page per mailbox: the healthy mailbox never paged; the IMAP login of the broken
        # one only failed as a dependency of the token check, so it did not page either.
        paged = [
            (a["labels"]["alertname"], a["labels"].get("mailbox")) for _, a in webhook.alerts()
        ]
        assert ("O365MailboxImapLoginFailing", "servicedesk") not in paged
        assert not [p for p in paged if p[1] == "hr"], paged
        firing_pages = [
            a for _, a in webhook.alerts() if _is(a, "firing", TOKEN_ALERT, "servicedesk")
        ]
        assert {json.dumps(a["labels"], sort_keys=True) for a in firing_pages} == {
            json.dumps(labels, sort_keys=True)
        }
    finally:
        for server in reversed(servers):
            server.stop()
        webhook.stop()

    print(
        f"\ne2e: bed+exporter+prometheus+alertmanager healthy after "
        f"{healthy_at - started:.1f}s; break -> page {paged_at - broken_at:.1f}s; "
        f"dashboard queries {dashboards_checked_at - paged_at:.1f}s; "
        f"fix -> resolved {resolved_at - fixed_at:.1f}s; "
        f"test body {time.monotonic() - started:.1f}s"
    )
    assert paged_at - broken_at < 30
    assert resolved_at - fixed_at < 30
