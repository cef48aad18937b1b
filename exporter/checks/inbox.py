"""`inbox`: message count, unseen count and the oldest message's INTERNALDATE of the inbox,
plus UIDNEXT of the inbox and the Sent folder for the arrival counters.

The inbox's count and UIDNEXT come with the EXAMINE the login already did, the unseen count
with the STATUS it asked just before; the Sent folder costs one STATUS (found by SPECIAL-USE
`\\Sent`, from the folder list remembered across runs: `FolderMemory`).
"""

from __future__ import annotations

from exporter.checks import FolderMeasurement, RunContext
from exporter.failures import CheckFailed
from exporter.imap import SENT


def check_inbox(ctx: RunContext) -> None:
    session = ctx.session()
    inbox = ctx.mailbox.folders.inbox
    if ctx.inbox_unseen_failure is not None:
        raise ctx.inbox_unseen_failure
    unseen = ctx.inbox_unseen
    if unseen is None:  # not asked before the EXAMINE (not in the normal order of checks)
        unseen = session.unseen(inbox)
    if session.selected != inbox or ctx.inbox_status is None:
        ctx.inbox_status = session.examine(inbox)
    status = ctx.inbox_status
    oldest = session.oldest_internaldate(status.messages)
    ctx.record(
        FolderMeasurement(
            folder="inbox",
            messages=status.messages,
            unseen=unseen,
            oldest_timestamp=oldest.timestamp() if oldest is not None else None,
            uidnext=status.uidnext,
            uidvalidity=status.uidvalidity,
        )
    )
    memory = ctx.folder_memory()
    try:
        sent = memory.find(session, SENT, ctx.mailbox.folders.sent)
        if sent is None:  # no Sent folder is no reason to fail the inbox check
            return
        sent_status = session.status(sent)
    except CheckFailed:
        memory.forget()  # renamed or gone: LIST again next run
        raise
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
