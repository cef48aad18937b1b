"""Per-mailbox schedules: interval with jitter, bounded concurrency, no overlapping runs.

One thread keeps a heap of due times and hands due mailboxes to a thread pool. A mailbox whose
previous run is still going is not started again (no duplicate scheduling); a hung mailbox
occupies one worker until the watchdog aborts it, and never delays another or a scrape.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from exporter.config import Config, MailboxConfig
from exporter.results import CheckResult, ResultStore
from exporter.runner import MailboxRunner, Watchdog, jitter, runnable_checks

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    runner: MailboxRunner
    generation: int
    running: bool = False


class Scheduler:
    def __init__(
        self, store: ResultStore, max_concurrency: int = 16, scheduled: bool = True
    ) -> None:
        """`scheduled=False` is the multi-target mode: mailboxes run only through run_now()."""
        self.store = store
        self.scheduled = scheduled
        self.watchdog = Watchdog()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="check")
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []  # (due monotonic, generation, mailbox)
        self._cond = threading.Condition()
        self._stopping = False
        self._generation = 0
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def apply(self, config: Config) -> None:
        """Adopt a (re)loaded config: new and changed mailboxes start afresh, removed ones go."""
        with self._cond:
            wanted = {m.name: m for m in config.mailboxes}
            for name in list(self._entries):
                if name not in wanted:
                    del self._entries[name]
            now = time.monotonic()
            for name, mailbox in wanted.items():
                entry = self._entries.get(name)
                if (
                    entry is not None
                    and entry.runner.mailbox == mailbox
                    and entry.runner.state_dir == config.state_dir
                ):
                    continue
                self._generation += 1
                runner = MailboxRunner(mailbox, config.state_dir, self.watchdog)
                self._entries[name] = _Entry(runner, self._generation)
                if self.scheduled:
                    due = now + jitter(mailbox.interval, self._rng)
                    heapq.heappush(self._heap, (due, self._generation, name))
            self.store.retain(set(wanted), {m.name: runnable_checks(m) for m in config.mailboxes})
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not self._heap:
                    self._cond.wait()
                    continue
                due, generation, name = self._heap[0]
                now = time.monotonic()
                if due > now:
                    self._cond.wait(due - now)
                    continue
                heapq.heappop(self._heap)
                entry = self._entries.get(name)
                if entry is None or entry.generation != generation:
                    continue  # removed or replaced by a reload
                mailbox = entry.runner.mailbox
                next_due = max(due + mailbox.interval, now)
                heapq.heappush(self._heap, (next_due, generation, name))
                if entry.running:
                    log.warning("previous run still going; skipped", extra={"mailbox": name})
                    continue
                entry.running = True
            self._pool.submit(self._run, name, entry)

    def run_now(self, name: str, deadline: float) -> bool:
        """Run one mailbox now in the caller's thread (/probe), finishing by `deadline`
        (monotonic). If a run of it is already going, wait for that one instead of starting a
        second. Returns False when the mailbox is unknown. Raises TimeoutError when the
        running one did not end in time."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                return False
            if entry.running:
                while entry.running:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(name)
                    self._cond.wait(remaining)
                return True
            entry.running = True
        self._run(name, entry, deadline)
        return True

    def _run(self, name: str, entry: _Entry, deadline: float | None = None) -> None:
        def record(result: CheckResult) -> None:
            with self._cond:
                current = self._entries.get(name)
                if current is not entry:
                    return  # the mailbox was removed or its config changed during the run
            self.store.record(name, result)
            log_result(entry.runner.mailbox, result)

        try:
            entry.runner.run(record, deadline)
        except Exception:
            log.exception("mailbox run crashed", extra={"mailbox": name})
        finally:
            with self._cond:
                entry.running = False
                self._cond.notify_all()


def log_result(mailbox: MailboxConfig, result: CheckResult) -> None:
    """One line per failed check (mailbox, check, reason, code, hint); passes at DEBUG."""
    failure = result.failure
    if failure is None:
        log.debug(
            "check passed",
            extra={
                "mailbox": mailbox.name,
                "check": result.check,
                "duration_seconds": round(result.duration_seconds, 3),
            },
        )
        return
    level = logging.DEBUG if failure.reason == "dependency" else logging.WARNING
    log.log(
        level,
        "check failed",
        extra={
            "mailbox": mailbox.name,
            "check": result.check,
            "reason": failure.reason,
            "code": failure.code,
            "error": failure.message,
            "hint": failure.remediation,
        },
    )
