"""The alert and recording rules, rendered from mixin/config.yml (the mixin's `_config`).

`rule_groups(config, variant)` builds the groups; `render_files(config, root)` returns every
committed rule file (path -> text): the Prometheus rule files in alerts/ and the Kubernetes
PrometheusRule objects, for both variants:

* ``scheduled`` — the exporter runs each mailbox on its own `interval`; everything comes from
  one job (`job`), staleness from `o365_mailbox_check_interval_seconds`.
* ``probe`` — ``--probe.only``: Prometheus scrapes ``/probe?mailbox=NAME`` (job `job`, the
  instance label is the mailbox) at `probe.scrape_interval`; the exporter's health (up, config
  reloads) comes from the scrape of its own ``/metrics`` (job `probe.self_job`).

Thresholds that depend on the check interval are counted in runs or in intervals; the rest are
durations of the world outside (a token's life, a Junk review's period) or of the scrape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Rule = dict[str, Any]
Group = dict[str, Any]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+)([smhdw])$")


def seconds(duration: str | int | float) -> int:
    """`15m` -> 900 (a bare number is seconds)."""
    if isinstance(duration, int | float):
        return int(duration)
    match = _DURATION.match(duration.strip())
    if match is None:
        raise ValueError(f"not a duration: {duration!r} (use 30s, 5m, 1h, 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def duration(total: int) -> str:
    """900 -> `15m`: the largest unit that divides it (Prometheus' own notation)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total and total % size == 0:
            return f"{total // size}{unit}"
    return f"{total}s"


def spoken(total: int) -> str:
    """900 -> `15m`, 604800 -> `7d`: how the descriptions name a threshold."""
    return duration(total)


@dataclass(frozen=True)
class Config:
    job: str
    runbook_url_base: str
    page: str
    ticket: str
    thresholds: dict[str, Any]
    probe_scrape_interval: int
    probe_self_job: str

    def t(self, name: str) -> Any:
        return self.thresholds[name]

    def s(self, name: str) -> int:
        """A duration threshold in seconds."""
        return seconds(self.thresholds[name])

    def d(self, name: str) -> str:
        """A duration threshold in Prometheus notation."""
        return duration(self.s(name))


def load_config(path: Path) -> Config:
    raw = yaml.safe_load(path.read_text())
    thresholds = dict(raw["thresholds"])
    for name, value in thresholds.items():
        if isinstance(value, str):
            seconds(value)  # every string threshold is a duration: fail early on a typo
        elif not isinstance(value, int | float):
            raise ValueError(f"{path}: thresholds.{name}: not a number or a duration")
    return Config(
        job=str(raw["job"]),
        runbook_url_base=str(raw["runbook_url_base"]),
        page=str(raw["severity"]["page"]),
        ticket=str(raw["severity"]["ticket"]),
        thresholds=thresholds,
        probe_scrape_interval=seconds(raw["probe"]["scrape_interval"]),
        probe_self_job=str(raw["probe"]["self_job"]),
    )


@dataclass(frozen=True)
class Variant:
    name: str  # "scheduled" or "probe"
    job: str  # the mailbox metrics' job
    self_job: str  # the exporter's own metrics (up, reloads): the same job when scheduled

    @property
    def probe(self) -> bool:
        return self.name == "probe"

    @property
    def exporter_by(self) -> str:
        """The labels that identify one exporter. In probe mode `instance` is the mailbox, so
        the mailbox job as a whole is the unit."""
        return "job" if self.probe else "job, instance"

    def sel(self, metric: str, *matchers: str, job: str | None = None) -> str:
        inner = ", ".join([f'job="{job or self.job}"', *matchers])
        return f"{metric}{{{inner}}}"


def variants(config: Config) -> dict[str, Variant]:
    return {
        "scheduled": Variant("scheduled", config.job, config.job),
        "probe": Variant("probe", config.job, config.probe_self_job),
    }


# -- helpers for text ---------------------------------------------------------------------------

_REASON = "{{ with $labels.reason }}{{ . }}{{ else }}unknown{{ end }}"
_CODE = "{{ with $labels.code }}{{ . }}{{ else }}none{{ end }}"
_AADSTS_CODE = (
    '{{ with $labels.code }}{{ if match "^[0-9]{5,}$" . }}AADSTS{{ end }}{{ . }}'
    "{{ else }}none{{ end }}"
)
_HINT = "Run `o365-mailbox-exporter check --mailbox {{ $labels.mailbox }}` for the hint."
_RUNS = '{{ $value | printf "%.0f" }}'


def _text(*parts: str) -> str:
    """One line of annotation text (the YAML folds it back for reading)."""
    return " ".join(" ".join(p.split()) for p in parts if p)


def _days(total: int) -> str:
    return f"{total // 86400}"


class _Builder:
    def __init__(self, config: Config, variant: Variant) -> None:
        self.c = config
        self.v = variant

    def alert(
        self,
        name: str,
        expr: str,
        severity: str,
        summary: str,
        description: str,
        for_: str | None = None,
    ) -> Rule:
        rule: Rule = {"alert": name, "expr": _expr(expr)}
        if for_ and seconds(for_) > 0:
            rule["for"] = for_
        rule["labels"] = {"severity": severity}
        rule["annotations"] = {
            "summary": summary,
            "description": description,
            "runbook_url": f"{self.c.runbook_url_base}#{name.lower()}",
        }
        return rule


def _expr(text: str) -> str:
    lines = text.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:].rstrip() for line in lines) + "\n"


