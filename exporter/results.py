"""The result store: the latest run of every check of every mailbox, and failure counters.

Written by check runs, read by the collector, the landing page and `check`. Reads take a
consistent snapshot under one lock; nothing here touches the network.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from exporter.checks import FolderMeasurement, Measurement
from exporter.failures import Failure


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str
    success: bool
    duration_seconds: float
    ended_at: float  # unix time
    failure: Failure | None = None
    measurements: tuple[Measurement, ...] = ()


@dataclass
class MailboxResults:
    checks: dict[str, CheckResult] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    failures_total: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    consecutive_failures: dict[str, int] = field(default_factory=dict)  # check -> failed runs
    arrived_total: Counter[str] = field(default_factory=Counter)  # folder -> messages
    uid_marks: dict[str, tuple[int, int]] = field(default_factory=dict)  # (UIDVALIDITY, UIDNEXT)
    version: int = 0  # bumped on every change, so renderers can cache

    def count_arrivals(self, m: FolderMeasurement) -> None:
        """New messages from UIDNEXT growth; a UIDVALIDITY change restarts without a jump."""
        if m.uidnext is None or m.uidvalidity is None:
            return
        previous = self.uid_marks.get(m.folder)
        if previous is not None and previous[0] == m.uidvalidity and m.uidnext > previous[1]:
            self.arrived_total[m.folder] += m.uidnext - previous[1]
        else:
            self.arrived_total[m.folder] += 0  # the series exists from the first run
        self.uid_marks[m.folder] = (m.uidvalidity, m.uidnext)


@dataclass(frozen=True, slots=True)
class MailboxSnapshot:
    name: str
    checks: dict[str, CheckResult]
    last_success: dict[str, float]
    failures_total: dict[tuple[str, str, str], int]  # (check, reason, code) -> count
    arrived_total: dict[str, int]  # folder -> messages
    consecutive_failures: dict[str, int] = field(default_factory=dict)  # check -> failed runs


class ResultStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mailboxes: dict[str, MailboxResults] = {}

    def record(self, mailbox: str, result: CheckResult) -> None:
        with self._lock:
            state = self._mailboxes.setdefault(mailbox, MailboxResults())
            state.version += 1
            state.checks[result.check] = result
            for measurement in result.measurements:
                if isinstance(measurement, FolderMeasurement):
                    state.count_arrivals(measurement)
            if result.success:
                state.last_success[result.check] = result.ended_at
                state.consecutive_failures[result.check] = 0
            else:
                failed_in_a_row = state.consecutive_failures.get(result.check, 0) + 1
                state.consecutive_failures[result.check] = failed_in_a_row
                if result.failure is not None:
                    key = (result.check, result.failure.reason, result.failure.code)
                    state.failures_total[key] += 1

    def latest(self, mailbox: str, check: str) -> CheckResult | None:
        with self._lock:
            state = self._mailboxes.get(mailbox)
            return state.checks.get(check) if state else None

    def retain(self, mailboxes: set[str], checks: dict[str, tuple[str, ...]]) -> None:
        """Forget removed mailboxes and checks that are no longer enabled."""
        with self._lock:
            for name in list(self._mailboxes):
                if name not in mailboxes:
                    del self._mailboxes[name]
                    continue
                enabled = set(checks.get(name, ()))
                state = self._mailboxes[name]
                state.version += 1
                for check in list(state.checks):
                    if check not in enabled:
                        del state.checks[check]
                        state.last_success.pop(check, None)
                        state.consecutive_failures.pop(check, None)
                for key in list(state.failures_total):
                    if key[0] not in enabled:
                        del state.failures_total[key]

    def version(self, mailbox: str) -> int:
        """A number that changes whenever the mailbox's results do (-1: no results)."""
        with self._lock:
            state = self._mailboxes.get(mailbox)
            return state.version if state is not None else -1

    def snapshot_of(self, mailbox: str) -> MailboxSnapshot | None:
        with self._lock:
            state = self._mailboxes.get(mailbox)
            return _snapshot(mailbox, state) if state is not None else None

    def snapshot(self) -> list[MailboxSnapshot]:
        with self._lock:
            return [_snapshot(name, state) for name, state in sorted(self._mailboxes.items())]


def _snapshot(name: str, state: MailboxResults) -> MailboxSnapshot:
    return MailboxSnapshot(
        name=name,
        checks=dict(state.checks),
        last_success=dict(state.last_success),
        failures_total=dict(state.failures_total),
        arrived_total=dict(state.arrived_total),
        consecutive_failures=dict(state.consecutive_failures),
    )
