"""A mail loop: thousands of messages on the oldest day must not break the inbox check (a FETCH
of every number is refused by servers) and the answers stay right."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.conftest import check_json, results_by_check, write_config
from tests.testbed import make_message


def test_thousands_of_messages_on_the_oldest_day(make_mailbox, entra, dovecot, tmp_path,
                                                 capsys):
    mailbox = make_mailbox("loop")
    day = datetime(2026, 11, 20, tzinfo=UTC)
    body = make_message("Auto-reply: out of office", "loop@fabrikam.example", size=1_500)
    for i in range(12_000):
        dovecot.deliver(mailbox.upn, "INBOX", body, internaldate=day + timedelta(seconds=600 + i))
    rescued_at = day + timedelta(minutes=5)  # moved in last, oldest of all
    big = make_message("Scan", "a@fabrikam.example", size=4_000)
    dovecot.deliver(mailbox.upn, "INBOX", big, internaldate=rescued_at)
    config = write_config(tmp_path, entra, dovecot, [mailbox], oversized_bytes=1_000)

    code, document = check_json(capsys, config)

    assert code == 0, document
    results = results_by_check(document, "loop")
    assert results["inbox"]["messages"] == 12_001
    assert results["inbox"]["oldest_message_timestamp_seconds"] == rescued_at.timestamp()
    assert results["oversized"]["oversized_messages"] == 12_001
    assert results["oversized"]["largest_bytes"] == 4_000
