"""A read-only IMAP session over implicit TLS with XOAUTH2, with a deadline on every step.

Knows nothing of metrics or checks. Every method raises `CheckFailed` with the contract's
reason word; nothing here ever changes a mailbox (EXAMINE, never SELECT; no STORE/EXPUNGE/
COPY/MOVE; message bodies are never fetched and header fields only with BODY.PEEK, so no
\\Seen flag is set). Mailbox-changing commands for the admin tools live in `imap_admin`.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import logging
import random
import re
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Self

import imapclient
from imapclient import tls as imapclient_tls
from imapclient.datetime_util import parse_to_datetime
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.response_parser import parse_fetch_response

from exporter.auth import resolve
from exporter.failures import CheckFailed, classify_transport, fail, first_line

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


@dataclass(frozen=True, slots=True)
class MessageHeaders:
    """What `fetch_headers` reads of one message: never its body, never a flag change."""

    uid: int
    internaldate: datetime
    size: int
    header: bytes  # the requested header fields, raw (RFC 5322, CRLF)


_HEADER_CHUNK = 500  # UIDs per FETCH: bounded command lines and answers
# Dates read to find the oldest message on its day; sizes read to find the largest oversized
# message (a server refuses a FETCH of 100,000 numbers: "BAD Too long argument").
OLDEST_CANDIDATES = 1000
# Folders up to this size are dated with one FETCH of every INTERNALDATE (1 command instead of
# 2-3); larger ones by the message-1-and-SEARCH-BEFORE bisection.
SMALL_FOLDER = 100
OVERSIZED_SIZES_READ = 5000
# NOOP-and-ask-again rounds when a FETCH meets messages expunged meanwhile (a busy desk).
_EXPUNGE_RETRIES = 2


# imaplib's tag prefix and tagged-answer pattern (see `_BoundedIMAP4._connect`), once per process.
_TAG_PREFIX: bytes = imaplib.Int2AP(random.randint(4096, 65535))  # noqa: S311 - not a secret
_TAG_RE = re.compile(rb"(?P<tag>" + _TAG_PREFIX + rb"\d+) (?P<type>[A-Z]+) (?P<data>.*)", re.ASCII)


def _response_code(message: str, default: str) -> str:
    match = _RESPONSE_CODE_RE.search(message)
    return match.group(1) if match else default


# imaplib reads a literal of whatever size the server announces into memory in one go, and
# keeps every untagged line of an answer: a broken or hostile server announcing a 10 GiB literal
# made the exporter buffer a gigabyte a second until the watchdog fired. The exporter reads
# dates, sizes, counts, folder names and a few header fields, never message bodies, so one
# literal and one command's whole answer are bounded.
MAX_LITERAL_BYTES = 8 * 2**20
MAX_ANSWER_BYTES = 64 * 2**20


def classify(err: BaseException, step: str) -> CheckFailed:
    """Map an exception from a network step to a reason word and a bounded code."""
    shared = classify_transport(err, step)
    if shared is not None:
        return shared
    if isinstance(err, LoginError) and isinstance(err.__context__, imaplib.IMAP4.abort):
        # imapclient turns every error during AUTHENTICATE into LoginError, a dropped
        # connection or a garbled answer too: those are no credential rejection (which would
        # put the sign-in into the Smart Lockout backoff).
        return classify(err.__context__, step)
    if isinstance(err, LoginError):
        text = first_line(err)
        return fail("auth_rejected", f"{step}: {text}", code=_response_code(text, "NO"))
    if isinstance(err, imaplib.IMAP4.abort):
        text = first_line(err)
        if "socket error" in text and "unterminated line" not in text:
            return fail("connection", f"{step}: the server closed the connection: {text}")
        return fail("protocol", f"{step}: connection broken: {text}")
    if isinstance(err, (IMAPClientError, imaplib.IMAP4.error)):
        text = first_line(err)
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
        return fail("connection", f"{step}: {first_line(err)}")
    if isinstance(err, (ValueError, IndexError, KeyError, TypeError)):
        return fail("protocol", f"{step}: unparsable answer: {first_line(err)}")
    return fail("unknown", f"{step}: {type(err).__name__}: {first_line(err)}")


class _BoundedIMAP4(imapclient_tls.IMAP4_TLS):  # type: ignore[misc]
    """imapclient's implicit-TLS transport with bounded reads, connecting to an address
    resolved beforehand (under a deadline) while verifying the certificate for `host`."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        timeout: float,
        addresses: list[tuple[str, int]],
    ) -> None:
        self._addresses = addresses
        self._answer_bytes = 0
        super().__init__(host, port, ssl_context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        error: OSError | None = None
        for address in self._addresses:
            try:
                sock = socket.create_connection(address, timeout=timeout or self._timeout)
            except OSError as err:
                error = err
                continue
            wrapped: socket.socket = imapclient_tls.wrap_socket(sock, self.ssl_context, self.host)
            return wrapped
        raise error or OSError(f"no address for {self.host}")

    def _connect(self) -> None:
        """imaplib's `_connect` with one tag prefix per process: imaplib draws a random prefix
        per connection and compiles a regular expression for it every time (about a tenth
        of a run's CPU, 8.7 % of the 1,000-mailbox profile in `re`'s parser)."""
        self.tagpre = _TAG_PREFIX
        self.tagre = _TAG_RE
        if __debug__:
            self._cmd_log_len = 10
            self._cmd_log_idx = 0
            self._cmd_log: dict[int, tuple[str, float]] = {}
        self.welcome = self._get_response()
        if "PREAUTH" in self.untagged_responses:
            self.state = "AUTH"
        elif "OK" in self.untagged_responses:
            self.state = "NONAUTH"
        else:
            raise self.error(self.welcome)
        self._get_capabilities()
        for version in imaplib.AllowedVersions:  # type: ignore[attr-defined]
            if version in self.capabilities:
                self.PROTOCOL_VERSION = version
                return
        raise self.error("server not IMAP4 compliant")

    def _get_capabilities(self) -> None:
        """imaplib asks CAPABILITY right after the greeting; a greeting that carries
        `[CAPABILITY ...]` (Dovecot's) already said it: one round trip less."""
        greeting = self.untagged_responses.pop("CAPABILITY", None)
        if greeting and isinstance(greeting[-1], bytes):
            self.capabilities = tuple(greeting[-1].decode("ascii", "replace").upper().split())
            return
        super()._get_capabilities()

    def send(self, data: bytes) -> None:
        self._answer_bytes = 0  # a new command: its answer gets the whole budget
        super().send(data)

    def read(self, size: int) -> bytes:
        if size > MAX_LITERAL_BYTES:
            raise fail(
                "protocol",
                f"the server announced a {size}-byte literal; at most {MAX_LITERAL_BYTES} "
                "bytes are expected (the exporter never reads message bodies)",
            )
        return self._counted(super().read(size))

    def readline(self) -> bytes:
        return self._counted(super().readline())

    def _counted(self, data: bytes) -> bytes:
        self._answer_bytes += len(data)
        if self._answer_bytes > MAX_ANSWER_BYTES:
            raise fail("protocol", f"an answer of more than {MAX_ANSWER_BYTES} bytes")
        return data


class _BoundedIMAPClient(imapclient.IMAPClient):  # type: ignore[misc]
    """IMAPClient over `_BoundedIMAP4` (implicit TLS only)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        timeout: float,
        addresses: list[tuple[str, int]],
    ) -> None:
        self._addresses = addresses
        super().__init__(host, port=port, ssl=True, ssl_context=ssl_context, timeout=timeout)

    def _create_IMAP4(self) -> _BoundedIMAP4:  # imapclient's factory method
        return _BoundedIMAP4(
            self.host, self.port, self.ssl_context, self._timeout.connect, self._addresses
        )


class ImapSession:
    """One connection: connect, XOAUTH2, EXAMINE, read-only queries, LOGOUT.

    `abort()` may be called from another thread (the scheduler's watchdog) to break a hung
    read; the blocked call then fails and is classified as a timeout by the runner.

    Once the connection is broken (aborted, closed, timed out, garbled), every later call
    fails at once with `dependency`: the checks after the one that met the fault report it
    as the cause instead of a second, misleading error from a dead connection.
    """

    def __init__(self, client: imapclient.IMAPClient) -> None:
        self._client = client
        self._client.normalise_times = False  # keep the server's zone: SEARCH dates use it
        if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
            # imapclient sets imaplib's debug level to 5: every line sent and received is
            # repr-formatted for a logger that drops it (about 5 % of a run's CPU).
            self._client._imap.debug = 0
        self.selected: str | None = None
        self._folders: list[tuple[tuple[bytes, ...], str]] | None = None
        self.broken: str | None = None  # why the connection cannot be used any more

    @classmethod
    def connect(cls, host: str, port: int, context: ssl.SSLContext, timeout: float) -> Self:
        try:
            addresses = resolve(host, port, timeout)
            client = _BoundedIMAPClient(host, port, context, timeout, addresses)
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
        self.broken = self.broken or "it was aborted after a timeout"
        with contextlib.suppress(OSError):
            self._client.socket().shutdown(socket.SHUT_RDWR)

    def _usable(self, step: str) -> None:
        if self.broken is not None:
            raise fail("dependency", f"{step}: not sent: the IMAP connection {self.broken}")

    def _failed(self, err: Exception, step: str) -> CheckFailed:
        """Classify; remember a broken connection (anything but a tagged NO or BAD answer)."""
        failure = classify(err, step)
        clean_answer = (
            isinstance(err, imaplib.IMAP4.error)
            and not isinstance(err, imaplib.IMAP4.abort)
            and not isinstance(err.__context__, imaplib.IMAP4.abort)
            and "got more than" not in str(err)
        )
        if not clean_answer and self.broken is None:
            self.broken = f"broke in {step} ({failure.failure.reason})"
        return failure

    def _call(self, step: str, func, *args):  # type: ignore[no-untyped-def]
        self._usable(step)
        try:
            return func(*args)
        except Exception as err:
            raise self._failed(err, step) from err

    def login(self, username: str, access_token: str) -> None:
        """AUTHENTICATE XOAUTH2, with the initial response inline where the server offers
        SASL-IR (Dovecot and Exchange do; imaplib cannot send one: it waits for a `+` first).

        A refused token is answered with a `+` continuation carrying an error JSON, then a
        tagged NO once the client sends an empty line. Failures are classified exactly as
        imapclient's `oauth2_login` raises them: a tagged NO/BAD is a `LoginError`
        (`auth_rejected`), a dropped or garbled connection a `LoginError` whose context is
        imaplib's abort (`connection` / `protocol`). The capabilities of the tagged OK
        (`[CAPABILITY ...]`, Dovecot's) are kept, so imapclient never asks CAPABILITY again.
        """
        step = "AUTHENTICATE XOAUTH2"
        imap = self._client._imap
        if "SASL-IR" not in imap.capabilities:
            self._call(step, self._client.oauth2_login, username, access_token)
        else:
            self._usable(step)
            initial = base64.b64encode(
                f"user={username}\x01auth=Bearer {access_token}\x01\x01".encode()
            )
            try:
                try:
                    typ, data = _authenticate_initial_response(imap, b"XOAUTH2", initial)
                except imaplib.IMAP4.error as err:  # abort (a broken connection) included
                    raise LoginError(str(err)) from err
                if typ != "OK":
                    raise LoginError(_text(data[-1] if data else b""))
            except Exception as err:
                raise self._failed(err, step) from err
            imap.state = "AUTH"
        # imaplib files the tagged OK's [CAPABILITY ...] among the untagged responses, and its
        # EXAMINE flushes them: cache them now (else imapclient asks before its first SEARCH).
        untagged = imap.untagged_responses.pop("CAPABILITY", None)
        if untagged and isinstance(untagged[-1], bytes):
            self._client._cached_capabilities = tuple(untagged[-1].upper().split())

    def examine(self, folder: str) -> FolderStatus:
        """EXAMINE (read-only select) a folder; a missing one is `folder_missing`."""
        self._usable(f"EXAMINE {folder}")
        try:
            info = self._client.select_folder(folder, readonly=True)
        except (IMAPClientError, imaplib.IMAP4.error) as err:
            text = first_line(err)
            if "NONEXISTENT" in text or "doesn't exist" in text or "not exist" in text.lower():
                raise fail("folder_missing", f"EXAMINE {folder}: {text}", code="NO") from err
            raise self._failed(err, f"EXAMINE {folder}") from err
        except Exception as err:
            raise self._failed(err, f"EXAMINE {folder}") from err
        self.selected = folder
        with _unparsable(f"EXAMINE {folder}"):
            return FolderStatus(
                messages=_count(info.get(b"EXISTS", 0)),
                uidnext=_optional_int(info.get(b"UIDNEXT")),
                uidvalidity=_optional_int(info.get(b"UIDVALIDITY")),
            )

    def status(self, folder: str) -> FolderStatus:
        """STATUS of a folder that is not selected: count, UIDNEXT, UIDVALIDITY."""
        items = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"]
        status = self._call(f"STATUS {folder}", self._client.folder_status, folder, items)
        with _unparsable(f"STATUS {folder}"):
            return FolderStatus(
                messages=_count(status[b"MESSAGES"]),
                uidnext=_optional_int(status.get(b"UIDNEXT")),
                uidvalidity=_optional_int(status.get(b"UIDVALIDITY")),
            )

    def unseen(self, folder: str) -> int:
        status = self._call("STATUS", self._client.folder_status, folder, [b"UNSEEN"])
        with _unparsable("STATUS"):
            return _count(status[b"UNSEEN"])

    def oldest_internaldate(self, messages: int) -> datetime | None:
        """INTERNALDATE of the oldest message of the selected folder, found server-side.

        Sequence 1 is usually but not always the oldest (a message moved in keeps its date and
        gets a higher UID). So: take message 1's date D, ask the server for every message
        dated on or before D (`UID SEARCH BEFORE D+1`), and read just those dates. Cost: three
        round trips, independent of the folder size.

        Another session (the service desk) may expunge messages meanwhile. Message 1 may then
        be gone: without its date, every message up to tomorrow is a candidate (bounded as
        below). Candidates that vanish before their FETCH are no longer in the folder and
        are left out; a folder emptied meanwhile has no oldest message (None).
        """
        if messages == 0:
            return None
        if messages <= SMALL_FOLDER:
            # One round trip: every date (a desk's inbox and Junk are usually small).
            step = "FETCH INTERNALDATE"
            ids = list(range(1, messages + 1))
            every = self._fetch(step, ids, [b"INTERNALDATE"], b"INTERNALDATE", uid=False)
            with _unparsable(step):
                dates = [_internaldate(item) for item in every.values()]
            return min(dates) if dates else None
        step = "FETCH 1 INTERNALDATE"
        first = self._fetch(step, [1], [b"UID", b"INTERNALDATE"], b"INTERNALDATE", uid=False)
        first_date: datetime | None = None
        first_uid: int | None = None
        with _unparsable(step):
            if 1 in first:
                first_date = _internaldate(first[1])
                first_uid = _optional_int(first[1].get(b"UID"))
        if first_date is not None and messages == 1:
            return first_date
        if first_date is not None:
            day_after = first_date.date() + timedelta(days=1)
        else:  # message 1 was expunged meanwhile: every message dated up to tomorrow
            day_after = datetime.now(UTC).date() + timedelta(days=2)
        candidates = self._call("UID SEARCH BEFORE", self._client.search, ["BEFORE", day_after])
        dates = [] if first_date is None else [first_date]
        with _unparsable("UID SEARCH BEFORE"):
            others = sorted(int(uid) for uid in candidates if uid != first_uid)
        if len(others) > OLDEST_CANDIDATES:
            # A mail loop can put 100,000 messages on the oldest day. The oldest of them is
            # among the first by UID (arrival order) or the last (moved in later).
            half = OLDEST_CANDIDATES // 2
            others = others[:half] + others[-half:]
        for start in range(0, len(others), _HEADER_CHUNK):
            chunk = others[start : start + _HEADER_CHUNK]
            step = "UID FETCH INTERNALDATE"
            fetched = self._fetch(step, chunk, [b"INTERNALDATE"], b"INTERNALDATE", uid=True)
            with _unparsable(step):
                dates.extend(_internaldate(item) for item in fetched.values())
        return min(dates) if dates else None

    def oversized(self, threshold: int) -> Oversized:
        """Messages larger than `threshold` in the selected folder: SEARCH LARGER + their sizes.

        A message found by the SEARCH and expunged by another session before its FETCH is not
        counted (when the sizes of all were read)."""
        uids = self._call("UID SEARCH LARGER", self._client.search, ["LARGER", threshold])
        if not uids:
            return Oversized(0, 0)
        largest = 0
        vanished = 0
        ordered = sorted(int(uid) for uid in uids)
        if len(ordered) > OVERSIZED_SIZES_READ:  # the count stays exact; the largest is read
            half = OVERSIZED_SIZES_READ // 2  # among the oldest and the newest messages
            ordered = ordered[:half] + ordered[-half:]
        for start in range(0, len(ordered), _HEADER_CHUNK):
            chunk = ordered[start : start + _HEADER_CHUNK]
            step = "UID FETCH RFC822.SIZE"
            sizes = self._fetch(step, chunk, [b"RFC822.SIZE"], b"RFC822.SIZE", uid=True)
            vanished += len(chunk) - len(sizes)
            with _unparsable(step):
                largest = max([largest, *(_count(i[b"RFC822.SIZE"]) for i in sizes.values())])
        return Oversized(len(uids) - vanished, largest)

    def _fetch(
        self,
        step: str,
        ids: Sequence[int],
        items: Sequence[bytes],
        carries: bytes,
        *,
        uid: bool,
    ) -> dict[int, dict[bytes, object]]:
        """FETCH `items` of `ids` (UIDs, or sequence numbers when not `uid`): only the answers
        for the ids asked for that carry an item named `carries...`, whatever else the server
        sent.

        A busy mailbox makes the server send unsolicited FETCH responses (flag changes by other
        sessions) in the middle of the answer: imapclient 3.x returns them as answers for
        messages nobody asked for, 4.x drops those for other messages but merges one for a
        message asked for into its answer. A message expunged by another session since the
        last sync is either absent from the answer (Exchange) or answered with placeholders
        (`INTERNALDATE` 1970-01-01, `RFC822.SIZE 0`) and `OK [EXPUNGEISSUED]` (Dovecot): then
        NOOP (which delivers the EXPUNGEs) and ask again, by UID only (sequence numbers shift);
        if the server still says EXPUNGEISSUED, the placeholder dates are left out.
        """
        wanted = set(ids)
        client = self._client
        client.use_uid = uid
        try:
            for attempt in range(_EXPUNGE_RETRIES + 1):
                self._expunge_issued()  # forget a code left over from an earlier command
                answer = self._call(step, _fetch_items, client, sorted(wanted), items)
                issued = self._expunge_issued()
                with _unparsable(step):
                    found = {
                        int(key): data
                        for key, data in answer.items()
                        if key in wanted
                        and isinstance(data, dict)
                        and any(name.startswith(carries) for name in data)
                    }
                if not issued:
                    return found
                if not uid or attempt == _EXPUNGE_RETRIES:
                    return {key: data for key, data in found.items() if not _placeholder(data)}
                self._call("NOOP", client.noop)
        finally:
            client.use_uid = True
        raise AssertionError("unreachable")

    def _expunge_issued(self) -> bool:
        """Whether the last command's answer carried `[EXPUNGEISSUED]` (RFC 5530); forgets it.

        imaplib files a tagged answer's response code among the untagged responses, where it
        stays until read, so it is read (and dropped) before and after each FETCH."""
        _code, data = self._client._imap.response("EXPUNGEISSUED")
        return bool(data != [None])

    def capabilities(self) -> frozenset[str]:
        """The server's capabilities (after login: the authenticated set), upper-case."""
        listed = self._call("CAPABILITY", self._client.capabilities)
        return frozenset(
            (c.decode("ascii", "replace") if isinstance(c, bytes) else str(c)).upper()
            for c in listed
        )

    def search_uids(self, criteria: list[object]) -> list[int]:
        """UID SEARCH in the selected folder."""
        return sorted(int(uid) for uid in self._call("UID SEARCH", self._client.search, criteria))

    def count_uids_from(self, first_uid: int) -> int:
        """Messages of the selected folder with a UID >= `first_uid`, counted server-side.

        `UID SEARCH UID n:*` also answers the highest UID when that is below n (`*` is the
        highest UID in use), so the answer is filtered here.
        """
        found = self.search_uids(["UID", f"{first_uid}:*"])
        return sum(1 for uid in found if uid >= first_uid)

    def fetch_headers(self, uids: Sequence[int], fields: Sequence[str]) -> list[MessageHeaders]:
        """INTERNALDATE, RFC822.SIZE and the named header fields of `uids`, by BODY.PEEK (so
        no \\Seen flag is set), in UID order."""
        items = [
            b"INTERNALDATE",
            b"RFC822.SIZE",
            f"BODY.PEEK[HEADER.FIELDS ({' '.join(fields).upper()})]".encode("ascii"),
        ]
        found: list[MessageHeaders] = []
        ordered = sorted(uids)
        for start in range(0, len(ordered), _HEADER_CHUNK):
            chunk = ordered[start : start + _HEADER_CHUNK]
            step = "UID FETCH BODY.PEEK[HEADER.FIELDS]"
            answer = self._fetch(step, chunk, items, b"INTERNALDATE", uid=True)
            with _unparsable(step):
                found.extend(
                    MessageHeaders(
                        uid=uid,
                        internaldate=_internaldate(data),
                        size=_count(data[b"RFC822.SIZE"]),
                        header=_header_bytes(data),
                    )
                    for uid, data in answer.items()
                )
        return sorted(found, key=lambda message: message.uid)

    def last_headers(self, messages: int, count: int, fields: Sequence[str]) -> list[bytes]:
        """The named header fields of the last `count` messages (by sequence number) of the
        selected folder, which holds `messages`: one FETCH, no SEARCH, BODY.PEEK."""
        if messages == 0 or count <= 0:
            return []
        item = f"BODY.PEEK[HEADER.FIELDS ({' '.join(fields).upper()})]".encode("ascii")
        sequence = list(range(max(1, messages - count + 1), messages + 1))
        step = "FETCH BODY.PEEK[HEADER.FIELDS]"
        answer = self._fetch(step, sequence, [item], b"BODY[HEADER", uid=False)
        return [_header_bytes(answer[seq]) for seq in sorted(answer)]

    def list_folders(self) -> list[tuple[tuple[bytes, ...], str]]:
        """(flags, name) of every folder: one LIST per session, however often asked."""
        if self._folders is None:
            listed = self._call("LIST", self._client.list_folders)
            with _unparsable("LIST"):
                self._folders = [(tuple(flags), str(name)) for flags, _delim, name in listed]
        return self._folders

    def find_folder(self, special_use: bytes, configured: str) -> str | None:
        """A folder by SPECIAL-USE flag first, then the configured name, then usual names."""
        return pick_folder(self.list_folders(), special_use, configured)

    def logout(self) -> None:
        """LOGOUT politely; on any error, or when the connection is broken, just close it."""
        if self.broken is not None:
            with contextlib.suppress(OSError):
                self._client.shutdown()
            return
        try:
            self._client.logout()
        except Exception:  # noqa: BLE001 - the session is over either way
            with contextlib.suppress(OSError):
                self._client.shutdown()


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) else None


@contextlib.contextmanager
def _unparsable(step: str) -> Iterator[None]:
    """A server's answer that does not have the expected shape is `protocol`, not a crash
    reported as `unknown` (found by fuzzing the answers through a proxy)."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise fail("protocol", f"{step}: unparsable answer ({type(err).__name__})") from err


def _count(value: object) -> int:
    """A message count or size: a non-negative int (or its digits), else ValueError."""
    if isinstance(value, bytes | str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r:.40}")
    return value


# The FETCH answers to the exporter's own questions, in the one form servers send them:
# `n (NAME VALUE ...)` where a value is a number, a quoted date or a list of flags. Read
# directly, they cost a tenth of what imapclient's general lexer does (13 % of a run's CPU);
# anything else (a literal, another item, an escape) goes to imapclient's parser.
_QUICK_ITEMS = frozenset({b"INTERNALDATE", b"UID", b"RFC822.SIZE"})
_FETCH_LINE = re.compile(rb"(\d+) \((.*)\)", re.DOTALL)
_FETCH_ITEM = re.compile(rb' ?([A-Za-z0-9.]+) (?:(\d+)|"([^"\\]*)"|\(([^()"{}]*)\))')


def _fetch_items(
    client: imapclient.IMAPClient, ids: Sequence[int], items: Sequence[bytes]
) -> dict[int, dict[bytes, object]]:
    """imapclient's `fetch(ids, items)` (keyed by UID when `client.use_uid`), its answer read
    by `_parse_fetch_quickly` when it can be."""
    if not ids or not set(items) <= _QUICK_ITEMS:
        answer: dict[int, dict[bytes, object]] = client.fetch(list(ids), list(items))
        return answer
    imap = client._imap
    command = ["FETCH", ",".join(str(i) for i in ids), f"({' '.join(i.decode() for i in items)})"]
    if client.use_uid:
        command.insert(0, "UID")
    tag = imap._command(*command)
    typ, data = imap._command_complete("FETCH", tag)
    client._checkok("fetch", typ, data)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    quick = _parse_fetch_quickly(data, client.use_uid)
    if quick is not None:
        return quick
    return dict(parse_fetch_response(data, client.normalise_times, client.use_uid))


def _parse_fetch_quickly(
    lines: list[object], uid_is_key: bool
) -> dict[int, dict[bytes, object]] | None:
    """imapclient's `parse_fetch_response(lines, normalise_times=False, uid_is_key)` for
    answers of numbers, quoted dates and flag lists only; None for anything else."""
    parsed: dict[int, dict[bytes, object]] = {}
    if lines == [None]:
        return parsed
    for line in lines:
        if not isinstance(line, bytes):
            return None  # a literal
        whole = _FETCH_LINE.fullmatch(line)
        if whole is None:
            return None
        seq = int(whole.group(1))
        key = seq
        data: dict[bytes, object] = {b"SEQ": seq}
        body = whole.group(2)
        position = 0
        while position < len(body):
            item = _FETCH_ITEM.match(body, position)
            if item is None or (position == 0 and body[:1] == b" "):
                return None
            position = item.end()
            name, number, quoted, flags = item.groups()
            name = name.upper()
            if name == b"FLAGS" and flags is not None:
                data[name] = tuple(flags.split())
            elif name == b"INTERNALDATE" and quoted is not None:
                try:
                    data[name] = parse_to_datetime(quoted, normalise=False)
                except ValueError:
                    data[name] = None
            elif name in (b"UID", b"RFC822.SIZE") and number is not None:
                if name == b"UID" and uid_is_key:
                    key = int(number)
                else:
                    data[name] = int(number)
            else:
                return None
        parsed.setdefault(key, {}).update(data)
    return parsed


def _internaldate(item: object) -> datetime:
    """The INTERNALDATE of one FETCH item: a datetime with its time zone, else ValueError."""
    value = item[b"INTERNALDATE"]  # type: ignore[index]
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"not an INTERNALDATE: {value!r:.60}")
    return value


def _placeholder(data: dict[bytes, object]) -> bool:
    """Dovecot's answer for a message expunged meanwhile (`OK [EXPUNGEISSUED]`): INTERNALDATE
    at the Unix epoch, RFC822.SIZE 0."""
    date = data.get(b"INTERNALDATE")
    if isinstance(date, datetime) and date.tzinfo is not None and date.timestamp() == 0:
        return True
    return data.get(b"RFC822.SIZE") in (0, b"0")


def _header_bytes(data: dict[bytes, object]) -> bytes:
    """The BODY[HEADER.FIELDS (...)] item of a FETCH answer (its key echoes the field list)."""
    for key, value in data.items():
        if key.startswith(b"BODY[HEADER") and isinstance(value, bytes):
            return value
    return b""


def _authenticate_initial_response(
    imap: imaplib.IMAP4, mechanism: bytes, initial: bytes
) -> tuple[str, list[bytes]]:
    """`AUTHENTICATE <mechanism> <initial response>` (RFC 4959) on imaplib's connection: the
    tagged answer's (type, [text]). A `+` continuation (XOAUTH2's error challenge) is answered
    with an empty line, once; a second one is a protocol error."""
    tag: bytes = imap._new_tag()
    imap.send(tag + b" AUTHENTICATE " + mechanism + b" " + initial + b"\r\n")
    answered = False
    while imap.tagged_commands[tag] is None:
        if imap._get_response() is None:  # a continuation request
            if answered:
                raise imap.abort("AUTHENTICATE: a second continuation request")
            answered = True
            imap.send(b"\r\n")
    answer: tuple[str, list[bytes]] = imap.tagged_commands.pop(tag)  # type: ignore[assignment]
    typ, data = answer
    if typ == "BAD":  # worded as imaplib words it
        raise imap.error(f"AUTHENTICATE command error: {typ} {data!r}")
    return str(typ), list(data)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def pick_folder(
    listed: Sequence[tuple[tuple[bytes, ...], str]], special_use: bytes, configured: str
) -> str | None:
    """From a LIST answer: the folder with the SPECIAL-USE flag, else the configured name, else
    a usual name (Exchange lists no SPECIAL-USE: `Junk Email`, `Sent Items`)."""
    for flags, name in listed:
        if special_use in flags:
            return name
    usual = _USUAL_JUNK_NAMES if special_use == JUNK else _USUAL_SENT_NAMES
    names = {name.casefold(): name for _flags, name in listed}
    for wanted in (configured, *usual):
        if wanted.casefold() in names:
            return names[wanted.casefold()]
    return None
