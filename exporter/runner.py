"""One mailbox's run: the checks in table order on one IMAP connection, with backoff and deadlines.

`MailboxRunner` lives as long as its mailbox's config is unchanged: it keeps the MSAL
application, the TLS context and the credential-failure backoff between runs.
"""

from __future__ import annotations

import heapq
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from exporter.auth import MailboxAuth, tls_context
from exporter.backoff import SIGN_IN_STEPS, BackoffStore, secret_key
from exporter.checks import CHECKS, FolderMemory, RunContext
from exporter.config import MailboxConfig
from exporter.errors import ExporterError
from exporter.failures import CREDENTIAL_REASONS, CheckFailed, Failure, fail, scrub
from exporter.results import CheckResult

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Watchdog:
    """Aborts runs that overrun their check's deadline, from one thread for all mailboxes.

    Arming and disarming cost no wake-up of that thread unless the new deadline is earlier
    than the one it sleeps until (each check of each run arms it: 1,000 mailboxes made it wake
    about 200 times a second, 7 % of the process's CPU). A disarmed alarm leaves the heap when
    it reaches the top; the thread then wakes at most once for it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._cond = threading.Condition()
        self._counter = 0
        self._sleeping_until = float("inf")  # the deadline the thread waits for
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._thread.start()

    def arm(self, deadline: float, on_expiry: Callable[[], None]) -> Callable[[], None]:
        """Call `on_expiry` at `deadline` (monotonic) unless the returned disarm runs first."""
        alarm = _Alarm(on_expiry)
        with self._cond:
            self._counter += 1
            heapq.heappush(self._heap, (deadline, self._counter, alarm))
            if deadline < self._sleeping_until:
                self._cond.notify()
        return alarm.cancel

    def _loop(self) -> None:
        heap = self._heap
        while True:
            with self._cond:
                while True:
                    while heap and heap[0][2].cancelled:
                        heapq.heappop(heap)
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        break
                    self._sleeping_until = heap[0][0] if heap else float("inf")
                    self._cond.wait(self._sleeping_until - now if heap else None)
                self._sleeping_until = float("-inf")  # awake: arm() need not notify
                alarm = heapq.heappop(heap)[2]
            alarm.fire()


class _Alarm:
    """One armed deadline: its callback, until cancelled. Cancelling drops the callback at once,
    so a disarmed alarm waiting in the heap holds no run's connections or context."""

    __slots__ = ("_on_expiry",)

    def __init__(self, on_expiry: Callable[[], None]) -> None:
        self._on_expiry: Callable[[], None] | None = on_expiry

    @property
    def cancelled(self) -> bool:
        return self._on_expiry is None

    def cancel(self) -> None:
        self._on_expiry = None  # one attribute store: atomic under the GIL

    def fire(self) -> None:
        on_expiry, self._on_expiry = self._on_expiry, None
        if on_expiry is None:
            return
        try:
            on_expiry()
        except Exception:
            log.exception("watchdog callback failed")


