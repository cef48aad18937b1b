"""What the checks measure, each kind in one place: its metric families (name, type, help,
labels), its samples, its fields in `check --output json` and its line in `check`'s table.

Adding a metric is adding (or extending) one class here and recording it from the check that
measures it (`ctx.record(...)`); the collector and the CLI only call these methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

# " From the latest scheduled run, not from the scrape." (the contract's HELP wording)
LATEST = " From the latest scheduled run, not from the scrape."


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without the `_total` of a counter
    kind: str  # gauge, counter
    help: str
    labels: tuple[str, ...]


Sample = tuple[str, tuple[str, ...], float]  # family, label values (in Family.labels order), value


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return "none"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class TokenMeasurement:
    expires_at: float

    FAMILIES: ClassVar[tuple[Family, ...]] = (
        Family(
            "o365_mailbox_token_expiry_timestamp_seconds",
            "gauge",
            "Expiry of the access token obtained by the latest token refresh." + LATEST,
            ("mailbox",),
        ),
    )

    def samples(self, mailbox: str) -> Iterator[Sample]:
        yield "o365_mailbox_token_expiry_timestamp_seconds", (mailbox,), self.expires_at

    def as_json(self) -> dict[str, Any]:
        return {"token_expiry_timestamp_seconds": round(self.expires_at)}

    def summary(self) -> str:
        return f"token valid until {_iso(self.expires_at)}"


@dataclass(frozen=True, slots=True)
class FolderMeasurement:
    folder: str  # the role: inbox, junk, sent
    messages: int
    unseen: int | None
    oldest_timestamp: float | None
    uidnext: int | None = None  # with uidvalidity: the arrival counter's input
    uidvalidity: int | None = None

    FAMILIES: ClassVar[tuple[Family, ...]] = (
        Family(
            "o365_mailbox_folder_messages",
            "gauge",
            "Messages in the folder (by role)." + LATEST,
            ("mailbox", "folder"),
        ),
        Family(
            "o365_mailbox_folder_unseen_messages",
            "gauge",
            "Messages without the \\Seen flag." + LATEST,
            ("mailbox", "folder"),
        ),
        Family(
            "o365_mailbox_folder_oldest_message_timestamp_seconds",
            "gauge",
            "INTERNALDATE of the folder's oldest message; absent when empty." + LATEST,
            ("mailbox", "folder"),
        ),
    )

    def samples(self, mailbox: str) -> Iterator[Sample]:
        labels = (mailbox, self.folder)
        yield "o365_mailbox_folder_messages", labels, self.messages
        if self.unseen is not None:
            yield "o365_mailbox_folder_unseen_messages", labels, self.unseen
        if self.oldest_timestamp is not None:
            family = "o365_mailbox_folder_oldest_message_timestamp_seconds"
            yield family, labels, self.oldest_timestamp

    def as_json(self) -> dict[str, Any]:
        """The Sent folder nests under its key (it shares the inbox check's result)."""
        fields = {
            "folder": self.folder,
            "messages": self.messages,
            "unseen_messages": self.unseen,
            "oldest_message_timestamp_seconds": self.oldest_timestamp,
            "uidnext": self.uidnext,
            "uidvalidity": self.uidvalidity,
        }
        return {"sent": fields} if self.folder == "sent" else fields

    def summary(self) -> str:
        if self.folder == "sent":
            return f"sent folder: {self.messages} messages"
        unseen = f", {self.unseen} unseen" if self.unseen is not None else ""
        return f"{self.messages} messages{unseen}, oldest {_iso(self.oldest_timestamp)}"


@dataclass(frozen=True, slots=True)
class OversizedMeasurement:
    folder: str
    count: int
    largest_bytes: int

    FAMILIES: ClassVar[tuple[Family, ...]] = (
        Family(
            "o365_mailbox_oversized_messages",
            "gauge",
            "Messages larger than the oversized threshold." + LATEST,
            ("mailbox", "folder"),
        ),
        Family(
            "o365_mailbox_oversized_largest_bytes",
            "gauge",
            "Size of the largest oversized message, 0 when none." + LATEST,
            ("mailbox", "folder"),
        ),
    )

    def samples(self, mailbox: str) -> Iterator[Sample]:
        yield "o365_mailbox_oversized_messages", (mailbox, self.folder), self.count
        yield "o365_mailbox_oversized_largest_bytes", (mailbox, self.folder), self.largest_bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "oversized_messages": self.count,
            "largest_bytes": self.largest_bytes,
        }

    def summary(self) -> str:
        return f"{self.count} oversized, largest {self.largest_bytes} bytes"