# -- the groups ---------------------------------------------------------------------------------


def auth_group(b: _Builder) -> Group:
    c, v = b.c, b.v
    lookback = c.d("failure_lookback")
    failures = v.sel("o365_mailbox_check_failures_total")
    success = "o365_mailbox_check_success"
    runs = c.t("sign_in_failed_runs")

    def failed_runs(check: str, unless_token: bool) -> str:
        check_matcher = f'check="{check}"'
        consecutive = v.sel("o365_mailbox_check_consecutive_failures", check_matcher)
        text = f"{consecutive} >= {runs}"
        if unless_token:
            token_failing = v.sel(success, 'check="token"') + " == 0"
            text = f"({text})\nunless on (job, instance, mailbox)\n({token_failing})"
        return text

    def sign_in_expr(check: str, unless_token: bool) -> str:
        # The value is the number of failed runs in a row; the reason and code of the latest
        # failure are joined from the recording rule (the page still fires without them).
        latest = f'o365_mailbox_check:failure_reason:latest{{check="{check}"}}'
        inner = _indent(failed_runs(check, unless_token), 2)
        return (
            f"(\n{inner}\n)\n"
            f"* on (job, instance, mailbox, check) group_left (reason, code)\n{latest}\n"
            f"or on (job, instance, mailbox, check)\n(\n{inner}\n)"
        )

    in_a_row = f"in its last {_RUNS} runs in a row (threshold {runs})"
    return {
        "name": "o365-mailbox.auth",
        "rules": [
            {
                "record": "o365_mailbox_check:failures:recent",
                "expr": _expr(f"""
                    increase({failures}[{lookback}]) > 0
                    or
                    (
                      {failures}
                      unless
                      {failures} offset {lookback}
                    ) * 0
                """),
            },
            {
                "record": "o365_mailbox_check:failure_reason:latest",
                "expr": _expr(f"""
                    group by (job, instance, mailbox, check, reason, code) (
                        topk by (job, instance, mailbox, check) (1,
                          o365_mailbox_check:failures:recent{{reason!="backoff"}}
                        )
                      or on (job, instance, mailbox, check)
                        topk by (job, instance, mailbox, check) (1,
                            {v.sel("o365_mailbox_check_failures_total", 'reason!="backoff"')}
                          and on (job, instance, mailbox, check, code)
                            o365_mailbox_check:failures:recent{{reason="backoff"}}
                        )
                      or on (job, instance, mailbox, check)
                        topk by (job, instance, mailbox, check) (1,
                          o365_mailbox_check:failures:recent{{reason="backoff"}}
                        )
                    )
                    and on (job, instance, mailbox, check)
                    ({v.sel(success)} == 0)
                """),
            },
            b.alert(
                "O365MailboxTokenRefreshFailing",
                sign_in_expr("token", unless_token=False),
                c.page,
                "Token refresh for mailbox {{ $labels.mailbox }} is failing.",
                _text(
                    "Mailbox {{ $labels.mailbox }} cannot get an OAuth2 token from Entra ID",
                    f"(reason {_REASON}, code {_AADSTS_CODE})",
                    f"{in_a_row}, so the service desk cannot read its mail.",
                    '{{ if eq $labels.reason "invalid_grant" }}Fix the password file (changed,'
                    " expired or locked password, or a revoked grant).",
                    '{{- else if eq $labels.reason "public_client_disabled" }}Set Allow public'
                    " client flows = Yes in the app registration.",
                    '{{- else if eq $labels.reason "consent_required" }}Grant admin consent for'
                    " the tenant.",
                    '{{- else if eq $labels.reason "invalid_client" }}Check client_id, tenant_id'
                    " and the client secret Value.",
                    '{{- else if eq $labels.reason "interaction_required" }}MFA or Conditional'
                    " Access: run `login` (device code) or move to an app-only flow.",
                    f"{{{{- else }}}}{_HINT}{{{{ end }}}}",
                ),
            ),
            b.alert(
                "O365MailboxImapLoginFailing",
                sign_in_expr("imap_login", unless_token=True),
                c.page,
                "IMAP login to mailbox {{ $labels.mailbox }} is failing.",
                _text(
                    "Mailbox {{ $labels.mailbox }} got a token but cannot log in over IMAP and",
                    f"open its inbox (reason {_REASON}, code {_CODE}) {in_a_row}, so the service",
                    "desk cannot read its mail.",
                    '{{ if and (eq $labels.reason "auth_rejected") (eq $labels.code "BAD") }}'
                    "Authenticated but not connected: for app-only access check the service"
                    " principal's object ID and its FullAccess permission on the mailbox.",
                    '{{- else if eq $labels.reason "auth_rejected" }}Exchange refused the token:'
                    " check IMAP.AccessAsUser.All (or IMAP.AccessAsApp with FullAccess), admin"
                    " consent, and that IMAP is enabled for the mailbox.",
                    f"{{{{- else }}}}{_HINT}{{{{ end }}}}",
                ),
            ),
            b.alert(
                "O365MailboxSmtpLoginFailing",
                sign_in_expr("smtp_login", unless_token=True),
                c.page,
                "SMTP login to mailbox {{ $labels.mailbox }} is failing.",
                _text(
                    "Mailbox {{ $labels.mailbox }} got a token but cannot sign in to SMTP",
                    f"(STARTTLS, AUTH XOAUTH2) (reason {_REASON}, code {_CODE}) {in_a_row}, so",
                    "the service desk cannot send replies.",
                    '{{ if eq $labels.code "5.7.139" }}SMTP AUTH is disabled for the mailbox or'
                    " the tenant: Set-CASMailbox -Identity <address>"
                    " -SmtpClientAuthenticationDisabled $false.",
                    '{{- else if eq $labels.code "5.7.3" }}Exchange refused the token: check'
                    " SMTP.Send (or SMTP.SendAsApp with FullAccess) and admin consent.",
                    '{{- else if eq $labels.reason "timeout" }}No answer from the SMTP host:'
                    " check smtp.host and port 587 (STARTTLS) through the firewall.",
                    f"{{{{- else }}}}{_HINT}{{{{ end }}}}",
                ),
            ),
            b.alert(
                "O365MailboxCredentialBackoff",
                f"""
                topk by (job, instance, mailbox, check) (1,
                  o365_mailbox_check:failures:recent{{reason="backoff"}}
                )
                and on (job, instance, mailbox, check)
                ({v.sel(success)} == 0)
                and on (job, instance, mailbox, check)
                ({v.sel("o365_mailbox_check_consecutive_failures")} >= {c.t("backoff_failed_runs")})
                """,
                c.ticket,
                "Sign-in of mailbox {{ $labels.mailbox }} is in backoff after a credential"
                " failure.",
                _text(
                    "The {{ $labels.check }} check of mailbox {{ $labels.mailbox }} failed with a",
                    f"credential error (code {_AADSTS_CODE}) and the exporter now waits",
                    "interval \u00d7 2^failures (at most 1h) between sign-in attempts, so the",
                    "account is never driven into Smart Lockout. Fix the secret file or the",
                    "config: the exporter then retries at once.",
                ),
            ),
            b.alert(
                "O365MailboxAccessTokenExpired",
                f"time() - {v.sel('o365_mailbox_token_expiry_timestamp_seconds')} > 0",
                c.ticket,
                "The access token of mailbox {{ $labels.mailbox }} expired.",
                _text(
                    "The access token the latest token check of mailbox {{ $labels.mailbox }}",
                    "obtained expired {{ $value | humanizeDuration }} ago: either the token check",
                    "has not run since, or the exporter host's clock is wrong.",
                ),
                c.d("token_expired_for"),
            ),
        ],
    }


