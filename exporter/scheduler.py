"""Per-mailbox schedules: first runs spread by name, bounded concurrency, no overlapping runs.

One thread keeps a heap of due times and hands due mailboxes to a thread pool. A mailbox whose
previous run is still going is not started again (no duplicate scheduling); a hung mailbox
occupies one worker until the watchdog aborts it, and never delays another or a scrape.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from exporter.config import Config, MailboxConfig
from exporter.results import CheckResult, ResultStore
from exporter.runner import MailboxRunner, Watchdog, runnable_checks

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    runner: MailboxRunner
    generation: int
    first_due: bool = True  # its first run has not started yet


# After a start or reload, first runs start at most this many per second.
FIRST_RUNS_PER_SECOND = 10.0


class Scheduler:
    def __init__(
        self, store: ResultStore, max_concurrency: int = 16, scheduled: bool = True
    ) -> None:
        """`scheduled=False` is the multi-target mode: mailboxes run only through run_now()."""
        self.store = store
        self.scheduled = scheduled
        self.watchdog = Watchdog()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="check")
        # Scheduled runs and /probe runs share the --checks.max-concurrency slots.
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._entries: dict[str, _Entry] = {}
        # Mailboxes with a run going, by name: a run started under an older config counts too,
        # so a mailbox never runs twice at once (one token cache, one IMAP login at a time).
        self._running: set[str] = set()
        # First runs of a changed config that wait for the old config's run: name -> generation.
        # The old run's end puts them on the heap.
        self._waiting: dict[str, int] = {}
        self._heap: list[tuple[float, int, str]] = []  # (due monotonic, generation, mailbox)
        self._cond = threading.Condition()
        self._stopping = False
        self._generation = 0
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
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
            starting = 0
            for name, mailbox in sorted(wanted.items()):
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
                    # First runs in a stable order by name, at most FIRST_RUNS_PER_SECOND: 1,000
                    # password sign-ins from one address within seconds is what Entra ID
                    # throttles. Later runs keep the phase this gives them.
                    due = now + starting / FIRST_RUNS_PER_SECOND
                    starting += 1
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
                if name in self._running and entry.first_due:
                    # The first run under a new config waits for the old config's run to end.
                    self._waiting[name] = generation
                    continue
                entry.first_due = False
                next_due = max(due + mailbox.interval, now)
                heapq.heappush(self._heap, (next_due, generation, name))
                if name in self._running:
                    log.warning("previous run still going; skipped", extra={"mailbox": name})
                    continue
                self._running.add(name)
            self._pool.submit(self._run, name, entry)

    def run_now(self, name: str, deadline: float) -> bool:
        """Run one mailbox now in the caller's thread (/probe), finishing by `deadline`
        (monotonic). If a run of it is already going, wait for that one instead of starting a
        second. The run takes one of the --checks.max-concurrency slots. Returns False when the
        mailbox is unknown. Raises TimeoutError when no run ended in time."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                return False
            if name in self._running:
                while name in self._running:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(name)
                    self._cond.wait(remaining)
                return True
            self._running.add(name)
        self._run(name, entry, deadline)
        return True

    def _run(self, name: str, entry: _Entry, deadline: float | None = None) -> None:
        def record(result: CheckResult) -> None:
            # Under the scheduler's lock: a reload cannot remove the mailbox between the test
            # and the write, so a late result never brings a removed mailbox back.
            with self._cond:
                if self._entries.get(name) is not entry:
                    return  # the mailbox was removed or its config changed during the run
                self.store.record(name, result)
            log_result(entry.runner.mailbox, result)

        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if not self._slots.acquire(timeout=timeout):
                log.warning(
                    "no free check slot before the probe's deadline", extra={"mailbox": name}
                )
                return
            try:
                entry.runner.run(record, deadline)
            finally:
                self._slots.release()
        except Exception:
            log.exception("mailbox run crashed", extra={"mailbox": name})
        finally:
            with self._cond:
                self._running.discard(name)
                waiting = self._waiting.pop(name, None)
                if waiting is not None:
                    heapq.heappush(self._heap, (time.monotonic(), waiting, name))
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
