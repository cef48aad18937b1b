"""`junk`: message count and oldest message of the Junk folder (found by SPECIAL-USE first)."""

from __future__ import annotations

from exporter.checks import FolderMeasurement, RunContext
from exporter.failures import fail
from exporter.imap import JUNK


def check_junk(ctx: RunContext) -> None:
    session = ctx.session()
    configured = ctx.mailbox.folders.junk
    folder = session.find_folder(JUNK, configured)
    if folder is None:
        raise fail(
            "folder_missing",
            f"no folder marked \\Junk and none named {configured!r}",
            hint="Set folders.junk to the Junk folder's name in the mailbox's language.",
        )
    status = session.examine(folder)
    oldest = session.oldest_internaldate(status.messages)
    ctx.record(
        FolderMeasurement(
            folder="junk",
            messages=status.messages,
            unseen=None,
            oldest_timestamp=oldest.timestamp() if oldest is not None else None,
        )
    )