def backlog_group(b: _Builder) -> Group:
    c, v = b.c, b.v
    drain = c.d("drain_window")
    growth = c.d("inbox_growth_window")
    arrived = v.sel("o365_mailbox_folder_arrived_messages_total", 'folder="inbox"')
    messages = v.sel("o365_mailbox_folder_messages", 'folder="inbox"')
    unseen = v.sel("o365_mailbox_folder_unseen_messages", 'folder="inbox"')
    ratio = c.t("drain_ratio_min")
    drain_min = c.t("drain_growth_min")
    oldest_max = c.s("inbox_oldest_max_age")
    checks_behind = 'check!~"token|imap_login|smtp_login"'
    behind_not_dependency = checks_behind + ', reason!="dependency"'
    return {
        "name": "o365-mailbox.backlog",
        "rules": [
            {
                "record": "o365_mailbox_folder:arrived_messages:increase1h",
                "expr": _expr(f"increase({arrived}[{drain}])"),
            },
            {
                "record": "o365_mailbox_folder:left_messages:increase1h",
                "expr": _expr(f"""
                    clamp_min(
                      o365_mailbox_folder:arrived_messages:increase1h
                      - on (job, instance, mailbox, folder)
                      delta({messages}[{drain}]),
                      0
                    )
                """),
            },
            b.alert(
                "O365MailboxInboxArrivalsOutpacingDrain",
                f"""
                (
                  o365_mailbox_folder:arrived_messages:increase1h
                  - on (job, instance, mailbox, folder)
                  o365_mailbox_folder:left_messages:increase1h
                ) >= {drain_min}
                and on (job, instance, mailbox, folder)
                (
                  o365_mailbox_folder:left_messages:increase1h
                  < on (job, instance, mailbox, folder)
                  {ratio} * o365_mailbox_folder:arrived_messages:increase1h
                )
                """,
                c.ticket,
                "Mail arrives in the inbox of mailbox {{ $labels.mailbox }} faster than the"
                " service desk fetches it.",
                _text(
                    "In the last hour"
                    if c.s("drain_window") == 3600
                    else f"In the last {c.d('drain_window')}",
                    _recorded_query("o365_mailbox_folder:arrived_messages:increase1h"),
                    "messages arrived in the inbox of mailbox {{ $labels.mailbox }} but only",
                    _recorded_query("o365_mailbox_folder:left_messages:increase1h"),
                    'left it, so the backlog grew by {{ $value | printf "%.0f" }} (thresholds:',
                    f"growth of {drain_min}, less than {round(ratio * 100)} % drained): the",
                    "service desk fetches more slowly than mail arrives.",
                ),
                c.d("drain_for"),
            ),
            b.alert(
                "O365MailboxInboxBacklogOld",
                # The age the oldest message had at the latest inbox run (a fact at any
                # interval; `time() - oldest` would count a message the desk may have fetched).
                f"""
                max without (check) (
                  {v.sel("o365_mailbox_check_last_success_timestamp_seconds", 'check="inbox"')}
                )
                - on (job, instance, mailbox) group_right ()
                {v.sel("o365_mailbox_folder_oldest_message_timestamp_seconds", 'folder="inbox"')}
                > {oldest_max}
                """,
                c.ticket,
                "The inbox of mailbox {{ $labels.mailbox }} is not draining.",
                _text(
                    "At the latest inbox check of mailbox {{ $labels.mailbox }} its oldest",
                    "message was {{ $value | humanizeDuration }} old",
                    f"(threshold {spoken(oldest_max)}): the service desk is not fetching mail, or",
                    "one message is stuck.",
                ),
                c.d("backlog_old_for"),
            ),
            b.alert(
                "O365MailboxInboxBacklogGrowing",
                f"""
                (
                  {unseen}
                  - {unseen} offset {growth}
                ) >= {c.t("inbox_growth_min")}
                and
                min_over_time({unseen}[{growth}]) > 0
                """,
                c.ticket,
                "Unread mail is piling up in the inbox of mailbox {{ $labels.mailbox }}.",
                _text(
                    "The inbox of mailbox {{ $labels.mailbox }} holds {{ $value }} more unseen",
                    f"messages than {spoken(c.s('inbox_growth_window'))} ago and was never empty",
                    f"in between (threshold {c.t('inbox_growth_min')}): the service desk is not",
                    "fetching mail.",
                ),
                c.d("backlog_growing_for"),
            ),
            b.alert(
                "O365MailboxCheckFailing",
                f"""
                (
                    o365_mailbox_check:failure_reason:latest{{{behind_not_dependency}}}
                  or on (job, instance, mailbox, check)
                    (
                      {v.sel("o365_mailbox_check_success", checks_behind)} == 0
                      unless on (job, instance, mailbox)
                      {v.sel("o365_mailbox_check_success", 'check=~"token|imap_login"')} == 0
                    )
                )
                and on (job, instance, mailbox, check)
                ({v.sel("o365_mailbox_check_consecutive_failures")} >= {c.t("check_failed_runs")})
                """,
                c.ticket,
                "The {{ $labels.check }} check of mailbox {{ $labels.mailbox }} is failing.",
                _text(
                    "The {{ $labels.check }} check of mailbox {{ $labels.mailbox }} has failed",
                    f"{c.t('check_failed_runs')} or more runs in a row and for more than",
                    f"{c.d('check_failing_for')} (reason {_REASON}, code {_CODE}) although",
                    "sign-in works.",
                    '{{ if eq $labels.reason "folder_missing" }}Check `folders` in the config'
                    " (the Junk folder is found by SPECIAL-USE \\Junk first).",
                    '{{- else if eq $labels.reason "timeout" }}The mailbox answers too slowly:'
                    " check the network path and `timeout`.",
                    f"{{{{- else }}}}{_HINT}{{{{ end }}}}",
                ),
                c.d("check_failing_for"),
            ),
        ],
    }


