"""`junk`: message count and oldest message of the Junk folder (found by SPECIAL-USE first),
and, once an admin has recorded a review (`junk-review --ack`), when that was and how many
Junk messages arrived since (`UID SEARCH UID <UIDNEXT at review>:*`, only when UIDNEXT moved).
"""

from __future__ import annotations

import logging

from exporter.checks import FolderMeasurement, JunkReviewMeasurement, RunContext
from exporter.errors import StateError
from exporter.failures import CheckFailed, fail
from exporter.imap import JUNK, FolderStatus, ImapSession
from exporter.review import load_review, unreviewed_messages

log = logging.getLogger(__name__)


def check_junk(ctx: RunContext) -> None:
    session = ctx.session()
    configured = ctx.mailbox.folders.junk
    memory = ctx.folder_memory()
    folder = memory.find(session, JUNK, configured)
    if folder is None:
        raise fail(
            "folder_missing",
            f"no folder marked \\Junk and none named {configured!r}",
            hint="Set folders.junk to the Junk folder's name in the mailbox's language.",
        )
    try:
        status = session.examine(folder)
        oldest = session.oldest_internaldate(status.messages)
    except CheckFailed:
        memory.forget()  # the remembered name may be stale: LIST again next run
        raise
    ctx.record(
        FolderMeasurement(
            folder="junk",
            messages=status.messages,
            unseen=None,
            oldest_timestamp=oldest.timestamp() if oldest is not None else None,
        )
    )
    _record_review(ctx, session, folder, status)


def _record_review(
    ctx: RunContext, session: ImapSession, folder: str, status: FolderStatus
) -> None:
    """The review metrics; absent until the first `--ack`. An unreadable review file is
    logged, not a failed check: the Junk folder itself was measured fine."""
    try:
        review = load_review(ctx.auth.state_dir, ctx.mailbox.name)
    except StateError as err:
        log.warning(
            "junk review state unreadable", extra={"mailbox": ctx.mailbox.name, "error": str(err)}
        )
        return
    if review is None:
        return
    unreviewed = unreviewed_messages(review, folder, status, session.count_uids_from)
    ctx.record(JunkReviewMeasurement(review.reviewed_at, unreviewed))
