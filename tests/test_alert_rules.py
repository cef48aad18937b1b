"""The alert rules, their promtool unit tests, the Grafana dashboard and the runbook.

`promtool check rules` and `promtool test rules` run here; every alert must be complete
(severity, summary, description, runbook_url with a section in docs/runbook.md) and have a
firing and a silent case in alerts/tests/; the rules are rendered from mixin/config.yml
(`python -m mixin.render`), every variant passes promtool, and tests/rule_table.py runs every
alert at check intervals of 30s, 1m, 5m and 15m; every metric name the rules and the dashboard use
must exist in the exposition of a real exporter (a healthy mailbox with a recorded Junk review,
an app-only one with a client secret and `smtp_login`, and a failing one).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.failures import REASONS
from tests import rule_table
from tests.conftest import use_client_secret, write_config
from tests.helpers_prometheus import (
    DASHBOARD_FILE,
    RULES_FILE,
    dashboard_queries,
    shorten_for,
)
from tests.markdown import anchors
from tests.testbed import make_message

ROOT = Path(__file__).resolve().parent.parent
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
MIXIN_CONFIG = ROOT / "mixin" / "config.yml"
# Alerts about the exporter process rather than a mailbox: no mailbox label to name.
EXPORTER_ALERTS = {
    "O365MailboxExporterChecksStale",
    "O365MailboxExporterDown",
    "O365MailboxExporterAbsent",
    "O365MailboxExporterConfigReloadFailed",
}
# The exporter's names and the recording rules' (`up` is Prometheus' own: the e2e test shows
# the dashboard's query of it returning data).
METRIC_RE = re.compile(r"\bo365_mailbox[a-z0-9_:]*")


def rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES_FILE.read_text())["groups"])


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {
        rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule
    }


def runbook_anchors() -> set[str]:
    return anchors(RUNBOOK)


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules() -> None:
    result = run("promtool", "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS
    result = run("promtool", "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_is_complete_and_has_a_runbook_section() -> None:
    anchors = runbook_anchors()
    names = [rule["alert"] for rule in alerting_rules()]
    assert len(names) == len(set(names))
    for rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, name
        url = annotations["runbook_url"]
        assert url.endswith(f"docs/runbook.md#{name.lower()}"), url
        assert name.lower() in anchors, f"docs/runbook.md has no section {name}"
        if name not in EXPORTER_ALERTS:
            assert "$labels.mailbox" in annotations["summary"], name
            assert "$labels.mailbox" in annotations["description"], name
    paging = {r["alert"] for r in alerting_rules() if r["labels"]["severity"] == "critical"}
    assert paging == {
        "O365MailboxTokenRefreshFailing",
        "O365MailboxImapLoginFailing",
        "O365MailboxSmtpLoginFailing",
        "O365MailboxCredentialExpiryImminent",
        "O365MailboxExporterDown",
        "O365MailboxExporterAbsent",
        "O365MailboxChecksStale",
        "O365MailboxExporterChecksStale",
    }
    # The sign-in alerts name the failing reason and code.
    for rule in alerting_rules():
        if rule["alert"] in {"O365MailboxTokenRefreshFailing", "O365MailboxImapLoginFailing",
                             "O365MailboxSmtpLoginFailing"}:
            assert "$labels.reason" in rule["annotations"]["description"]
            assert "$labels.code" in rule["annotations"]["description"]


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    firing.add(check["alertname"])
                    for alert in check["exp_alerts"]:
                        assert set(alert["exp_annotations"]) >= {
                            "summary", "description", "runbook_url"
                        }, (path.name, case["name"])
                        assert "severity" in alert["exp_labels"]
                else:
                    silent.add(check["alertname"])
    # The table (tests/rule_table.py): a fault per alert, and a healthy fleet silent for all.
    firing |= {case.alert for case in rule_table.CASES}
    silent |= {case.alert for case in rule_table.CASES}
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a silent case"


def test_thresholds_are_named_in_the_config_and_the_runbook() -> None:
    config = yaml.safe_load(MIXIN_CONFIG.read_text())
    names = list(config["thresholds"])
    for needed in ("send_rate_max", "send_daily_max", "drain_growth_min", "drain_ratio_min",
                   "credential_warn_left", "credential_page_left", "server_cert_warn_left",
                   "junk_review_max_age", "sign_in_failed_runs", "stale_intervals"):
        assert needed in names, needed
    header = RULES_FILE.read_text().split("groups:", 1)[0]
    runbook = RUNBOOK.read_text()
    tuning = runbook[runbook.index("## Tuning"):]
    tuning = tuning[: tuning.index("\n## ", 1)]
    for name in names:
        assert re.search(rf"#   {name} +\S", header), f"{name} not in the rules file's header"
    missing = [name for name in names if f"`{name}`" not in tuning]
    assert not missing, f"thresholds not in the runbook's Tuning section: {missing}"
    assert "`probe.scrape_interval`" in tuning and "`probe.self_job`" in tuning


# -- every variant, and the table at every interval ---------------------------------------------

VARIANTS = {
    "scheduled": ROOT / "alerts" / "o365-mailbox.rules.yml",
    "probe": ROOT / "alerts" / "o365-mailbox-probe.rules.yml",
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_renders_and_passes_promtool_check(tmp_path: Path, variant: str) -> None:
    """Render into a temp dir (with another job name too) and check every rule file."""
    for job in (None, "mail-probe"):
        out = tmp_path / (job or "default")
        argv = [sys.executable, "-m", "mixin.render", "--out", str(out)]
        result = run(*argv, *(["--job", job] if job else []))
        assert result.returncode == 0, result.stderr
        rendered = out / VARIANTS[variant].relative_to(ROOT)
        if job is None:
            assert rendered.read_text() == VARIANTS[variant].read_text()
        else:
            assert f'job="{job}"' in rendered.read_text()
            assert 'job="o365-mailbox-exporter"' not in rendered.read_text()
        check = run("promtool", "check", "rules", str(rendered))
        assert check.returncode == 0, check.stdout + check.stderr
    # The variants have the same alerts.
    names = {r["alert"] for g in yaml.safe_load(VARIANTS[variant].read_text())["groups"]
             for r in g["rules"] if "alert" in r}  # fmt: skip
    assert names == {rule["alert"] for rule in alerting_rules()}


def test_render_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(sys.executable, "-m", "mixin.render", "--out", str(out)).returncode == 0
    assert run(sys.executable, "-m", "mixin.render", "--check", "--out", str(out)).returncode == 0
    rules = out / "alerts" / "o365-mailbox.rules.yml"
    rules.write_text(rules.read_text().replace("severity: critical", "severity: page", 1))
    result = run(sys.executable, "-m", "mixin.render", "--check", "--out", str(out))
    assert result.returncode == 1 and "o365-mailbox.rules.yml" in result.stderr


@pytest.mark.timeout(400)
def test_every_alert_at_every_interval_from_one_table(tmp_path: Path) -> None:
    """tests/rule_table.py rendered to promtool tests, one file per check interval (30s, 1m,
    5m, 15m), run in parallel: a healthy fleet stays silent for hours, every fault fires its
    alert within the table's bound (and no earlier than the second failed run for sign-in)."""
    assert {c.alert for c in rule_table.CASES} == {r["alert"] for r in alerting_rules()}
    procs = []
    for name, interval in rule_table.INTERVALS.items():
        path = tmp_path / f"table-{name}.test.yml"
        document = rule_table.promtool_tests(interval, str(RULES_FILE))
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        procs.append((name, subprocess.Popen(
            ["promtool", "test", "rules", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )))  # fmt: skip
    failures = {}
    for name, proc in procs:
        output = proc.communicate(timeout=390)[0]
        if proc.returncode != 0 or "SUCCESS" not in output:
            failures[name] = output[-4000:]
    assert not failures, failures


def test_runbook_bound_table_is_the_tables() -> None:
    runbook = " ".join(RUNBOOK.read_text().split())
    for alert, formula, bounds in rule_table.bound_table():
        cells = " | ".join(_minutes(b) for b in bounds)
        assert f"| {alert} | {formula} | {cells} |" in runbook, (alert, cells)


def _minutes(seconds: int) -> str:
    return f"{seconds / 60:.0f}m" if seconds % 60 == 0 else f"{seconds / 60:.1f}m"


def test_quick_copy_only_shortens_for() -> None:
    original = yaml.safe_load(RULES_FILE.read_text())
    quick = yaml.safe_load(shorten_for(RULES_FILE.read_text(), "2s"))
    for group, quick_group in zip(original["groups"], quick["groups"], strict=True):
        for rule, quick_rule in zip(group["rules"], quick_group["rules"], strict=True):
            if "for" in rule:
                assert quick_rule.pop("for") == "2s"
                rule = {k: v for k, v in rule.items() if k != "for"}
            assert quick_rule == rule


# -- runbook ----------------------------------------------------------------------------------

def test_runbook_alertmanager_example_is_a_valid_config(tmp_path: Path) -> None:
    text = RUNBOOK.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    (example,) = [block for block in blocks if "route:" in block and "receivers:" in block]
    config = tmp_path / "alertmanager.yml"
    config.write_text(example)
    result = run("amtool", "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    document = yaml.safe_load(example)
    routes = json.dumps(document["route"])
    assert "severity" in routes and "critical" in routes


def test_runbook_records_measurements() -> None:
    text = RUNBOOK.read_text()
    measured = text[text.index("## Measured"):]
    assert re.search(r"break .{0,40}webhook", measured, re.IGNORECASE)
    assert re.search(r"\d+(\.\d+)? ?s", measured)


# -- metric names against a real exposition ---------------------------------------------------

def _used_names_and_values() -> tuple[set[str], dict[str, set[str]]]:
    texts = [RULES_FILE.read_text()]
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    texts += [expr for _title, expr in dashboard_queries(dashboard)]
    texts += [v["query"]["query"] for v in dashboard["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    names = {name for text in texts for name in METRIC_RE.findall(text)}
    values: dict[str, set[str]] = {}
    for text in texts:
        for label, value in re.findall(
            r'\b(check|folder|reason|kind|endpoint)\s*!?=~?\s*"([^"]*)"', text
        ):
            # (a template's `query` fills "%s" with the alert's own label)
            values.setdefault(label, set()).update(
                v for v in value.split("|") if v and v != "%s"
            )
        for label, value in re.findall(r'eq \$labels\.(reason|kind|endpoint) "([^"]+)"', text):
            values.setdefault(label, set()).add(value)
    return names, values


@pytest.mark.timeout(60)
def test_every_metric_name_used_exists_in_the_exposition(
    make_mailbox, entra, dovecot, tmp_path: Path, exporter_process
) -> None:
    now = datetime.now(UTC)
    healthy = make_mailbox("healthy", oversized_bytes=10_000)
    dovecot.deliver(healthy.upn, "INBOX", make_message("Help", "user@example.com"),
                    internaldate=now - timedelta(hours=1))
    dovecot.deliver(healthy.upn, "INBOX", make_message("Scan", "copier@example.com",
                                                       size=20_000), internaldate=now)
    dovecot.deliver(healthy.upn, "Junk Email", make_message("Spam", "spam@spam.example"),
                    internaldate=now - timedelta(days=3))
    # App-only with a client secret and its expiry date, sending over SMTP too.
    app = make_mailbox("app")
    use_client_secret(app, entra, tmp_path / "app.secret", "v4lue",
                      client_secret_expires="2031-01-31")
    app.settings["smtp"] = {"host": "127.0.0.1", "port": dovecot.submission_port}
    app.settings["checks"] = ["token", "imap_login", "inbox", "oversized", "junk", "smtp_login"]
    failing = make_mailbox("failing")
    failing.set_password_file("wrong-password")
    config = write_config(tmp_path, entra, dovecot, [healthy, app, failing], interval="1s")
    # An admin records the weekly Junk review of the healthy mailbox.
    review = run(sys.executable, "-m", "exporter", "junk-review", f"--config.file={config}",
                 "--mailbox", "healthy", "--ack")
    assert review.returncode == 0, review.stdout + review.stderr
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="healthy")
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="app")
    exporter.wait_for("o365_mailbox_folder_oldest_message_timestamp_seconds",
                      mailbox="healthy", folder="junk")
    exporter.wait_for("o365_mailbox_junk_last_review_timestamp_seconds", mailbox="healthy")
    exporter.wait_for("o365_mailbox_credential_expiry_timestamp_seconds", mailbox="app",
                      kind="client_secret")
    exporter.wait_for("o365_mailbox_tls_certificate_expiry_timestamp_seconds", mailbox="app",
                      endpoint="smtp")
    exporter.wait_for("o365_mailbox_check_failures_total", mailbox="failing", check="token",
                      reason="backoff", code="50126")
    exposed, label_values = exporter.names_and_label_values()

    names, values = _used_names_and_values()
    recorded = recorded_names()
    assert names & recorded == recorded, "recording rules nobody uses"
    missing = {n for n in names - recorded if n not in exposed}
    assert not missing, f"not in the exporter's exposition: {sorted(missing)}"
    assert values["check"] <= label_values["check"], values["check"] - label_values["check"]
    assert values["folder"] <= label_values["folder"], values["folder"] - label_values["folder"]
    assert values["reason"] <= set(REASONS), values["reason"] - set(REASONS)
    for label in ("kind", "endpoint"):
        assert values[label] <= label_values[label], values[label] - label_values[label]