def _recorded_query(name: str) -> str:
    return (
        f'{{{{ with printf `{name}{{job="%s",instance="%s",mailbox="%s",folder="inbox"}}`'
        " $labels.job $labels.instance $labels.mailbox | query }}"
        '{{ . | first | value | printf "%.0f" }}{{ else }}unknown{{ end }}'
    )


def sending_group(b: _Builder) -> Group:
    c, v = b.c, b.v
    window = c.d("send_rate_window")
    sent = v.sel("o365_mailbox_folder_arrived_messages_total", 'folder="sent"')
    inbox_success = v.sel("o365_mailbox_check_last_success_timestamp_seconds", 'check="inbox"')
    hold = duration(c.s("max_interval") + c.s("stale_margin"))
    rate_max = c.t("send_rate_max")
    daily_max = c.t("send_daily_max")
    return {
        "name": "o365-mailbox.sending",
        "rules": [
            # Messages per minute between the successful inbox runs (the Sent Items count comes
            # with them) in the window: the counter's growth over the time the runs span. Exact
            # at any interval, and a catch-up after an interrupted check is spread over its gap.
            # No sample when no run fell into the window (a long interval): see the alert.
            {
                "record": "o365_mailbox_folder:sent_messages:per_minute",
                "expr": _expr(f"""
                    (
                      increase({sent}[{window}])
                      / on (job, instance, mailbox) group_left ()
                      increase({inbox_success}[{window}])
                    ) * 60
                    and on (job, instance, mailbox)
                    increase({inbox_success}[{window}]) > 0
                """),
            },
            b.alert(
                "O365MailboxSendRateNearLimit",
                # last_over_time keeps the latest rate between the runs of a long interval.
                f"""
                last_over_time(o365_mailbox_folder:sent_messages:per_minute{{{_job_only(v)}}}[{hold}])
                >= {rate_max}
                """,
                c.ticket,
                "Mailbox {{ $labels.mailbox }} sends close to the SMTP limit of 30 messages a"
                " minute.",
                _text(
                    "Mailbox {{ $labels.mailbox }} has been sending",
                    '{{ $value | printf "%.1f" }} messages a minute (new messages in Sent Items,',
                    f"averaged over {window} or the latest run's interval) for more than",
                    f"{c.d('send_rate_for')} (threshold {rate_max}, 80 % of Exchange Online's",
                    "SMTP AUTH limit of 30 messages a minute). Above 30, Exchange rejects",
                    "submissions and the service desk's replies queue up or bounce.",
                ),
                c.d("send_rate_for"),
            ),
            b.alert(
                "O365MailboxDailySendVolumeNearLimit",
                f"increase({sent}[{c.d('send_daily_window')}])\n>= {daily_max}",
                c.ticket,
                "Mailbox {{ $labels.mailbox }} nears the limit of 10,000 recipients a day.",
                _text(
                    'Mailbox {{ $labels.mailbox }} sent {{ $value | printf "%.0f" }} messages',
                    f"in the last 24 hours (threshold {daily_max}, 80 % of Exchange Online's",
                    "10,000 recipients a day). These are messages, not recipients: a message to",
                    "three people counts three towards the limit, so the real figure is at least",
                    "this high. At the limit Exchange blocks the mailbox from sending for up to",
                    "24 hours.",
                ),
                c.d("send_daily_for"),
            ),
        ],
    }


