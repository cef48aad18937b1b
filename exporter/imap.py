"""A read-only IMAP session over implicit TLS with XOAUTH2, with a deadline on every step.

Knows nothing of metrics or checks. Every method raises `CheckFailed` with the contract's
reason word; nothing here ever changes a mailbox (EXAMINE, never SELECT; no STORE/EXPUNGE/
COPY/MOVE; message data is never fetched, so no \\Seen flag is set).
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta

import imapclient
from imapclient.exceptions import IMAPClientError, LoginError

from exporter.failures import CheckFailed, fail

JUNK = b"\\Junk"  # RFC 6154 SPECIAL-USE attributes
SENT = b"\\Sent"
_RESPONSE_CODE_RE = re.compile(r"\[([A-Z-]+)[^\]]*\]")
_USUAL_JUNK_NAMES = ("Junk Email", "Junk E-mail", "Junk", "Spam")
_USUAL_SENT_NAMES = ("Sent Items", "Sent", "Sent Messages")


@dataclass(frozen=True, slots=True)
class FolderStatus:
    messages: int
    uidnext: int | None
    uidvalidity: int | None


@dataclass(frozen=True, slots=True)
class Oversized:
    count: int
    largest: int


def _response_code(message: str, default: str) -> str:
    match = _RESPONSE_CODE_RE.search(message)
    return match.group(1) if match else default


def _first_line(err: BaseException) -> str:
    lines = str(err).splitlines()
    return lines[0] if lines else type(err).__name__


def classify(err: BaseException, step: str) -> CheckFailed:
    """Map an exception from a network step to a reason word and a bounded code."""
    if isinstance(err, CheckFailed):
        return err
    if isinstance(err, (socket.timeout, TimeoutError)):
        return fail("timeout", f"{step}: no answer in time")
    if isinstance(err, ssl.SSLError):
        return fail("tls", f"{step}: TLS failed: {_first_line(err)}")
    if isinstance(err, socket.gaierror):
        return fail("connection", f"{step}: cannot resolve host: {_first_line(err)}")
    if isinstance(err, LoginError):
        text = _first_line(err)
        return fail("auth_rejected", f"{step}: {text}", code=_response_code(text, "NO"))
    if isinstance(err, imaplib.IMAP4.abort):
        return fail("protocol", f"{step}: connection broken: {_first_line(err)}")
    if isinstance(err, (IMAPClientError, imaplib.IMAP4.error)):
        text = _first_line(err)
        code = "BAD" if "BAD" in text else _response_code(text, "NO")
        if "not connected" in text:
            # Exchange: "User is authenticated but not connected" (wrong service principal).
            return fail(
                "auth_rejected",
                f"{step}: {text}",
                code=code,
                hint="Authenticated but not connected: for app-only access check the service "
                "principal's object ID and its FullAccess permission on the mailbox.",
            )
        return fail("protocol", f"{step}: {text}", code=code)
    if isinstance(err, OSError):
        return fail("connection", f"{step}: {_first_line(err)}")
    if isinstance(err, (ValueError, IndexError, KeyError, TypeError)):
        return fail("protocol", f"{step}: unparsable answer: {_first_line(err)}")
    return fail("unknown", f"{step}: {type(err).__name__}: {_first_line(err)}")


class ImapSession:
    """One connection: connect, XOAUTH2, EXAMINE, read-only queries, LOGOUT.

    `abort()` may be called from another thread (the scheduler's watchdog) to break a hung
    read; the blocked call then fails and is classified as a timeout by the runner.
    """

    def __init__(self, client: imapclient.IMAPClient) -> None:
        self._client = client
        self._client.normalise_times = False  # keep the server's zone: SEARCH dates use it
        self.selected: str | None = None
        self._folders: list[tuple[tuple[bytes, ...], str]] | None = None

    @classmethod
    def connect(cls, host: str, port: int, context: ssl.SSLContext, timeout: float) -> ImapSession:
        try:
            client = imapclient.IMAPClient(
                host, port=port, ssl=True, ssl_context=context, timeout=timeout
            )
        except Exception as err:
            raise classify(err, "connect") from err
        return cls(client)

    def peer_certificate(self) -> bytes | None:
        sock = self._client.socket()
        if isinstance(sock, ssl.SSLSocket):
            return sock.getpeercert(binary_form=True)
        return None

    def abort(self) -> None:
        """Break any blocked read (called from another thread)."""
        with contextlib.suppress(OSError):
            self._client.socket().shutdown(socket.SHUT_RDWR)

    def _call(self, step: str, func, *args):  # type: ignore[no-untyped-def]
        try:
            return func(*args)
        except Exception as err:
            raise classify(err, step) from err

    def login(self, username: str, access_token: str) -> None:
        self._call("AUTHENTICATE XOAUTH2", self._client.oauth2_login, username, access_token)

    def examine(self, folder: str) -> FolderStatus:
        """EXAMINE (read-only select) a folder; a missing one is `folder_missing`."""
        try:
            info = self._client.select_folder(folder, readonly=True)
        except (IMAPClientError, imaplib.IMAP4.error) as err:
            text = _first_line(err)
            if "NONEXISTENT" in text or "doesn't exist" in text or "not exist" in text.lower():
                raise fail("folder_missing", f"EXAMINE {folder}: {text}", code="NO") from err
            raise classify(err, f"EXAMINE {folder}") from err
        except Exception as err:
            raise classify(err, f"EXAMINE {folder}") from err
        self.selected = folder
        return FolderStatus(
            messages=int(info.get(b"EXISTS", 0)),
            uidnext=_optional_int(info.get(b"UIDNEXT")),
            uidvalidity=_optional_int(info.get(b"UIDVALIDITY")),
        )

    def status(self, folder: str) -> FolderStatus:
        """STATUS of a folder that is not selected: count, UIDNEXT, UIDVALIDITY."""
        items = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"]
        status = self._call(f"STATUS {folder}", self._client.folder_status, folder, items)
        return FolderStatus(
            messages=int(status[b"MESSAGES"]),
            uidnext=_optional_int(status.get(b"UIDNEXT")),
            uidvalidity=_optional_int(status.get(b"UIDVALIDITY")),
        )

    def unseen(self, folder: str) -> int:
        status = self._call("STATUS", self._client.folder_status, folder, [b"UNSEEN"])
        return int(status[b"UNSEEN"])

    def oldest_internaldate(self, messages: int) -> datetime | None:
        """INTERNALDATE of the oldest message of the selected folder, found server-side.

        Sequence 1 is usually but not always the oldest (a message moved in keeps its date and
        gets a higher UID). So: take message 1's date D, ask the server for every message
        dated on or before D (`SEARCH BEFORE D+1`), and read just those dates. Cost: three
        round trips, independent of the folder size.
        """
        if messages == 0:
            return None
        client = self._client
        client.use_uid = False
        try:
            first = self._call("FETCH 1 INTERNALDATE", client.fetch, [1], [b"INTERNALDATE"])
            first_date: datetime = first[1][b"INTERNALDATE"]
            candidates = self._call(
                "SEARCH BEFORE",
                client.search,
                ["BEFORE", first_date.date() + timedelta(days=1)],
            )
            dates = [first_date]
            others = [seq for seq in candidates if seq != 1]
            if others:
                fetched = self._call("FETCH INTERNALDATE", client.fetch, others, [b"INTERNALDATE"])
                dates.extend(item[b"INTERNALDATE"] for item in fetched.values())
        finally:
            client.use_uid = True
        return min(dates)

    def oversized(self, threshold: int) -> Oversized:
        """Messages larger than `threshold` in the selected folder: SEARCH LARGER + their sizes."""
        uids = self._call("SEARCH LARGER", self._client.search, ["LARGER", threshold])
        if not uids:
            return Oversized(0, 0)
        sizes = self._call("FETCH RFC822.SIZE", self._client.fetch, uids, [b"RFC822.SIZE"])
        values = [int(item[b"RFC822.SIZE"]) for item in sizes.values()]
        return Oversized(len(values), max(values, default=0))

    def find_folder(self, special_use: bytes, configured: str) -> str | None:
        """A folder by SPECIAL-USE flag first, then the configured name, then usual names."""
        if self._folders is None:
            listed = self._call("LIST", self._client.list_folders)
            self._folders = [(tuple(flags), name) for flags, _delim, name in listed]
        for flags, name in self._folders:
            if special_use in flags:
                return name
        usual = _USUAL_JUNK_NAMES if special_use == JUNK else _USUAL_SENT_NAMES
        names = {name.casefold(): name for _flags, name in self._folders}
        for wanted in (configured, *usual):
            if wanted.casefold() in names:
                return names[wanted.casefold()]
        return None

    def logout(self) -> None:
        """LOGOUT politely; on any error just close the socket."""
        try:
            self._client.logout()
        except Exception:  # noqa: BLE001 - the session is over either way
            with contextlib.suppress(OSError):
                self._client.shutdown()


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) else None
