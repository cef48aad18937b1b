"""Known mailbox content for the happy-path tests, and the values the exporter must report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.testbed import make_message


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Expected:
    inbox_messages: int = 4
    inbox_unseen: int = 2
    inbox_oldest: float = ts("2026-09-15T08:30:00").timestamp()
    oversized_threshold: int = 100_000
    oversized_count: int = 2
    oversized_largest: int = 300_000
    junk_messages: int = 2
    junk_oldest: float = ts("2026-11-01T12:00:00").timestamp()


def seed_standard(dovecot: Any, upn: str) -> Expected:
    """Four inbox messages (two unseen, two over 100 kB, the oldest delivered last so that it has
    the highest UID, like a message rescued from Junk) and two Junk messages."""
    inbox = [
        ("Printer on floor 3", 2_000, "2026-11-20T09:00:00", ["\\Seen"]),
        ("Screenshot of the error", 150_000, "2026-11-25T10:00:00", []),
        ("Scanned contract", 300_000, "2026-11-26T11:00:00", []),
        ("Rescued from Junk: VPN broken", 3_000, "2026-09-15T08:30:00", ["\\Seen"]),
    ]
    for subject, size, date, flags in inbox:
        message = make_message(subject, "customer@fabrikam.example", size=size)
        dovecot.deliver(upn, "INBOX", message, internaldate=ts(date), flags=flags)
    for subject, date in [("You won", "2026-11-01T12:00:00"), ("Invoice?", "2026-11-27T07:00:00")]:
        message = make_message(subject, "spam@spam.example", size=1_500)
        dovecot.deliver(upn, "Junk Email", message, internaldate=ts(date))
    return Expected()
