"""The Smart Lockout guard: a wrong password is retried with exponential backoff, never every
interval, and a fixed password file is picked up at once."""

from __future__ import annotations

import time

from tests.conftest import write_config


def test_wrong_password_attempts_stay_bounded_and_fix_is_picked_up(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    mailbox = make_mailbox("box")
    mailbox.set_password_file("wrong-password")
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="1s", timeout="1s")
    entra.reset_counters()

    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_check_failures_total", mailbox="box", check="token",
                      reason="invalid_grant", code="50126")
    time.sleep(12)

    # 12+ runs at a 1 s interval; backoff doubles: attempts at about 0, 2, 6 s (then 14 s).
    attempts = entra.attempts(username=mailbox.upn)
    assert 1 <= attempts <= 4, attempts
    backoff_runs = exporter.value("o365_mailbox_check_failures_total", mailbox="box",
                                  check="token", reason="backoff", code="50126")
    assert backoff_runs is not None and backoff_runs >= 6

    mailbox.set_password_file(mailbox.password)
    fixed_at = time.monotonic()
    exporter.wait_for("o365_mailbox_check_success", 1.0, timeout=10, mailbox="box",
                      check="token")
    assert time.monotonic() - fixed_at < 5
    exporter.wait_for("o365_mailbox_up", 1.0, timeout=10, mailbox="box")


def test_imap_rejection_fix_shows_within_four_intervals(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    """An IMAP rejection of a fresh token risks no lockout: it is retried within four
    intervals, so an admin's fix (a permission, IMAP enabled again) shows within minutes."""
    mailbox = make_mailbox("box")
    entra.reject_imap_users.add(mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="1s", timeout="1s")
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_check_failures_total", mailbox="box", check="imap_login",
                      reason="backoff", code="AUTHENTICATIONFAILED")
    time.sleep(20)  # long enough for an uncapped doubling to reach 16 s and more
    entra.reject_imap_users.discard(mailbox.upn)  # the admin's fix
    fixed_at = time.monotonic()
    exporter.wait_for("o365_mailbox_check_success", 1.0, timeout=15, mailbox="box",
                      check="imap_login")
    shown_after = time.monotonic() - fixed_at
    print(f"\nIMAP rejection fixed: shown after {shown_after:.1f}s at a 1 s interval")
    assert shown_after <= 4 * 1.0 + 1.5