def _job_only(v: Variant) -> str:
    return f'job="{v.job}"'


def expiry_group(b: _Builder) -> Group:
    c, v = b.c, b.v
    warn, page = c.s("credential_warn_left"), c.s("credential_page_left")
    cert = c.s("server_cert_warn_left")
    credential = v.sel("o365_mailbox_credential_expiry_timestamp_seconds")
    kind = '{{ if eq $labels.kind "client_secret" }}client secret{{ else }}certificate{{ end }}'
    endpoint = '{{ if eq $labels.endpoint "smtp" }}SMTP{{ else }}IMAP{{ end }}'
    description = _text(
        "Mailbox {{ $labels.mailbox }} signs in with a",
        f"{kind} that",
        "{{ if gt $value 0.0 }}expires in {{ $value | humanizeDuration }}{{ else }}has expired"
        "{{ end }}",
        "({{ with printf `o365_mailbox_credential_expiry_timestamp_seconds"
        '{job="%s",instance="%s",mailbox="%s",kind="%s"}` $labels.job $labels.instance'
        " $labels.mailbox $labels.kind | query }}{{ . | first | value | humanizeTimestamp }}"
        "{{ else }}unknown{{ end }};",
        f"thresholds {spoken(warn)} warning, {spoken(page)} critical). Once it has expired every",
        "sign-in fails with invalid_client and the service desk stops reading and sending mail.",
        '{{ if eq $labels.kind "client_secret" }}Create a new client secret in the app'
        " registration (Certificates & secrets), copy its Value into client_secret_file and set"
        " auth.client_secret_expires to its expiry date.",
        "{{- else }}Upload a new certificate to the app registration (Certificates & secrets →"
        " Certificates) and put it with its key into certificate_file.{{ end }}",
    )

    def credential_alert(name: str, left: int, severity: str) -> Rule:
        return b.alert(
            name,
            f"{credential} - time()\n< {_days(left)} * 86400",
            severity,
            f"The {kind} of mailbox {{{{ $labels.mailbox }}}} expires within {_days(left)} days.",
            description,
            c.d("expiry_for"),
        )

    return {
        "name": "o365-mailbox.expiry",
        "rules": [
            credential_alert("O365MailboxCredentialExpiringSoon", warn, c.ticket),
            credential_alert("O365MailboxCredentialExpiryImminent", page, c.page),
            b.alert(
                "O365MailboxServerCertificateExpiring",
                f"{v.sel('o365_mailbox_tls_certificate_expiry_timestamp_seconds')} - time()\n"
                f"< {_days(cert)} * 86400",
                c.ticket,
                f"The {endpoint} server certificate of mailbox {{{{ $labels.mailbox }}}} expires"
                f" within {_days(cert)} days.",
                _text(
                    f"The TLS certificate the {endpoint} server of mailbox",
                    "{{ $labels.mailbox }} presents",
                    "{{ if gt $value 0.0 }}expires in {{ $value | humanizeDuration }}{{ else }}"
                    "has expired{{ end }}",
                    f"(threshold {spoken(cert)}). Microsoft renews its own certificates weeks",
                    "ahead, so the exporter probably talks to something else: a TLS-inspecting",
                    "proxy or firewall, or a wrong imap/smtp host. Once it expires every",
                    f"{endpoint} login fails with reason tls.",
                ),
                c.d("expiry_for"),
            ),
        ],
    }


