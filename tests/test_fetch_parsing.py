"""The exporter reads the FETCH answers to its own questions (INTERNALDATE, UID, RFC822.SIZE)
without imapclient's general lexer. It must read them exactly as imapclient does, including
the unsolicited FLAGS a busy desk mixes in, and leave everything else to imapclient."""

from __future__ import annotations

from typing import Any

import pytest
from imapclient.response_parser import parse_fetch_response

from exporter.imap import _parse_fetch_quickly

ANSWERS: list[list[Any]] = [
    [b'1 (INTERNALDATE "29-Nov-2026 10:11:12 +0000")'],
    [
        b'1 (INTERNALDATE "29-Nov-2026 10:11:12 +0000")',
        b'2 (INTERNALDATE " 1-Nov-2026 23:59:59 -0500")',
    ],
    [b'1 (UID 7 INTERNALDATE "29-Nov-2026 10:11:12 +0100")'],
    [b'1 (INTERNALDATE "29-Nov-2026 10:11:12 +0100" UID 7)'],
    [b'3 (FLAGS (\\Seen \\Flagged))', b'3 (UID 9 RFC822.SIZE 4096)', b'4 (FLAGS ())'],
    [b'5 (RFC822.SIZE 0 UID 11)', b'5 (FLAGS (\\Deleted $Junk) UID 11)'],
    [b'2 (FLAGS (\\Seen) UID 12)', b'7 (UID 40 INTERNALDATE "01-Jan-1970 00:00:00 +0000")'],
    [b'1 (uid 3 internaldate "02-Feb-2026 02:02:02 +0000")'],
    [b'1 (INTERNALDATE "not a date")'],
    [None],
    [],
]
UNUSUAL: list[list[Any]] = [
    [(b"1 (RFC822 {3}", b"abc"), b")"],  # a literal
    [b"1 (MODSEQ (5) UID 3)"],  # an item the exporter never asks for
    [b'1 (INTERNALDATE "29-Nov-2026 \\"10:11:12 +0000")'],  # an escape in a quoted string
    [b"1  (UID 5)"],
    [b"1 ( UID 5)"],
    [b"1 (UID 5"],
    [b"x (UID 5)"],
]


def _imapclient(lines: list[Any], uid_is_key: bool) -> dict[int, dict[bytes, object]]:
    return {k: dict(v) for k, v in parse_fetch_response(lines, False, uid_is_key).items()}


@pytest.mark.parametrize("uid_is_key", [True, False])
@pytest.mark.parametrize("lines", ANSWERS, ids=range(len(ANSWERS)))
def test_read_exactly_as_imapclient_reads_it(lines: list[Any], uid_is_key: bool) -> None:
    quick = _parse_fetch_quickly(lines, uid_is_key)
    assert quick is not None
    assert quick == _imapclient(lines, uid_is_key)


def test_dates_keep_the_servers_zone_and_flags_are_bytes() -> None:
    lines = [b'4 (FLAGS (\\Seen) UID 9 INTERNALDATE " 3-Mar-2026 04:05:06 -0700")']
    answer = _parse_fetch_quickly(lines, uid_is_key=True)
    assert answer is not None
    date = answer[9][b"INTERNALDATE"]
    assert date.isoformat() == "2026-03-03T04:05:06-07:00"  # type: ignore[attr-defined]
    assert answer[9][b"FLAGS"] == (b"\\Seen",)
    assert answer[9][b"SEQ"] == 4


@pytest.mark.parametrize("lines", UNUSUAL, ids=range(len(UNUSUAL)))
def test_anything_else_is_left_to_imapclient(lines: list[Any]) -> None:
    assert _parse_fetch_quickly(lines, uid_is_key=True) is None
