"""The IMAP commands of one mailbox run, counted on the wire against the real Dovecot (and the
Exchange-like relay): their number and their order (issue 13: at most 10 after the login).

A recording TLS relay (the Exchange relay's transparent `dovecot` personality) sits between
the exporter and Dovecot and keeps every tagged command line in order.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.auth import tls_context
from exporter.config import load_config
from exporter.failures import CheckFailed
from exporter.imap import ImapSession
from exporter.results import CheckResult
from exporter.runner import MailboxRunner, Watchdog
from tests.conftest import write_config
from tests.content import seed_standard
from tests.testbed.exchange_imap import ExchangeImapRelay


class RecordingRelay(ExchangeImapRelay):
    """Keeps each client command line's first words (tag dropped), in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: list[list[str]] = []

    def _answer_locally(self, session: Any, tag: bytes, name: str, line: bytes) -> bytes | None:
        self.lines.append([word.decode("ascii", "replace") for word in line.split()[1:]])
        return super()._answer_locally(session, tag, name, line)

    def names(self) -> list[str]:
        """Command names in order, `UID X` as `UID X`."""
        found = []
        for words in self.lines:
            verb = words[0].upper()
            found.append(f"UID {words[1].upper()}" if verb == "UID" else verb)
        return found


def _relay(ca: Any, dovecot: Any, personality: str) -> Iterator[RecordingRelay]:
    relay = RecordingRelay(ca, "127.0.0.1", dovecot.port, personality=personality).start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def recorder(ca: Any, dovecot: Any) -> Iterator[RecordingRelay]:
    yield from _relay(ca, dovecot, "dovecot")


@pytest.fixture(scope="module")
def exchange(ca: Any, dovecot: Any) -> Iterator[RecordingRelay]:
    yield from _relay(ca, dovecot, "exchange")


def _runner(tmp_path: Path, entra: Any, dovecot: Any, mailbox: Any, port: int) -> MailboxRunner:
    imap = {"host": "127.0.0.1", "port": port}
    path = write_config(tmp_path, entra, dovecot, [mailbox], imap=imap)
    config = load_config(path)
    return MailboxRunner(config.mailboxes[0], config.state_dir, Watchdog())


def _run(runner: MailboxRunner) -> list[CheckResult]:
    results = runner.run(lambda _result: None)
    assert [(r.check, r.success) for r in results] == [(r.check, True) for r in results], [
        (r.check, r.failure) for r in results
    ]
    return results


# The run after the first (which also LISTs): Junk and Sent remembered, every check enabled.
STEADY = [
    "AUTHENTICATE",  # XOAUTH2 with the initial response (SASL-IR): no `+` round trip
    "STATUS",  # INBOX (UNSEEN), before the EXAMINE
    "EXAMINE",  # INBOX
    "FETCH",  # every INTERNALDATE of the (small) inbox
    "STATUS",  # "Sent Items"
    "UID SEARCH",  # LARGER
    "EXAMINE",  # "Junk Email"
    "FETCH",  # every INTERNALDATE of Junk
    "LOGOUT",
]


def test_one_run_against_dovecot(
    recorder: RecordingRelay, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path
) -> None:
    """No CAPABILITY at all (the greeting and the login's OK carry it), SASL-IR, STATUS before
    EXAMINE, LIST only in the first run: 8 commands after the login, 9 in the first run."""
    mailbox = make_mailbox("counted")
    seed_standard(dovecot, mailbox.upn)
    runner = _runner(tmp_path, entra, dovecot, mailbox, recorder.port)
    recorder.lines.clear()
    _run(runner)
    first = recorder.names()
    assert first == [*STEADY[:4], "LIST", *STEADY[4:]], recorder.lines
    recorder.lines.clear()
    _run(runner)
    assert recorder.names() == STEADY, recorder.lines
    assert len(STEADY) - 1 <= 10
    auth, status, examine = recorder.lines[:3]
    assert auth[:2] == ["AUTHENTICATE", "XOAUTH2"] and len(auth) == 3  # the initial response
    assert status == ["STATUS", '"INBOX"', "(UNSEEN)"] and examine == ["EXAMINE", '"INBOX"']


