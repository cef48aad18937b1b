"""The Grafana dashboards: rendered from mixin/config.yml, valid, fit for fleets, linked.

The committed JSON must be what `python -m mixin.dashboards` writes; each dashboard must be
well-formed Grafana JSON (uid, title, schemaVersion, panels on the 24-column grid without
overlaps, targets with PromQL), every panel must have a description, a unit and a runbook link
to a section that exists in docs/runbook.md, every query must select `$job` and `$instance`
(mailbox metrics `$mailbox` too) and no literal job, and every metric and label a query uses
must exist in the exposition of a real exporter. (That every query returns data from a real
Prometheus is shown in tests/test_e2e_prometheus.py.)
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

from mixin import dashboards as mixin_dashboards
from tests.conftest import use_client_secret, write_config
from tests.helpers_prometheus import (
    ADMIN_DASHBOARD_FILE,
    DASHBOARD_FILE,
    DASHBOARD_FILES,
    dashboard_panels,
    dashboard_queries,
    grafana_to_promql,
)
from tests.markdown import anchors
from tests.testbed import make_message

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "mixin" / "config.yml").read_text())
RUNBOOK = ROOT / "docs" / "runbook.md"
PROVISIONING = ROOT / "dashboards" / "provisioning"
METRIC_RE = re.compile(r"\bo365_mailbox[a-z0-9_:]*")
# A series selector: metric{matchers}
SELECTOR_RE = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_:]*)\{([^}]*)\}")
# A metric name used without a selector (it would read every job).
BARE_METRIC_RE = re.compile(r"(?<![\w:])(o365_mailbox[a-z0-9_:]*|up)(?![\w:{])")
# An aggregation, with its `by (...)` labels if any.
AGGREGATION_RE = re.compile(r"\b(?:sum|min|max|count|avg|topk)\s*(?:by\s*\(([^)]*)\))?\s*\(")
GRID_COLUMNS = 24


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (not the rows)."""
    return [p for p in dashboard_panels(dashboard) if p["type"] != "row"]


def runbook_anchors() -> set[str]:
    return anchors(RUNBOOK)


