"""Renders the contract's metrics as Prometheus text from the latest results.

Nothing here touches the network: a scrape reads the result store, so a removed mailbox
disappears and a hung mailbox never slows `/metrics`. Each mailbox's lines are rendered once
per new result and cached (a mailbox changes at most once per interval, a scrape comes every
few seconds): at 1,000 mailboxes prometheus_client's generic encoder took 100-200 ms a
scrape, most of it re-formatting the same 33,000 samples.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest

from exporter import __version__, revision
from exporter.checks.measurements import LATEST, MEASUREMENTS, Sample
from exporter.config import Config, MailboxConfig
from exporter.results import MailboxSnapshot, ResultStore
from exporter.runner import runnable_checks

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUILD_LABELS = (__version__, revision(), platform.python_version())


# name -> (type, help, labels), in exposition order: the families of a mailbox's runs here, then
# those its checks measure (each declared beside its measurement). Counters are exposed with
# the `_total` suffix: o365_mailbox_check_failures_total,
# o365_mailbox_folder_arrived_messages_total.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "o365_mailbox_up": (
        "gauge",
        "1 when every enabled check passed in its latest run." + LATEST,
        ("mailbox",),
    ),
    "o365_mailbox_check_success": (
        "gauge",
        "1 if the check passed in its latest run, else 0." + LATEST,
        ("mailbox", "check"),
    ),
    "o365_mailbox_check_duration_seconds": (
        "gauge",
        "Wall time of the check's latest run." + LATEST,
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
    "o365_mailbox_check_consecutive_failures": (
        "gauge",
        "Failed runs of the check in a row; 0 after a pass." + LATEST,
        ("mailbox", "check"),
    ),
    "o365_mailbox_check_interval_seconds": (
        "gauge",
        "The mailbox's configured check interval (absent in --probe.only mode, where "
        "Prometheus' scrape interval is the cadence).",
        ("mailbox",),
    ),
    "o365_mailbox_check_failures": (
        "counter",
        "Failed check runs by reason and code (AADSTS or IMAP/SMTP reply code).",
        ("mailbox", "check", "reason", "code"),
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
    "o365_mailbox_exporter_build_info": (
        "gauge",
        "Build information; always 1.",
        ("version", "revision", "python_version"),
    ),
    "o365_mailbox_exporter_config_last_reload_successful": (
        "gauge",
        "1 if the latest configuration (re)load succeeded, else 0.",
        (),
    ),
    "o365_mailbox_exporter_config_last_reload_success_timestamp_seconds": (
        "gauge",
        "Unix time the configuration last loaded successfully.",
        (),
    ),
}


# What the checks measure declares its own families (exporter/checks/measurements.py).
for _kind in MEASUREMENTS:
    for _family in _kind.FAMILIES:
        FAMILIES[_family.name] = (_family.kind, _family.help, _family.labels)
Lines = dict[str, list[str]]  # family -> rendered sample lines
_EXPORTER_FAMILIES = (
    "o365_mailbox_exporter_build_info",
    "o365_mailbox_exporter_config_last_reload_successful",
    "o365_mailbox_exporter_config_last_reload_success_timestamp_seconds",
)


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _value(value: float) -> str:
    number = float(value)
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


def exposed_name(family: str) -> str:
    return family + "_total" if FAMILIES[family][0] == "counter" else family


def _line(family: str, labels: tuple[str, ...], value: float) -> str:
    names = FAMILIES[family][2]
    pairs = sorted(zip(names, labels, strict=True))
    inner = ",".join(f'{key}="{_escape(val)}"' for key, val in pairs)
    selector = f"{exposed_name(family)}{{{inner}}}" if inner else exposed_name(family)
    return f"{selector} {_value(value)}"


def mailbox_samples(
    mailbox: MailboxConfig, snap: MailboxSnapshot, scheduled: bool = True
) -> Iterator[Sample]:
    """Every sample of one mailbox, from its latest results. `scheduled`: the exporter runs
    the mailbox on its configured interval (not in --probe.only mode)."""
    name = mailbox.name
    if scheduled:
        yield "o365_mailbox_check_interval_seconds", (name,), mailbox.interval
    checks = runnable_checks(mailbox)
    ran = [snap.checks[c] for c in checks if c in snap.checks]
    if ran:
        all_passed = len(ran) == len(checks) and all(r.success for r in ran)
        yield "o365_mailbox_up", (name,), 1.0 if all_passed else 0.0
    for result in ran:
        labels = (name, result.check)
        yield "o365_mailbox_check_success", labels, 1.0 if result.success else 0.0
        yield "o365_mailbox_check_duration_seconds", labels, result.duration_seconds
        yield "o365_mailbox_check_last_run_timestamp_seconds", labels, result.ended_at
        failed_in_a_row = snap.consecutive_failures.get(result.check, 0)
        yield "o365_mailbox_check_consecutive_failures", labels, failed_in_a_row
        if result.check in snap.last_success:
            last = snap.last_success[result.check]
            yield "o365_mailbox_check_last_success_timestamp_seconds", labels, last
        for m in result.measurements:
            yield from m.samples(name)
    for (check, reason, code), count in sorted(snap.failures_total.items()):
        yield "o365_mailbox_check_failures", (name, check, reason, code), count
    for folder, arrived in sorted(snap.arrived_total.items()):
        yield "o365_mailbox_folder_arrived_messages", (name, folder), arrived
    if "oversized" in mailbox.checks:
        yield "o365_mailbox_oversized_threshold_bytes", (name,), mailbox.oversized_bytes


class MetricsText:
    """The exposition of the mailbox families (and, with `exporter_metrics`, the exporter's
    own) in the Prometheus text format 0.0.4."""

    def __init__(
        self,
        store: ResultStore,
        config: Callable[[], Config | None],
        reload_ok: Callable[[], bool],
        exporter_metrics: bool = True,
        registry: CollectorRegistry | None = None,
        scheduled: bool = True,
        reload_success_time: Callable[[], float | None] = lambda: None,
    ) -> None:
        """`config` decides which mailboxes appear (a /probe passes just one); `registry`
        holds further collectors whose text is appended (the process metrics); `scheduled`
        is False in --probe.only mode (no configured interval is in force)."""
        self.store = store
        self.config = config
        self.reload_ok = reload_ok
        self.exporter_metrics = exporter_metrics
        self.registry = registry
        self.scheduled = scheduled
        self.reload_success_time = reload_success_time
        self._cache: dict[str, tuple[tuple[int, MailboxConfig], Lines]] = {}
        self._lock = threading.Lock()

    def _mailbox_lines(self, mailbox: MailboxConfig) -> Lines:
        key = (self.store.version(mailbox.name), mailbox)
        with self._lock:
            cached = self._cache.get(mailbox.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        lines: Lines = {}
        snap = self.store.snapshot_of(mailbox.name) or MailboxSnapshot(
            mailbox.name, {}, {}, {}, {}, {}
        )
        for family, labels, value in mailbox_samples(mailbox, snap, self.scheduled):
            lines.setdefault(family, []).append(_line(family, labels, value))
        with self._lock:
            self._cache[mailbox.name] = (key, lines)
        return lines

    def render(self) -> bytes:
        config = self.config()
        mailboxes = config.mailboxes if config else ()
        with self._lock:  # forget removed mailboxes
            for name in set(self._cache) - {m.name for m in mailboxes}:
                del self._cache[name]
        by_family: Lines = {family: [] for family in FAMILIES}
        for mailbox in mailboxes:
            for family, lines in self._mailbox_lines(mailbox).items():
                by_family[family].extend(lines)
        if self.exporter_metrics:
            build, reload, reloaded_at = _EXPORTER_FAMILIES
            by_family[build].append(_line(build, BUILD_LABELS, 1.0))
            by_family[reload].append(_line(reload, (), 1.0 if self.reload_ok() else 0.0))
            last_success = self.reload_success_time()
            if last_success is not None:
                by_family[reloaded_at].append(_line(reloaded_at, (), last_success))
        out: list[str] = []
        for family, lines in by_family.items():
            if family in _EXPORTER_FAMILIES and not self.exporter_metrics:
                continue
            kind, documentation, _labels = FAMILIES[family]
            name = exposed_name(family)
            help_text = documentation.replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
            if lines:
                out.append("\n".join(lines))
                out.append("\n")
        text = "".join(out).encode()
        if self.registry is not None:
            text += generate_latest(self.registry)
        return text
