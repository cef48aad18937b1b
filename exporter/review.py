"""The recorded Junk review of a mailbox: `state_dir/review/<mailbox>.json`.

`junk-review --ack` writes it (atomically, mode 0600); the `junk` check reads it to expose
when the Junk folder was last reviewed and how many of its messages arrived since, by UID:
every message with a UID at or above the folder's UIDNEXT at review time is unreviewed. When
the folder's UIDVALIDITY (or the folder itself) changed, old UIDs mean nothing any more and
every message counts as unreviewed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from exporter.errors import StateError
from exporter.imap import FolderStatus
from exporter.statefile import atomic_write


@dataclass(frozen=True, slots=True)
class ReviewState:
    reviewed_at: float  # unix time of the --ack
    folder: str  # the Junk folder's name at review time
    uidvalidity: int
    uidnext: int  # messages with a UID >= this arrived after the review
    messages: int  # how many the review listed (for people reading the file)


def review_path(state_dir: Path, mailbox: str) -> Path:
    return state_dir / "review" / f"{mailbox}.json"


def load_review(state_dir: Path, mailbox: str) -> ReviewState | None:
    """The recorded review, None when there is none yet; StateError when it is unreadable."""
    path = review_path(state_dir, mailbox)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateError(f"{path}: {err.strerror}") from err
    except ValueError as err:
        raise StateError(f"{path}: not JSON: {err}") from err
    try:
        return ReviewState(
            reviewed_at=float(document["reviewed_at"]),
            folder=str(document["folder"]),
            uidvalidity=int(document["uidvalidity"]),
            uidnext=int(document["uidnext"]),
            messages=int(document.get("messages", 0)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise StateError(f"{path}: not a review record: {err!r}") from err


def save_review(state_dir: Path, mailbox: str, state: ReviewState) -> Path:
    """Write the review record by atomic replace, 0600 in a 0700 directory."""
    path = review_path(state_dir, mailbox)
    text = json.dumps(asdict(state), indent=2) + "\n"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"), 0o600)
    except OSError as err:
        raise StateError(f"{path}: {err.strerror}") from err
    return path


def unreviewed_messages(
    review: ReviewState,
    folder: str,
    status: FolderStatus,
    count_uids_from: Callable[[int], int],
) -> int:
    """Messages of the (selected) Junk folder that arrived after the review.

    `status` is the folder's EXAMINE answer; `count_uids_from(uid)` counts the messages with
    a UID >= uid server-side. Nothing arrived when UIDNEXT has not moved, so then no search.
    """
    if folder != review.folder or status.uidvalidity != review.uidvalidity:
        return status.messages
    if status.uidnext is not None and status.uidnext <= review.uidnext:
        return 0
    return count_uids_from(review.uidnext)
