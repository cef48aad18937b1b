"""`junk-review`: every message of the Junk folder with its spam verdicts, likely real mail first.

One IMAP session: the last `KNOWN_SENDER_WINDOW` inbox messages' From fields (who writes to
the desk), then the Junk folder's headers - all by BODY.PEEK under EXAMINE, so nothing is
marked read. `--ack` records the review (UIDVALIDITY and UIDNEXT of the Junk folder as listed)
for the exporter's review metrics. `--rescue UID,... --yes` moves exactly those messages back
to the inbox; without `--yes` it only says what it would do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from exporter.admin.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    admin_session,
    clip,
    human_size,
    iso,
    report_failure,
    table,
    write_json,
)
from exporter.admin.imap_session import AdminImapSession, MoveResult
from exporter.admin.junk_listing import JunkListing, JunkMessage
from exporter.admin.report_html import render_report
from exporter.admin.verdicts import (
    ASSESSMENT_ORDER,
    HEADER_FIELDS,
    KnownSenders,
    assess,
    decoded,
    parse_headers,
    sender_of,
    verdicts_of,
)
from exporter.config import Config, MailboxConfig
from exporter.errors import StateError
from exporter.failures import CheckFailed, fail
from exporter.imap import JUNK, ImapSession
from exporter.review import ReviewState, review_path, save_review

KNOWN_SENDER_WINDOW = 500  # newest inbox messages whose senders count as "seen in the inbox"


@dataclass(frozen=True, slots=True)
class ReviewOptions:
    output: str = "table"  # table, json, html
    ack: bool = False
    rescue: tuple[int, ...] = ()
    yes: bool = False
    use_move: bool = True  # False forces the COPY + \Deleted + UID EXPUNGE path


def sort_key(message: JunkMessage) -> tuple[int, int, float, int]:
    return (
        ASSESSMENT_ORDER.index(message.assessment.label),
        -message.assessment.score,
        -message.received.timestamp(),
        -message.uid,
    )


def known_senders(session: ImapSession, inbox: str) -> KnownSenders:
    status = session.examine(inbox)
    return KnownSenders.from_headers(
        session.last_headers(status.messages, KNOWN_SENDER_WINDOW, ("From",))
    )


def junk_folder(session: ImapSession, mailbox: MailboxConfig) -> str:
    folder = session.find_folder(JUNK, mailbox.folders.junk)
    if folder is None:
        raise fail(
            "folder_missing",
            f"no folder marked \\Junk and none named {mailbox.folders.junk!r}",
            hint="Set folders.junk to the Junk folder's name in the mailbox's language.",
        )
    return folder


def read_listing(session: ImapSession, mailbox: MailboxConfig) -> JunkListing:
    known = known_senders(session, mailbox.folders.inbox)
    folder = junk_folder(session, mailbox)
    status = session.examine(folder)
    uids = session.search_uids(["ALL"]) if status.messages else []
    messages = []
    for fetched in session.fetch_headers(uids, HEADER_FIELDS):
        header = parse_headers(fetched.header)
        sender = sender_of(header)
        verdicts = verdicts_of(header)
        messages.append(
            JunkMessage(
                uid=fetched.uid,
                received=fetched.internaldate,
                sender=sender,
                subject=decoded(header, "Subject"),
                size=fetched.size,
                verdicts=verdicts,
                assessment=assess(verdicts, known.knows(sender)),
            )
        )
    return JunkListing(
        mailbox=mailbox.name,
        folder=folder,
        status=status,
        generated_at=datetime.now(UTC),
        messages=tuple(sorted(messages, key=sort_key)),
    )


def chosen_messages(listing: JunkListing, uids: Sequence[int]) -> list[JunkMessage]:
    by_uid = {m.uid: m for m in listing.messages}
    missing = [uid for uid in uids if uid not in by_uid]
    if missing:
        raise UsageError(
            f"--rescue: UID {', '.join(map(str, missing))} not in {listing.folder} "
            f"(UIDVALIDITY {listing.status.uidvalidity}); nothing was moved"
        )
    return [by_uid[uid] for uid in uids]


def rescue(
    session: AdminImapSession,
    listing: JunkListing,
    inbox: str,
    uids: Sequence[int],
    *,
    use_move: bool = True,
) -> MoveResult:
    """Move exactly `uids` (all of them listed) from the Junk folder back to the inbox."""
    chosen_messages(listing, uids)
    status = session.select(listing.folder)
    if status.uidvalidity != listing.status.uidvalidity:
        raise fail("protocol", f"UIDVALIDITY of {listing.folder} changed; list again")
    return session.move(uids, inbox, use_move=use_move)


def acknowledge(config: Config, listing: JunkListing) -> ReviewState:
    status = listing.status
    if status.uidvalidity is None or status.uidnext is None:
        raise fail("protocol", f"EXAMINE {listing.folder} gave no UIDVALIDITY/UIDNEXT")
    state = ReviewState(
        reviewed_at=time.time(),
        folder=listing.folder,
        uidvalidity=status.uidvalidity,
        uidnext=status.uidnext,
        messages=len(listing.messages),
    )
    save_review(config.state_dir, listing.mailbox, state)
    return state


# -- the command ------------------------------------------------------------------------------
def run(
    config: Config,
    mailbox: MailboxConfig,
    options: ReviewOptions,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    if options.yes and not options.rescue:
        stderr.write("junk-review: --yes goes with --rescue UID,...\n")
        return EXIT_USAGE
    moved: MoveResult | None = None
    review: ReviewState | None = None
    try:
        with admin_session(config, mailbox) as session:
            listing = read_listing(session, mailbox)
            chosen = chosen_messages(listing, options.rescue) if options.rescue else []
            if chosen and options.yes:
                moved = rescue(
                    session,
                    listing,
                    mailbox.folders.inbox,
                    options.rescue,
                    use_move=options.use_move,
                )
        if options.ack:
            review = acknowledge(config, listing)
    except UsageError as err:
        stderr.write(f"junk-review: {err}\n")
        return EXIT_USAGE
    except CheckFailed as err:
        return report_failure(err, "junk-review", stderr, config, mailbox)
    except StateError as err:
        stderr.write(f"junk-review: cannot record the review: {err}\n")
        return EXIT_FAILED
    ack_path = str(review_path(config.state_dir, mailbox.name)) if review else None
    if options.output == "json":
        document = listing_json(listing)
        document["rescue"] = rescue_json(chosen, moved, listing.folder, mailbox.folders.inbox)
        document["ack"] = ack_json(review, ack_path)
        write_json(document, stdout)
    elif options.output == "html":
        stdout.write(render_report(listing, config.path))
    else:
        stdout.write(listing_table(listing) + "\n")
    notes = stdout if options.output == "table" else stderr
    if chosen:
        notes.write(rescue_text(chosen, moved, listing.folder, mailbox.folders.inbox) + "\n")
    if review is not None:
        notes.write(
            f"Review recorded at {iso(datetime.fromtimestamp(review.reviewed_at, UTC))}: "
            f"{review.messages} messages up to UID {review.uidnext - 1} of {review.folder} "
            f"({ack_path}).\n"
        )
    return EXIT_OK


def rescue_text(
    chosen: Sequence[JunkMessage], moved: MoveResult | None, junk: str, inbox: str
) -> str:
    lines = [f"  UID {m.uid}: {m.sender.display or '-'}: {m.subject or '-'}" for m in chosen]
    if moved is None:
        head = (
            f"Would move {len(chosen)} message(s) from {junk} to {inbox} "
            "(nothing changed; add --yes to move them):"
        )
    else:
        head = f"Moved {len(moved.uids)} message(s) from {junk} to {inbox} ({moved.method}):"
    return "\n".join([head, *lines])


# -- output -----------------------------------------------------------------------------------
def _text(value: object) -> str:
    return "-" if value is None else str(value)


def listing_table(listing: JunkListing) -> str:
    header = (
        f"Junk review of {listing.mailbox}: {len(listing.messages)} message(s) in "
        f"{listing.folder}, likely false positives first"
    )
    if not listing.messages:
        return header
    rows = [("UID", "RECEIVED", "FROM", "SUBJECT", "SIZE", "SCL", "BCL", "SFV",
             "SPF/DKIM/DMARC", "VERDICT")]  # fmt: skip
    for m in listing.messages:
        v = m.verdicts
        rows.append(
            (
                str(m.uid),
                iso(m.received),
                clip(m.sender.display or "-", 36),
                clip(m.subject or "-", 40),
                human_size(m.size),
                _text(v.scl),
                _text(v.bcl),
                _text(v.sfv),
                f"{_text(v.spf)}/{_text(v.dkim)}/{_text(v.dmarc)}",
                m.assessment.label
                + (f" ({', '.join(m.assessment.reasons)})" if m.assessment.reasons else ""),
            )
        )
    return header + "\n\n" + table(rows)


def message_json(m: JunkMessage) -> dict[str, Any]:
    v = m.verdicts
    return {
        "uid": m.uid,
        "received": iso(m.received),
        "received_timestamp_seconds": m.received.timestamp(),
        "from": m.sender.display,
        "from_address": m.sender.address,
        "from_domain": m.sender.domain,
        "subject": m.subject,
        "size_bytes": m.size,
        "scl": v.scl,
        "bcl": v.bcl,
        "sfv": v.sfv,
        "cat": v.cat,
        "dest": v.dest,
        "spf": v.spf,
        "dkim": v.dkim,
        "dmarc": v.dmarc,
        "verdict": m.assessment.label,
        "score": m.assessment.score,
        "reasons": list(m.assessment.reasons),
    }


def listing_json(listing: JunkListing) -> dict[str, Any]:
    return {
        "mailbox": listing.mailbox,
        "folder": listing.folder,
        "generated_at": iso(listing.generated_at),
        "uidvalidity": listing.status.uidvalidity,
        "uidnext": listing.status.uidnext,
        "messages": [message_json(m) for m in listing.messages],
    }


def rescue_json(
    chosen: Sequence[JunkMessage], moved: MoveResult | None, junk: str, inbox: str
) -> dict[str, Any] | None:
    if not chosen:
        return None
    return {
        "uids": [m.uid for m in chosen],
        "from": junk,
        "to": inbox,
        "moved": moved is not None,
        "method": moved.method if moved else None,
    }


def ack_json(review: ReviewState | None, path: str | None) -> dict[str, Any] | None:
    if review is None:
        return None
    return {
        "reviewed_at": iso(datetime.fromtimestamp(review.reviewed_at, UTC)),
        "reviewed_at_timestamp_seconds": review.reviewed_at,
        "folder": review.folder,
        "uidvalidity": review.uidvalidity,
        "uidnext": review.uidnext,
        "path": path,
    }
