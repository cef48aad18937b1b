"""The Grafana dashboards, rendered from mixin/config.yml (as monitoring mixins do).

    python -m mixin.dashboards           # write dashboards/*.json
    python -m mixin.dashboards --check   # exit 1 if a committed file differs from the render

Two dashboards share the template variables `datasource`, `job`, `instance` and `mailbox`,
and every query selects `job=~"$job", instance=~"$instance"` (mailbox metrics also
`mailbox=~"$mailbox"`), so they fit any scrape job name, shards and the probe mode:

* `o365-mailbox.json`, the operators' view: status of every check of every mailbox, the
  exporters, sign-in, backlog, sending, expiry, oversized mail, Junk and failures.
* `o365-mailbox-admin.json`, the mail admins' weekly view: Junk and its review, oversized
  mail, sending volume against Exchange Online's limits, credential and server certificate
  expiry.

From the configuration come the job the `job` variable selects by default, the runbook links
(`runbook_url_base` + the anchor of an alert's section in docs/runbook.md), the thresholds
drawn on the panels (the same names and values as the alert rules: `thresholds:`) and, under
`dashboards:`, the link to the exporter's landing page.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from mixin.rules import Config as RulesConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = ROOT / "mixin" / "config.yml"
DASHBOARDS_DIR = ROOT / "dashboards"
MAIN_FILE = "o365-mailbox.json"
ADMIN_FILE = "o365-mailbox-admin.json"
MAIN_UID = "o365-mailbox"
ADMIN_UID = "o365-mailbox-admin"

Json = dict[str, Any]

DAY = 86400
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every query selects these; mailbox metrics also the mailbox variable.
EXPORTER_SELECTOR = 'job=~"$job", instance=~"$instance"'
MAILBOX_SELECTOR = EXPORTER_SELECTOR + ', mailbox=~"$mailbox"'
# The job and instance variables list the jobs that expose mailbox metrics or the exporter's
# own: in the probe mode these are two jobs (/probe and the replicas' /metrics).
VARIABLE_SERIES = '{__name__=~"o365_mailbox_up|o365_mailbox_exporter_build_info"'
PASS_FAIL = [
    {
        "type": "value",
        "options": {
            "0": {"text": "FAIL", "color": "red", "index": 1},
            "1": {"text": "OK", "color": "green", "index": 0},
        },
    }
]
CHECK_COLUMNS = ("token", "imap_login", "inbox", "oversized", "junk", "smtp_login")


# Exchange Online's sending limits for SMTP AUTH (fixed by Microsoft, not tunable).
SEND_RATE_LIMIT = 30  # messages a minute
SEND_DAILY_LIMIT = 10000  # recipients a day


@dataclass(frozen=True)
class Thresholds:
    """The alert rules' named thresholds the panels draw, with the names and defaults of
    `thresholds:` in mixin/config.yml (durations as seconds, except the windows)."""

    sign_in_failed_runs: float = 2  # sign-in alerts: failed runs in a row
    stale_intervals: float = 3  # no run for this many intervals ...
    stale_margin: float = 60  # ... plus this many seconds
    inbox_oldest_max_age: float = 3600
    send_rate_window: str = "5m"
    send_rate_max: float = 24  # messages a minute
    send_daily_window: str = "1d"
    send_daily_max: float = 8000
    credential_warn_left: float = 30 * DAY
    credential_page_left: float = 7 * DAY
    server_cert_warn_left: float = 14 * DAY
    junk_max_age: float = 7 * DAY
    junk_review_max_age: float = 8 * DAY


@dataclass(frozen=True)
class Settings:
    job: str
    runbook_url_base: str
    # `{instance}` stands for the series' instance label (in the probe mode that is a
    # mailbox, so put the exporters' address there instead).
    landing_page_url: str = "http://{instance}/"
    refresh: str = "1m"
    # The exporter's own scrape job in the probe mode (probe.self_job): selected by default
    # with `job`, so the build and reload panels have data there too.
    self_job: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def runbook(self, anchor: str) -> str:
        return f"{self.runbook_url_base}#{anchor}"


def _seconds(value: Any) -> Any:
    """A Prometheus duration ("7d", "180s") as seconds; numbers pass through."""
    if isinstance(value, str) and value[-1:] in "smhdw" and value[:-1].replace(".", "").isdigit():
        factor = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}[value[-1]]
        return float(value[:-1]) * factor
    return value


def make_settings(
    job: str,
    runbook_url_base: str,
    thresholds: Mapping[str, Any],
    self_job: str | None = None,
    dashboards: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from the shared configuration's values: the job, the runbook, the rules'
    `thresholds:` (those the panels draw), `probe.self_job` and the `dashboards:` block."""
    known = {f.name for f in fields(Thresholds)}
    overrides = {
        name: value if name.endswith("_window") else _seconds(value)
        for name, value in thresholds.items()
        if name in known
    }
    local = dict(dashboards or {})
    unknown = set(local) - {"landing_page_url", "refresh"}
    if unknown:
        raise ValueError(f"dashboards: unknown keys {sorted(unknown)} in mixin/config.yml")
    return Settings(
        job=job,
        runbook_url_base=runbook_url_base,
        self_job=self_job or None,
        thresholds=replace(Thresholds(), **overrides),
        **{key: str(value) for key, value in local.items()},
    )


def load_settings(path: Path = CONFIG_FILE) -> Settings:
    """The dashboards' part of the configuration file."""
    document = yaml.safe_load(path.read_text()) or {}
    return make_settings(
        str(document["job"]),
        str(document["runbook_url_base"]),
        document.get("thresholds") or {},
        (document.get("probe") or {}).get("self_job"),
        document.get("dashboards"),
    )


# -- panel builders ---------------------------------------------------------------------------


def sel(metric: str, extra: str = "", *, mailbox: bool = True) -> str:
    """`metric{job=~"$job", instance=~"$instance"[, mailbox=~"$mailbox"][, extra]}`."""
    selector = MAILBOX_SELECTOR if mailbox else EXPORTER_SELECTOR
    return f"{metric}{{{selector}{', ' + extra if extra else ''}}}"


def target(ref: str, expr: str, legend: str = "", *, table: bool = False) -> Json:
    result: Json = {"refId": ref, "datasource": DATASOURCE, "expr": expr}
    if table:
        result |= {"format": "table", "instant": True, "range": False}
    else:
        result |= {"legendFormat": legend, "format": "time_series", "range": True}
    return result