def all_links(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, link) for every panel link and data link, overrides included."""
    found = []
    for panel in panels(dashboard):
        found += [(panel["title"], link) for link in panel.get("links", [])]
        field_config = panel["fieldConfig"]
        found += [(panel["title"], link) for link in field_config["defaults"].get("links", [])]
        for override in field_config.get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    found += [(panel["title"], link) for link in prop["value"]]
    return found


# -- rendered from the shared configuration ---------------------------------------------------


def test_committed_dashboards_are_the_render() -> None:
    rendered = mixin_dashboards.render_dashboards()
    assert sorted(rendered) == sorted(DASHBOARD_FILES)
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name}: run python -m mixin.dashboards"
    check = subprocess.run(
        [sys.executable, "-m", "mixin.dashboards", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


def test_render_follows_the_config(tmp_path: Path) -> None:
    """Another job, runbook, threshold and landing page in the config change the dashboards
    accordingly; --check tells a stale file from a current one."""
    config = dict(CONFIG)
    config["job"] = "mailmon"
    config["runbook_url_base"] = "https://wiki.example.net/mailmon-runbook"
    config["thresholds"] = dict(CONFIG["thresholds"], send_rate_max=20, junk_max_age="10d")
    config["probe"] = dict(CONFIG.get("probe") or {}, self_job="mailmon-self")
    config["dashboards"] = {"landing_page_url": "https://mailmon.example.net/{instance}"}
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--config", str(config_file), "--output-dir", str(out)]

    assert mixin_dashboards.main([*argv, "--check"]) == 1  # nothing there yet
    assert mixin_dashboards.main(argv) == 0
    assert mixin_dashboards.main([*argv, "--check"]) == 0
    (out / DASHBOARD_FILE.name).write_text("{}\n")
    assert mixin_dashboards.main([*argv, "--check"]) == 1

    admin = load(out / ADMIN_DASHBOARD_FILE.name)
    main = mixin_dashboards.main_dashboard(mixin_dashboards.load_settings(config_file))
    for dashboard in (main, admin):
        job = {v["name"]: v for v in dashboard["templating"]["list"]}["job"]
        assert job["current"]["value"] == ["mailmon", "mailmon-self"]
        urls = [link["url"] for _title, link in all_links(dashboard)]
        runbook = [u for u in urls if "runbook" in u]
        assert runbook and all(
            u.startswith("https://wiki.example.net/mailmon-runbook#") for u in runbook
        )
        assert all("github.com" not in u for u in urls)
        landing = {u for u in urls if "mailmon.example.net" in u}
        assert landing <= {
            "https://mailmon.example.net/${__field.labels.instance}",
            "https://mailmon.example.net/${__data.fields.instance}",
        }
        assert landing
    (rate,) = [p for p in panels(admin) if p["title"] == "Send rate vs the 30/min limit"]
    steps = rate["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 20, 30]
    assert "warns at 20" in rate["description"]
    (junk_age,) = [p for p in panels(admin) if p["title"] == "Oldest Junk message age"]
    steps = junk_age["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 10 * 86400]


def test_thresholds_are_the_rules_thresholds() -> None:
    """The lines drawn on the panels are the alert rules' thresholds from mixin/config.yml."""
    settings = mixin_dashboards.load_settings()
    t = settings.thresholds
    assert (t.send_rate_max, t.send_daily_max) == (24, 8000)
    assert (t.credential_warn_left, t.credential_page_left) == (30 * 86400, 7 * 86400)
    assert (t.stale_intervals, t.stale_margin, t.sign_in_failed_runs) == (3, 60, 2)
    by_title = {p["title"]: p for p in panels(load(DASHBOARD_FILE))}

    def steps(title: str) -> list[Any]:
        return [
            s["value"] for s in by_title[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        ]

    assert steps("Send rate vs the 30/min limit") == [None, 24, 30]
    assert steps("Messages sent in the last 24 hours vs 10,000") == [None, 8000, 10000]
    assert steps("Oldest inbox message age") == [None, 3600]
    assert steps("Failed runs in a row") == [None, 2]
    assert steps("Client secret / certificate: days left") == [None, 7, 30]
    # the staleness limit and the send rate are the rules' own recording rules
    (stale_limit,) = [
        t["expr"] for t in by_title["Time since the last run"]["targets"] if t["refId"] == "B"
    ]
    assert stale_limit.startswith("o365_mailbox:check_stale_after:seconds{")
    (rate,) = by_title["Send rate vs the 30/min limit"]["targets"]
    assert rate["expr"].startswith("o365_mailbox_folder:sent_messages:per_minute{")


# -- structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_json_is_valid(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] in ("o365-mailbox", "o365-mailbox-admin")
    assert dashboard["title"] and dashboard["description"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard  # provisioning and import assign their own
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids))

    occupied: set[tuple[int, int]] = set()
    for panel in dashboard_panels(dashboard):
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos), panel["title"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells

    assert len(panels(dashboard)) >= 15
    for panel in panels(dashboard):
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["description"].strip(), f"{title}: no description"
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{title}: no unit"
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"], title
        assert panel["targets"], title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["datasource"]["uid"] == "${datasource}", title
            grafana_to_promql(target["expr"])  # only known variables
        if panel["type"] == "table":
            # each column shows the value of one query (or its labels), merged on the labels
            kinds = {t["format"] for t in panel["targets"]}
            assert kinds == {"table"}, title
            assert all(t["instant"] for t in panel["targets"]), title


def test_units_fit_what_the_panels_show() -> None:
    """Seconds for ages and durations, bytes for sizes, dates for timestamps."""
    for path in DASHBOARD_FILES:
        for panel in panels(load(path)):
            unit = panel["fieldConfig"]["defaults"]["unit"]
            exprs = " ".join(t["expr"] for t in panel["targets"])
            if panel["type"] == "timeseries":
                if "time() - " in exprs or "duration_seconds" in exprs:
                    assert unit == "s", panel["title"]
                if "_bytes" in exprs:
                    assert unit == "bytes", panel["title"]
            for override in panel["fieldConfig"]["overrides"]:
                props = {p["id"]: p["value"] for p in override["properties"]}
                if "unit" in props and props["unit"] == "dateTimeAsIso":
                    ref = _override_ref(panel, override["matcher"]["options"])
                    assert ref["expr"].endswith(" * 1000)"), (panel["title"], ref["expr"])


def _override_ref(panel: dict[str, Any], column: str) -> dict[str, Any]:
    organize = next(t for t in panel["transformations"] if t["id"] == "organize")["options"]
    (value,) = [k for k, v in organize["renameByName"].items() if v == column]
    return next(t for t in panel["targets"] if f"Value #{t['refId']}" == value)


def test_panels_cover_what_the_desk_and_the_admins_need() -> None:
    main = " ".join(expr for _t, expr in dashboard_queries(load(DASHBOARD_FILE)))
    for needed in (
        "o365_mailbox_up",
        "check_success",
        "check_duration_seconds",
        "folder_oldest_message_timestamp_seconds",
        "oversized_largest_bytes",
        'folder="junk"',
        "check_failures_total",
        "failure_reason:latest",
        "sent_messages:per_minute",
        'folder="sent"}[1d])',
        'check="smtp_login"',
        "arrived_messages:increase1h",
        "left_messages:increase1h",
        "credential_expiry_timestamp_seconds",
        "tls_certificate_expiry_timestamp_seconds",
        "junk_last_review_timestamp_seconds",
        "junk_unreviewed_messages",
        "check_consecutive_failures",
        "check_interval_seconds",
        "exporter_build_info",
        "config_last_reload_success_timestamp_seconds",
        "config_last_reload_successful",
        "up{",
    ):
        assert needed in main, needed
    main_rows = [p["title"] for p in load(DASHBOARD_FILE)["panels"] if p["type"] == "row"]
    assert main_rows == [
        "Overview",
        "Token and IMAP login",
        "Inbox backlog",
        "Sending (SMTP)",
        "Credentials and certificates",
        "Oversized messages",
        "Junk",
        "Failures",
    ]

    admin_dashboard = load(ADMIN_DASHBOARD_FILE)
    admin = " ".join(expr for _t, expr in dashboard_queries(admin_dashboard))
    for needed in (
        "o365_mailbox_folder_messages{",
        'folder="junk"',
        "folder_oldest_message_timestamp_seconds",
        "junk_unreviewed_messages",
        "junk_last_review_timestamp_seconds",
        "oversized_messages",
        "oversized_largest_bytes",
        "oversized_threshold_bytes",
        "sent_messages:per_minute",
        'folder="sent"}[1d])',
        "credential_expiry_timestamp_seconds",
        "tls_certificate_expiry_timestamp_seconds",
    ):
        assert needed in admin, needed
    admin_titles = {p["title"] for p in panels(admin_dashboard)}
    assert {
        "Send rate vs the 30/min limit",
        "Messages sent in the last 24 hours vs 10,000",
        "Junk review status",
        "Client secret / certificate: days left",
        "Server certificates: days left",
        "Largest oversized message and threshold",
        "Mailboxes at a glance",
    } <= admin_titles
    # the sending limits are drawn as lines
    for panel in panels(admin_dashboard):
        if panel["title"].startswith(("Send rate", "Messages sent in the last 24")):
            assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "line"}