@dataclass(frozen=True, slots=True)
class TlsMeasurement:
    endpoint: str  # imap, smtp
    not_after: float  # the server certificate's notAfter, unix time

    FAMILIES: ClassVar[tuple[Family, ...]] = (
        Family(
            "o365_mailbox_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of the server certificate seen in the latest run's TLS handshake.",
            ("mailbox", "endpoint"),
        ),
    )

    def samples(self, mailbox: str) -> Iterator[Sample]:
        family = "o365_mailbox_tls_certificate_expiry_timestamp_seconds"
        yield family, (mailbox, self.endpoint), self.not_after

    def as_json(self) -> dict[str, Any]:
        return {"tls_certificate_expiry_timestamp_seconds": round(self.not_after)}

    def summary(self) -> str:
        return f"server certificate valid until {_iso(self.not_after)}"


@dataclass(frozen=True, slots=True)
class CredentialMeasurement:
    kind: str  # certificate, client_secret
    expires_at: float

    FAMILIES: ClassVar[tuple[Family, ...]] = (
        Family(
            "o365_mailbox_credential_expiry_timestamp_seconds",
            "gauge",
            "Expiry of the mailbox's credential: kind=certificate from certificate_file, "
            "kind=client_secret from auth.client_secret_expires.",
            ("mailbox", "kind"),
        ),
    )

    def samples(self, mailbox: str) -> Iterator[Sample]:
        family = "o365_mailbox_credential_expiry_timestamp_seconds"
        yield family, (mailbox, self.kind), self.expires_at

    def as_json(self) -> dict[str, Any]:
        return {"credential_expiry_timestamp_seconds": {self.kind: round(self.expires_at)}}

    def summary(self) -> str:
        return f"{self.kind.replace('_', ' ')} expires {_iso(self.expires_at)}"


@dataclass(frozen=True, slots=True)
class JunkReviewMeasurement:
    reviewed_at: float  # unix time of the latest `junk-review --ack`
    unreviewed: int  # Junk messages that arrived since (by UID)

    FAMILIES: ClassVar[tuple[Family, ...]] = (
        Family(
            "o365_mailbox_junk_last_review_timestamp_seconds",
            "gauge",
            "Unix time an admin last recorded a Junk review (junk-review --ack); absent until one.",
            ("mailbox",),
        ),
        Family(
            "o365_mailbox_junk_unreviewed_messages",
            "gauge",
            "Junk messages that arrived since the latest recorded review (by UID)." + LATEST,
            ("mailbox",),
        ),
    )

    def samples(self, mailbox: str) -> Iterator[Sample]:
        yield "o365_mailbox_junk_last_review_timestamp_seconds", (mailbox,), self.reviewed_at
        yield "o365_mailbox_junk_unreviewed_messages", (mailbox,), self.unreviewed

    def as_json(self) -> dict[str, Any]:
        return {
            "junk_last_review_timestamp_seconds": round(self.reviewed_at),
            "junk_unreviewed_messages": self.unreviewed,
        }

    def summary(self) -> str:
        return f"reviewed {_iso(self.reviewed_at)}, {self.unreviewed} unreviewed since"


Measurement = (
    TokenMeasurement
    | FolderMeasurement
    | OversizedMeasurement
    | TlsMeasurement
    | CredentialMeasurement
    | JunkReviewMeasurement
)
# Every kind, for the collector's list of families (HELP/TYPE even before the first sample).
MEASUREMENTS: tuple[type[Measurement], ...] = (
    TokenMeasurement,
    FolderMeasurement,
    OversizedMeasurement,
    CredentialMeasurement,
    TlsMeasurement,
    JunkReviewMeasurement,
)
