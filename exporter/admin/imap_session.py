"""The mailbox-changing IMAP commands of the admin tools: SELECT, MOVE (or its fallback), CREATE.

Only the admin commands use this, and only when the admin said `--yes`. The exporter's checks
use `exporter.imap.ImapSession`, which stays read-only; this subclass adds the writes.
"""

from __future__ import annotations

import imaplib
from collections.abc import Sequence
from dataclasses import dataclass

from imapclient.exceptions import IMAPClientError

from exporter.failures import fail, first_line
from exporter.imap import FolderStatus, ImapSession, _optional_int

DELETED = b"\\Deleted"


@dataclass(frozen=True, slots=True)
class MoveResult:
    uids: tuple[int, ...]  # the source UIDs that were moved
    source: str
    destination: str
    method: str  # "MOVE" or "COPY+EXPUNGE"


class AdminImapSession(ImapSession):
    """An `ImapSession` that may also change the mailbox (for `--yes` admin commands)."""

    def select(self, folder: str) -> FolderStatus:
        """SELECT (read-write) a folder; a missing one is `folder_missing`."""
        step = f"SELECT {folder}"
        self._usable(step)
        try:
            info = self._client.select_folder(folder, readonly=False)
        except (IMAPClientError, imaplib.IMAP4.error) as err:
            text = first_line(err)
            if "NONEXISTENT" in text or "doesn't exist" in text or "not exist" in text.lower():
                raise fail("folder_missing", f"{step}: {text}", code="NO") from err
            raise self._failed(err, step) from err
        except Exception as err:
            raise self._failed(err, step) from err
        self.selected = folder
        return FolderStatus(
            messages=int(info.get(b"EXISTS", 0)),
            uidnext=_optional_int(info.get(b"UIDNEXT")),
            uidvalidity=_optional_int(info.get(b"UIDVALIDITY")),
        )

    def folder_names(self) -> list[str]:
        """Every folder's name (a fresh LIST: a folder may have just been created)."""
        listed = self._call("LIST", self._client.list_folders)
        return [str(name) for _flags, _delimiter, name in listed]

    def create_folder(self, folder: str) -> None:
        self._call(f"CREATE {folder}", self._client.create_folder, folder)

    def move(self, uids: Sequence[int], destination: str, *, use_move: bool = True) -> MoveResult:
        """Move exactly `uids` from the selected folder to `destination`.

        With the MOVE capability (RFC 6851): one atomic `UID MOVE`. Without it (or with
        `use_move=False`): `UID COPY`, `UID STORE +FLAGS.SILENT (\\Deleted)` and `UID EXPUNGE`
        of exactly those UIDs, which needs UIDPLUS (RFC 4315) - a plain EXPUNGE would also
        remove any other message someone had marked \\Deleted, so without UIDPLUS nothing is
        done. Afterwards the source is searched again: every UID must be gone.
        """
        if self.selected is None:
            raise fail("protocol", "move: no folder selected")
        source = self.selected
        chosen = sorted(set(uids))
        capabilities = self.capabilities()
        if use_move and "MOVE" in capabilities:
            self._call(f"UID MOVE to {destination}", self._client.move, chosen, destination)
            method = "MOVE"
        elif "UIDPLUS" in capabilities:
            self._call(f"UID COPY to {destination}", self._client.copy, chosen, destination)
            self._call(
                "UID STORE +FLAGS.SILENT (\\Deleted)",
                self._client.add_flags,
                chosen,
                [DELETED],
                True,
            )
            self._call("UID EXPUNGE", self._client.uid_expunge, chosen)
            method = "COPY+EXPUNGE"
        else:
            raise fail(
                "protocol",
                "the server offers neither MOVE nor UIDPLUS: moving only the chosen messages "
                "is impossible, nothing was changed",
            )
        left = [uid for uid in self.search_uids(["UID", _uid_set(chosen)]) if uid in chosen]
        if left:
            raise fail(
                "protocol",
                f"after {method} UIDs {', '.join(map(str, left))} are still in {source}",
            )
        return MoveResult(tuple(chosen), source, destination, method)


def _uid_set(uids: Sequence[int]) -> str:
    return ",".join(str(uid) for uid in uids)