def junk_oversized_group(b: _Builder) -> Group:
    c, v = b.c, b.v
    junk_age, review_age = c.s("junk_max_age"), c.s("junk_review_max_age")
    oldest_junk = v.sel("o365_mailbox_folder_oldest_message_timestamp_seconds", 'folder="junk"')
    review = v.sel("o365_mailbox_junk_last_review_timestamp_seconds")
    return {
        "name": "o365-mailbox.junk-oversized",
        "rules": [
            b.alert(
                "O365MailboxOversizedMessages",
                v.sel("o365_mailbox_oversized_messages", 'folder="inbox"') + " > 0",
                c.ticket,
                "Oversized messages sit in the inbox of mailbox {{ $labels.mailbox }}.",
                _text(
                    "The inbox of mailbox {{ $labels.mailbox }} holds {{ $value }} message(s)",
                    "larger than the oversized threshold",
                    "({{ with printf `o365_mailbox_oversized_threshold_bytes"
                    '{job="%s",instance="%s",mailbox="%s"}` $labels.job $labels.instance'
                    " $labels.mailbox | query }}{{ . | first | value | humanize1024 }}B"
                    "{{ else }}unknown{{ end }};",
                    "the largest is {{ with printf `o365_mailbox_oversized_largest_bytes"
                    '{job="%s",instance="%s",mailbox="%s",folder="inbox"}` $labels.job'
                    " $labels.instance $labels.mailbox | query }}{{ . | first | value |"
                    " humanize1024 }}B{{ else }}unknown{{ end }}).",
                    "The service desk may fail to fetch them and stall behind them: move them out",
                    "of the inbox into a folder the desk does not read.",
                ),
                c.d("oversized_for"),
            ),
            b.alert(
                "O365MailboxJunkOldMail",
                f"""
                time() - {oldest_junk}
                > {_days(junk_age)} * 86400
                unless on (job, instance, mailbox)
                (
                  {review}
                  >= on (job, instance, mailbox)
                  {oldest_junk}
                )
                """,
                c.ticket,
                f"Junk of mailbox {{{{ $labels.mailbox }}}} holds mail older than"
                f" {_days(junk_age)} days.",
                _text(
                    "The oldest message in the Junk folder of mailbox {{ $labels.mailbox }}",
                    "arrived {{ $value | humanizeDuration }} ago",
                    f"(threshold {spoken(junk_age)}): the weekly Junk review is overdue, and",
                    "customer mail filtered as spam may be lost when Exchange purges it.",
                ),
                c.d("junk_for"),
            ),
            b.alert(
                "O365MailboxJunkReviewOverdue",
                f"""
                {v.sel("o365_mailbox_folder_messages", 'folder="junk"')} > 0
                unless on (job, instance, mailbox)
                (
                  time() - {review}
                  <= {_days(review_age)} * 86400
                )
                """,
                c.ticket,
                f"The Junk folder of mailbox {{{{ $labels.mailbox }}}} has not been reviewed in"
                f" {_days(review_age)} days.",
                _text(
                    "The Junk folder of mailbox {{ $labels.mailbox }} holds {{ $value }}",
                    "message(s) and",
                    "{{ with printf `time() - o365_mailbox_junk_last_review_timestamp_seconds"
                    '{job="%s",instance="%s",mailbox="%s"}` $labels.job $labels.instance'
                    " $labels.mailbox | query }}was last reviewed {{ . | first | value |"
                    " humanizeDuration }} ago{{ with printf"
                    " `o365_mailbox_junk_unreviewed_messages"
                    '{job="%s",instance="%s",mailbox="%s"}` $labels.job $labels.instance'
                    " $labels.mailbox | query }}; {{ . | first | value }} of them arrived"
                    " since{{ end }}{{ else }}no review was ever recorded{{ end }}",
                    f"(threshold {spoken(review_age)}): customer mail filtered as spam never",
                    "becomes a ticket. Review it with `o365-mailbox-exporter junk-review",
                    "--mailbox {{ $labels.mailbox }}` and record the review with `--ack`.",
                ),
                c.d("junk_for"),
            ),
        ],
    }