# -- fit for fleets: variables and selectors -------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_variables(path: Path) -> None:
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "mailbox"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "mailbox"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        assert variable["multi"] and variable["includeAll"], name
        assert variable["refresh"] == 2, name  # on time range change: new exporters appear
        assert variable["query"]["query"] == variable["definition"]
    # jobs that expose the mailbox metrics or the exporter's own (probe mode: two jobs)
    assert variables["job"]["definition"] == (
        'label_values({__name__=~"o365_mailbox_up|o365_mailbox_exporter_build_info"}, job)'
    )
    # "All" jobs: only the listed ones (never every job of the Prometheus, for `up`)
    assert "allValue" not in variables["job"]
    assert variables["job"]["current"]["value"] == [
        CONFIG["job"],
        *([CONFIG["probe"]["self_job"]] if CONFIG.get("probe") else []),
    ]
    assert variables["instance"]["definition"] == (
        'label_values({__name__=~"o365_mailbox_up|o365_mailbox_exporter_build_info", '
        'job=~"$job"}, instance)'
    )
    assert variables["instance"]["allValue"] == ".*"
    assert variables["mailbox"]["definition"] == (
        'label_values(o365_mailbox_up{job=~"$job", instance=~"$instance"}, mailbox)'
    )
    assert variables["mailbox"]["allValue"] == ".*"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_query_selects_job_and_instance(path: Path) -> None:
    dashboard = load(path)
    text = path.read_text()
    assert 'job=\\"' not in text and 'job=~\\"o365' not in text, "a literal job"
    queries = dashboard_queries(dashboard)
    assert queries
    for title, expr in queries:
        selectors = SELECTOR_RE.findall(expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            assert 'job=~"$job"' in matchers, (title, expr)
            assert 'instance=~"$instance"' in matchers, (title, expr)
            if metric.startswith("o365_mailbox_") and not metric.startswith(
                "o365_mailbox_exporter_"
            ):
                assert 'mailbox=~"$mailbox"' in matchers, (title, expr)
            assert not re.search(r'\bjob\s*=\s*"', matchers), (title, expr)
        # no metric without a selector (it would read every job)
        without = BARE_METRIC_RE.findall(expr)
        assert not without, (title, expr, without)


# -- links ----------------------------------------------------------------------------------


def test_links_go_to_runbook_sections_that_exist_and_to_the_landing_page() -> None:
    anchors = runbook_anchors()
    base = CONFIG["runbook_url_base"]
    landing = {"http://${__field.labels.instance}/", "http://${__data.fields.instance}/"}
    for path in DASHBOARD_FILES:
        dashboard = load(path)
        for panel in panels(dashboard):
            panel_links = [link["url"] for link in panel["links"]]
            assert [u for u in panel_links if u.startswith(base + "#")], panel["title"]
        seen_landing = 0
        for title, link in all_links(dashboard):
            url = link["url"]
            assert link["title"], title
            if url.startswith(base):
                anchor = url.removeprefix(base + "#")
                assert anchor in anchors, f"{title}: {url}: no such section in docs/runbook.md"
            else:
                assert url in landing, (title, url)
                seen_landing += 1
                (panel,) = [p for p in panels(dashboard) if p["title"] == title]
                # the series (rows) the link is on keep the instance label
                for target in panel["targets"]:
                    for by in AGGREGATION_RE.findall(target["expr"]):
                        assert "instance" in by, (title, target["expr"])
                if panel["type"] == "table":
                    assert url == "http://${__data.fields.instance}/", title
                else:
                    assert url == "http://${__field.labels.instance}/", title
        assert seen_landing >= 10, path.name
    # mailbox rows of the status table: each check links to its own section
    (status,) = [p for p in panels(load(DASHBOARD_FILE)) if p["title"] == "Mailbox status"]
    column_links = {
        o["matcher"]["options"]: [p["value"] for p in o["properties"] if p["id"] == "links"]
        for o in status["fieldConfig"]["overrides"]
    }
    assert column_links["token"][0][0]["url"] == base + "#o365mailboxtokenrefreshfailing"
    assert column_links["imap_login"][0][0]["url"] == base + "#o365mailboximaploginfailing"
    assert column_links["smtp_login"][0][0]["url"] == base + "#o365mailboxsmtploginfailing"
    assert column_links["last run"][0][0]["url"] == base + "#o365mailboxchecksstale"
    assert column_links["up"][0][1]["url"] == "http://${__data.fields.instance}/"


def test_the_two_dashboards_link_each_other() -> None:
    main, admin = load(DASHBOARD_FILE), load(ADMIN_DASHBOARD_FILE)
    for source, target in ((main, admin), (admin, main)):
        (link,) = [link for link in source["links"] if link["url"] == f"/d/{target['uid']}"]
        assert link["type"] == "link" and link["includeVars"] and link["keepTime"]
        (runbook,) = [link for link in source["links"] if link["title"] == "Runbook"]
        assert runbook["url"] == CONFIG["runbook_url_base"]


def test_grafana_provisioning_files() -> None:
    dashboards = yaml.safe_load((PROVISIONING / "dashboards.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    # The provider loads every JSON in its path: the comment tells which files go there.
    text = (PROVISIONING / "dashboards.yml").read_text()
    for path in DASHBOARD_FILES:
        assert path.name in text, path.name
    assert provider["options"]["foldersFromFilesStructure"] is False
    datasources = yaml.safe_load((PROVISIONING / "datasources.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    assert source["jsonData"]["timeInterval"]  # Grafana's $__rate_interval needs it
    # The dashboards' datasource variable picks a Prometheus; uids never collide.
    assert len({load(path)["uid"] for path in DASHBOARD_FILES}) == len(DASHBOARD_FILES)


def test_readme_and_docs_describe_both_dashboards() -> None:
    readme = (ROOT / "README.md").read_text()
    for needed in (
        DASHBOARD_FILE.name,
        ADMIN_DASHBOARD_FILE.name,
        "mixin/config.yml",
        "python -m mixin.dashboards",
        "provisioning",
    ):
        assert needed in readme, needed


# -- metric and label names against a real exposition ---------------------------------------


def _used() -> tuple[set[str], dict[str, set[str]], set[str]]:
    """Metric names, filtered label values and aggregation labels the dashboards use."""
    texts: list[str] = []
    for path in DASHBOARD_FILES:
        dashboard = load(path)
        texts += [expr for _title, expr in dashboard_queries(dashboard)]
        texts += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    names = {name for text in texts for name in METRIC_RE.findall(text)}
    values: dict[str, set[str]] = {}
    grouping: set[str] = set()
    for text in texts:
        for label, value in re.findall(
            r'\b(check|folder|reason|kind|endpoint)\s*!?=~?\s*"([^"]*)"', text
        ):
            values.setdefault(label, set()).update(v for v in value.split("|") if v)
        for labels in re.findall(r"\bby \(([^)]*)\)", text):
            grouping |= {label.strip() for label in labels.split(",")}
    return names, values, grouping


def _recorded_names() -> set[str]:
    names = set()
    for rules in sorted((ROOT / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


@pytest.mark.timeout(60)
def test_every_metric_and_label_used_exists_in_the_exposition(
    make_mailbox, entra, dovecot, tmp_path: Path, exporter_process
) -> None:
    now = datetime.now(UTC)
    healthy = make_mailbox("healthy", oversized_bytes=10_000)
    dovecot.deliver(
        healthy.upn,
        "INBOX",
        make_message("Help", "user@example.com"),
        internaldate=now - timedelta(hours=1),
    )
    dovecot.deliver(
        healthy.upn,
        "INBOX",
        make_message("Scan", "copier@example.com", size=20_000),
        internaldate=now,
    )
    dovecot.deliver(
        healthy.upn,
        "Junk Email",
        make_message("Spam", "spam@spam.example"),
        internaldate=now - timedelta(days=3),
    )
    # App-only with a client secret and its expiry date, sending over SMTP too.
    app = make_mailbox("app")
    use_client_secret(
        app, entra, tmp_path / "app.secret", "v4lue", client_secret_expires="2031-01-31"
    )
    app.settings["smtp"] = {"host": "127.0.0.1", "port": dovecot.submission_port}
    app.settings["checks"] = ["token", "imap_login", "inbox", "oversized", "junk", "smtp_login"]
    failing = make_mailbox("failing")
    failing.set_password_file("wrong-password")
    config = write_config(tmp_path, entra, dovecot, [healthy, app, failing], interval="1s")
    review = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "junk-review",
            f"--config.file={config}",
            "--mailbox",
            "healthy",
            "--ack",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert review.returncode == 0, review.stdout + review.stderr
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="healthy")
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="app")
    exporter.wait_for(
        "o365_mailbox_folder_oldest_message_timestamp_seconds", mailbox="healthy", folder="junk"
    )
    exporter.wait_for("o365_mailbox_junk_last_review_timestamp_seconds", mailbox="healthy")
    exporter.wait_for(
        "o365_mailbox_credential_expiry_timestamp_seconds", mailbox="app", kind="client_secret"
    )
    exporter.wait_for(
        "o365_mailbox_tls_certificate_expiry_timestamp_seconds", mailbox="app", endpoint="smtp"
    )
    exporter.wait_for("o365_mailbox_check_consecutive_failures", mailbox="failing", check="token")
    exposed, label_values = exporter.names_and_label_values()

    names, values, grouping = _used()
    recorded = _recorded_names()
    missing = {n for n in names - recorded if n not in exposed}
    assert not missing, f"not in the exporter's exposition: {sorted(missing)}"
    assert names & recorded, "the dashboards use the recording rules of alerts/"
    assert values["check"] == {"token", "imap_login", "inbox", "oversized", "junk", "smtp_login"}
    assert values["folder"] == {"inbox", "junk", "sent"}
    for label in ("check", "folder"):
        assert values[label] <= label_values[label], values[label] - label_values[label]
    assert values["reason"] == {"dependency"}
    # Labels the queries aggregate by: the exporter's, or the target labels Prometheus adds.
    assert grouping - {"job", "instance"} <= set(label_values), (
        grouping - {"job", "instance"} - set(label_values)
    )
    assert {"version", "revision", "python_version"} <= grouping
