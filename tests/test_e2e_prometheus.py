"""End to end with the real tools: the test bed, the exporter, Prometheus with the alert rules,
Alertmanager and a webhook as the pager.

A password changed in Entra ID (the exporter still holds the old one) must page with the
mailbox, the reason and the AADSTS code; putting the new password into the secret file must
resolve the page. While the mailbox is broken, every PromQL expression of every panel of both
dashboards (dashboards/o365-mailbox.json and the mail admins' o365-mailbox-admin.json) must
return data from the same Prometheus, with the template variables set as Grafana sets them
from their own queries (this job, this exporter's instance, every mailbox), and a few panels
must show the values the test set up.

Both mailboxes run every check including `smtp_login` (against Dovecot's submission service);
hr signs in app-only with a client secret that expires in 20 days, has a Junk review recorded
with `junk-review --ack`, and gets mail in Sent Items and its inbox between runs, so the send,
drain, expiry and review panels have data, and the warnings about the expiring secret and
servicedesk's never-reviewed Junk fire in Prometheus (warnings do not page).

The rules are the shipped ones with every `for:` shortened to 2s (`rules_for_quick_test`);
the exporter checks every second, Prometheus scrapes and evaluates every second, Alertmanager
groups with 1s timers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, write_config, write_secret
from tests.helpers_prometheus import (
    DASHBOARD_FILES,
    JOB,
    Prometheus,
    WebhookReceiver,
    dashboard_panels,
    dashboard_queries,
    grafana_regex,
    grafana_to_promql,
    rules_for_quick_test,
    start_alertmanager,
    start_prometheus,
    variable_values,
)
from tests.testbed import make_message

TOKEN_ALERT = "O365MailboxTokenRefreshFailing"
ALL_CHECKS = ["token", "imap_login", "inbox", "oversized", "junk", "smtp_login"]


def _deliver(dovecot: Any, upn: str, folder: str, count: int) -> None:
    for i in range(count):
        dovecot.deliver(upn, folder, make_message(f"Re: ticket {i}", "desk@contoso.example"),
                        internaldate=datetime.now(UTC))


def _ack_junk_review(config: Path, mailbox: str) -> subprocess.Popen[str]:
    """`o365-mailbox-exporter junk-review --ack`, as an admin runs it (started, not awaited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "junk-review", f"--config.file={config}",
         "--mailbox", mailbox, "--ack"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _firing(prometheus: Prometheus, alertname: str) -> set[str]:
    return {
        a["labels"].get("mailbox", "")
        for a in prometheus.alerts()
        if a["state"] == "firing" and a["labels"]["alertname"] == alertname
    }


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
    # hr: app-only with a client secret that expires in 20 days (a warning, not a page).
    hr.client_id = str(uuid.uuid4())
    entra.add_app(hr.client_id, public_client=False, client_secret="v4lue", mailbox=hr.upn)
    secret_file = tmp_path / "hr.secret"
    write_secret(secret_file, "v4lue")
    secret_expires = (now + timedelta(days=20)).date()
    hr.settings["auth"] = {"flow": "client_secret", "client_secret_file": str(secret_file),
                           "client_secret_expires": secret_expires.isoformat()}
    for mailbox in (desk, hr):
        mailbox.settings["smtp"] = {"host": "127.0.0.1", "port": dovecot.submission_port}
        mailbox.settings["checks"] = ALL_CHECKS
    config = write_config(tmp_path, entra, dovecot, [desk, hr], interval="1s")

    webhook = WebhookReceiver()
    servers = []
    try:
        alertmanager = start_alertmanager(tmp_path / "alertmanager", webhook.url, wait=False)
        servers.append(alertmanager)
        # An admin has done hr's weekly Junk review (servicedesk's Junk was never reviewed).
        review = _ack_junk_review(config, "hr")
        review_output, _ = review.communicate(timeout=30)
        assert review.returncode == 0, review_output
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
            "o365-mailbox.auth", "o365-mailbox.backlog", "o365-mailbox.sending",
            "o365-mailbox.expiry", "o365-mailbox.junk-oversized", "o365-mailbox.exporter",
        }
        prometheus.wait_for("o365_mailbox_up == 1", lambda r: len(r) == 2, timeout=30)
        healthy_at = time.monotonic()

        # -- the desk sends 3 replies and gets 2 new messages between runs
        _deliver(dovecot, hr.upn, "Sent Items", 3)
        _deliver(dovecot, hr.upn, "INBOX", 2)
        prometheus.wait_for(
            'o365_mailbox_folder_arrived_messages_total{mailbox="hr", folder="sent"} == 3'
        )
        prometheus.wait_for(
            'o365_mailbox_folder_arrived_messages_total{mailbox="hr", folder="inbox"} == 2'
        )
        expiry = prometheus.query(
            'o365_mailbox_credential_expiry_timestamp_seconds{mailbox="hr", kind="client_secret"}'
        )
        assert [float(r["value"][1]) for r in expiry] == [
            datetime(secret_expires.year, secret_expires.month, secret_expires.day,
                     tzinfo=UTC).timestamp()
        ]
        # The warnings fire in Prometheus (the quick rules wait 2s); none of them pages.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            "hr" in _firing(prometheus, "O365MailboxCredentialExpiringSoon")
            and "servicedesk" in _firing(prometheus, "O365MailboxJunkReviewOverdue")
        ):
            time.sleep(0.2)
        assert _firing(prometheus, "O365MailboxCredentialExpiringSoon") == {"hr"}
        assert _firing(prometheus, "O365MailboxJunkReviewOverdue") == {"servicedesk"}
        assert _firing(prometheus, "O365MailboxCredentialExpiryImminent") == set()
        assert _firing(prometheus, "O365MailboxSmtpLoginFailing") == set()
        warnings_at = time.monotonic()

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

        # -- every query of both dashboards returns data from this Prometheus while the mailbox
        # is broken, with the template variables set as Grafana sets them: the variables' own
        # queries list this job, this exporter and both mailboxes, and are then selected.
        instance = urllib.parse.urlsplit(exporter.url).netloc
        selected = {"job": grafana_regex([JOB]), "instance": grafana_regex([instance])}
        empty = {}
        queried = 0
        deadline = time.monotonic() + 15
        for path in DASHBOARD_FILES:
            dashboard = json.loads(path.read_text())
            definitions = {
                v["name"]: v["definition"] for v in dashboard["templating"]["list"]
                if v["type"] == "query"
            }
            assert variable_values(prometheus, definitions["job"]) == [JOB]
            assert variable_values(prometheus, definitions["instance"], job=selected["job"]) == [
                instance
            ]
            assert variable_values(prometheus, definitions["mailbox"], **selected) == [
                "hr", "servicedesk"
            ]
            for title, expr in dashboard_queries(dashboard):
                promql = grafana_to_promql(expr, mailbox=".*", **selected)
                result = prometheus.query(promql)
                while not result and time.monotonic() < deadline:
                    time.sleep(0.2)
                    result = prometheus.query(promql)
                queried += 1
                if not result:
                    empty[f"{path.name}: {title}: {promql}"] = result
        assert not empty, f"dashboard queries without data: {list(empty)}"
        assert queried >= 80, queried

        # ... and show the right values: what this test set up, read through the panels.
        def panel_value(path: Path, title: str, ref: str = "A", **labels: str) -> float:
            dashboard = json.loads(path.read_text())
            (panel,) = [p for p in dashboard_panels(dashboard) if p["title"] == title]
            (expr,) = [t["expr"] for t in panel["targets"] if t["refId"] == ref]
            rows = [
                r for r in prometheus.query(grafana_to_promql(expr, **selected))
                if all(r["metric"].get(k) == v for k, v in labels.items())
            ]
            assert len(rows) == 1, (title, ref, labels, rows)
            return float(rows[0]["value"][1])

        main, admin = DASHBOARD_FILES
        assert panel_value(main, "Mailbox status", "A", mailbox="servicedesk") == 0
        assert panel_value(main, "Mailbox status", "A", mailbox="hr") == 1
        assert panel_value(main, "Failed runs in a row", mailbox="servicedesk",
                           check="token") >= 2
        assert panel_value(main, "Check interval", mailbox="hr") == 1
        assert panel_value(main, "Exporters", "E") == 2  # mailboxes of this exporter
        assert panel_value(main, "Exporters", "A") == 1  # scraped
        assert 20 - 1 <= panel_value(
            admin, "Client secret / certificate: days left", mailbox="hr", kind="client_secret"
        ) <= 20
        assert 3 <= panel_value(admin, "Messages sent in the last 24 hours vs 10,000",
                                mailbox="hr") <= 4
        assert panel_value(admin, "Mailboxes at a glance", "C", mailbox="hr") == 0  # unreviewed
        assert panel_value(admin, "Mailboxes at a glance", "D", mailbox="hr") == 0  # oversized
        assert panel_value(admin, "Mailboxes at a glance", "F", mailbox="hr") == 25 * 1024 * 1024
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
        assert ("O365MailboxSmtpLoginFailing", "servicedesk") not in paged
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
        f"{healthy_at - started:.1f}s; arrivals and warnings {warnings_at - healthy_at:.1f}s; "
        f"break -> page {paged_at - broken_at:.1f}s; "
        f"dashboard queries {dashboards_checked_at - paged_at:.1f}s; "
        f"fix -> resolved {resolved_at - fixed_at:.1f}s; "
        f"test body {time.monotonic() - started:.1f}s"
    )
    assert paged_at - broken_at < 30
    assert resolved_at - fixed_at < 30
