"""`smtp_login` against Dovecot's real submission service and an Exchange-like SMTP server."""

from __future__ import annotations

import time

from tests.conftest import check_json, results_by_check, write_config

ALL_CHECKS = ["token", "imap_login", "inbox", "oversized", "junk", "smtp_login"]


def _with_smtp(mailbox, port: int) -> None:
    mailbox.settings["smtp"] = {"host": "127.0.0.1", "port": port}
    mailbox.settings["checks"] = ALL_CHECKS


def test_smtp_login_passes_against_dovecot_submission(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    _with_smtp(mailbox, dovecot.submission_port)
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    sent_before = len(dovecot.sink.messages)

    code, document = check_json(capsys, config)

    smtp = results_by_check(document, "box")["smtp_login"]
    assert code == 0, smtp["message"]
    assert smtp["success"] is True
    assert smtp["tls_certificate_expiry_timestamp_seconds"] > time.time() + 86400
    assert len(dovecot.sink.messages) == sent_before  # never sends


def test_dovecot_refuses_a_rejected_token(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box")
    _with_smtp(mailbox, dovecot.submission_port)
    entra.reject_imap_users.add(mailbox.upn)  # introspection says inactive for this user
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    _code, document = check_json(capsys, config)

    smtp = results_by_check(document, "box")["smtp_login"]
    assert (smtp["reason"], smtp["code"]) == ("auth_rejected", "5.7.8")


def test_exchange_535_5_7_3_is_auth_rejected(
    make_mailbox, entra, dovecot, exchange_smtp, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    _with_smtp(mailbox, exchange_smtp.port)
    entra.reject_imap_users.add(mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox], checks=["token", "smtp_login"])

    code, document = check_json(capsys, config)

    assert code == 1
    smtp = results_by_check(document, "box")["smtp_login"]
    assert (smtp["reason"], smtp["code"]) == ("auth_rejected", "5.7.3")
    assert "SMTP.Send" in smtp["hint"]


def test_exchange_smtp_auth_disabled_5_7_139(
    make_mailbox, entra, dovecot, exchange_smtp, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    _with_smtp(mailbox, exchange_smtp.port)
    exchange_smtp.disable_smtp_auth(mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox], checks=["token", "smtp_login"])

    _code, document = check_json(capsys, config)

    smtp = results_by_check(document, "box")["smtp_login"]
    assert (smtp["reason"], smtp["code"]) == ("auth_rejected", "5.7.139")
    assert "SmtpClientAuthenticationDisabled" in smtp["hint"]
    assert exchange_smtp.messages == []


def test_exchange_accepts_a_good_token(
    make_mailbox, entra, dovecot, exchange_smtp, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    _with_smtp(mailbox, exchange_smtp.port)
    config = write_config(tmp_path, entra, dovecot, [mailbox], checks=["token", "smtp_login"])

    code, document = check_json(capsys, config)

    assert code == 0, document
    assert exchange_smtp.messages == []


def test_smtp_pointed_at_an_implicit_tls_port_times_out(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    # The IMAPS port waits for a TLS ClientHello, so no SMTP greeting ever comes.
    mailbox = make_mailbox("box")
    _with_smtp(mailbox, dovecot.port)
    config = write_config(tmp_path, entra, dovecot, [mailbox], checks=["token", "smtp_login"],
                          timeout="1s")

    _code, document = check_json(capsys, config)

    smtp = results_by_check(document, "box")["smtp_login"]
    assert smtp["reason"] == "timeout"