def exporter_group(b: _Builder) -> Group:
    c, v = b.c, b.v
    by = v.exporter_by
    intervals, margin = c.t("stale_intervals"), c.s("stale_margin")
    last_run = v.sel("o365_mailbox_check_last_run_timestamp_seconds")
    up = v.sel("up")
    self_up = v.sel("up", job=v.self_job)
    if v.probe:
        # Prometheus' probe of each mailbox is its run: the configured scrape interval.
        stale_after = intervals * c.probe_scrape_interval + margin
        stale_after_expr = (
            f'label_replace(0 * {up} + {stale_after}, "mailbox", "$1", "instance", "(.*)")'
        )
        # A failing probe leaves no run timestamp at all: no successful probe for as long.
        probe_failing = (
            f"  or on (job, instance, mailbox)\n"
            f"  label_replace(max_over_time({up}[{duration(stale_after)}]) == 0,"
            f' "mailbox", "$1", "instance", "(.*)")\n'
        )
        mailboxes = f"count by ({by}) ({up})"
        # A replica that is down fails the probes of all its mailboxes: O365MailboxExporterDown
        # pages for it (once), so the per-mailbox alerts hold back meanwhile.
        while_down = f"unless on ()\n({self_up} == 0)\n"
        stale_text = (
            f"{spoken(stale_after)}, {intervals} \u00d7 the probe interval of"
            f" {duration(c.probe_scrape_interval)} + {spoken(margin)}"
        )
    else:
        default = seconds(c.t("default_interval"))
        interval = v.sel("o365_mailbox_check_interval_seconds")
        stale_after_expr = (
            f"max by (job, instance, mailbox) ({interval}) * {intervals} + {margin}\n"
            f"or on (job, instance, mailbox)\n"
            f"0 * o365_mailbox:check_run_age:seconds + {intervals * default + margin}"
        )
        probe_failing = ""
        mailboxes = f"count by ({by}) (o365_mailbox:check_run_age:seconds)"
        while_down = ""
        stale_text = f"{intervals} \u00d7 its interval + {spoken(margin)}"
    stale = (
        "  o365_mailbox:check_run_age:seconds\n"
        "  > on (job, instance, mailbox)\n"
        "  o365_mailbox:check_stale_after:seconds\n" + probe_failing
    )
    ratio = c.t("exporter_stale_ratio")
    exporter_stale = (
        f"(\n  count by ({by}) (\n{_indent(stale, 2)}\n  )\n  / {mailboxes}\n) > {ratio}"
    )
    instance_text = "of job {{ $labels.job }}" if v.probe else "at {{ $labels.instance }}"
    absent = f"absent({up})"
    if v.self_job != v.job:
        absent += f"\nor\nabsent({self_up})"
    return {
        "name": "o365-mailbox.exporter",
        "rules": [
            {
                "record": "o365_mailbox:check_run_age:seconds",
                "expr": _expr(f"time() - max by (job, instance, mailbox) ({last_run})"),
            },
            {"record": "o365_mailbox:check_stale_after:seconds", "expr": _expr(stale_after_expr)},
            b.alert(
                "O365MailboxExporterDown",
                f"{self_up} == 0",
                c.page,
                "The o365-mailbox-exporter at {{ $labels.instance }} is down.",
                _text(
                    "Prometheus could not scrape the o365-mailbox-exporter at",
                    "{{ $labels.instance }} for more than",
                    f"{c.d('exporter_down_for')}: none of its mailboxes is being watched.",
                ),
                c.d("exporter_down_for"),
            ),
            b.alert(
                "O365MailboxExporterAbsent",
                absent,
                c.page,
                "No o365-mailbox-exporter target is being scraped.",
                _text(
                    "Prometheus has had no target in job {{ $labels.job }} for more than",
                    f"{c.d('exporter_absent_for')}: the exporter was removed from service",
                    "discovery or the scrape config, so no mailbox is being watched.",
                ),
                c.d("exporter_absent_for"),
            ),
            b.alert(
                "O365MailboxChecksStale",
                # Runs end every interval even when checks fail or time out; no run ending means
                # the exporter's scheduler is stuck or saturated (--checks.max-concurrency).
                f"(\n{stale})\nunless on ({by})\n{exporter_stale}\n{while_down}",
                c.page,
                "The checks of mailbox {{ $labels.mailbox }} have stopped running.",
                _text(
                    "{{ if eq $value 0.0 }}No probe of mailbox {{ $labels.mailbox }} has succeeded"
                    "{{ else }}"
                    if v.probe
                    else "",
                    "No check run of mailbox {{ $labels.mailbox }} has ended for",
                    "{{ $value | humanizeDuration }}" + ("{{ end }}" if v.probe else ""),
                    f"(threshold {stale_text}): its metrics are stale and no other alert about",
                    "it can be trusted.",
                ),
            ),
            b.alert(
                "O365MailboxExporterChecksStale",
                f"{exporter_stale}\n{while_down}",
                c.page,
                f"The o365-mailbox-exporter {instance_text} has stopped running checks.",
                _text(
                    f"{{{{ $value | humanizePercentage }}}} of the mailboxes {instance_text}",
                    f"have had no check run end in time (threshold {stale_text}): the",
                    "exporter's scheduler is stuck or saturated"
                    + (", or Prometheus cannot reach the exporters." if v.probe else "."),
                    "One page for the exporter instead of one per mailbox.",
                ),
            ),
            b.alert(
                "O365MailboxExporterConfigReloadFailed",
                f"{v.sel('o365_mailbox_exporter_config_last_reload_successful', job=v.self_job)}"
                " == 0",
                c.ticket,
                "The o365-mailbox-exporter at {{ $labels.instance }} failed to reload its config.",
                _text(
                    "The latest configuration reload of the exporter at {{ $labels.instance }}",
                    "failed; it keeps running with the previous configuration. Run",
                    "`o365-mailbox-exporter --config.check --config.file=...` to see every",
                    "problem.",
                ),
                c.d("reload_failed_for"),
            ),
        ],
    }


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.strip("\n").splitlines())