def steps(*colors: tuple[str, float | None]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in colors]}


@dataclass(frozen=True)
class Links:
    """A panel's runbook section and whether its series carry the instance label (then each
    series links to its exporter's landing page)."""

    anchor: str
    title: str
    per_instance: bool = True


class Builder:
    """Lays panels out row by row (24 columns) and links them to the runbook."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.panels: list[Json] = []
        self._next_id = 1
        self._x = 0
        self._y = 0
        self._row_height = 0

    def _place(self, width: int, height: int) -> Json:
        if self._x + width > 24:
            self._y += self._row_height
            self._x, self._row_height = 0, 0
        pos = {"h": height, "w": width, "x": self._x, "y": self._y}
        self._x += width
        self._row_height = max(self._row_height, height)
        return pos

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def row(self, title: str) -> None:
        self._y += self._row_height
        self._x, self._row_height = 0, 0
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "panels": [],
                "gridPos": self._place(24, 1),
            }
        )
        self._y += 1
        self._x, self._row_height = 0, 0

    def landing_url(self, table: bool) -> str:
        instance = "${__data.fields.instance}" if table else "${__field.labels.instance}"
        return self.settings.landing_page_url.replace("{instance}", instance)

    def data_links(self, links: Links, table: bool = False) -> list[Json]:
        result = [
            {
                "title": f"Runbook: {links.title}",
                "url": self.settings.runbook(links.anchor),
                "targetBlank": True,
            }
        ]
        if links.per_instance:
            result.append(
                {
                    "title": "Exporter landing page (checks, last error, remediation hint)",
                    "url": self.landing_url(table),
                    "targetBlank": True,
                }
            )
        return result

    def panel(
        self,
        kind: str,
        title: str,
        description: str,
        targets: Sequence[Json],
        links: Links,
        *,
        size: tuple[int, int],
        defaults: Json,
        options: Json,
        overrides: Iterable[Json] = (),
        transformations: Sequence[Json] = (),
    ) -> Json:
        panel: Json = {
            "type": kind,
            "title": title,
            "id": self._id(),
            "datasource": DATASOURCE,
            "description": description,
            "links": [
                {
                    "title": f"Runbook: {links.title}",
                    "url": self.settings.runbook(links.anchor),
                    "targetBlank": True,
                }
            ],
            "targets": list(targets),
            "fieldConfig": {
                "defaults": defaults | {"links": self.data_links(links, table=kind == "table")},
                "overrides": list(overrides),
            },
            "options": options,
            "gridPos": self._place(*size),
        }
        if transformations:
            panel["transformations"] = list(transformations)
        self.panels.append(panel)
        return panel

    def timeseries(
        self,
        title: str,
        description: str,
        targets: Sequence[Json],
        links: Links,
        *,
        unit: str,
        size: tuple[int, int] = (12, 8),
        thresholds: Sequence[tuple[str, float | None]] = (),
        soft_max: float | None = None,
        bars: bool = False,
        min_interval: str | None = None,
    ) -> Json:
        defaults: Json = {
            "unit": unit,
            "min": 0,
            "custom": {
                "drawStyle": "bars" if bars else "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "showPoints": "never",
                "spanNulls": False,
                "thresholdsStyle": {"mode": "line" if thresholds else "off"},
            },
            "thresholds": steps(("green", None), *thresholds),
        }
        if soft_max is not None:
            defaults["custom"]["axisSoftMax"] = soft_max
        panel = self.panel(
            "timeseries",
            title,
            description,
            targets,
            links,
            size=size,
            defaults=defaults,
            options={
                "legend": {
                    "displayMode": "table",
                    "placement": "bottom",
                    "calcs": ["lastNotNull", "max"],
                },
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
        )
        if min_interval:
            panel["interval"] = min_interval  # one bar per interval
        return panel

    def state_timeline(
        self,
        title: str,
        description: str,
        targets: Sequence[Json],
        links: Links,
        *,
        size: tuple[int, int] = (24, 8),
    ) -> Json:
        return self.panel(
            "state-timeline",
            title,
            description,
            targets,
            links,
            size=size,
            defaults={
                "unit": "bool",
                "mappings": PASS_FAIL,
                "color": {"mode": "thresholds"},
                "thresholds": steps(("red", None), ("green", 1)),
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            options={
                "showValue": "never",
                "mergeValues": True,
                "rowHeight": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
                "tooltip": {"mode": "single"},
            },
        )

    def stat(
        self,
        title: str,
        description: str,
        targets: Sequence[Json],
        links: Links,
        *,
        unit: str,
        size: tuple[int, int] = (6, 4),
        text_mode: str = "auto",
        thresholds: Sequence[tuple[str, float | None]] = (("green", None),),
        mappings: Sequence[Json] = (),
    ) -> Json:
        return self.panel(
            "stat",
            title,
            description,
            targets,
            links,
            size=size,
            defaults={"unit": unit, "mappings": list(mappings), "thresholds": steps(*thresholds)},
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
                "graphMode": "none",
                "textMode": text_mode,
                "justifyMode": "auto",
                "orientation": "auto",
            },
        )

    def bargauge(
        self,
        title: str,
        description: str,
        targets: Sequence[Json],
        links: Links,
        *,
        warn: float,
        page: float,
        size: tuple[int, int] = (12, 8),
    ) -> Json:
        """Days left until an expiry (the expressions divide seconds by 86400)."""
        return self.panel(
            "bargauge",
            title,
            description,
            targets,
            links,
            size=size,
            defaults={
                "unit": "suffix: days",
                "decimals": 1,
                "min": 0,
                "max": 90,
                "thresholds": steps(("red", None), ("orange", page), ("green", warn)),
            },
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": True,
                "minVizHeight": 10,
                "minVizWidth": 0,
            },
        )

    def table(
        self,
        title: str,
        description: str,
        columns: Sequence[Column],
        links: Links,
        *,
        key: Sequence[str],
        size: tuple[int, int] = (24, 8),
        sort_by: str | None = None,
    ) -> Json:
        """One line per `key` (e.g. job, instance, mailbox): each column an instant query,
        merged on the key labels; each column with its unit and, if given, its own runbook
        link. A column whose `labels` carry the information (e.g. the last error's reason)
        shows those labels, renamed, instead of its value."""
        refs = [chr(ord("A") + i) for i in range(len(columns))]
        value_names = {
            f"Value #{ref}": column.name for ref, column in zip(refs, columns, strict=True)
        }
        rename = dict(value_names)
        order = list(key)
        hidden = {"Time": True}
        for ref, column in zip(refs, columns, strict=True):
            if column.labels:
                hidden[f"Value #{ref}"] = True
                for label, shown in column.labels:
                    rename[label] = shown
                    order.append(label)
            else:
                order.append(f"Value #{ref}")
        overrides: list[Json] = []
        for column in columns:
            if column.labels:
                continue
            properties: list[Json] = [{"id": "unit", "value": column.unit}]
            if column.pass_fail:
                properties += [
                    {"id": "mappings", "value": PASS_FAIL},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    {"id": "custom.width", "value": 90},
                ]
            if column.thresholds:
                properties += [
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                    {"id": "thresholds", "value": steps(*column.thresholds)},
                ]
            if column.decimals is not None:
                properties.append({"id": "decimals", "value": column.decimals})
            if column.links is not None:
                properties.append({"id": "links", "value": self.data_links(column.links, True)})
            overrides.append(
                {"matcher": {"id": "byName", "options": column.name}, "properties": properties}
            )
        options: Json = {"showHeader": True, "cellHeight": "sm"}
        if sort_by:
            options["sortBy"] = [{"displayName": sort_by, "desc": False}]
        return self.panel(
            "table",
            title,
            description,
            [
                target(ref, column.expr, table=True)
                for ref, column in zip(refs, columns, strict=True)
            ],
            links,
            size=size,
            defaults={
                "unit": "short",
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
            },
            options=options,
            overrides=overrides,
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": hidden,
                        "indexByName": {name: index for index, name in enumerate(order)},
                        "renameByName": rename,
                    },
                },
            ],
        )


@dataclass(frozen=True)
class Column:
    name: str
    expr: str
    unit: str
    pass_fail: bool = False
    thresholds: tuple[tuple[str, float | None], ...] = ()
    decimals: int | None = None
    links: Links | None = None
    # Labels beyond the table's key that carry this column's information (label, shown as);
    # the query's value (1) is then hidden.
    labels: tuple[tuple[str, str], ...] = ()


def variables(settings: Settings) -> list[Json]:
    def query_variable(
        name: str, label: str, query: str, *, all_value: str | None, current: Json
    ) -> Json:
        variable: Json = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "multi": True,
            "includeAll": True,
            "refresh": 2,
            "sort": 1,
            "regex": "",
            "hide": 0,
            "current": current,
        }
        if all_value is not None:
            variable["allValue"] = all_value
        return variable

    everything = {"selected": True, "text": ["All"], "value": ["$__all"]}
    # Grafana keeps those of these defaults that the job list holds (the self job exists only
    # in the probe mode).
    jobs = [settings.job] + ([settings.self_job] if settings.self_job else [])
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "regex": "",
            "hide": 0,
            "refresh": 1,
            "current": {},
        },
        # "All" stands for the listed jobs, never every job of the Prometheus (`up`).
        query_variable(
            "job",
            "Job",
            f"label_values({VARIABLE_SERIES}}}, job)",
            all_value=None,
            current={"selected": True, "text": jobs, "value": jobs},
        ),
        query_variable(
            "instance",
            "Exporter",
            f'label_values({VARIABLE_SERIES}, job=~"$job"}}, instance)',
            all_value=".*",
            current=everything,
        ),
        query_variable(
            "mailbox",
            "Mailbox",
            f"label_values({sel('o365_mailbox_up', mailbox=False)}, mailbox)",
            all_value=".*",
            current=everything,
        ),
    ]


def dashboard(
    settings: Settings,
    uid: str,
    title: str,
    description: str,
    panels: list[Json],
    links: list[Json],
    *,
    time_from: str,
    refresh: str,
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["o365-mailbox-exporter", "microsoft-365", "mail"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": refresh,
        "schemaVersion": 38,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "timezone": "",
        "links": links,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": variables(settings)},
        "panels": panels,
    }


def dashboard_link(title: str, uid: str, tooltip: str) -> Json:
    """A link to the other dashboard that keeps the time range and the variables."""
    return {
        "title": title,
        "type": "link",
        "url": f"/d/{uid}",
        "icon": "dashboard",
        "tooltip": tooltip,
        "includeVars": True,
        "keepTime": True,
        "targetBlank": False,
        "asDropdown": False,
        "tags": [],
    }


def runbook_link(settings: Settings) -> Json:
    return {
        "title": "Runbook",
        "type": "link",
        "url": settings.runbook_url_base,
        "icon": "doc",
        "tooltip": "What to do for each alert",
        "includeVars": False,
        "keepTime": False,
        "targetBlank": True,
        "asDropdown": False,
        "tags": [],
    }


# -- runbook sections (anchors of docs/runbook.md headings) -----------------------------------

TOKEN = Links("o365mailboxtokenrefreshfailing", "token refresh failing")
IMAP = Links("o365mailboximaploginfailing", "IMAP login failing")
SMTP = Links("o365mailboxsmtploginfailing", "SMTP login failing")
CHECK = Links("o365mailboxcheckfailing", "check failing")
REASONS = Links("where-the-reason-and-code-labels-come-from", "reason and code labels")
STALE = Links("o365mailboxchecksstale", "checks stale")
BACKOFF = Links("o365mailboxcredentialbackoff", "credential backoff")
TOKEN_EXPIRED = Links("o365mailboxaccesstokenexpired", "access token expired")
EXPORTER_DOWN = Links("o365mailboxexporterdown", "exporter down")
RELOAD = Links("o365mailboxexporterconfigreloadfailed", "config reload failed")
BACKLOG_OLD = Links("o365mailboxinboxbacklogold", "inbox backlog old")
BACKLOG_GROWING = Links("o365mailboxinboxbackloggrowing", "inbox backlog growing")
DRAIN = Links("o365mailboxinboxarrivalsoutpacingdrain", "arrivals outpacing drain")
SEND_RATE = Links("o365mailboxsendratenearlimit", "send rate near the limit")
SEND_DAILY = Links("o365mailboxdailysendvolumenearlimit", "daily send volume near the limit")
CREDENTIAL = Links("o365mailboxcredentialexpiringsoon", "credential expiring soon")
SERVER_CERT = Links("o365mailboxservercertificateexpiring", "server certificate expiring")
OVERSIZED = Links("o365mailboxoversizedmessages", "oversized messages")
JUNK_REVIEW = Links("o365mailboxjunkreviewoverdue", "Junk review overdue")
JUNK_OLD = Links("o365mailboxjunkoldmail", "old Junk mail")
TUNING = Links("tuning", "tuning the thresholds")

CHECK_LINKS = {
    "token": TOKEN,
    "imap_login": IMAP,
    "smtp_login": SMTP,
    "inbox": CHECK,
    "oversized": OVERSIZED,
    "junk": CHECK,
}


def _no_instance(links: Links) -> Links:
    return replace(links, per_instance=False)


# -- shared panels ----------------------------------------------------------------------------


def send_rate_panel(b: Builder) -> None:
    t = b.settings.thresholds
    b.timeseries(
        f"Send rate vs the {SEND_RATE_LIMIT:g}/min limit",
        "New messages in Sent Items per minute (Exchange Online files every message sent over "
        f"SMTP AUTH there), averaged over {t.send_rate_window} or over the latest run's "
        "interval if longer: the recording rule o365_mailbox_folder:sent_messages:per_minute "
        "that O365MailboxSendRateNearLimit evaluates (load the rules of alerts/). Exchange "
        f"Online allows {SEND_RATE_LIMIT:g} messages a minute over SMTP AUTH; the alert warns "
        f"at {t.send_rate_max:g}.",
        [target("A", sel("o365_mailbox_folder:sent_messages:per_minute"), "{{mailbox}}")],
        SEND_RATE,
        unit="suffix: /min",
        thresholds=(("orange", t.send_rate_max), ("red", SEND_RATE_LIMIT)),
        soft_max=SEND_RATE_LIMIT,
    )


def send_daily_panel(b: Builder) -> None:
    t = b.settings.thresholds
    b.timeseries(
        f"Messages sent in the last 24 hours vs {SEND_DAILY_LIMIT:,.0f}",
        "New messages in Sent Items over the last 24 hours. Exchange Online's limit is "
        f"{SEND_DAILY_LIMIT:,.0f} recipients a day: a message to three people counts three, "
        "so the recipients are at least this many. O365MailboxDailySendVolumeNearLimit warns "
        f"at {t.send_daily_max:g} messages.",
        [
            target(
                "A",
                "increase("
                + sel("o365_mailbox_folder_arrived_messages_total", 'folder="sent"')
                + f"[{t.send_daily_window}])",
                "{{mailbox}}",
            )
        ],
        SEND_DAILY,
        unit="short",
        thresholds=(("orange", t.send_daily_max), ("red", SEND_DAILY_LIMIT)),
        soft_max=SEND_DAILY_LIMIT,
    )


def expiry_panels(b: Builder) -> None:
    t = b.settings.thresholds
    b.bargauge(
        "Client secret / certificate: days left",
        "Days until the client secret (auth.client_secret_expires in the config) or the "
        "certificate (certificate_file) a mailbox signs in with expires. Warning below "
        f"{t.credential_warn_left / DAY:g} days, critical below {t.credential_page_left / DAY:g}.",
        [
            target(
                "A",
                "("
                + sel("o365_mailbox_credential_expiry_timestamp_seconds")
                + " - time()) / 86400",
                "{{mailbox}} {{kind}}",
            )
        ],
        CREDENTIAL,
        warn=t.credential_warn_left / DAY,
        page=t.credential_page_left / DAY,
    )
    b.bargauge(
        "Server certificates: days left",
        "Days until the TLS certificate of the IMAP and SMTP servers, as seen in the latest "
        "handshake, expires. Microsoft renews its own weeks ahead; a short one points at a "
        f"TLS-inspecting proxy. Warning below {t.server_cert_warn_left / DAY:g} days.",
        [
            target(
                "A",
                "("
                + sel("o365_mailbox_tls_certificate_expiry_timestamp_seconds")
                + " - time()) / 86400",
                "{{mailbox}} {{endpoint}}",
            )
        ],
        SERVER_CERT,
        warn=t.server_cert_warn_left / DAY,
        page=t.server_cert_warn_left / DAY / 2,
    )


def oversized_panels(b: Builder) -> None:
    b.timeseries(
        "Oversized messages",
        "Messages in the inbox larger than the mailbox's oversized_bytes, found server-side "
        "(SEARCH LARGER). A service desk usually rejects or truncates them: forward or move them "
        "(`o365-mailbox-exporter oversized --mailbox NAME`).",
        [target("A", sel("o365_mailbox_oversized_messages"), "{{mailbox}} {{folder}}")],
        OVERSIZED,
        unit="short",
    )
    b.timeseries(
        "Largest oversized message and threshold",
        "Size of the largest oversized message (0 when none) against the mailbox's "
        "oversized_bytes threshold.",
        [
            target("A", sel("o365_mailbox_oversized_largest_bytes"), "{{mailbox}} largest"),
            target("B", sel("o365_mailbox_oversized_threshold_bytes"), "{{mailbox}} threshold"),
        ],
        OVERSIZED,
        unit="bytes",
    )


def junk_panels(b: Builder, width: int) -> None:
    t = b.settings.thresholds
    b.timeseries(
        "Junk messages",
        "Messages in the Junk folder (found by SPECIAL-USE \\Junk). Real customer mail filed "
        "there never reaches the service desk.",
        [target("A", sel("o365_mailbox_folder_messages", 'folder="junk"'), "{{mailbox}}")],
        JUNK_OLD,
        unit="short",
        size=(width, 8),
    )
    b.timeseries(
        "Oldest Junk message age",
        f"Age of the oldest message in Junk. O365MailboxJunkOldMail warns above "
        f"{t.junk_max_age / DAY:g} days: review the Junk folder weekly for real customer mail.",
        [
            target(
                "A",
                "time() - "
                + sel("o365_mailbox_folder_oldest_message_timestamp_seconds", 'folder="junk"'),
                "{{mailbox}}",
            )
        ],
        JUNK_OLD,
        unit="s",
        size=(width, 8),
        thresholds=(("orange", t.junk_max_age),),
    )
    b.timeseries(
        "Time since the last Junk review",
        "Since an admin last recorded a review with `junk-review --ack`; absent for a mailbox "
        "that never recorded one (see 'Junk review status'). O365MailboxJunkReviewOverdue warns "
        f"after {t.junk_review_max_age / DAY:g} days while Junk holds mail.",
        [
            target(
                "A",
                "time() - " + sel("o365_mailbox_junk_last_review_timestamp_seconds"),
                "{{mailbox}}",
            )
        ],
        JUNK_REVIEW,
        unit="s",
        size=(width, 8),
        thresholds=(("orange", t.junk_review_max_age),),
    )
    b.timeseries(
        "Unreviewed Junk messages",
        "Junk messages that arrived since the latest recorded review (by UID): what the next "
        "review has to look at.",
        [target("A", sel("o365_mailbox_junk_unreviewed_messages"), "{{mailbox}}")],
        JUNK_REVIEW,
        unit="short",
        size=(width, 8),
    )


def junk_review_table(b: Builder, size: tuple[int, int]) -> None:
    t = b.settings.thresholds
    b.table(
        "Junk review status",
        "Per mailbox: messages in Junk, the oldest one's age, when the last review was recorded "
        "(`junk-review --ack`; empty: never), how long ago, and the messages that arrived since.",
        [
            Column(
                "Junk messages",
                by_mailbox(sel("o365_mailbox_folder_messages", 'folder="junk"')),
                "short",
            ),
            Column(
                "oldest",
                by_mailbox(
                    "time() - "
                    + sel("o365_mailbox_folder_oldest_message_timestamp_seconds", 'folder="junk"')
                ),
                "s",
                thresholds=(("green", None), ("orange", t.junk_max_age)),
                links=JUNK_OLD,
            ),
            Column(
                "reviewed at",
                by_mailbox(sel("o365_mailbox_junk_last_review_timestamp_seconds") + " * 1000"),
                "dateTimeAsIso",
            ),
            Column(
                "last review",
                by_mailbox("time() - " + sel("o365_mailbox_junk_last_review_timestamp_seconds")),
                "s",
                thresholds=(("green", None), ("red", t.junk_review_max_age)),
                links=JUNK_REVIEW,
            ),
            Column("unreviewed", by_mailbox(sel("o365_mailbox_junk_unreviewed_messages")), "short"),
        ],
        JUNK_REVIEW,
        key=("job", "instance", "mailbox"),
        size=size,
    )


def by_mailbox(expr: str, extra: str = "") -> str:
    return f"max by (job, instance, mailbox{', ' + extra if extra else ''}) ({expr})"


# -- the operators' dashboard -----------------------------------------------------------------


def main_dashboard(settings: Settings) -> Json:
    t = settings.thresholds
    b = Builder(settings)

    b.row("Overview")
    b.table(
        "Mailbox status",
        "One line per mailbox: overall up, each check's latest run (smtp_login empty where it "
        "is not enabled), and for a failing mailbox the reason and code (AADSTS or IMAP) of its "
        "first failing check, how many runs in a row failed, the configured interval (empty in "
        "the probe mode) and how long ago the latest run ended. Each check column links to its "
        "runbook section, the instance to the exporter's landing page. 'last error reason' "
        "needs the rules of alerts/ loaded (recording rule "
        "o365_mailbox_check:failure_reason:latest).",
        [
            Column("up", by_mailbox(sel("o365_mailbox_up")), "bool", pass_fail=True, links=CHECK),
            *(
                Column(
                    check,
                    by_mailbox(sel("o365_mailbox_check_success", f'check="{check}"')),
                    "bool",
                    pass_fail=True,
                    links=CHECK_LINKS[check],
                )
                for check in CHECK_COLUMNS
            ),
            Column(
                "last error reason",
                by_mailbox(
                    "topk by (job, instance, mailbox) (1, "
                    + sel("o365_mailbox_check:failure_reason:latest", 'reason!="dependency"')
                    + ")",
                    "check, reason, code",
                ),
                "short",
                links=REASONS,
                labels=(
                    ("check", "failing check"),
                    ("reason", "last error reason"),
                    ("code", "code"),
                ),
            ),
            Column(
                "failed in a row",
                by_mailbox(sel("o365_mailbox_check_consecutive_failures")),
                "short",
                thresholds=(("green", None), ("red", t.sign_in_failed_runs)),
                links=TOKEN,
            ),
            Column(
                "interval",
                by_mailbox(sel("o365_mailbox_check_interval_seconds")),
                "s",
                links=TUNING,
            ),
            Column(
                "last run",
                by_mailbox("time() - " + sel("o365_mailbox_check_last_run_timestamp_seconds")),
                "s",
                links=STALE,
            ),
        ],
        CHECK,
        key=("job", "instance", "mailbox"),
        size=(24, 9),
        sort_by="up",
    )
    b.state_timeline(
        "Mailbox up over time",
        "1 when every enabled check passed in the mailbox's latest run.",
        [target("A", sel("o365_mailbox_up"), "{{mailbox}}")],
        CHECK,
        size=(24, 7),
    )
    b.state_timeline(
        "All checks over time",
        "Every enabled check of every mailbox, including optional ones such as smtp_login.",
        [target("A", sel("o365_mailbox_check_success"), "{{mailbox}} {{check}}")],
        CHECK,
    )
    b.stat(
        "Mailboxes up",
        "Mailboxes whose every enabled check passed in the latest run, of those configured.",
        [
            target("A", "sum(" + sel("o365_mailbox_up") + ")", "up"),
            target("B", "count(" + sel("o365_mailbox_up") + ")", "configured"),
        ],
        _no_instance(CHECK),
        unit="short",
    )
    b.stat(
        "Config reload",
        "0 when the latest config reload failed on some exporter (it keeps the old config).",
        [
            target(
                "A",
                "min("
                + sel("o365_mailbox_exporter_config_last_reload_successful", mailbox=False)
                + ")",
                "reload",
            )
        ],
        _no_instance(RELOAD),
        unit="bool",
        mappings=PASS_FAIL,
        thresholds=(("red", None), ("green", 1)),
    )
    b.stat(
        "Exporter version",
        "Versions running, from o365_mailbox_exporter_build_info (version, git revision, "
        "Python); more than one while a rollout is under way.",
        [
            target(
                "A",
                "count by (version, revision, python_version) ("
                + sel("o365_mailbox_exporter_build_info", mailbox=False)
                + ")",
                "{{version}} ({{revision}}, Python {{python_version}})",
            )
        ],
        _no_instance(EXPORTER_DOWN),
        unit="short",
        text_mode="name",
    )
    b.stat(
        "Exporter scrape",
        "Prometheus' own up metric for the selected jobs and exporters: 0 when a scrape failed.",
        [target("A", "min(" + sel("up", mailbox=False) + ")", "up")],
        _no_instance(EXPORTER_DOWN),
        unit="bool",
        mappings=PASS_FAIL,
        thresholds=(("red", None), ("green", 1)),
    )
    b.table(
        "Exporters",
        "One line per exporter (scrape target): scrape up, version, git revision and Python of "
        "the build, whether the latest config reload succeeded and when the config last loaded, "
        "and how many mailboxes it reports. The instance links to the exporter's landing page. "
        "In the probe mode the /probe job's targets are mailboxes; the replicas' own job "
        "carries the build and reload columns.",
        [
            Column(
                "scrape",
                by_instance("up{" + EXPORTER_SELECTOR + "}"),
                "bool",
                pass_fail=True,
                links=EXPORTER_DOWN,
            ),
            Column(
                "build",
                by_instance(
                    sel("o365_mailbox_exporter_build_info", mailbox=False),
                    "version, revision, python_version",
                ),
                "short",
                labels=(
                    ("version", "version"),
                    ("revision", "revision"),
                    ("python_version", "Python"),
                ),
            ),
            Column(
                "config reload",
                by_instance(
                    sel("o365_mailbox_exporter_config_last_reload_successful", mailbox=False)
                ),
                "bool",
                pass_fail=True,
                links=RELOAD,
            ),
            Column(
                "config loaded at",
                by_instance(
                    sel(
                        "o365_mailbox_exporter_config_last_reload_success_timestamp_seconds",
                        mailbox=False,
                    )
                    + " * 1000"
                ),
                "dateTimeAsIso",
                links=RELOAD,
            ),
            Column(
                "mailboxes",
                "count by (job, instance) (" + sel("o365_mailbox_up") + ")",
                "short",
                decimals=0,
            ),
        ],
        EXPORTER_DOWN,
        key=("job", "instance"),
        size=(24, 6),
    )

    b.row("Token and IMAP login")
    b.state_timeline(
        "Token refresh and IMAP login",
        "Latest run of the token check (a real refresh every run) and of the IMAP login "
        "(XOAUTH2 + EXAMINE).",
        [
            target(
                "A",
                sel("o365_mailbox_check_success", 'check=~"token|imap_login"'),
                "{{mailbox}} {{check}}",
            )
        ],
        TOKEN,
        size=(12, 8),
    )
    b.timeseries(
        "Token and IMAP login duration",
        "Wall time of the latest token refresh and IMAP login (connect, TLS, AUTHENTICATE, "
        "EXAMINE); a slow authority or a proxy shows here first.",
        [
            target(
                "A",
                sel("o365_mailbox_check_duration_seconds", 'check=~"token|imap_login"'),
                "{{mailbox}} {{check}}",
            )
        ],
        IMAP,
        unit="s",
    )
    b.timeseries(
        "Failed runs in a row",
        "Runs of each check that failed in a row (0 after a pass). The sign-in alerts fire at "
        f"{t.sign_in_failed_runs} failed runs, whatever the interval; a credential failure then "
        "backs off (reason 'backoff').",
        [target("A", sel("o365_mailbox_check_consecutive_failures"), "{{mailbox}} {{check}}")],
        BACKOFF,
        unit="short",
        thresholds=(("red", t.sign_in_failed_runs),),
    )
    b.timeseries(
        "Access token lifetime left",
        "Expiry of the access token the latest token check obtained, minus now. Entra ID issues "
        "60-90 minute tokens; below 0 means the check has stopped refreshing or the clock is "
        "wrong.",
        [
            target(
                "A", sel("o365_mailbox_token_expiry_timestamp_seconds") + " - time()", "{{mailbox}}"
            )
        ],
        TOKEN_EXPIRED,
        unit="s",
    )
    b.timeseries(
        "Time since the last run",
        "Since each check's latest run ended, with each mailbox's staleness limit: "
        f"O365MailboxChecksStale fires after {t.stale_intervals:g} intervals plus "
        f"{t.stale_margin:g}s without a run (recording rule "
        "o365_mailbox:check_stale_after:seconds of alerts/; where the exporter does not "
        "expose its interval, as in the probe mode, the rules' default interval).",
        [
            target(
                "A",
                "time() - " + sel("o365_mailbox_check_last_run_timestamp_seconds"),
                "{{mailbox}} {{check}}",
            ),
            target("B", sel("o365_mailbox:check_stale_after:seconds"), "{{mailbox}} stale limit"),
        ],
        STALE,
        unit="s",
    )
    b.timeseries(
        "Check interval",
        "Each mailbox's configured check interval (interval in the config): the alert rules "
        "judge staleness and repeated failures against it. Absent in the probe mode, where "
        "Prometheus' scrape interval is the cadence.",
        [target("A", sel("o365_mailbox_check_interval_seconds"), "{{mailbox}}")],
        TUNING,
        unit="s",
    )

    b.row("Inbox backlog")
    b.timeseries(
        "Inbox messages",
        "Messages in the inbox, and those without \\Seen: a growing unseen count means the "
        "desk has stopped fetching.",
        [
            target("A", sel("o365_mailbox_folder_messages", 'folder="inbox"'), "{{mailbox}} all"),
            target(
                "B",
                sel("o365_mailbox_folder_unseen_messages", 'folder="inbox"'),
                "{{mailbox}} unseen",
            ),
        ],
        BACKLOG_GROWING,
        unit="short",
        size=(8, 8),
    )
    b.timeseries(
        "Arriving messages",
        "New messages per folder, from UIDNEXT growth between runs: with the inbox count it "
        "shows whether the desk keeps up.",
        [
            target(
                "A",
                "sum by (job, instance, mailbox, folder) (increase("
                + sel("o365_mailbox_folder_arrived_messages_total")
                + "[$__rate_interval]))",
                "{{mailbox}} {{folder}}",
            )
        ],
        DRAIN,
        unit="short",
        size=(8, 8),
    )
    b.timeseries(
        "Oldest inbox message age",
        "Age of the oldest message (INTERNALDATE) in the inbox; empty when the inbox is. "
        f"O365MailboxInboxBacklogOld warns above {t.inbox_oldest_max_age:g}s.",
        [
            target(
                "A",
                "time() - "
                + sel("o365_mailbox_folder_oldest_message_timestamp_seconds", 'folder="inbox"'),
                "{{mailbox}}",
            )
        ],
        BACKLOG_OLD,
        unit="s",
        size=(8, 8),
        thresholds=(("orange", t.inbox_oldest_max_age),),
    )
    b.timeseries(
        "Inbox arrivals vs drain (per hour)",
        "Messages that arrived in the inbox in the last hour (UIDNEXT growth) and messages that "
        "left it (fetched and moved or deleted by the service desk: arrivals minus the growth "
        "of the inbox). While 'arrived' stays above 'left' the backlog grows "
        "(O365MailboxInboxArrivalsOutpacingDrain). Needs the recording rules of alerts/.",
        [
            target(
                "A", sel("o365_mailbox_folder:arrived_messages:increase1h"), "{{mailbox}} arrived"
            ),
            target("B", sel("o365_mailbox_folder:left_messages:increase1h"), "{{mailbox}} left"),
        ],
        DRAIN,
        unit="short",
        size=(24, 8),
    )

    b.row("Sending (SMTP)")
    send_rate_panel(b)
    send_daily_panel(b)
    b.state_timeline(
        "SMTP login",
        "The smtp_login check (STARTTLS, AUTH XOAUTH2, QUIT; never sends): only mailboxes with "
        "smtp_login in `checks`.",
        [target("A", sel("o365_mailbox_check_success", 'check="smtp_login"'), "{{mailbox}}")],
        SMTP,
        size=(12, 8),
    )
    b.timeseries(
        "SMTP login duration",
        "Wall time of the latest smtp_login run: connect, STARTTLS, AUTH XOAUTH2 and QUIT.",
        [
            target(
                "A", sel("o365_mailbox_check_duration_seconds", 'check="smtp_login"'), "{{mailbox}}"
            )
        ],
        SMTP,
        unit="s",
    )

    b.row("Credentials and certificates")
    expiry_panels(b)

    b.row("Oversized messages")
    oversized_panels(b)

    b.row("Junk")
    junk_panels(b, 6)
    junk_review_table(b, (24, 7))

    b.row("Failures")
    b.timeseries(
        "Failures by reason and code",
        "Failed runs per check, reason and code (AADSTS number, IMAP or SMTP reply code). "
        "'backoff' runs keep the code of the credential failure they wait after.",
        [
            target(
                "A",
                "sum by (job, instance, mailbox, check, reason, code) (increase("
                + sel("o365_mailbox_check_failures_total")
                + "[$__rate_interval]))",
                "{{mailbox}} {{check}} {{reason}} {{code}}",
            )
        ],
        REASONS,
        unit="short",
    )
    b.panel(
        "table",
        "Failures in the time range",
        "Failed runs in the dashboard's time range per mailbox, check, reason and code, most "
        "first.",
        [
            target(
                "A",
                "sum by (job, instance, mailbox, check, reason, code) (increase("
                + sel("o365_mailbox_check_failures_total")
                + "[$__range])) > 0",
                table=True,
            )
        ],
        REASONS,
        size=(12, 8),
        defaults={"unit": "short", "decimals": 0},
        options={"showHeader": True, "sortBy": [{"displayName": "failures", "desc": True}]},
        transformations=[
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": {"Value": "failures"}},
            }
        ],
    )
    b.timeseries(
        "Check duration (all checks)",
        "Wall time of every check's latest run; a run ends within its timeout plus a small margin.",
        [target("A", sel("o365_mailbox_check_duration_seconds"), "{{mailbox}} {{check}}")],
        CHECK,
        unit="s",
        size=(24, 7),
    )

    return dashboard(
        settings,
        MAIN_UID,
        "Microsoft 365 mailboxes",
        "o365-mailbox-exporter: token refresh, IMAP and SMTP login, inbox backlog and drain, "
        "send rate and daily volume against Exchange Online's limits, expiry of secrets and "
        "certificates, oversized messages, Junk and its weekly review, of the service-desk "
        "mailboxes. Rendered from mixin/config.yml by mixin/dashboards.py.",
        b.panels,
        [
            dashboard_link(
                "Mail admin: weekly view",
                ADMIN_UID,
                "Junk and its review, oversized mail, sending volume, expiry",
            ),
            runbook_link(settings),
        ],
        time_from="now-6h",
        refresh=settings.refresh,
    )


def by_instance(expr: str, extra: str = "") -> str:
    return f"max by (job, instance{', ' + extra if extra else ''}) ({expr})"


# -- the mail admins' weekly view -------------------------------------------------------------


def admin_dashboard(settings: Settings) -> Json:
    t = settings.thresholds
    b = Builder(settings)

    b.row("This week")
    sent = sel("o365_mailbox_folder_arrived_messages_total", 'folder="sent"')
    b.table(
        "Mailboxes at a glance",
        "One line per mailbox for the weekly review: Junk (messages, oldest, unreviewed since "
        "the last recorded review), oversized mail (count, largest, threshold), messages sent "
        "in the last 24 hours, and days left until the sign-in credential and the servers' "
        "certificates expire. Columns link to their runbook sections.",
        [
            Column(
                "Junk",
                by_mailbox(sel("o365_mailbox_folder_messages", 'folder="junk"')),
                "short",
                links=JUNK_OLD,
            ),
            Column(
                "oldest Junk",
                by_mailbox(
                    "time() - "
                    + sel("o365_mailbox_folder_oldest_message_timestamp_seconds", 'folder="junk"')
                ),
                "s",
                thresholds=(("green", None), ("orange", t.junk_max_age)),
                links=JUNK_OLD,
            ),
            Column(
                "unreviewed Junk",
                by_mailbox(sel("o365_mailbox_junk_unreviewed_messages")),
                "short",
                links=JUNK_REVIEW,
            ),
            Column(
                "oversized",
                by_mailbox(sel("o365_mailbox_oversized_messages")),
                "short",
                thresholds=(("green", None), ("orange", 1)),
                links=OVERSIZED,
            ),
            Column(
                "largest",
                by_mailbox(sel("o365_mailbox_oversized_largest_bytes")),
                "bytes",
                links=OVERSIZED,
            ),
            Column(
                "threshold",
                by_mailbox(sel("o365_mailbox_oversized_threshold_bytes")),
                "bytes",
                links=OVERSIZED,
            ),
            Column(
                "sent 24h",
                by_mailbox(f"increase({sent}[{t.send_daily_window}])"),
                "short",
                thresholds=(
                    ("green", None),
                    ("orange", t.send_daily_max),
                    ("red", SEND_DAILY_LIMIT),
                ),
                decimals=0,
                links=SEND_DAILY,
            ),
            Column(
                "credential days left",
                "min by (job, instance, mailbox) (("
                + sel("o365_mailbox_credential_expiry_timestamp_seconds")
                + " - time()) / 86400)",
                "suffix: days",
                thresholds=(
                    ("red", None),
                    ("orange", t.credential_page_left / DAY),
                    ("green", t.credential_warn_left / DAY),
                ),
                decimals=0,
                links=CREDENTIAL,
            ),
            Column(
                "server cert days left",
                "min by (job, instance, mailbox) (("
                + sel("o365_mailbox_tls_certificate_expiry_timestamp_seconds")
                + " - time()) / 86400)",
                "suffix: days",
                thresholds=(("red", None), ("green", t.server_cert_warn_left / DAY)),
                decimals=0,
                links=SERVER_CERT,
            ),
        ],
        JUNK_REVIEW,
        key=("job", "instance", "mailbox"),
        size=(24, 8),
    )

    b.row("Junk")
    junk_panels(b, 6)
    junk_review_table(b, (24, 7))

    b.row("Oversized mail")
    oversized_panels(b)

    b.row("Sending volume")
    send_rate_panel(b)
    send_daily_panel(b)
    b.timeseries(
        "Messages sent per hour",
        "New messages in Sent Items per hour: when in the week the desk sends most, to plan "
        "around Exchange Online's limits.",
        [
            target(
                "A", "sum by (job, instance, mailbox) (increase(" + sent + "[1h]))", "{{mailbox}}"
            )
        ],
        SEND_DAILY,
        unit="short",
        size=(24, 8),
        bars=True,
        min_interval="1h",
    )

    b.row("Credentials and certificates")
    expiry_panels(b)
    b.table(
        "Expiry dates",
        "When each sign-in credential (client secret from auth.client_secret_expires, "
        "certificate from certificate_file) and each server certificate (IMAP, SMTP) expires: "
        "put the credential dates into the change calendar.",
        [
            Column(
                "credential expires",
                "max by (job, instance, mailbox, kind) ("
                + sel("o365_mailbox_credential_expiry_timestamp_seconds")
                + " * 1000)",
                "dateTimeAsIso",
                links=CREDENTIAL,
            ),
        ],
        CREDENTIAL,
        key=("job", "instance", "mailbox", "kind"),
        size=(12, 7),
    )
    b.table(
        "Server certificate dates",
        "notAfter of the IMAP and SMTP servers' certificates as seen in the latest handshake.",
        [
            Column(
                "certificate expires",
                "max by (job, instance, mailbox, endpoint) ("
                + sel("o365_mailbox_tls_certificate_expiry_timestamp_seconds")
                + " * 1000)",
                "dateTimeAsIso",
                links=SERVER_CERT,
            ),
        ],
        SERVER_CERT,
        key=("job", "instance", "mailbox", "endpoint"),
        size=(12, 7),
    )

    return dashboard(
        settings,
        ADMIN_UID,
        "Microsoft 365 mailboxes: mail admin weekly view",
        "The mail admins' weekly view of the service-desk mailboxes: Junk size and age and the "
        "messages since the last recorded review, oversized mail, sending volume against "
        "Exchange Online's 30/min and 10,000/day limits, and when credentials and server "
        "certificates expire. Rendered from mixin/config.yml by mixin/dashboards.py.",
        b.panels,
        [
            dashboard_link(
                "Mailbox status (operators)",
                MAIN_UID,
                "Every check of every mailbox, sign-in, backlog, failures",
            ),
            runbook_link(settings),
        ],
        time_from="now-7d",
        refresh="5m",
    )


# -- rendering --------------------------------------------------------------------------------


def to_json(document: Json) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render_settings(settings: Settings) -> dict[str, str]:
    """{file name: JSON text} of both dashboards."""
    return {
        MAIN_FILE: to_json(main_dashboard(settings)),
        ADMIN_FILE: to_json(admin_dashboard(settings)),
    }


def render_dashboards(
    config: Path = CONFIG_FILE, out_dir: Path = DASHBOARDS_DIR
) -> dict[Path, str]:
    """The dashboards' files (under `out_dir`) and their contents, rendered from `config`."""
    return {out_dir / name: text for name, text in render_settings(load_settings(config)).items()}


def render_files(
    config: RulesConfig, dashboards: Mapping[str, Any] | None = None
) -> dict[Path, str]:
    """A step of mixin/render.py: {path relative to the repository: text}, from the rules'
    Config (so `--job` and `--config` there apply to the dashboards too). The `dashboards:`
    block comes from `dashboards`, else a `dashboards` attribute of the Config, else
    mixin/config.yml."""
    if dashboards is None:
        dashboards = getattr(config, "dashboards", None)
    if dashboards is None:
        dashboards = (yaml.safe_load(CONFIG_FILE.read_text()) or {}).get("dashboards")
    settings = make_settings(
        config.job, config.runbook_url_base, config.thresholds, config.probe_self_job, dashboards
    )
    return {
        DASHBOARDS_DIR.relative_to(ROOT) / name: text
        for name, text in render_settings(settings).items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixin.dashboards",
        description="Render the Grafana dashboards from mixin/config.yml into dashboards/.",
    )
    parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file differs from the render",
    )
    parser.add_argument("--output-dir", type=Path, default=DASHBOARDS_DIR)
    args = parser.parse_args(argv)
    stale = []
    for path, text in render_dashboards(args.config, args.output_dir).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text)
            sys.stdout.write(f"wrote {path}\n")
    for path in stale:
        sys.stderr.write(f"{path} differs from the render: run python -m mixin.dashboards\n")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
