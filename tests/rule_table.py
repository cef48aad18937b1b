"""One table, every alert at every check interval: promtool tests generated at test time.

A fleet of two mailboxes (servicedesk, hr) on one exporter is modelled as the exporter
really exposes it: each mailbox runs every `interval` (runs end 7 s off the scrape grid), and
between runs every gauge holds the values of the latest run (`last_run_timestamp` is a step
function). hr has a single failed token run and a single failed IMAP login: never a page.

`CASES` is the table: an alert, the fault that must raise it (applied to servicedesk, or to
the exporter, at FAULT_AT), how many alerts must fire (once per mailbox, or once per exporter)
and the bound within which it fires, as a function of the check interval I and the scrape
interval S. `promtool_tests(interval)` renders one promtool test file per interval: a healthy
fleet that stays silent for four hours, and for every case a fleet that is silent until the
fault (and, for sign-in, after the first failed run) and fires by FAULT_AT + bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JOB = "o365-mailbox-exporter"
INSTANCE = "exp:9865"
MAILBOXES = ("servicedesk", "hr")
CHECKS = ("token", "imap_login", "inbox", "oversized", "junk", "smtp_login")
INTERVALS = {"30s": 30, "1m": 60, "5m": 300, "15m": 900}
PHASE = 7  # runs end 7 s after the scrape grid
FAULT_AT = 75 * 60 + 100  # after every window (1h) has filled with healthy data
DAY = 86400


def scrape_for(interval: int) -> int:
    return min(interval, 60)


@dataclass(frozen=True)
class Case:
    alert: str
    fault: str
    bound: Callable[[int, int], int]  # (interval, scrape) -> seconds after FAULT_AT
    count: int = 1
    bound_text: str = ""
    quiet_after_first_failed_run: bool = False


def _sign_in(i: int, s: int) -> int:
    return 2 * i + 2 * s


LATE = "I + 15m + 2 x S"


def _runs_and(duration: int) -> Callable[[int, int], int]:
    return lambda i, s: i + duration + 2 * s


CASES: list[Case] = [
    Case("O365MailboxTokenRefreshFailing", "token", _sign_in, 1, "2 x I + 2 x S", True),
    Case("O365MailboxImapLoginFailing", "imap_login", _sign_in, 1, "2 x I + 2 x S", True),
    Case("O365MailboxSmtpLoginFailing", "smtp_login", _sign_in, 1, "2 x I + 2 x S", True),
    Case("O365MailboxCredentialBackoff", "token", _sign_in, 1, "2 x I + 2 x S", True),
    Case("O365MailboxAccessTokenExpired", "clock", _runs_and(300), 1, "I + 5m + 2 x S"),
    Case("O365MailboxCheckFailing", "junk_check",
         lambda i, s: 2 * i + 900 + 2 * s, 1, "2 x I + 15m + 2 x S"),
    Case("O365MailboxChecksStale", "stuck",
         lambda i, s: 3 * i + 60 + 2 * s, 1, "3 x I + 1m + 2 x S"),
    Case("O365MailboxExporterChecksStale", "exporter_stuck",
         lambda i, s: 3 * i + 60 + 2 * s, 1, "3 x I + 1m + 2 x S"),
    Case("O365MailboxInboxBacklogOld", "desk_stopped",
         lambda i, s: 3000 + i + 300 + 2 * s, 1, "50m + I + 5m + 2 x S"),
    Case("O365MailboxInboxBacklogGrowing", "desk_stopped",
         lambda i, s: 3600 + i + 900 + 2 * s, 1, "1h + I + 15m + 2 x S"),
    Case("O365MailboxInboxArrivalsOutpacingDrain", "desk_stopped",
         lambda i, s: 3600 + i + 900 + 2 * s, 1, "1h + I + 15m + 2 x S"),
    Case("O365MailboxSendRateNearLimit", "mail_loop",
         lambda i, s: 2 * i + 300 + 600 + 2 * s, 1, "2 x I + 5m + 10m + 2 x S"),
    Case("O365MailboxDailySendVolumeNearLimit", "bulk_mail",
         lambda i, s: 6 * 3600 + i + 900 + 2 * s, 1, "6h at 23/min + I + 15m + 2 x S"),
    Case("O365MailboxCredentialExpiringSoon", "secret_expiring", _runs_and(900), 1, LATE),
    Case("O365MailboxCredentialExpiryImminent", "secret_expiring", _runs_and(900), 1, LATE),
    Case("O365MailboxServerCertificateExpiring", "proxy_cert", _runs_and(900), 1, LATE),
    Case("O365MailboxOversizedMessages", "oversized", _runs_and(600), 1, "I + 10m + 2 x S"),
    Case("O365MailboxJunkOldMail", "junk_unreviewed", _runs_and(900), 1, LATE),
    Case("O365MailboxJunkReviewOverdue", "junk_unreviewed", _runs_and(900), 1, LATE),
    Case("O365MailboxExporterDown", "down", lambda i, s: 120 + 2 * s, 1, "2m + 2 x S"),
    Case("O365MailboxExporterAbsent", "absent", lambda i, s: 300 + 2 * s, 1, "5m + 2 x S"),
    Case("O365MailboxExporterConfigReloadFailed", "reload", lambda i, s: 300 + 2 * s, 1,
         "5m + 2 x S"),
]  # fmt: skip


# -- the model ----------------------------------------------------------------------------------


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in {"job": JOB, "instance": INSTANCE, **labels}.items())


class Fleet:
    """Series values of the fleet at every scrape, for one fault (or none)."""

    def __init__(self, interval: int, scrape: int, end: int, fault: str | None) -> None:
        self.interval, self.scrape, self.end, self.fault = interval, scrape, end, fault
        self.times = list(range(0, end + 1, scrape))
        self.series: dict[str, list[float | None]] = {}

    def put(self, name: str, labels: str, index: int, value: float | None) -> None:
        if self.fault == "bulk_mail" and name not in DAILY_SERIES:
            return  # a day of data: only what the daily alert reads
        key = f"{name}{{{labels}}}"
        self.series.setdefault(key, [None] * len(self.times))[index] = value

    def faulty(self, mailbox: str, run_time: float, kinds: tuple[str, ...]) -> bool:
        return self.fault in kinds and mailbox == "servicedesk" and run_time >= FAULT_AT

    def build(self) -> dict[str, list[float | None]]:
        exporter_gone = self.fault in ("down", "absent")
        for index, t in enumerate(self.times):
            gone = exporter_gone and t >= FAULT_AT
            if not (self.fault == "absent" and gone):
                self.put("up", _labels(), index, 0.0 if gone else 1.0)
            if gone:
                continue
            reload_ok = 0.0 if self.fault == "reload" and t >= FAULT_AT else 1.0
            self.put(
                "o365_mailbox_exporter_config_last_reload_successful", _labels(), index, reload_ok
            )
            for mailbox in MAILBOXES:
                self.mailbox_at(mailbox, index, t)
        return self.series

    def run_times(self, mailbox: str, t: float) -> list[float]:
        """End times of the mailbox's runs up to t (a stuck scheduler ends none after the fault)."""
        runs = []
        k = 0
        while (r := PHASE + k * self.interval) <= t:
            stuck = self.fault == "exporter_stuck" or (
                self.fault == "stuck" and mailbox == "servicedesk"
            )
            if stuck and r >= FAULT_AT:
                break
            runs.append(r)
            k += 1
        return runs

    def mailbox_at(self, mailbox: str, index: int, t: float) -> None:
        runs = self.run_times(mailbox, t)
        if not runs:
            return
        r, k = runs[-1], len(runs) - 1
        i = self.interval
        labels = {"mailbox": mailbox}
        self.put("o365_mailbox_check_interval_seconds", _labels(**labels), index, float(i))
        # hr's transient failures: one token run and one IMAP run, an hour apart
        blip = {"token": 3600 // i, "imap_login": 5400 // i} if mailbox == "hr" else {}
        failed_runs = {check: 0 for check in CHECKS}
        counts: dict[tuple[str, str, str], int] = {}
        last_success: dict[str, float] = {}
        for j, run in enumerate(runs):
            outcome = self.outcomes(mailbox, run, j, blip)
            for check in CHECKS:
                reason = outcome.get(check)
                if reason is None:
                    failed_runs[check] = 0
                    last_success[check] = run + 2
                else:
                    failed_runs[check] += 1
                    key = (check, *reason.split(":"))
                    counts[key] = counts.get(key, 0) + 1
        for check in CHECKS:
            check_labels = _labels(mailbox=mailbox, check=check)
            success = 1.0 if failed_runs[check] == 0 else 0.0
            self.put("o365_mailbox_check_success", check_labels, index, success)
            self.put("o365_mailbox_check_last_run_timestamp_seconds", check_labels, index, r + 2)
            self.put(
                "o365_mailbox_check_consecutive_failures",
                check_labels,
                index,
                float(failed_runs[check]),
            )
            if check in last_success:
                self.put(
                    "o365_mailbox_check_last_success_timestamp_seconds",
                    check_labels,
                    index,
                    last_success[check],
                )
        for (check, reason, code), count in counts.items():
            self.put(
                "o365_mailbox_check_failures_total",
                _labels(mailbox=mailbox, check=check, reason=reason, code=code),
                index,
                float(count),
            )
        self.measurements(mailbox, index, r, k, runs)

    def outcomes(self, mailbox: str, run: float, j: int, blip: dict[str, int]) -> dict[str, str]:
        """check -> "reason:code" for the checks that failed in run j."""
        failed: dict[str, str] = {}
        if blip.get("token") == j:
            failed["token"] = "timeout:"
        if blip.get("imap_login") == j:
            failed["imap_login"] = "connection:"
        if self.faulty(mailbox, run, ("token",)):
            first = j == next(n for n in range(j + 1) if PHASE + n * self.interval >= FAULT_AT)
            failed["token"] = "invalid_grant:50126" if first else "backoff:50126"
        if self.faulty(mailbox, run, ("imap_login",)):
            failed["imap_login"] = "auth_rejected:NO"
        if "token" in failed or "imap_login" in failed:
            for check in ("imap_login", "inbox", "oversized", "junk", "smtp_login"):
                failed.setdefault(check, "dependency:")
        if self.faulty(mailbox, run, ("smtp_login",)):
            failed["smtp_login"] = "auth_rejected:5.7.139"
        if self.faulty(mailbox, run, ("junk_check",)):
            failed["junk"] = "folder_missing:NO"
        return failed

    def measurements(self, mailbox: str, index: int, r: float, k: int, runs: list[float]) -> None:
        i = self.interval
        f = self.faulty
        inbox = _labels(mailbox=mailbox, folder="inbox")
        sent = _labels(mailbox=mailbox, folder="sent")
        junk = _labels(mailbox=mailbox, folder="junk")
        expiry = r - 600 if f(mailbox, r, ("clock",)) else r + 4500
        self.put(
            "o365_mailbox_token_expiry_timestamp_seconds", _labels(mailbox=mailbox), index, expiry
        )
        # The desk fetches and removes mail every few minutes: 2 messages arrive a minute.
        per_run = 2 * i / 60
        arrived = per_run * len(runs)
        stopped = [run for run in runs if f(mailbox, run, ("desk_stopped",))]
        if stopped:
            waiting = per_run * len(stopped)
            self.put("o365_mailbox_folder_messages", inbox, index, 3 + waiting)
            self.put("o365_mailbox_folder_unseen_messages", inbox, index, 1 + waiting)
            self.put(
                "o365_mailbox_folder_oldest_message_timestamp_seconds", inbox, index, FAULT_AT - 600
            )
        else:
            self.put("o365_mailbox_folder_messages", inbox, index, 3 + k % 3)
            self.put("o365_mailbox_folder_unseen_messages", inbox, index, float(k % 2))
            self.put("o365_mailbox_folder_oldest_message_timestamp_seconds", inbox, index, r - 240)
        self.put("o365_mailbox_folder_arrived_messages_total", inbox, index, arrived)
        # Sent Items: 5 a minute; a mail loop 25 a minute; bulk mail 20 a minute, all day.
        sent_total = 0.0
        for run in runs:
            rate = 5.0
            if f(mailbox, run, ("mail_loop",)):
                rate = 25.0
            if self.fault == "bulk_mail" and mailbox == "servicedesk" and run >= FAULT_AT:
                rate = 23.0
            sent_total += rate * i / 60
        self.put("o365_mailbox_folder_arrived_messages_total", sent, index, sent_total)
        oversized = 2.0 if f(mailbox, r, ("oversized",)) else 0.0
        self.put("o365_mailbox_oversized_messages", inbox, index, oversized)
        self.put("o365_mailbox_oversized_largest_bytes", inbox, index, oversized * 3e7)
        self.put(
            "o365_mailbox_oversized_threshold_bytes", _labels(mailbox=mailbox), index, 26214400.0
        )
        unreviewed = f(mailbox, r, ("junk_unreviewed",))
        self.put("o365_mailbox_folder_messages", junk, index, 4.0)
        self.put(
            "o365_mailbox_folder_oldest_message_timestamp_seconds",
            junk,
            index,
            -8 * DAY if unreviewed else r - 2 * DAY,
        )
        self.put(
            "o365_mailbox_junk_last_review_timestamp_seconds",
            _labels(mailbox=mailbox),
            index,
            -9 * DAY if unreviewed else -DAY,
        )
        secret = 5 * DAY if f(mailbox, r, ("secret_expiring",)) else 90 * DAY
        self.put(
            "o365_mailbox_credential_expiry_timestamp_seconds",
            _labels(mailbox=mailbox, kind="client_secret"),
            index,
            secret,
        )
        cert = 10 * DAY if f(mailbox, r, ("proxy_cert",)) else 60 * DAY
        self.put(
            "o365_mailbox_tls_certificate_expiry_timestamp_seconds",
            _labels(mailbox=mailbox, endpoint="imap"),
            index,
            cert,
        )


def _values(values: list[float | None]) -> str:
    """promtool's notation; a series that ends gets a staleness marker, as a scrape writes."""
    out = []
    for n, v in enumerate(values):
        if v is not None:
            out.append(f"{v:g}")
        else:
            out.append("stale" if n and values[n - 1] is not None else "_")
    return " ".join(out)


def _input_series(fleet: Fleet) -> list[dict[str, str]]:
    return [{"series": key, "values": _values(values)} for key, values in fleet.build().items()]


def _at(seconds: float, scrape: int) -> str:
    """An evaluation time on the evaluation grid, at or after `seconds`."""
    steps = -(-int(seconds) // scrape)
    return f"{steps * scrape}s"


def _fired(alert: str, at: str, count: int, **match: str) -> dict[str, Any]:
    selector = ",".join([f'alertname="{alert}"', 'alertstate="firing"',
                         *(f'{k}="{v}"' for k, v in match.items())])  # fmt: skip
    return {
        "expr": f"count by (alertname) (ALERTS{{{selector}}})",
        "eval_time": at,
        "exp_samples": [{"labels": f'{{alertname="{alert}"}}', "value": count}],
    }


def _silent(at: str, window: int, alert: str | None = None) -> dict[str, Any]:
    selector = 'alertstate="firing"' + (f',alertname="{alert}"' if alert else "")
    return {
        "expr": f"count_over_time(ALERTS{{{selector}}}[{window}s])",
        "eval_time": at,
        "exp_samples": [],
    }


EXPORTER_LEVEL = {
    "O365MailboxExporterChecksStale", "O365MailboxExporterDown", "O365MailboxExporterAbsent",
    "O365MailboxExporterConfigReloadFailed",
}  # fmt: skip
HEALTHY_HOURS = 4
DAILY_SERIES = {"up", "o365_mailbox_folder_arrived_messages_total"}


def first_failed_run(interval: int) -> int:
    k = -(-(FAULT_AT - PHASE) // interval)
    return PHASE + k * interval


def promtool_tests(interval: int, rule_file: str) -> dict[str, Any]:
    scrape = scrape_for(interval)
    tests: list[dict[str, Any]] = []
    healthy_end = HEALTHY_HOURS * 3600
    tests.append({
        "name": f"healthy fleet at {interval}s: silent for {HEALTHY_HOURS}h",
        "interval": f"{scrape}s",
        "input_series": _input_series(Fleet(interval, scrape, healthy_end, None)),
        "promql_expr_test": [_silent(_at(healthy_end, scrape), healthy_end)],
    })  # fmt: skip
    for case in CASES:
        bound = case.bound(interval, scrape)
        end = FAULT_AT + bound
        checks = [_silent(_at(FAULT_AT, scrape), FAULT_AT)]
        if case.quiet_after_first_failed_run:
            checks.append(_silent(_at(first_failed_run(interval), scrape), scrape, case.alert))
        match = {} if case.alert in EXPORTER_LEVEL else {"mailbox": "servicedesk"}
        checks.append(_fired(case.alert, _at(end, scrape), case.count, **match))
        if match:  # only the broken mailbox
            checks.append(_fired(case.alert, _at(end, scrape), case.count))
        tests.append({
            "name": f"{case.alert} at {interval}s ({case.fault}): fires within {bound}s",
            "interval": f"{scrape}s",
            "input_series": _input_series(Fleet(interval, scrape, _grid(end, scrape), case.fault)),
            "promql_expr_test": checks,
        })  # fmt: skip
    return {
        "rule_files": [rule_file],
        "evaluation_interval": f"{scrape}s",
        "tests": tests,
    }


def _grid(seconds: int, scrape: int) -> int:
    return -(-seconds // scrape) * scrape


def bound_table() -> list[tuple[str, str, list[int]]]:
    """(alert, formula, bound in seconds at each of INTERVALS) — for docs/runbook.md."""
    return [
        (case.alert, case.bound_text,
         [case.bound(i, scrape_for(i)) for i in INTERVALS.values()])
        for case in CASES
    ]  # fmt: skip
