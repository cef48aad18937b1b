"""`oversized`: the listing of inbox messages over the threshold, and `--move-to FOLDER --yes`
moving exactly those to a holding folder (created when missing), against Dovecot."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.conftest import run_cli, write_config
from tests.testbed import make_message

HOLD = "Oversized hold"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


INBOX = [
    # subject, sender, size, received, flags
    ("Scanned contract", "Legal <legal@fabrikam.example>", 300_000, "2026-11-26T11:00:00", []),
    ("Printer on floor 3", "Anna <anna@fabrikam.example>", 2_000, "2026-11-20T09:00:00",
     ["\\Seen"]),
    ("Screenshot of the error", "B\u00f6rje <borje@fabrikam.example>", 150_000,
     "2026-11-25T10:00:00", ["\\Seen", "\\Flagged"]),
    ("Exactly at the threshold", "Carl <carl@fabrikam.example>", 100_000, "2026-11-24T10:00:00",
     []),
]  # fmt: skip


@pytest.fixture
def desk(make_mailbox, entra, dovecot, tmp_path):
    mailbox = make_mailbox("desk")
    for subject, sender, size, received, flags in INBOX:
        dovecot.deliver(mailbox.upn, "INBOX", make_message(subject, sender, size=size),
                        internaldate=at(received), flags=flags)  # fmt: skip
    config = write_config(tmp_path, entra, dovecot, [mailbox], oversized_bytes=100_000)
    return mailbox, config


def oversized(capsys, config, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "oversized", f"--config.file={config}", "--mailbox=desk", *extra)


def test_lists_messages_over_the_threshold_largest_first(desk, dovecot, capsys):
    mailbox, config = desk
    before = dovecot.imap_snapshot(mailbox.upn, "INBOX")

    code, out, _err = oversized(capsys, config, "--output=json")

    assert code == 0
    document = json.loads(out)
    assert document["threshold_bytes"] == 100_000
    assert [(m["uid"], m["size_bytes"], m["received"], m["from"], m["subject"])
            for m in document["messages"]] == [
        (1, 300_000, "2026-11-26 11:00:00Z", "Legal <legal@fabrikam.example>", "Scanned contract"),
        (3, 150_000, "2026-11-25 10:00:00Z", "B\u00f6rje <borje@fabrikam.example>",
         "Screenshot of the error"),
    ]  # fmt: skip
    assert document["move"] is None
    assert dovecot.imap_snapshot(mailbox.upn, "INBOX") == before


def test_table(desk, capsys):
    _mailbox, config = desk

    code, out, _err = oversized(capsys, config)

    assert code == 0
    assert out.splitlines() == [
        "2 message(s) in INBOX of desk larger than 97.7 KiB",
        "",
        "UID  SIZE       RECEIVED              FROM                            SUBJECT",
        "1    293.0 KiB  2026-11-26 11:00:00Z  Legal <legal@fabrikam.example>  Scanned contract",
        "3    146.5 KiB  2026-11-25 10:00:00Z  B\u00f6rje <borje@fabrikam.example>  "
        "Screenshot of the error",
    ]


def test_move_without_yes_changes_nothing(desk, dovecot, capsys):
    mailbox, config = desk
    before = dovecot.imap_snapshot(mailbox.upn, "INBOX")

    code, out, _err = oversized(capsys, config, f"--move-to={HOLD}")

    assert code == 0
    assert out.splitlines()[-1] == (
        f"Would move 2 message(s) (UID 1, 3) from INBOX to {HOLD} (creating the folder {HOLD}); "
        "nothing changed: add --yes to move them."
    )
    assert dovecot.imap_snapshot(mailbox.upn, "INBOX") == before
    assert not dovecot.folder_dir(mailbox.upn, HOLD, create=False).exists()


def test_move_to_a_new_folder_moves_exactly_the_oversized(desk, dovecot, capsys):
    mailbox, config = desk
    before = dovecot.imap_snapshot(mailbox.upn, "INBOX")

    code, out, _err = oversized(capsys, config, f"--move-to={HOLD}", "--yes", "--output=json")

    assert code == 0
    assert json.loads(out)["move"] == {"to": HOLD, "create_folder": True, "moved": True,
                                       "uids": [1, 3], "method": "MOVE"}  # fmt: skip
    after = dovecot.imap_snapshot(mailbox.upn, "INBOX")
    assert after == {uid: before[uid] for uid in (2, 4)}
    held = dovecot.imap_snapshot(mailbox.upn, HOLD)
    assert sorted(held.values()) == sorted(before[uid] for uid in (1, 3))  # flags and dates kept

    # Again: nothing left to move, the folder exists.
    code, out, _err = oversized(capsys, config, f"--move-to={HOLD}", "--yes")
    assert code == 0
    assert out.splitlines() == [
        "0 message(s) in INBOX of desk larger than 97.7 KiB",
        f"Nothing to move to {HOLD}.",
    ]


def test_move_to_an_existing_folder(desk, dovecot, capsys):
    mailbox, config = desk
    dovecot.create_folder(mailbox.upn, "Hold")

    code, out, _err = oversized(capsys, config, "--move-to=Hold", "--yes")

    assert code == 0
    assert out.splitlines()[-1] == "Moved 2 message(s) (UID 1, 3) from INBOX to Hold (MOVE)."
    assert len(dovecot.imap_snapshot(mailbox.upn, "Hold")) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--yes"], "oversized: --yes goes with --move-to FOLDER\n"),
        (["--move-to=inbox", "--yes"], "oversized: --move-to inbox is the inbox itself\n"),
    ],
)
def test_usage_errors_change_nothing(desk, dovecot, capsys, argv, message):
    mailbox, config = desk
    before = dovecot.imap_snapshot(mailbox.upn, "INBOX")

    code, _out, err = oversized(capsys, config, *argv)

    assert (code, err) == (2, message)
    assert dovecot.imap_snapshot(mailbox.upn, "INBOX") == before
