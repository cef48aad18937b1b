"""The real checks against Exchange Online's IMAP wording (a relay in front of Dovecot).

Exchange words things differently from Dovecot: its own greeting and capability list, no
SPECIAL-USE attributes in LIST (Junk and Sent are found by their names), a refused token is
`NO AUTHENTICATE failed.`, and a login that succeeds for a mailbox the principal cannot open
("authenticated but not connected") answers every later command with
`BAD User is authenticated but not connected.`.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.failures import REASON_HINTS
from tests.conftest import ROOT, check_json, results_by_check, write_config
from tests.content import seed_standard
from tests.testbed import make_message
from tests.testbed.exchange_imap import EXCHANGE_CAPABILITIES, EXCHANGE_GREETING, ExchangeImapRelay

# The one classification of "authenticated but not connected": reason, code and hint, the same
# in the exporter, docs/runbook.md and the alert rule's description.
NOT_CONNECTED_HINT = (
    "Authenticated but not connected: for app-only access check the service principal's "
    "object ID and its FullAccess permission on the mailbox."
)
CHECKS = ("token", "imap_login", "inbox", "oversized", "junk")


@pytest.fixture(scope="module")
def exchange(ca: Any, dovecot: Any) -> Iterator[ExchangeImapRelay]:
    relay = ExchangeImapRelay(ca, "127.0.0.1", dovecot.port).start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def relay(exchange: ExchangeImapRelay) -> Iterator[ExchangeImapRelay]:
    exchange.set_mode("normal")
    exchange.reset_counters()
    yield exchange
    exchange.set_mode("normal")


def _config(tmp_path: Path, entra: Any, dovecot: Any, mailbox: Any, port: int) -> Path:
    return write_config(
        tmp_path, entra, dovecot, [mailbox], oversized_bytes="100KB",
        imap={"host": "127.0.0.1", "port": port},
    )  # fmt: skip


class _Wire:
    """A raw IMAPS conversation with the relay, line by line."""

    def __init__(self, port: int, ca_file: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buffer = b""

    def read_until(self, end: bytes) -> bytes:
        while end not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, self.buffer
            self.buffer += chunk
        answer, _, self.buffer = self.buffer.partition(end)
        return answer + end

    def command(self, tag: bytes, text: bytes) -> bytes:
        """Send `tag text`, return everything up to and including the tagged completion."""
        self.sock.sendall(tag + b" " + text + b"\r\n")
        return self.answer(tag)

    def answer(self, tag: bytes) -> bytes:
        """Everything up to and including the completion tagged `tag`."""
        answer = b""
        while True:
            line = self.read_until(b"\r\n")
            answer += line
            if line.startswith(tag + b" "):
                return answer

    def close(self) -> None:
        self.sock.close()


def test_the_relay_answers_like_exchange(
    relay: ExchangeImapRelay, entra: Any, dovecot: Any, make_mailbox: Any
) -> None:
    """Greeting, CAPABILITY, AUTHENTICATE and LIST worded as Exchange's; literals byte-exact."""
    mailbox = make_mailbox("wording")
    seed_standard(dovecot, mailbox.upn)
    # A header that looks like what the relay rewrites: inside a literal it must stay as is.
    tricky = "[CAPABILITY IMAP4rev1 SORT] (\\Junk) * CAPABILITY IMAP4rev1"
    dovecot.deliver(
        mailbox.upn, "INBOX", make_message(tricky, "a@fabrikam.example"),
        internaldate=datetime(2026, 11, 28, 9, 0, tzinfo=UTC),
    )  # fmt: skip
    token = entra.mint_access_token(mailbox.upn)
    sasl = base64.b64encode(f"user={mailbox.upn}\x01auth=Bearer {token}\x01\x01".encode())
    wire = _Wire(relay.port, entra.ca_file)
    try:
        assert wire.read_until(b"\r\n") == EXCHANGE_GREETING
        answer = wire.command(b"a1", b"CAPABILITY")
        assert answer.split(b"\r\n")[0] == b"* CAPABILITY " + EXCHANGE_CAPABILITIES
        assert wire.command(b"a2", b"AUTHENTICATE XOAUTH2 " + sasl) == (
            b"a2 OK AUTHENTICATE completed.\r\n"
        )
        listed = wire.command(b"a3", b'LIST "" "*"')
        assert b'"Junk Email"' in listed and b'"Sent Items"' in listed
        assert b"\\Junk" not in listed and b"\\Sent" not in listed, listed
        # A literal from the client (LITERAL+), relayed byte-exact.
        status = wire.command(b"a4", b"STATUS {10+}\r\nJunk Email (MESSAGES)")
        assert status.startswith(b'* STATUS "Junk Email" (MESSAGES 2)\r\n'), status
        # A synchronizing literal: the relay passes the server's "+" before the literal.
        wire.sock.sendall(b"a4s STATUS {10}\r\n")
        assert wire.read_until(b"\r\n").startswith(b"+ ")
        wire.sock.sendall(b"Junk Email (MESSAGES)\r\n")
        status = wire.answer(b"a4s")
        assert status.startswith(b'* STATUS "Junk Email" (MESSAGES 2)\r\n'), status
        # A literal from the server: the tricky header, byte-exact.
        assert wire.command(b"a5", b"EXAMINE INBOX").endswith(b"\r\n")
        fetched = wire.command(b"a6", b"FETCH 5 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        match = re.match(rb"\* 5 FETCH \(BODY\[HEADER\.FIELDS \(SUBJECT\)\] \{(\d+)\}\r\n", fetched)
        assert match is not None, fetched
        literal = fetched[match.end() : match.end() + int(match.group(1))]
        assert literal == b"Subject: " + tricky.encode() + b"\r\n\r\n"
        wire.command(b"a7", b"LOGOUT")
    finally:
        wire.close()
    assert relay.commands["LIST"] == 1 and relay.commands["FETCH"] == 1


def test_every_check_passes_through_exchange(
    relay: ExchangeImapRelay, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Junk and Sent are found by their names (`Junk Email`, `Sent Items`): no \\Junk listed."""
    mailbox = make_mailbox("exchange")
    expected = seed_standard(dovecot, mailbox.upn)
    dovecot.deliver(
        mailbox.upn, "Sent Items", make_message("Re: VPN broken", mailbox.upn),
        internaldate=datetime(2026, 11, 27, 8, 0, tzinfo=UTC),
    )  # fmt: skip
    code, document = check_json(capsys, _config(tmp_path, entra, dovecot, mailbox, relay.port))
    results = results_by_check(document, "exchange")
    assert code == 0, document
    assert {name: results[name]["success"] for name in CHECKS} == dict.fromkeys(CHECKS, True)
    assert results["inbox"]["messages"] == expected.inbox_messages
    assert results["inbox"]["unseen_messages"] == expected.inbox_unseen
    assert results["inbox"]["oldest_message_timestamp_seconds"] == expected.inbox_oldest
    assert results["inbox"]["sent"]["messages"] == 1  # "Sent Items", found by its name
    assert results["oversized"]["oversized_messages"] == expected.oversized_count
    assert results["oversized"]["largest_bytes"] == expected.oversized_largest
    assert results["junk"]["messages"] == expected.junk_messages  # "Junk Email", by its name
    assert results["junk"]["oldest_message_timestamp_seconds"] == expected.junk_oldest
    assert relay.commands["AUTHENTICATE"] == 1 and relay.commands["LIST"] == 1


def test_a_refused_token(
    relay: ExchangeImapRelay, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`NO AUTHENTICATE failed.`: auth_rejected, code NO, the permissions hint."""
    mailbox = make_mailbox("refused")
    relay.set_mode("refuse_token")
    code, document = check_json(capsys, _config(tmp_path, entra, dovecot, mailbox, relay.port))
    results = results_by_check(document, "refused")
    assert code == 1
    login = results["imap_login"]
    assert (login["success"], login["reason"], login["code"]) == (False, "auth_rejected", "NO")
    assert "AUTHENTICATE failed." in login["message"]
    assert login["hint"] == REASON_HINTS["auth_rejected"]
    assert [results[name]["reason"] for name in ("inbox", "oversized", "junk")] == [
        "dependency"
    ] * 3
    assert relay.commands["AUTHENTICATE"] == 1


def test_authenticated_but_not_connected(
    relay: ExchangeImapRelay, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The login succeeds, EXAMINE gets `BAD User is authenticated but not connected.`:
    auth_rejected, code BAD, the service principal / FullAccess hint."""
    mailbox = make_mailbox("notconnected")
    seed_standard(dovecot, mailbox.upn)
    relay.set_mode("not_connected")
    code, document = check_json(capsys, _config(tmp_path, entra, dovecot, mailbox, relay.port))
    results = results_by_check(document, "notconnected")
    assert code == 1
    login = results["imap_login"]
    assert (login["success"], login["reason"], login["code"]) == (False, "auth_rejected", "BAD")
    assert "User is authenticated but not connected." in login["message"]
    assert login["hint"] == NOT_CONNECTED_HINT
    assert [results[name]["reason"] for name in ("inbox", "oversized", "junk")] == [
        "dependency"
    ] * 3
    assert relay.commands["AUTHENTICATE"] == 1 and relay.commands["EXAMINE"] == 1


def test_runbook_and_alert_agree_on_not_connected() -> None:
    """The runbook and the alert text give "authenticated but not connected" the exporter's
    classification (auth_rejected, code BAD) and its hint."""
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    section = runbook.split("## O365MailboxImapLoginFailing", 1)[1].split("\n## ", 1)[0]
    assert "`auth_rejected` with code `BAD` (`BAD User is authenticated but not connected.`)" in (
        " ".join(section.split())
    )
    assert "`protocol` (`BAD User is authenticated" not in section
    rules = yaml.safe_load((ROOT / "alerts" / "o365-mailbox.rules.yml").read_text())
    (alert,) = [
        rule for group in rules["groups"] for rule in group["rules"]
        if rule.get("alert") == "O365MailboxImapLoginFailing"
    ]  # fmt: skip
    description = " ".join(alert["annotations"]["description"].split())
    assert '(eq $labels.reason "auth_rejected") (eq $labels.code "BAD")' in description
    assert NOT_CONNECTED_HINT in description
    assert 'eq $labels.reason "protocol"' not in description