class MailboxRunner:
    def __init__(
        self,
        mailbox: MailboxConfig,
        state_dir: Path,
        watchdog: Watchdog,
        clock: Clock = time.time,
        *,
        force: bool = False,
    ) -> None:
        """`force` (`check --force`): try a sign-in the credential backoff holds back."""
        self.mailbox = mailbox
        self.state_dir = state_dir
        self.watchdog = watchdog
        self.clock = clock
        self.backoff = BackoffStore(state_dir, mailbox.name)
        self.folders = FolderMemory()  # Junk and Sent found once per config, not per run
        self.force = force
        self._auth: MailboxAuth | None = None
        self._tls: ssl.SSLContext | None = None

    @property
    def auth(self) -> MailboxAuth:
        """The MSAL side, built on first use (a broken ca_file or state_dir fails a run, not
        the exporter)."""
        if self._auth is None:
            self._auth = MailboxAuth(self.mailbox, self.state_dir)
        return self._auth

    def _prepare(self) -> Failure | None:
        try:
            if self._tls is None:
                self._tls = tls_context(self.mailbox.ca_file)
            _ = self.auth
        except (OSError, ssl.SSLError, ExporterError) as err:
            reason = "tls" if isinstance(err, ssl.SSLError) else "unknown"
            return Failure(reason, "", scrub(f"cannot set up the mailbox: {err}"))
        return None

    def run(
        self, on_result: Callable[[CheckResult], None], deadline: float | None = None
    ) -> list[CheckResult]:
        """Run every enabled check once, in table order, on one IMAP connection.

        `deadline` (monotonic) bounds the whole run on top of each check's timeout: /probe
        passes the scrape's timeout so that Prometheus always gets an answer in time."""
        setup_failure = self._prepare()
        results: list[CheckResult] = []
        if setup_failure is not None:
            for name in runnable_checks(self.mailbox):
                now = self.clock()
                result = CheckResult(name, False, 0.0, now, setup_failure)
                results.append(result)
                on_result(result)
            return results
        assert self._auth is not None and self._tls is not None
        ctx = RunContext(self.mailbox, self._auth, self._tls, folders=self.folders)
        passed: set[str] = set()
        key = secret_key(self.mailbox)
        try:
            for name in runnable_checks(self.mailbox):
                result = self._run_one(ctx, name, passed, key, deadline)
                if result.success:
                    passed.add(name)
                results.append(result)
                on_result(result)
        finally:
            if ctx.imap is not None:
                # LOGOUT waits for the server too: a server that trickles bytes never trips
                # the socket's read timeout, so the watchdog bounds it like any check.
                disarm = self.watchdog.arm(time.monotonic() + self.mailbox.timeout, ctx.imap.abort)
                try:
                    ctx.imap.logout()
                finally:
                    disarm()
        return results

    def _run_one(
        self,
        ctx: RunContext,
        name: str,
        passed: set[str],
        key: str,
        deadline: float | None = None,
    ) -> CheckResult:
        spec = CHECKS[name]
        start_wall = self.clock()
        start = time.monotonic()
        sign_in = name in SIGN_IN_STEPS
        held_back = None
        if sign_in and not self.force:
            held_back = self.backoff.holds_back(name, start_wall, key)
        ctx.measurements = []
        failure: Failure | None = None
        limit = start + self.mailbox.timeout
        if deadline is not None:
            limit = min(limit, deadline)
        if spec.needs is not None and spec.needs not in passed:
            failure = Failure("dependency", "", f"{spec.needs} did not pass in this run")
        elif limit <= start:
            failure = Failure("timeout", "", "no time left before the probe's deadline")
        elif held_back is not None:
            failure = held_back
        else:
            aborted = threading.Event()

            def abort() -> None:
                aborted.set()
                for break_connection in ctx.aborters:
                    break_connection()
                ctx.auth.abort()

            ctx.deadline = limit
            disarm = self.watchdog.arm(limit, abort)
            try:
                spec.run(ctx)
            except CheckFailed as err:
                failure = err.failure
            except Exception as err:
                log.debug("check raised", exc_info=True)
                failure = Failure("unknown", "", scrub(f"{type(err).__name__}: {err}"))
            finally:
                disarm()
            if aborted.is_set() and failure is not None:
                failure = fail("timeout", f"no result within {limit - start:.3g}s").failure
            if sign_in:
                if failure is None:
                    self.backoff.passed(name)
                elif failure.reason in CREDENTIAL_REASONS or failure.retry_after:
                    self.backoff.failed(name, failure, start_wall, self.mailbox.interval, key)
        duration = time.monotonic() - start
        return CheckResult(
            check=name,
            success=failure is None,
            duration_seconds=duration,
            ended_at=start_wall + duration,
            failure=failure,
            measurements=tuple(ctx.measurements),
        )


def runnable_checks(mailbox: MailboxConfig) -> tuple[str, ...]:
    """The mailbox's enabled checks that this release implements."""
    return tuple(name for name in mailbox.checks if name in CHECKS)
