"""Builds the contract's metric families from the latest results, fresh on every scrape.

Nothing here touches the network: a scrape reads the result store's snapshot, so a removed
mailbox disappears and a hung mailbox never slows `/metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.checks import (
    CredentialMeasurement,
    FolderMeasurement,
    JunkReviewMeasurement,
    Measurement,
    OversizedMeasurement,
    TlsMeasurement,
    TokenMeasurement,
)
from exporter.config import Config
from exporter.results import ResultStore
from exporter.runner import runnable_checks

_LATEST = " From the latest scheduled run, not from the scrape."


# name (after the prefix) -> (type, help, labels). Order is exposition order.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "o365_mailbox_up": (
        "gauge",
        "1 when every enabled check passed in its latest run." + _LATEST,
        ("mailbox",),
    ),
    "o365_mailbox_check_success": (
        "gauge",
        "1 if the check passed in its latest run, else 0." + _LATEST,
        ("mailbox", "check"),
    ),
    "o365_mailbox_check_duration_seconds": (
        "gauge",
        "Wall time of the check's latest run." + _LATEST,
        ("mailbox", "check"),
    ),
    "o365_mailbox_check_last_run_timestamp_seconds": (
        "gauge",
        "Unix time the check's latest run ended.",
        ("mailbox", "check"),
    ),
    "o365_mailbox_check_last_success_timestamp_seconds": (
        "gauge",
        "Unix time of the check's latest successful run.",
        ("mailbox", "check"),
    ),
    "o365_mailbox_check_failures": (
        "counter",
        "Failed check runs by reason and code (AADSTS or IMAP/SMTP reply code).",
        ("mailbox", "check", "reason", "code"),
    ),
    "o365_mailbox_token_expiry_timestamp_seconds": (
        "gauge",
        "Expiry of the access token obtained by the latest token refresh." + _LATEST,
        ("mailbox",),
    ),
    "o365_mailbox_folder_messages": (
        "gauge",
        "Messages in the folder (by role)." + _LATEST,
        ("mailbox", "folder"),
    ),
    "o365_mailbox_folder_unseen_messages": (
        "gauge",
        "Messages without the \\Seen flag." + _LATEST,
        ("mailbox", "folder"),
    ),
    "o365_mailbox_folder_oldest_message_timestamp_seconds": (
        "gauge",
        "INTERNALDATE of the folder's oldest message; absent when empty." + _LATEST,
        ("mailbox", "folder"),
    ),
    "o365_mailbox_oversized_messages": (
        "gauge",
        "Messages larger than the oversized threshold." + _LATEST,
        ("mailbox", "folder"),
    ),
    "o365_mailbox_oversized_largest_bytes": (
        "gauge",
        "Size of the largest oversized message, 0 when none." + _LATEST,
        ("mailbox", "folder"),
    ),
    "o365_mailbox_oversized_threshold_bytes": (
        "gauge",
        "The configured oversized threshold.",
        ("mailbox",),
    ),
    "o365_mailbox_folder_arrived_messages": (
        "counter",
        "New messages in the folder, from UIDNEXT growth between runs.",
        ("mailbox", "folder"),
    ),
    "o365_mailbox_credential_expiry_timestamp_seconds": (
        "gauge",
        "Expiry of the mailbox's credential: kind=certificate from certificate_file, "
        "kind=client_secret from auth.client_secret_expires.",
        ("mailbox", "kind"),
    ),
    "o365_mailbox_tls_certificate_expiry_timestamp_seconds": (
        "gauge",
        "notAfter of the server certificate seen in the latest run's TLS handshake.",
        ("mailbox", "endpoint"),
    ),
    "o365_mailbox_junk_last_review_timestamp_seconds": (
        "gauge",
        "Unix time an admin last recorded a Junk review (junk-review --ack); absent until one.",
        ("mailbox",),
    ),
    "o365_mailbox_junk_unreviewed_messages": (
        "gauge",
        "Junk messages that arrived since the latest recorded review (by UID)." + _LATEST,
        ("mailbox",),
    ),
    "o365_mailbox_exporter_build_info": ("gauge", "Build information; always 1.", ("version",)),
    "o365_mailbox_exporter_config_last_reload_successful": (
        "gauge",
        "1 if the latest configuration (re)load succeeded, else 0.",
        (),
    ),
}


Family = GaugeMetricFamily | CounterMetricFamily


def _family(name: str) -> Family:
    kind, documentation, labels = FAMILIES[name]
    family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return family(name, documentation, labels=list(labels))


class MailboxCollector(Collector):
    def __init__(
        self,
        store: ResultStore,
        config: Callable[[], Config | None],
        reload_ok: Callable[[], bool],
        exporter_metrics: bool = True,
    ) -> None:
        """`config` decides which mailboxes appear (a /probe passes just one);
        `exporter_metrics=False` leaves out the exporter's own build/reload families."""
        self.store = store
        self.config = config
        self.reload_ok = reload_ok
        self.exporter_metrics = exporter_metrics

    def describe(self) -> Iterable[Metric]:
        return []  # registering must never trigger a check

    def collect(self) -> Iterable[Metric]:
        config = self.config()
        enabled = {m.name: runnable_checks(m) for m in config.mailboxes} if config else {}
        thresholds = (
            {m.name: m.oversized_bytes for m in config.mailboxes if "oversized" in m.checks}
            if config
            else {}
        )

        f = {name: _family(name) for name in FAMILIES}
        for snap in self.store.snapshot():
            name = snap.name
            if name not in enabled:
                continue
            checks = enabled[name]
            ran = [snap.checks[c] for c in checks if c in snap.checks]
            if ran:
                all_passed = len(ran) == len(checks) and all(r.success for r in ran)
                f["o365_mailbox_up"].add_metric([name], 1.0 if all_passed else 0.0)
            for result in ran:
                labels = [name, result.check]
                f["o365_mailbox_check_success"].add_metric(labels, 1.0 if result.success else 0.0)
                f["o365_mailbox_check_duration_seconds"].add_metric(labels, result.duration_seconds)
                f["o365_mailbox_check_last_run_timestamp_seconds"].add_metric(
                    labels, result.ended_at
                )
                if result.check in snap.last_success:
                    f["o365_mailbox_check_last_success_timestamp_seconds"].add_metric(
                        labels, snap.last_success[result.check]
                    )
                for m in result.measurements:
                    self._add_measurement(f, name, m)
            for (check, reason, code), count in sorted(snap.failures_total.items()):
                f["o365_mailbox_check_failures"].add_metric([name, check, reason, code], count)
            for folder, arrived in sorted(snap.arrived_total.items()):
                f["o365_mailbox_folder_arrived_messages"].add_metric([name, folder], arrived)
        for name, value in sorted(thresholds.items()):
            f["o365_mailbox_oversized_threshold_bytes"].add_metric([name], value)

        if not self.exporter_metrics:
            del f["o365_mailbox_exporter_build_info"]
            del f["o365_mailbox_exporter_config_last_reload_successful"]
            yield from f.values()
            return
        f["o365_mailbox_exporter_build_info"].add_metric([__version__], 1.0)
        f["o365_mailbox_exporter_config_last_reload_successful"].add_metric(
            [], 1.0 if self.reload_ok() else 0.0
        )
        yield from f.values()

    @staticmethod
    def _add_measurement(f: dict[str, Family], name: str, m: Measurement) -> None:
        if isinstance(m, TokenMeasurement):
            f["o365_mailbox_token_expiry_timestamp_seconds"].add_metric([name], m.expires_at)
        elif isinstance(m, FolderMeasurement):
            f["o365_mailbox_folder_messages"].add_metric([name, m.folder], m.messages)
            if m.unseen is not None:
                f["o365_mailbox_folder_unseen_messages"].add_metric([name, m.folder], m.unseen)
            if m.oldest_timestamp is not None:
                f["o365_mailbox_folder_oldest_message_timestamp_seconds"].add_metric(
                    [name, m.folder], m.oldest_timestamp
                )
        elif isinstance(m, OversizedMeasurement):
            f["o365_mailbox_oversized_messages"].add_metric([name, m.folder], m.count)
            f["o365_mailbox_oversized_largest_bytes"].add_metric([name, m.folder], m.largest_bytes)
        elif isinstance(m, TlsMeasurement):
            f["o365_mailbox_tls_certificate_expiry_timestamp_seconds"].add_metric(
                [name, m.endpoint], m.not_after
            )
        elif isinstance(m, CredentialMeasurement):
            f["o365_mailbox_credential_expiry_timestamp_seconds"].add_metric(
                [name, m.kind], m.expires_at
            )
        elif isinstance(m, JunkReviewMeasurement):
            f["o365_mailbox_junk_last_review_timestamp_seconds"].add_metric([name], m.reviewed_at)
            f["o365_mailbox_junk_unreviewed_messages"].add_metric([name], m.unreviewed)
