"""`junk-review` against Dovecot: the listing, its order and verdicts, no flag changes without
`--yes`, `--rescue` (MOVE and the COPY + \\Deleted + UID EXPUNGE fallback), the HTML report."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from exporter.admin import junk_review
from exporter.admin.imap_session import AdminImapSession
from exporter.auth import tls_context
from exporter.cli import main
from exporter.config import load_config
from tests.conftest import run_cli, write_config
from tests.testbed import make_message
from tests.testbed.spam import JunkSample, authentication_results

JUNK = "Junk Email"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# What the desk's inbox holds: a partner (its own domain) and a customer on Gmail.
INBOX_SENDERS = [
    ("Ticket 4711: printer", "Anna Virtanen <anna.virtanen@partner.example>"),
    ("Invoice question", "Bob Smith <bob.smith@gmail.com>"),
]

# The Junk folder, and what the review must say, in the order it must list them.
SAMPLES = [
    # likely false positives: low SCL + DMARC pass, or a known sender passing DMARC
    JunkSample("Re: Ticket 4711 printer still offline", "Mikko Laine <mikko.laine@partner.example>",
               at("2026-11-20T09:00:00"), scl=1),
    JunkSample("Re: Invoice question", "Bob Smith <bob.smith@gmail.com>",
               at("2026-11-22T10:00:00"), scl=5),
    JunkSample("Your order 5531 has shipped", "Shop <orders@shop.example>",
               at("2026-11-21T08:00:00"), scl=1, bcl=3),
    # check: one signal only
    JunkSample("Meeting next week?", "Carol <carol.jones@gmail.com>",
               at("2026-11-23T11:00:00"), scl=5),
    JunkSample("Password reset failed", "IT <it@vendor.example>", at("2026-11-24T12:00:00"),
               scl=1, spf="fail", dkim="fail", dmarc="fail",
               upstream_results=authentication_results("vendor.example", "198.51.100.7")),
    # spam
    JunkSample("Your mailbox is full", "Security <security@partner.example>",
               at("2026-11-25T13:00:00"), scl=9, spf="softfail", dkim="none", dmarc="fail"),
    JunkSample("You won 1,000,000", "Winner <winner@lottery.example>", at("2026-11-26T14:00:00"),
               scl=9, bcl=8, spf="fail", dkim="none", dmarc="fail"),
]  # fmt: skip

EXPECTED = [
    # subject, verdict, (scl, bcl, sfv, spf, dkim, dmarc)
    ("Re: Ticket 4711 printer still offline", "likely false positive",
     (1, 0, "NSPM", "pass", "pass", "pass")),
    ("Re: Invoice question", "likely false positive", (5, 0, "SPM", "pass", "pass", "pass")),
    ("Your order 5531 has shipped", "likely false positive",
     (1, 3, "NSPM", "pass", "pass", "pass")),
    ("Meeting next week?", "check", (5, 0, "SPM", "pass", "pass", "pass")),
    # the topmost Authentication-Results (Exchange's) counts, not the forwarder's below it
    ("Password reset failed", "check", (1, 0, "NSPM", "fail", "fail", "fail")),
    # a known domain failing DMARC is a spoof, not a reason to look twice
    ("Your mailbox is full", "spam", (9, 0, "SPM", "softfail", "none", "fail")),
    ("You won 1,000,000", "spam", (9, 8, "SPM", "fail", "none", "fail")),
]  # fmt: skip


def seed(dovecot, upn: str) -> None:
    for subject, sender in INBOX_SENDERS:
        dovecot.deliver(upn, "INBOX", make_message(subject, sender),
                        internaldate=at("2026-11-01T08:00:00"), flags=["\\Seen"])  # fmt: skip
    for i, sample in enumerate(SAMPLES):
        flags = ["\\Seen"] if i % 2 else []  # some read in Outlook, some not
        dovecot.deliver(upn, JUNK, sample.message(), internaldate=sample.received, flags=flags)


def snapshot(dovecot, upn: str) -> dict:
    return {folder: dovecot.imap_snapshot(upn, folder) for folder in ("INBOX", JUNK)}


@pytest.fixture
def desk(make_mailbox, entra, dovecot, tmp_path):
    mailbox = make_mailbox("desk")
    seed(dovecot, mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    return mailbox, config


def review_json(capsys, config, *extra: str) -> tuple[int, dict, str]:
    code, out, err = run_cli(capsys, "junk-review", f"--config.file={config}", "--mailbox=desk",
                             "--output=json", *extra)  # fmt: skip
    return code, json.loads(out), err


def uid_of(document: dict, subject: str) -> int:
    return next(m["uid"] for m in document["messages"] if m["subject"] == subject)


def test_lists_every_junk_message_likely_false_positives_first(desk, dovecot, capsys):
    mailbox, config = desk
    before = snapshot(dovecot, mailbox.upn)

    code, document, _err = review_json(capsys, config)

    assert code == 0
    assert document["folder"] == JUNK
    fields = ("scl", "bcl", "sfv", "spf", "dkim", "dmarc")
    listed = [
        (m["subject"], m["verdict"], tuple(m[f] for f in fields)) for m in document["messages"]
    ]
    assert listed == EXPECTED
    first = document["messages"][0]
    assert first["from"] == "Mikko Laine <mikko.laine@partner.example>"
    assert first["from_domain"] == "partner.example"
    assert first["received"] == "2026-11-20 09:00:00Z"
    assert first["size_bytes"] == len(SAMPLES[0].message())
    assert first["dest"] == "J"
    assert first["reasons"] == ["SCL 1 (not spam)", "DMARC pass", "sender domain seen in the inbox"]
    bob = document["messages"][1]
    assert bob["reasons"] == ["SCL 5 (spam)", "DMARC pass", "sender seen in the inbox"]
    # Gmail is freemail: another Gmail sender is not "known" because Bob writes to the desk.
    assert "sender domain seen in the inbox" not in document["messages"][3]["reasons"]
    spoof = document["messages"][5]
    assert spoof["reasons"] == [
        "SCL 9 (high confidence spam)",
        "DMARC fail",
        "sender domain seen in the inbox, but DMARC fail: spoofed?",
    ]
    assert document["ack"] is None and document["rescue"] is None
    assert snapshot(dovecot, mailbox.upn) == before  # BODY.PEEK: nothing marked read


def test_table_output_is_sorted_and_safe_for_a_terminal(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("desk")
    seed(dovecot, mailbox.upn)
    hostile = make_message(
        "\x1b[2J\x1b[31mURGENT\x1b[0m r\u00e9sum\u00e9",
        "x@evil.example",
        headers=[("X-Forefront-Antispam-Report", "SCL:9;SFV:SPM;")],
    )
    dovecot.deliver(mailbox.upn, JUNK, hostile, internaldate=at("2026-11-27T00:00:00"))
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    code, out, _err = run_cli(capsys, "junk-review", f"--config.file={config}", "--mailbox=desk")

    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("Junk review of desk: 8 message(s) in Junk Email, likely false "
                        "positives first")  # fmt: skip
    assert lines[2].split()[:2] == ["UID", "RECEIVED"]
    subjects_in_order = [s for s, _v, _r in EXPECTED]
    positions = [out.index(s[:30]) for s in subjects_in_order]
    assert positions == sorted(positions)
    assert "\x1b" not in out
    assert "URGENT r\u00e9sum\u00e9" in out  # RFC 2047 decoded, control characters removed
    assert "1/0/NSPM" not in out  # columns stay apart
    assert "pass/pass/pass" in out


def test_rescue_without_yes_changes_nothing(desk, dovecot, capsys):
    mailbox, config = desk
    _code, document, _err = review_json(capsys, config)
    mikko = uid_of(document, EXPECTED[0][0])
    before = snapshot(dovecot, mailbox.upn)

    code, out, _err = run_cli(capsys, "junk-review", f"--config.file={config}", "--mailbox=desk",
                              f"--rescue={mikko}")  # fmt: skip

    assert code == 0
    assert (f"Would move 1 message(s) from Junk Email to INBOX (nothing changed; add --yes to "
            f"move them):\n  UID {mikko}: Mikko Laine <mikko.laine@partner.example>: "
            "Re: Ticket 4711 printer still offline") in out  # fmt: skip
    assert snapshot(dovecot, mailbox.upn) == before


def test_rescue_moves_exactly_the_chosen_messages(desk, dovecot, capsys):
    mailbox, config = desk
    _code, document, _err = review_json(capsys, config)
    chosen = [uid_of(document, EXPECTED[0][0]), uid_of(document, EXPECTED[2][0])]
    before = snapshot(dovecot, mailbox.upn)

    code, result, _err = review_json(capsys, config, f"--rescue={chosen[0]},{chosen[1]}", "--yes")

    assert code == 0
    assert result["rescue"] == {"uids": chosen, "from": JUNK, "to": "INBOX", "moved": True,
                                "method": "MOVE"}  # fmt: skip
    after = snapshot(dovecot, mailbox.upn)
    assert after[JUNK] == {uid: info for uid, info in before[JUNK].items() if uid not in chosen}
    new_in_inbox = {uid: info for uid, info in after["INBOX"].items() if uid not in before["INBOX"]}
    assert sorted((i.internaldate, i.size, i.flags) for i in new_in_inbox.values()) == sorted(
        (before[JUNK][uid].internaldate, before[JUNK][uid].size, before[JUNK][uid].flags)
        for uid in chosen
    )
    assert {u: after["INBOX"][u] for u in before["INBOX"]} == before["INBOX"]


def test_rescue_of_a_uid_not_in_junk_moves_nothing(desk, dovecot, capsys):
    mailbox, config = desk
    _code, document, _err = review_json(capsys, config)
    mikko = uid_of(document, EXPECTED[0][0])
    before = snapshot(dovecot, mailbox.upn)

    code, out, err = run_cli(capsys, "junk-review", f"--config.file={config}", "--mailbox=desk",
                             f"--rescue={mikko},999", "--yes")  # fmt: skip

    assert code == 2
    assert out == ""
    assert "junk-review: --rescue: UID 999 not in Junk Email" in err
    assert "nothing was moved" in err
    assert snapshot(dovecot, mailbox.upn) == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rescue=0"], "argument --rescue: '0': UIDs are positive numbers, like 12,15"),
        (["--rescue=3,x"], "argument --rescue: '3,x': UIDs are numbers, like 12,15"),
    ],
)
def test_rescue_usage_errors(desk, capsys, argv, expected):
    _mailbox, config = desk
    with pytest.raises(SystemExit) as exited:
        main(["junk-review", f"--config.file={config}", "--mailbox=desk", *argv])
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_yes_without_rescue_is_a_usage_error(desk, dovecot, capsys):
    mailbox, config = desk
    before = snapshot(dovecot, mailbox.upn)
    code, out, err = run_cli(capsys, "junk-review", f"--config.file={config}", "--mailbox=desk",
                             "--yes")  # fmt: skip
    assert (code, out, err) == (2, "", "junk-review: --yes goes with --rescue UID,...\n")
    assert snapshot(dovecot, mailbox.upn) == before


def test_fallback_without_move_expunges_only_the_chosen_uids(desk, dovecot, entra, capsys):
    """COPY + STORE \\Deleted + UID EXPUNGE: a message someone else marked \\Deleted stays."""
    mailbox, config = desk
    marked = make_message("Marked for deletion by a colleague", "old@spam.example")
    dovecot.deliver(mailbox.upn, JUNK, marked, internaldate=at("2026-11-02T00:00:00"),
                    flags=["\\Deleted"])  # fmt: skip
    _code, document, _err = review_json(capsys, config)
    mikko = uid_of(document, EXPECTED[0][0])
    before = snapshot(dovecot, mailbox.upn)
    loaded = load_config(config)
    stdout, stderr = io.StringIO(), io.StringIO()
    options = junk_review.ReviewOptions(output="json", rescue=(mikko,), yes=True, use_move=False)

    code = junk_review.run(loaded, loaded.mailbox("desk"), options, stdout, stderr)

    assert code == 0, stderr.getvalue()
    assert json.loads(stdout.getvalue())["rescue"]["method"] == "COPY+EXPUNGE"
    after = snapshot(dovecot, mailbox.upn)
    assert after[JUNK] == {uid: info for uid, info in before[JUNK].items() if uid != mikko}
    assert any("\\Deleted" in info.flags for info in after[JUNK].values())
    (rescued,) = [info for uid, info in after["INBOX"].items() if uid not in before["INBOX"]]
    assert (rescued.internaldate, rescued.size) == (
        before[JUNK][mikko].internaldate,
        before[JUNK][mikko].size,
    )
    assert "\\Deleted" not in rescued.flags


def test_move_refuses_without_move_or_uidplus(desk, dovecot, entra):
    """The seam: a server without MOVE and UIDPLUS gets nothing changed, not a plain EXPUNGE."""
    mailbox, _config = desk

    class NoUidPlus(AdminImapSession):
        def capabilities(self) -> frozenset[str]:
            return super().capabilities() - {"MOVE", "UIDPLUS"}

    session = NoUidPlus.connect("127.0.0.1", dovecot.port, tls_context(dovecot.ca_file), 5)
    before = snapshot(dovecot, mailbox.upn)
    try:
        session.login(mailbox.upn, entra.mint_access_token(mailbox.upn))
        session.select(JUNK)
        uid = min(before[JUNK])
        with pytest.raises(Exception, match="neither MOVE nor UIDPLUS"):
            session.move([uid], "INBOX")
    finally:
        session.logout()
    assert snapshot(dovecot, mailbox.upn) == before


def test_html_report_is_self_contained_and_escaped(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("desk")
    seed(dovecot, mailbox.upn)
    hostile = make_message(
        '<script>alert("x")</script> & <img src=x>',
        '"Eve & Co" <eve@evil.example>',
        headers=[("X-Forefront-Antispam-Report", "SCL:9;SFV:SPM;")],
    )
    dovecot.deliver(mailbox.upn, JUNK, hostile, internaldate=at("2026-11-27T00:00:00"))
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    before = snapshot(dovecot, mailbox.upn)

    code, page, _err = run_cli(capsys, "junk-review", f"--config.file={config}", "--mailbox=desk",
                               "--output=html")  # fmt: skip

    assert code == 0
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page
    for forbidden in ("<script", "<img", "<link", "<iframe", "url("):
        assert forbidden not in page
    assert not re.search(r"<[^>]*\s(src|href)=", page)  # no element loads anything
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x&gt;" in page
    assert "Eve &amp; Co" in page
    assert page.count("<tr>") == 1 + len(SAMPLES) + 1  # header row + every message
    assert (
        page.index("Re: Ticket 4711")
        < page.index("Meeting next week?")
        < page.index("You won 1,000,000")
    )
    assert "--rescue " in page  # the command for the likely false positives
    assert f"junk-review --config.file={config} --mailbox desk --rescue " in page
    assert snapshot(dovecot, mailbox.upn) == before

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed: the page was not rendered")
    report = tmp_path / "junk-review.html"
    report.write_text(page)
    png = tmp_path / "junk-review.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1400,1000", f"--screenshot={png}", report.as_uri()],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a rendered table, not a blank page
