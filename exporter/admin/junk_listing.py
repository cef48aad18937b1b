"""What `junk-review` read of the Junk folder: the messages with their verdicts, in the order
an admin should look at them. Shared by the command and its HTML report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from exporter.admin.verdicts import Assessment, Sender, Verdicts
from exporter.imap import FolderStatus


@dataclass(frozen=True, slots=True)
class JunkMessage:
    uid: int
    received: datetime  # INTERNALDATE
    sender: Sender
    subject: str
    size: int
    verdicts: Verdicts
    assessment: Assessment


@dataclass(frozen=True, slots=True)
class JunkListing:
    mailbox: str
    folder: str
    status: FolderStatus  # of the EXAMINE the listing was read under
    generated_at: datetime
    messages: tuple[JunkMessage, ...]  # likely false positives first
