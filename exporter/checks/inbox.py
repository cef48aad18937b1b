"""`inbox`: message count, unseen count and the oldest message's INTERNALDATE of the inbox,
plus UIDNEXT of the inbox and the Sent folder for the arrival counters.

The inbox's UIDNEXT comes with the EXAMINE the login already did; the Sent folder costs one
STATUS (found by SPECIAL-USE `\\Sent`; the folder list is reused by the junk check).
"""

from __future__ import annotations

from exporter.checks import FolderMeasurement, RunContext
from exporter.imap import SENT


def check_inbox(ctx: RunContext) -> None:
    session = ctx.session()
    inbox = ctx.mailbox.folders.inbox
    if session.selected != inbox or ctx.inbox_status is None:
        ctx.inbox_status = session.examine(inbox)
    status = ctx.inbox_status
    oldest = session.oldest_internaldate(status.messages)
    ctx.record(
        FolderMeasurement(
            folder="inbox",
            messages=status.messages,
            unseen=session.unseen(inbox),
            oldest_timestamp=oldest.timestamp() if oldest is not None else None,
            uidnext=status.uidnext,
            uidvalidity=status.uidvalidity,
        )
    )
    sent = session.find_folder(SENT, ctx.mailbox.folders.sent)
    if sent is not None:  # no Sent folder is no reason to fail the inbox check
        sent_status = session.status(sent)
        ctx.record(
            FolderMeasurement(
                folder="sent",
                messages=sent_status.messages,
                unseen=None,
                oldest_timestamp=None,
                uidnext=sent_status.uidnext,
                uidvalidity=sent_status.uidvalidity,
            )
        )
