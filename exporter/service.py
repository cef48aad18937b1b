"""The running exporter: the current config, the scheduler, the result store, and reloads.

Reload (SIGHUP or POST /-/reload) loads the file again; a bad config keeps the old one and
sets the reload metric to 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.auth import ensure_state_dir
from exporter.config import Config, load_config
from exporter.errors import ConfigError, StateError
from exporter.failures import pasteable
from exporter.results import ResultStore
from exporter.scheduler import Scheduler
from exporter.statefile import warn_foreign_owned

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Shard:
    """`--shard=I/N`: this replica owns the mailboxes whose hashmod is I modulo N."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise ValueError(f"--shard: {text!r} must be I/N with 0 <= I < N, e.g. 0/3")
        return cls(int(index), int(count))

    def owns(self, mailbox: str) -> bool:
        """Prometheus' own `hashmod` (MD5, last 8 bytes big-endian, modulo N), so a shard
        and a `hashmod` relabelling on the mailbox name pick the same replica."""
        digest = hashlib.md5(mailbox.encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[8:], "big") % self.count == self.index


class Service:
    def __init__(
        self,
        config_path: Path,
        max_concurrency: int = 16,
        shard: Shard | None = None,
        scheduled: bool = True,
    ) -> None:
        self.config_path = config_path
        self.shard = shard
        self.store = ResultStore()
        self.scheduler = Scheduler(self.store, max_concurrency=max_concurrency, scheduled=scheduled)
        self._config: Config | None = None
        self._reload_ok = False
        self._reload_success_time: float | None = None
        self._reload_problems: tuple[str, ...] = ()
        self._reload_failure_time: float | None = None
        self._lock = threading.Lock()
        self._hint_filter = _PasteableHints(self)

    @property
    def config(self) -> Config | None:
        return self._config

    @property
    def ready(self) -> bool:
        return self._config is not None

    @property
    def reload_ok(self) -> bool:
        return self._reload_ok

    @property
    def reload_success_time(self) -> float | None:
        """Unix time the config last loaded successfully (start-up or reload)."""
        return self._reload_success_time

    @property
    def reload_problems(self) -> tuple[str, ...]:
        """The problems of the last reload when it failed; () after a good one."""
        return self._reload_problems

    @property
    def reload_failure_time(self) -> float | None:
        """Unix time of the last failed reload (None when the last reload was good)."""
        return self._reload_failure_time

    def start(self, config: Config) -> None:
        warn_foreign_owned(config.state_dir)  # e.g. a token cache an admin's root `login` wrote
        self._adopt(config)
        _SCHEDULER_LOG.addFilter(self._hint_filter)
        self.scheduler.start()

    def reload(self) -> list[str]:
        """Load the config file again. Returns the problems; [] means it was adopted."""
        with self._lock:
            try:
                config = load_config(self.config_path)
                ensure_state_dir(config.state_dir)
            except ConfigError as err:
                self._failed(err.problems)
                for problem in err.problems:
                    log.error("config reload failed", extra={"problem": problem})
                return err.problems
            except StateError as err:
                self._failed([str(err)])
                log.error("config reload failed", extra={"problem": str(err)})
                return [str(err)]
            self._adopt(config)
            log.info("config reloaded", extra={"mailboxes": len(config.mailboxes)})
            return []

    def _failed(self, problems: list[str]) -> None:
        self._reload_ok = False
        self._reload_problems = tuple(problems)
        self._reload_failure_time = time.time()

    def _adopt(self, config: Config) -> None:
        if self.shard is not None:
            owned = tuple(m for m in config.mailboxes if self.shard.owns(m.name))
            config = dataclasses.replace(config, mailboxes=owned)
        self.scheduler.apply(config)
        self._config = config
        self._reload_ok = True
        self._reload_success_time = time.time()
        self._reload_problems = ()
        self._reload_failure_time = None

    def stop(self) -> None:
        self.scheduler.stop()
        _SCHEDULER_LOG.removeFilter(self._hint_filter)

    def pasteable(self, hint: str, mailbox: str | None) -> str:
        """`hint` with its commands completed with this exporter's config file and `mailbox`."""
        return pasteable(hint, self.config_path, mailbox)


# The logger of the scheduler's "check failed" lines (mailbox, check, reason, code, hint).
_SCHEDULER_LOG = logging.getLogger("exporter.scheduler")


class _PasteableHints(logging.Filter):
    """Completes the commands in a failed check's log line (`hint`) with the config file the
    service runs with and the line's mailbox, as `check` and the landing page do. Only the
    service knows the config file's path; the scheduler that logs does not."""

    def __init__(self, service: Service) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        hint = getattr(record, "hint", None)
        mailbox = getattr(record, "mailbox", None)
        config = self._service.config
        owned = config is not None and any(m.name == mailbox for m in config.mailboxes)
        if isinstance(hint, str) and isinstance(mailbox, str) and owned:
            record.hint = self._service.pasteable(hint, mailbox)
        return True
