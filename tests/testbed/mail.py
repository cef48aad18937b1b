"""Message builders and Maildir helpers for the test bed.

Messages are built with CRLF line endings, so the byte length of a message is exactly the
``RFC822.SIZE`` that Dovecot (and Exchange) report for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr

__all__ = [
    "MAILDIR_FLAGS",
    "address_value",
    "header_value",
    "maildir_info",
    "make_message",
    "virtual_size",
]

#: IMAP system flag -> Maildir info letter (the ``:2,`` suffix must list them sorted).
MAILDIR_FLAGS: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}

_FLAGS_LOWER = {name.lower(): letter for name, letter in MAILDIR_FLAGS.items()}
_LINE = b"x" * 76 + b"\r\n"  # a 78-byte filler line


def header_value(value: str) -> str:
    """Encode a header value as RFC 2047 when it is not plain ASCII."""
    try:
        value.encode("ascii")
    except UnicodeEncodeError:
        return Header(value, "utf-8").encode()
    return value


def address_value(value: str) -> str:
    """An address header value; a non-ASCII display name is RFC 2047-encoded."""
    name, addr = parseaddr(value)
    if not addr:
        return header_value(value)
    return formataddr((name, addr), charset="utf-8")


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def make_message(
    subject: str,
    sender: str,
    size: int | None = None,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: str | bytes = "This is a test message.\r\n",
    *,
    to: str = "servicedesk@contoso.com",
    date: datetime | None = None,
    message_id: str | None = None,
) -> bytes:
    """Build an RFC 5322 message (CRLF line endings).

    ``headers`` are extra header fields added after the standard ones (for instance
    ``X-Forefront-Antispam-Report``); values are written as given (ASCII, or RFC 2047-encoded
    when not). With ``size`` the body is padded with filler lines so the message is exactly
    ``size`` bytes long; a ``size`` smaller than the unpadded message raises ``ValueError``.
    """
    when = date or datetime.now(UTC)
    fields: list[tuple[str, str]] = [
        ("From", address_value(sender)),
        ("To", address_value(to)),
        ("Subject", header_value(subject)),
        ("Date", format_datetime(when)),
        ("Message-ID", message_id or f"<{uuid.uuid4().hex}@testbed.invalid>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    extra = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    fields.extend((name, header_value(value)) for name, value in extra)
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)
    text = _crlf(body.encode("utf-8") if isinstance(body, str) else body)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    message = head + b"\r\n" + text
    if size is None:
        return message
    missing = size - len(message)
    if missing < 0:
        raise ValueError(f"message needs at least {len(message)} bytes, asked for {size}")
    return message + _filler(missing) if missing != 1 else message[:-2] + b"x\r\n"


def _filler(n: int) -> bytes:
    """``n`` bytes of CRLF-terminated lines (n != 1)."""
    if n == 0:
        return b""
    full, rest = divmod(n, len(_LINE))
    if rest == 0:
        return _LINE * full
    if rest >= 2:
        return _LINE * full + b"x" * (rest - 2) + b"\r\n"
    # rest == 1: turn the last full line plus one byte into two lines (40 + 39 bytes).
    return _LINE * (full - 1) + b"x" * 38 + b"\r\n" + b"x" * 37 + b"\r\n"


def virtual_size(message: bytes) -> int:
    """The size with CRLF line endings (Maildir ``W=``, IMAP ``RFC822.SIZE``)."""
    return len(message) + message.count(b"\n") - message.count(b"\r\n")


def maildir_info(flags: Iterable[str]) -> str:
    """The ``:2,`` info suffix for IMAP system flags (``\\Recent`` is ignored)."""
    letters = set()
    for flag in flags:
        if flag == "\\Recent":
            continue
        letter = _FLAGS_LOWER.get(flag.lower())
        if letter is None:
            raise ValueError(f"unsupported flag {flag!r}: only IMAP system flags")
        letters.add(letter)
    return ":2," + "".join(sorted(letters))