def test_a_stale_folder_name_is_listed_again_after_the_failure(
    recorder: RecordingRelay, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path
) -> None:
    """A remembered Junk folder that is gone fails the junk check once; the next run LISTs."""
    mailbox = make_mailbox("stale")
    seed_standard(dovecot, mailbox.upn)
    runner = _runner(tmp_path, entra, dovecot, mailbox, recorder.port)
    _run(runner)
    memory = runner.folders  # kept by the runner across its runs
    assert memory.listed is not None
    memory.listed = [((b"\\Junk",), "Renamed Junk"), ((b"\\Sent",), "Sent Items")]
    results = {r.check: r for r in runner.run(lambda _result: None)}
    junk = results["junk"]
    assert not junk.success and junk.failure is not None
    assert junk.failure.reason == "folder_missing"
    recorder.lines.clear()
    _run(runner)
    assert recorder.names().count("LIST") == 1
    assert recorder.names().count("EXAMINE") == 2


def test_a_refused_token_through_the_xoauth2_continuation(
    recorder: RecordingRelay, entra: Any, dovecot: Any, make_mailbox: Any
) -> None:
    """Dovecot answers a refused XOAUTH2 token with a `+` error challenge; the empty line sent
    back gets the tagged NO: auth_rejected with its code, the connection still usable."""
    mailbox = make_mailbox("refusedir")
    session = ImapSession.connect("127.0.0.1", recorder.port, tls_context(entra.ca_file), 5.0)
    recorder.lines.clear()
    try:
        with pytest.raises(CheckFailed) as raised:
            session.login(mailbox.upn, "not-a-token")
        assert session.broken is None
    finally:
        session.logout()
    failure = raised.value.failure
    assert (failure.reason, failure.code) == ("auth_rejected", "AUTHENTICATIONFAILED"), failure
    assert recorder.names() == ["AUTHENTICATE", "LOGOUT"]


def test_a_refused_token_without_a_continuation(exchange: RecordingRelay, entra: Any) -> None:
    """Exchange-like: the tagged NO comes straight away (no `+`): auth_rejected, code NO."""
    exchange.set_mode("refuse_token")
    try:
        session = ImapSession.connect("127.0.0.1", exchange.port, tls_context(entra.ca_file), 5.0)
        try:
            with pytest.raises(CheckFailed) as raised:
                session.login("nobody@contoso.onmicrosoft.com", "token")
        finally:
            session.logout()
    finally:
        exchange.set_mode("normal")
    failure = raised.value.failure
    assert (failure.reason, failure.code) == ("auth_rejected", "NO")
    assert "AUTHENTICATE failed." in failure.message


def test_one_run_against_exchange_wording(
    exchange: RecordingRelay, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path
) -> None:
    """Exchange sends capabilities neither in its greeting nor with its login OK: CAPABILITY
    before the login (imaplib) and once after it (imapclient, before its first SEARCH); folders
    found by name, remembered across runs."""
    mailbox = make_mailbox("exchangecount")
    seed_standard(dovecot, mailbox.upn)
    runner = _runner(tmp_path, entra, dovecot, mailbox, exchange.port)
    _run(runner)
    exchange.lines.clear()
    _run(runner)
    names = exchange.names()
    assert names[:2] == ["CAPABILITY", "AUTHENTICATE"], exchange.lines
    assert len(exchange.lines[1]) == 3  # SASL-IR: Exchange advertises it
    assert "LIST" not in names
    after_login = names[2:]
    assert after_login == ["STATUS", "EXAMINE", "FETCH", "STATUS", "CAPABILITY", *STEADY[5:]]
    assert len(after_login) <= 10, after_login


def test_the_initial_response_is_xoauth2(
    recorder: RecordingRelay, entra: Any, dovecot: Any, make_mailbox: Any
) -> None:
    """The inline initial response is the XOAUTH2 string, base64 (no token in the clear)."""
    mailbox = make_mailbox("irshape")
    token = entra.mint_access_token(mailbox.upn)
    session = ImapSession.connect("127.0.0.1", recorder.port, tls_context(entra.ca_file), 5.0)
    recorder.lines.clear()
    try:
        session.login(mailbox.upn, token)
    finally:
        session.logout()
    initial = base64.b64decode(recorder.lines[0][2])
    assert initial == f"user={mailbox.upn}\x01auth=Bearer {token}\x01\x01".encode()
