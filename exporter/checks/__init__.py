"""The checks: one function per check with one signature, and an explicit name -> check table.

A check takes the run's `RunContext`, does its network work through `auth`/`imap`/`smtp`,
records what it measured with `ctx.record(...)` as soon as it knows it (so a TLS certificate's
expiry is kept even when the login after the handshake fails), and returns None or raises
`CheckFailed`. Checks run in the table's order; a check whose prerequisite did not pass is
reported as failed with reason `dependency`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.auth import MailboxAuth, Token
from exporter.checks.measurements import (
    CredentialMeasurement,
    FolderMeasurement,
    JunkReviewMeasurement,
    Measurement,
    OversizedMeasurement,
    TlsMeasurement,
    TokenMeasurement,
)
from exporter.config import MailboxConfig
from exporter.failures import CheckFailed
from exporter.imap import FolderStatus, ImapSession, pick_folder

__all__ = [
    "CHECKS",
    "CheckSpec",
    "CredentialMeasurement",
    "FolderMeasurement",
    "FolderMemory",
    "JunkReviewMeasurement",
    "Measurement",
    "OversizedMeasurement",
    "RunContext",
    "TlsMeasurement",
    "TokenMeasurement",
]


class FolderMemory:
    """Where Junk and Sent are, as one LIST found them, kept across the runs of one mailbox
    config (the folder list of a mailbox hardly ever changes; a LIST per run is a round trip
    and, on a big mailbox, the largest answer of the run).

    Listed again when a folder role is not found in the remembered list (within the same run,
    once), and in the next run after a folder check failed (`forget`)."""

    def __init__(self) -> None:
        self.listed: list[tuple[tuple[bytes, ...], str]] | None = None

    def find(self, session: ImapSession, special_use: bytes, configured: str) -> str | None:
        remembered = self.listed is not None
        if self.listed is None:
            self.listed = list(session.list_folders())
        name = pick_folder(self.listed, special_use, configured)
        if name is None and remembered:  # created since? ask the server once
            self.listed = list(session.list_folders())
            name = pick_folder(self.listed, special_use, configured)
        if name is None:
            self.listed = None  # a missing folder is looked for again next run
        return name

    def forget(self) -> None:
        self.listed = None


@dataclass
class RunContext:
    """What one mailbox run shares between its checks. Lives for one run only (`folders`
    outlives it: see FolderMemory)."""

    mailbox: MailboxConfig
    auth: MailboxAuth
    tls: ssl.SSLContext
    token: Token | None = None
    imap: ImapSession | None = None
    inbox_status: FolderStatus | None = None
    # STATUS INBOX (UNSEEN), asked by imap_login before its EXAMINE (a STATUS of the selected
    # mailbox is a client bug to Dovecot); a failure of it is the inbox check's to report.
    inbox_unseen: int | None = None
    inbox_unseen_failure: CheckFailed | None = None
    # Outlives the run: the runner keeps one per config (see FolderMemory).
    folders: FolderMemory = field(default_factory=lambda: FolderMemory())
    measurements: list[Measurement] = field(default_factory=list)  # of the running check
    # Called from the watchdog's thread when a check overruns: each breaks one connection.
    aborters: list[Callable[[], None]] = field(default_factory=list)
    deadline: float = float("inf")  # monotonic end of the running check (timeout or probe)

    def folder_memory(self) -> FolderMemory:
        return self.folders

    def socket_timeout(self) -> float:
        """Per-operation socket timeout: the check's time left, so that even a step the
        watchdog cannot reach (a TLS handshake or greeting inside a constructor) ends in time."""
        return max(0.05, min(self.mailbox.timeout, self.deadline - time.monotonic()))

    def record(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)

    def session(self) -> ImapSession:
        assert self.imap is not None, "imap_login runs before every IMAP check"
        return self.imap


CheckFunc = Callable[[RunContext], None]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    run: CheckFunc
    needs: str | None  # the check that must have passed in this run first
    default: bool = True  # enabled when a mailbox lists no `checks` (smtp_login is opt-in)


def _table() -> dict[str, CheckSpec]:
    from exporter.checks import imap_login, inbox, junk, oversized, smtp_login, token

    return {
        "token": CheckSpec(token.check_token, needs=None),
        "imap_login": CheckSpec(imap_login.check_imap_login, needs="token"),
        "inbox": CheckSpec(inbox.check_inbox, needs="imap_login"),
        "oversized": CheckSpec(oversized.check_oversized, needs="imap_login"),
        "junk": CheckSpec(junk.check_junk, needs="imap_login"),
        "smtp_login": CheckSpec(smtp_login.check_smtp_login, needs="token", default=False),
    }


# The one list of checks: their names and order, what each needs, the default set. The config
# loader validates a mailbox's `checks` against it (exporter.config.check_table()).
CHECKS: dict[str, CheckSpec] = _table()