def rule_groups(config: Config, variant: Variant) -> list[Group]:
    builder = _Builder(config, variant)
    return [
        group(builder)
        for group in (auth_group, backlog_group, sending_group, expiry_group,
                      junk_oversized_group, exporter_group)
    ]  # fmt: skip


# -- files ---------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if len(value) > 80 and " " in value and value == " ".join(value.split()):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=">")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(document: Any) -> str:
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    if yaml.safe_load(text) != document:  # folded scalars must read back exactly
        raise AssertionError("rendered YAML does not read back as rendered")
    return text


def _header(config: Config, variant: Variant, source_note: str) -> str:
    lines = [
        "# Generated by `python -m mixin.render` from mixin/config.yml and mixin/rules.py:",
        "# do not edit here (a test fails when this file and the renderer disagree).",
        source_note,
        "#",
        "# severity: critical pages (the desk stops receiving or sending mail, a credential",
        "# expires within days, or nobody is watching); warning opens a ticket. Each alert's",
        "# runbook_url points at its section of docs/runbook.md. Thresholds (mixin/config.yml,",
        "# see docs/runbook.md#tuning):",
    ]
    width = max(len(name) for name in config.thresholds)
    lines += [f"#   {name.ljust(width)}  {value}" for name, value in config.thresholds.items()]
    if variant.probe:
        lines += [
            f"#   {'probe.scrape_interval'.ljust(width)}  {config.probe_scrape_interval}s",
            f"#   {'probe.self_job'.ljust(width)}  {config.probe_self_job}",
        ]
    return "\n".join(lines) + "\n"


NOTES = {
    "scheduled": (
        '# Scheduled mode: every series from job="{job}" (the exporter\'s /metrics); staleness\n'
        "# from each mailbox's o365_mailbox_check_interval_seconds."
    ),
    "probe": (
        '# Multi-target mode (--probe.only): mailbox series from job="{job}" (/probe, the\n'
        '# instance label is the mailbox), the exporter\'s health from job="{self_job}" (its own\n'
        "# /metrics, deploy/prometheus/probe-mode.yml); a mailbox's run every {interval}s."
    ),
}

RULE_FILES = {
    "scheduled": Path("alerts/o365-mailbox.rules.yml"),
    "probe": Path("alerts/o365-mailbox-probe.rules.yml"),
}
PROMETHEUS_RULES = {
    "scheduled": Path("deploy/kubernetes/sharded/prometheusrule.yaml"),
    "probe": Path("deploy/kubernetes/probe-mode/prometheusrule-probe.yaml"),
}
K8S_NAMES = {"scheduled": "o365-mailbox-exporter", "probe": "o365-mailbox-exporter-probe"}


def render_rule_file(config: Config, variant: Variant) -> str:
    note = NOTES[variant.name].format(
        job=variant.job, self_job=variant.self_job, interval=config.probe_scrape_interval
    )
    groups = rule_groups(config, variant)
    return _header(config, variant, note) + dump({"groups": groups})


def render_prometheus_rule(config: Config, variant: Variant) -> str:
    header = (
        f"# Generated by `python -m mixin.render` (the groups of {RULE_FILES[variant.name]}):\n"
        "# do not edit here. Your Prometheus' ruleSelector may want another label on this\n"
        "# object (e.g. `release: ...`).\n"
    )
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": K8S_NAMES[variant.name],
            "labels": {"app.kubernetes.io/name": "o365-mailbox-exporter"},
        },
        "spec": {"groups": rule_groups(config, variant)},
    }
    return header + dump(document)


def render_files(config: Config) -> dict[Path, str]:
    """Every committed rule file, relative to the repository root."""
    files: dict[Path, str] = {}
    for name, variant in variants(config).items():
        files[RULE_FILES[name]] = render_rule_file(config, variant)
        files[PROMETHEUS_RULES[name]] = render_prometheus_rule(config, variant)
    return files
