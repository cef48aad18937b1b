"""`oversized`: inbox messages larger than the threshold, and (with `--move-to F --yes`) moving
them to a holding folder so the service desk can fetch again.

Found server-side (`SEARCH LARGER`), described by BODY.PEEK of From/Subject under EXAMINE. The
move SELECTs the inbox only when asked with `--yes`, creates the folder when it is missing and
moves exactly the messages listed (not ones that grew oversized in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from exporter.admin.common import (
    EXIT_OK,
    EXIT_USAGE,
    admin_session,
    clip,
    human_size,
    iso,
    report_failure,
    table,
    write_json,
)
from exporter.admin.imap_session import AdminImapSession, MoveResult
from exporter.admin.verdicts import decoded, parse_headers, sender_of
from exporter.config import Config, MailboxConfig
from exporter.failures import CheckFailed
from exporter.imap import ImapSession


@dataclass(frozen=True, slots=True)
class OversizedMessage:
    uid: int
    size: int
    received: datetime
    sender: str
    subject: str


@dataclass(frozen=True, slots=True)
class OversizedOptions:
    output: str = "table"  # table, json
    move_to: str | None = None
    yes: bool = False


@dataclass(frozen=True, slots=True)
class MoveOutcome:
    folder: str
    created: bool  # the folder was (or would be) created
    result: MoveResult | None  # None: not moved (no --yes, or nothing to move)


def list_oversized(session: ImapSession, inbox: str, threshold: int) -> list[OversizedMessage]:
    session.examine(inbox)
    uids = session.search_uids(["LARGER", threshold])
    found = []
    for fetched in session.fetch_headers(uids, ("From", "Subject")):
        header = parse_headers(fetched.header)
        found.append(
            OversizedMessage(
                uid=fetched.uid,
                size=fetched.size,
                received=fetched.internaldate,
                sender=sender_of(header).display,
                subject=decoded(header, "Subject"),
            )
        )
    return sorted(found, key=lambda m: (-m.size, m.uid))


def move_oversized(
    session: AdminImapSession,
    inbox: str,
    messages: list[OversizedMessage],
    folder: str,
    *,
    yes: bool,
) -> MoveOutcome:
    """Move `messages` from the inbox to `folder` (created when missing), only with `yes`."""
    existing = {name.casefold(): name for name in session.folder_names()}
    target = existing.get(folder.casefold(), folder)
    created = folder.casefold() not in existing
    if not yes or not messages:
        return MoveOutcome(target, created and bool(messages), None)
    if created:
        session.create_folder(folder)
    session.select(inbox)
    result = session.move([m.uid for m in messages], target)
    return MoveOutcome(target, created, result)


def run(
    config: Config,
    mailbox: MailboxConfig,
    options: OversizedOptions,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    if options.yes and options.move_to is None:
        stderr.write("oversized: --yes goes with --move-to FOLDER\n")
        return EXIT_USAGE
    inbox = mailbox.folders.inbox
    if options.move_to is not None and options.move_to.casefold() == inbox.casefold():
        stderr.write(f"oversized: --move-to {options.move_to} is the inbox itself\n")
        return EXIT_USAGE
    outcome: MoveOutcome | None = None
    try:
        with admin_session(config, mailbox) as session:
            messages = list_oversized(session, inbox, mailbox.oversized_bytes)
            if options.move_to is not None:
                outcome = move_oversized(session, inbox, messages, options.move_to, yes=options.yes)
    except CheckFailed as err:
        return report_failure(err, "oversized", stderr, config, mailbox)
    if options.output == "json":
        write_json(document(mailbox, messages, outcome), stdout)
    else:
        stdout.write(listing_table(mailbox, messages) + "\n")
    if outcome is not None:
        notes = stdout if options.output == "table" else stderr
        notes.write(move_text(inbox, messages, outcome) + "\n")
    return EXIT_OK


def listing_table(mailbox: MailboxConfig, messages: list[OversizedMessage]) -> str:
    head = (
        f"{len(messages)} message(s) in {mailbox.folders.inbox} of {mailbox.name} larger than "
        f"{human_size(mailbox.oversized_bytes)}"
    )
    if not messages:
        return head
    rows = [("UID", "SIZE", "RECEIVED", "FROM", "SUBJECT")]
    rows += [
        (
            str(m.uid),
            human_size(m.size),
            iso(m.received),
            clip(m.sender or "-", 40),
            clip(m.subject or "-", 60),
        )
        for m in messages
    ]
    return head + "\n\n" + table(rows)


def move_text(inbox: str, messages: list[OversizedMessage], outcome: MoveOutcome) -> str:
    if not messages:
        return f"Nothing to move to {outcome.folder}."
    uids = ", ".join(str(m.uid) for m in messages)
    if outcome.result is None:
        create = f" (creating the folder {outcome.folder})" if outcome.created else ""
        return (
            f"Would move {len(messages)} message(s) (UID {uids}) from {inbox} to "
            f"{outcome.folder}{create}; nothing changed: add --yes to move them."
        )
    created = f"created {outcome.folder}, " if outcome.created else ""
    return (
        f"Moved {len(outcome.result.uids)} message(s) (UID {uids}) from {inbox} to "
        f"{outcome.folder} ({created}{outcome.result.method})."
    )


def document(
    mailbox: MailboxConfig, messages: list[OversizedMessage], outcome: MoveOutcome | None
) -> dict[str, Any]:
    return {
        "mailbox": mailbox.name,
        "folder": mailbox.folders.inbox,
        "threshold_bytes": mailbox.oversized_bytes,
        "messages": [
            {
                "uid": m.uid,
                "size_bytes": m.size,
                "received": iso(m.received),
                "received_timestamp_seconds": m.received.timestamp(),
                "from": m.sender,
                "subject": m.subject,
            }
            for m in messages
        ],
        "move": None
        if outcome is None
        else {
            "to": outcome.folder,
            "create_folder": outcome.created,
            "moved": outcome.result is not None,
            "uids": list(outcome.result.uids) if outcome.result else [m.uid for m in messages],
            "method": outcome.result.method if outcome.result else None,
        },
    }
