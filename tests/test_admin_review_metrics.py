"""`junk-review --ack` records the review; the exporter's `junk` check then exposes when it was
and how many Junk messages arrived since (by UID), against a running exporter and Dovecot."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime

from tests.conftest import check_json, results_by_check, run_cli, write_config
from tests.testbed import make_message

JUNK = "Junk Email"
REVIEWED = "o365_mailbox_junk_last_review_timestamp_seconds"
UNREVIEWED = "o365_mailbox_junk_unreviewed_messages"


def deliver_junk(dovecot, upn: str, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        dovecot.deliver(upn, JUNK, make_message(f"Offer {i}", "offers@spam.example"),
                        internaldate=datetime.now(UTC))  # fmt: skip


def review(capsys, config, *extra: str) -> dict:
    code, out, err = run_cli(capsys, "junk-review", f"--config.file={config}", "--mailbox=box",
                             "--output=json", *extra)  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def test_ack_writes_the_review_state_privately(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box")
    deliver_junk(dovecot, mailbox.upn, 3)
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    before = dovecot.imap_snapshot(mailbox.upn, JUNK)

    document = review(capsys, config, "--ack")

    path = tmp_path / "state" / "review" / "box.json"
    state = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert state["folder"] == JUNK
    assert (state["uidvalidity"], state["uidnext"], state["messages"]) == (
        document["uidvalidity"], 4, 3
    )  # fmt: skip
    assert document["ack"]["path"] == str(path)
    assert document["ack"]["reviewed_at_timestamp_seconds"] == state["reviewed_at"]
    assert dovecot.imap_snapshot(mailbox.upn, JUNK) == before  # --ack changes no mailbox

    # The one-shot `check` shows the review too.
    deliver_junk(dovecot, mailbox.upn, 2, first=3)
    code, result = check_json(capsys, config)
    junk = results_by_check(result, "box")["junk"]
    assert code == 0
    assert junk["junk_last_review_timestamp_seconds"] == round(state["reviewed_at"])
    assert junk["junk_unreviewed_messages"] == 2


def test_review_metrics_follow_acks_arrivals_and_rescues(
    make_mailbox, entra, dovecot, tmp_path, capsys, exporter_process
):
    mailbox = make_mailbox("box")
    deliver_junk(dovecot, mailbox.upn, 3)
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="1s")
    exporter = exporter_process(config)
    box = {"mailbox": "box"}
    exporter.wait_for("o365_mailbox_folder_messages", 3.0, folder="junk", **box)
    assert exporter.value(REVIEWED, **box) is None  # absent until a first --ack
    assert exporter.value(UNREVIEWED, **box) is None

    first = review(capsys, config, "--ack")["ack"]["reviewed_at_timestamp_seconds"]
    assert exporter.wait_for(REVIEWED, first, **box) == first
    exporter.wait_for(UNREVIEWED, 0.0, **box)

    deliver_junk(dovecot, mailbox.upn, 2, first=3)
    exporter.wait_for(UNREVIEWED, 2.0, **box)

    # A message rescued from Junk no longer waits for review.
    listed = review(capsys, config)["messages"]
    newest = max(m["uid"] for m in listed)
    review(capsys, config, f"--rescue={newest}", "--yes")
    exporter.wait_for(UNREVIEWED, 1.0, **box)

    second = review(capsys, config, "--ack")["ack"]["reviewed_at_timestamp_seconds"]
    assert second > first
    exporter.wait_for(REVIEWED, second, **box)
    exporter.wait_for(UNREVIEWED, 0.0, **box)

    # UIDNEXT moves past the review but the only new message left again: `UID SEARCH UID n:*`
    # answers the highest UID below n, which must not count.
    deliver_junk(dovecot, mailbox.upn, 1, first=5)
    exporter.wait_for(UNREVIEWED, 1.0, **box)
    newest = max(m["uid"] for m in review(capsys, config)["messages"])
    review(capsys, config, f"--rescue={newest}", "--yes")
    exporter.wait_for("o365_mailbox_folder_messages", 4.0, folder="junk", **box)
    exporter.wait_for(UNREVIEWED, 0.0, **box)

    # A new UIDVALIDITY (the folder was recreated): every message is unreviewed.
    dovecot.reset_mailbox(mailbox.upn)
    deliver_junk(dovecot, mailbox.upn, 3)
    exporter.wait_for(UNREVIEWED, 3.0, **box)
    assert exporter.value(REVIEWED, **box) == second


def test_an_unreadable_review_file_does_not_fail_the_junk_check(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    path = tmp_path / "state" / "review" / "box.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")

    code, result = check_json(capsys, config)

    junk = results_by_check(result, "box")["junk"]
    assert code == 0 and junk["success"] is True
    assert "junk_unreviewed_messages" not in junk
