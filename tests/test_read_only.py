"""The exporter never changes a mailbox: flags, UIDs and dates are identical after many runs."""

from __future__ import annotations

from tests.conftest import check_json, results_by_check, write_config
from tests.content import seed_standard


def test_many_runs_change_nothing(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box")
    expected = seed_standard(dovecot, mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox], oversized_bytes="100KB")
    before = {f: dovecot.imap_snapshot(mailbox.upn, f) for f in ("INBOX", "Junk Email")}
    assert len(before["INBOX"]) == 4 and len(before["Junk Email"]) == 2

    for _ in range(5):
        code, document = check_json(capsys, config)
        assert code == 0
        assert results_by_check(document, "box")["inbox"]["unseen_messages"] == (
            expected.inbox_unseen
        )

    after = {f: dovecot.imap_snapshot(mailbox.upn, f) for f in ("INBOX", "Junk Email")}
    assert after == before
