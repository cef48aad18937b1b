"""`inbox`: message count, unseen count and the oldest message's INTERNALDATE."""

from __future__ import annotations

from exporter.checks import FolderMeasurement, Measurement, RunContext


def check_inbox(ctx: RunContext) -> Measurement | None:
    session = ctx.session()
    inbox = ctx.mailbox.folders.inbox
    if session.selected != inbox or ctx.inbox_status is None:
        ctx.inbox_status = session.examine(inbox)
    messages = ctx.inbox_status.messages
    oldest = session.oldest_internaldate(messages)
    return FolderMeasurement(
        folder="inbox",
        messages=messages,
        unseen=session.unseen(inbox),
        oldest_timestamp=oldest.timestamp() if oldest is not None else None,
    )
