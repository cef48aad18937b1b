"""Builds the contract's metric families from the latest results, fresh on every scrape.

Nothing here touches the network: a scrape reads the result store's snapshot, so a removed
mailbox disappears and a hung mailbox never slows `/metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.checks import FolderMeasurement, OversizedMeasurement, TokenMeasurement
from exporter.config import Config
from exporter.results import ResultStore
from exporter.runner import runnable_checks

P = "o365_mailbox_"
_LATEST = " From the latest scheduled run, not from the scrape."


class MailboxCollector(Collector):
    def __init__(
        self,
        store: ResultStore,
        config: Callable[[], Config | None],
        reload_ok: Callable[[], bool],
    ) -> None:
        self.store = store
        self.config = config
        self.reload_ok = reload_ok

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

        up = GaugeMetricFamily(
            P + "up",
            "1 when every enabled check passed in its latest run." + _LATEST,
            labels=["mailbox"],
        )
        success = GaugeMetricFamily(
            P + "check_success",
            "1 if the check passed in its latest run, else 0." + _LATEST,
            labels=["mailbox", "check"],
        )
        duration = GaugeMetricFamily(
            P + "check_duration_seconds",
            "Wall time of the check's latest run." + _LATEST,
            labels=["mailbox", "check"],
        )
        last_run = GaugeMetricFamily(
            P + "check_last_run_timestamp_seconds",
            "Unix time the check's latest run ended.",
            labels=["mailbox", "check"],
        )
        last_success = GaugeMetricFamily(
            P + "check_last_success_timestamp_seconds",
            "Unix time of the check's latest successful run.",
            labels=["mailbox", "check"],
        )
        failures = CounterMetricFamily(
            P + "check_failures",
            "Failed check runs by reason and code (AADSTS or IMAP/SMTP reply code).",
            labels=["mailbox", "check", "reason", "code"],
        )
        token_expiry = GaugeMetricFamily(
            P + "token_expiry_timestamp_seconds",
            "Expiry of the access token obtained by the latest token refresh." + _LATEST,
            labels=["mailbox"],
        )
        messages = GaugeMetricFamily(
            P + "folder_messages",
            "Messages in the folder (by role)." + _LATEST,
            labels=["mailbox", "folder"],
        )
        unseen = GaugeMetricFamily(
            P + "folder_unseen_messages",
            "Messages without the \\Seen flag." + _LATEST,
            labels=["mailbox", "folder"],
        )
        oldest = GaugeMetricFamily(
            P + "folder_oldest_message_timestamp_seconds",
            "INTERNALDATE of the folder's oldest message; absent when empty." + _LATEST,
            labels=["mailbox", "folder"],
        )
        oversized = GaugeMetricFamily(
            P + "oversized_messages",
            "Messages larger than the oversized threshold." + _LATEST,
            labels=["mailbox", "folder"],
        )
        largest = GaugeMetricFamily(
            P + "oversized_largest_bytes",
            "Size of the largest oversized message, 0 when none." + _LATEST,
            labels=["mailbox", "folder"],
        )
        threshold = GaugeMetricFamily(
            P + "oversized_threshold_bytes",
            "The configured oversized threshold.",
            labels=["mailbox"],
        )

        for snap in self.store.snapshot():
            name = snap.name
            if name not in enabled:
                continue
            checks = enabled[name]
            ran = [snap.checks[c] for c in checks if c in snap.checks]
            if ran:
                all_passed = len(ran) == len(checks) and all(r.success for r in ran)
                up.add_metric([name], 1.0 if all_passed else 0.0)
            for result in ran:
                labels = [name, result.check]
                success.add_metric(labels, 1.0 if result.success else 0.0)
                duration.add_metric(labels, result.duration_seconds)
                last_run.add_metric(labels, result.ended_at)
                if result.check in snap.last_success:
                    last_success.add_metric(labels, snap.last_success[result.check])
                m = result.measurement
                if isinstance(m, TokenMeasurement):
                    token_expiry.add_metric([name], m.expires_at)
                elif isinstance(m, FolderMeasurement):
                    messages.add_metric([name, m.folder], m.messages)
                    if m.unseen is not None:
                        unseen.add_metric([name, m.folder], m.unseen)
                    if m.oldest_timestamp is not None:
                        oldest.add_metric([name, m.folder], m.oldest_timestamp)
                elif isinstance(m, OversizedMeasurement):
                    oversized.add_metric([name, m.folder], m.count)
                    largest.add_metric([name, m.folder], m.largest_bytes)
            for (check, reason, code), count in sorted(snap.failures_total.items()):
                failures.add_metric([name, check, reason, code], count)
        for name, value in sorted(thresholds.items()):
            threshold.add_metric([name], value)

        build = GaugeMetricFamily(
            P + "exporter_build_info", "Build information; always 1.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        reload_metric = GaugeMetricFamily(
            P + "exporter_config_last_reload_successful",
            "1 if the latest configuration (re)load succeeded, else 0.",
        )
        reload_metric.add_metric([], 1.0 if self.reload_ok() else 0.0)

        yield from (
            up,
            success,
            duration,
            last_run,
            last_success,
            failures,
            token_expiry,
            messages,
            unseen,
            oldest,
            oversized,
            largest,
            threshold,
            build,
            reload_metric,
        )
