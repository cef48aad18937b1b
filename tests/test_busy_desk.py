"""A busy service desk works the inbox while the exporter reads it: no check may fail.

A ticket system keeps the inbox selected read-write, flags, unflags and marks mail read,
files and deletes messages while new mail arrives (:class:`tests.testbed.desk.BusyDesk`).
Dovecot reports every change to the exporter's read-only session with unsolicited
``* N FETCH (FLAGS ...)``, ``* N EXPUNGE`` and ``* N EXISTS`` responses in the middle of its
commands. imapclient 3.x's ``fetch()`` returned those answers for messages it had not asked
for, and the inbox and oversized checks failed as ``protocol`` on most runs.

The exporter's IMAP connection goes through a transparent relay that records the unsolicited
responses on the wire, so the test shows that the condition was really there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import imapclient

from exporter.auth import tls_context
from exporter.checks import FolderMeasurement, OversizedMeasurement
from exporter.config import load_config
from exporter.imap import ImapSession
from exporter.results import CheckResult
from exporter.runner import MailboxRunner, Watchdog
from tests.conftest import write_config
from tests.content import seed_standard
from tests.testbed.desk import BusyDesk
from tests.testbed.exchange_imap import ExchangeImapRelay

RUNS = 25
INTERVAL = 1.0  # seconds, as the measurement


@dataclass
class Tally:
    runs: int = 0
    failed_runs: int = 0
    failures: list[str] = field(default_factory=list)
    inbox_oldest: set[float] = field(default_factory=set)
    junk_oldest: set[float] = field(default_factory=set)
    largest: set[int] = field(default_factory=set)
    oversized_counts: set[int] = field(default_factory=set)
    inbox_counts: set[int] = field(default_factory=set)

    def add(self, results: list[CheckResult]) -> None:
        self.runs += 1
        failed = [r for r in results if not r.success]
        if failed:
            self.failed_runs += 1
        for result in failed:
            assert result.failure is not None
            self.failures.append(
                f"{result.check}: {result.failure.reason} {result.failure.message}"
            )
        for result in results:
            for item in result.measurements:
                if isinstance(item, FolderMeasurement):
                    self._folder(item)
                if isinstance(item, OversizedMeasurement):
                    self.largest.add(item.largest_bytes)
                    self.oversized_counts.add(item.count)

    def _folder(self, item: FolderMeasurement) -> None:
        if item.folder == "inbox":
            self.inbox_counts.add(item.messages)
        oldest = {"inbox": self.inbox_oldest, "junk": self.junk_oldest}.get(item.folder)
        if oldest is not None and item.oldest_timestamp is not None:
            oldest.add(item.oldest_timestamp)


def test_a_busy_desk_fails_no_check(
    make_mailbox: Any, entra: Any, dovecot: Any, ca: Any, tmp_path: Path
) -> None:
    mailbox = make_mailbox("desk")
    expected = seed_standard(dovecot, mailbox.upn)
    before = {f: dovecot.imap_snapshot(mailbox.upn, f) for f in ("INBOX", "Junk Email")}
    relay = ExchangeImapRelay(ca, "127.0.0.1", dovecot.port, personality="dovecot").start()
    try:
        path = write_config(
            tmp_path, entra, dovecot, [mailbox], interval="1s",
            oversized_bytes="100KB", imap={"host": "127.0.0.1", "port": relay.port},
        )  # fmt: skip
        config = load_config(path)
        runner = MailboxRunner(config.mailboxes[0], config.state_dir, Watchdog())
        runner.run(lambda _result: None)  # the first password sign-in, before the desk
        relay.reset_counters()
        tally = Tally()
        desk = BusyDesk(dovecot, mailbox.upn, max_seconds=RUNS * INTERVAL + 30)
        with desk:
            started = time.monotonic()
            for run in range(RUNS):
                tally.add(runner.run(lambda _result: None))
                time.sleep(max(0.0, started + (run + 1) * INTERVAL - time.monotonic()))
        unsolicited = dict(relay.unsolicited)
    finally:
        relay.stop()

    print(
        f"\nimapclient {imapclient.__version__}: {tally.failed_runs}/{tally.runs} runs with a"
        f" failed check; desk: {dict(desk.done)}; unsolicited on the exporter's wire:"
        f" {unsolicited}; failures: {tally.failures[:4]}"
    )
    # The condition was present: the desk changed the inbox all the time, and Dovecot told
    # the exporter's read-only session about it in the middle of its own commands.
    assert desk.done["flagged"] > 100 and desk.done["unflagged"] > 100
    assert desk.done["seen"] > 50 and desk.done["delivered"] > 20
    assert desk.done["moved"] > 5 and desk.done["expunged"] > 5
    assert unsolicited.get(("FETCH", "FETCH"), 0) >= RUNS // 2, unsolicited
    assert sum(n for (kind, _), n in unsolicited.items() if kind == "EXPUNGE") > 0, unsolicited
    assert sum(n for (kind, _), n in unsolicited.items() if kind == "EXISTS") > 0, unsolicited

    # Not one check failed, and the values that the desk does not touch stayed exact.
    assert tally.runs == RUNS
    assert tally.failures == []
    assert tally.failed_runs == 0
    assert tally.inbox_oldest == {expected.inbox_oldest}
    assert tally.junk_oldest == {expected.junk_oldest}
    assert tally.largest == {expected.oversized_largest}
    assert min(tally.oversized_counts) >= expected.oversized_count
    assert min(tally.inbox_counts) >= expected.inbox_messages
    assert max(tally.inbox_counts) > expected.inbox_messages  # new mail arrived meanwhile

    # The desk restored the mailbox: the seeded messages are exactly as before.
    after = {f: dovecot.imap_snapshot(mailbox.upn, f) for f in ("INBOX", "Junk Email")}
    assert after == before


def _session(entra: Any, dovecot: Any, upn: str) -> ImapSession:
    session = ImapSession.connect("127.0.0.1", dovecot.port, tls_context(entra.ca_file), 5.0)
    session.login(upn, entra.mint_access_token(upn))
    return session


def _expunge(dovecot: Any, upn: str, folder: str, uids: list[int]) -> None:
    """Another session (the desk) deletes `uids` for good."""
    other = dovecot.login(upn, dovecot.entra.mint_access_token(upn))
    try:
        other.select_folder(folder)
        other.add_flags(uids, [b"\\Deleted"], silent=True)
        other.uid_expunge(uids)
    finally:
        other.logout()


def test_message_1_expunged_before_the_oldest_is_read(
    make_mailbox: Any, entra: Any, dovecot: Any
) -> None:
    """`FETCH 1` after another session expunged message 1: the oldest is still found."""
    mailbox = make_mailbox("gone")
    expected = seed_standard(dovecot, mailbox.upn)
    uids = sorted(dovecot.imap_snapshot(mailbox.upn, "INBOX"))
    session = _session(entra, dovecot, mailbox.upn)
    try:
        status = session.examine("INBOX")
        assert status.messages == 4
        _expunge(dovecot, mailbox.upn, "INBOX", uids[:1])  # message 1, the printer
        oldest = session.oldest_internaldate(status.messages)
    finally:
        session.logout()
    assert oldest is not None and oldest.timestamp() == expected.inbox_oldest


def test_every_message_expunged_before_the_oldest_is_read(
    make_mailbox: Any, entra: Any, dovecot: Any
) -> None:
    """The folder emptied by another session after EXAMINE: no oldest message, no failure."""
    mailbox = make_mailbox("empty")
    seed_standard(dovecot, mailbox.upn)
    uids = sorted(dovecot.imap_snapshot(mailbox.upn, "INBOX"))
    session = _session(entra, dovecot, mailbox.upn)
    try:
        status = session.examine("INBOX")
        _expunge(dovecot, mailbox.upn, "INBOX", uids)
        oldest = session.oldest_internaldate(status.messages)
        oversized = session.oversized(100_000)
    finally:
        session.logout()
    assert oldest is None
    assert (oversized.count, oversized.largest) == (0, 0)


def test_oldest_message_expunged_meanwhile(make_mailbox: Any, entra: Any, dovecot: Any) -> None:
    """The oldest message (moved in last: the highest UID) expunged after EXAMINE: the answer
    is the oldest message that is still there."""
    mailbox = make_mailbox("oldgone")
    seed_standard(dovecot, mailbox.upn)
    uids = sorted(dovecot.imap_snapshot(mailbox.upn, "INBOX"))
    session = _session(entra, dovecot, mailbox.upn)
    try:
        status = session.examine("INBOX")
        _expunge(dovecot, mailbox.upn, "INBOX", uids[-1:])
        oldest = session.oldest_internaldate(status.messages)
    finally:
        session.logout()
    assert oldest == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_largest_oversized_message_expunged_meanwhile(
    make_mailbox: Any, entra: Any, dovecot: Any
) -> None:
    """The largest oversized message expunged after EXAMINE, before SEARCH LARGER and its
    FETCH: it is neither counted nor the largest."""
    mailbox = make_mailbox("biggone")
    seed_standard(dovecot, mailbox.upn)
    snapshot = dovecot.imap_snapshot(mailbox.upn, "INBOX")
    (largest_uid,) = [uid for uid, info in snapshot.items() if info.size == 300_000]
    session = _session(entra, dovecot, mailbox.upn)
    try:
        session.examine("INBOX")
        _expunge(dovecot, mailbox.upn, "INBOX", [largest_uid])
        found = session.oversized(100_000)
    finally:
        session.logout()
    assert (found.count, found.largest) == (1, 150_000)
