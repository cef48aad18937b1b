"""Each failure class ends up as the right reason word, code and hint, and later checks report
`dependency`, against the real msal/imapclient and the bed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import check_json, results_by_check, write_config

LATER = ["imap_login", "inbox", "oversized", "junk"]


def failed(document: dict, mailbox: str, check: str) -> dict:
    result = results_by_check(document, mailbox)[check]
    assert result["success"] is False, result
    return result


def assert_dependents_failed(document: dict, mailbox: str, checks: list[str]) -> None:
    results = results_by_check(document, mailbox)
    for check in checks:
        assert results[check]["success"] is False
        assert results[check]["reason"] == "dependency"


@pytest.mark.parametrize(
    ("code", "reason", "hint_words"),
    [
        (65001, "consent_required", "Grant admin consent"),
        (50076, "interaction_required", "MFA"),
        (53003, "interaction_required", "Conditional Access"),
        (50057, "invalid_grant", "disabled"),
        (50055, "invalid_grant", "expired"),
    ],
)
def test_entra_errors_are_classified(
    code, reason, hint_words, make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    entra.set_error(code, username=mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    exit_code, document = check_json(capsys, config)

    assert exit_code == 1
    token = failed(document, "box", "token")
    assert (token["reason"], token["code"]) == (reason, str(code))
    assert hint_words in token["hint"]
    assert_dependents_failed(document, "box", LATER)


def test_wrong_password(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box")
    mailbox.set_password_file("not-the-password")
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    exit_code, document = check_json(capsys, config)

    assert exit_code == 1
    token = failed(document, "box", "token")
    assert (token["reason"], token["code"]) == ("invalid_grant", "50126")
    assert "password" in token["hint"]


def test_public_client_flows_disabled(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box")
    entra.add_app(mailbox.client_id, public_client=False)
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    _exit_code, document = check_json(capsys, config)

    token = failed(document, "box", "token")
    assert (token["reason"], token["code"]) == ("public_client_disabled", "7000218")
    assert "Allow public client flows" in token["hint"]


def test_throttled_with_retry_after(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box")
    entra.set_error(50196, error="temporarily_unavailable", status=429, retry_after=120,
                    username=mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    _exit_code, document = check_json(capsys, config)

    token = failed(document, "box", "token")
    assert token["reason"] == "throttled"


def test_imap_rejects_a_valid_looking_token(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box")
    entra.reject_imap_tokens = True
    try:
        config = write_config(tmp_path, entra, dovecot, [mailbox])
        exit_code, document = check_json(capsys, config)
    finally:
        entra.reject_imap_tokens = False

    assert exit_code == 1
    assert results_by_check(document, "box")["token"]["success"] is True
    login = failed(document, "box", "imap_login")
    assert login["reason"] == "auth_rejected"
    assert login["code"] == "AUTHENTICATIONFAILED"
    assert_dependents_failed(document, "box", ["inbox", "oversized", "junk"])


def test_missing_inbox_folder(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box", folders={"inbox": "Posteingang"})
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    _exit_code, document = check_json(capsys, config)

    login = failed(document, "box", "imap_login")
    assert login["reason"] == "folder_missing"
    assert "Posteingang" in login["message"]


def test_junk_found_by_special_use_not_name(make_mailbox, entra, dovecot, tmp_path, capsys):
    # The configured name is wrong, but the folder marked \Junk is found anyway.
    mailbox = make_mailbox("box", folders={"junk": "Courrier indésirable"})
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    exit_code, document = check_json(capsys, config)

    assert exit_code == 0
    assert results_by_check(document, "box")["junk"]["messages"] == 0


@pytest.fixture
def hung_server() -> Iterator[int]:
    """Accepts TCP connections and never says a word: a real server cannot do this on demand."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_hung_imap_server_times_out(make_mailbox, entra, dovecot, tmp_path, capsys, hung_server):
    mailbox = make_mailbox("box", imap={"host": "127.0.0.1", "port": hung_server}, timeout="1s")
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    started = time.monotonic()
    _exit_code, document = check_json(capsys, config)
    elapsed = time.monotonic() - started

    login = failed(document, "box", "imap_login")
    assert login["reason"] == "timeout"
    assert elapsed < 4
    assert_dependents_failed(document, "box", ["inbox", "oversized", "junk"])


def test_connection_refused(make_mailbox, entra, dovecot, tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    mailbox = make_mailbox("box", imap={"host": "127.0.0.1", "port": closed_port})
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    _exit_code, document = check_json(capsys, config)

    assert failed(document, "box", "imap_login")["reason"] == "connection"


def test_untrusted_imap_certificate(make_mailbox, entra, dovecot, tmp_path, capsys):
    # Without ca_file the bed's certificates are not trusted: the authority fails with `tls`.
    mailbox = make_mailbox("box")
    config = write_config(tmp_path, entra, dovecot, [mailbox], ca_file=None)

    _exit_code, document = check_json(capsys, config)

    assert failed(document, "box", "token")["reason"] == "tls"
