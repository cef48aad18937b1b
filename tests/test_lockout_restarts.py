"""The Smart Lockout guard survives restarts: the credential backoff lives in `state_dir`.

A crash loop, a redeploy or a second replica sharing the state must not retry a wrong password
at once. Measured: the exporter restarted every 4 s for 40 s against a wrong password; the
password grants the fake Entra ID saw. Without a persisted backoff every start signs in once
(10 grants in 10 starts); with it, the first start's failure holds every later start off.
"""

from __future__ import annotations

import json
import stat
import time

from tests.conftest import check_json, results_by_check, run_cli, write_config

RESTART_EVERY = 4.0
WINDOW = 40.0


def test_restart_loop_with_a_wrong_password_signs_in_once(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    mailbox = make_mailbox("crashloop")
    mailbox.set_password_file("wrong-password")
    # 10 s interval; the one mailbox's first run starts at once after each start.
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="10s", timeout="2s")
    entra.reset_counters()

    starts = 0
    began = time.monotonic()
    while time.monotonic() - began < WINDOW - 0.5:
        started = time.monotonic()
        exporter = exporter_process(config)
        starts += 1
        # Let the first run finish, then "crash" (SIGTERM; kill -9 keeps the same file).
        exporter.wait_for("o365_mailbox_check_last_run_timestamp_seconds", timeout=5,
                          mailbox="crashloop", check="token")
        time.sleep(max(0.0, RESTART_EVERY - (time.monotonic() - started)))
        exporter.stop()
    grants = entra.attempts(username=mailbox.upn, grant_type="password")
    print(f"\nrestart loop: {starts} starts in {WINDOW:.0f} s, {grants} password grants")
    assert starts >= 9
    # 10 s interval, backoff 20 s then 40 s: the first start's grant, one more at ~20 s.
    assert 1 <= grants <= 2, grants

    state = tmp_path / "state" / "backoff" / "crashloop.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    record = json.loads(state.read_text())
    assert record["steps"]["token"]["reason"] == "invalid_grant"
    assert record["steps"]["token"]["code"] == "50126"
    assert mailbox.password not in state.read_text()
    assert "wrong-password" not in state.read_text()


def test_second_replica_and_cli_honour_the_recorded_backoff(
    make_mailbox, entra, dovecot, tmp_path, exporter_process, capsys
):
    mailbox = make_mailbox("replicas")
    mailbox.set_password_file("wrong-password")
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="60s", timeout="2s")
    entra.reset_counters()
    first = exporter_process(config)
    first.wait_for("o365_mailbox_check_failures_total", mailbox="replicas", check="token",
                   reason="invalid_grant", code="50126", timeout=10)
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 1

    # A second replica with the same state_dir: its first run waits out the backoff.
    second = exporter_process(config)
    second.wait_for("o365_mailbox_check_failures_total", mailbox="replicas", check="token",
                    reason="backoff", code="50126", timeout=10)
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 1

    # `check` says so, with the time of the next allowed try, and offers --force.
    code, out, _err = run_cli(capsys, "check", f"--config.file={config}")
    assert code == 1
    assert "FAIL backoff 50126" in out
    assert "next sign-in attempt at" in out and "--force" in out
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 1

    # So do `doctor` and `login` (a device-code sign-in for a password-flow mailbox).
    code, out, _err = run_cli(capsys, "doctor", f"--config.file={config}", "--mailbox=replicas")
    assert code == 1
    assert "Broken step: token (password) (backoff 50126)" in out
    assert "next sign-in attempt at" in out and "--force" in out
    code, _out, err = run_cli(capsys, "login", f"--config.file={config}", "--mailbox=replicas")
    assert code == 1
    assert "sign-in held back" in err and "next sign-in attempt at" in err and "--force" in err
    assert entra.attempts(username=mailbox.upn) == 1  # neither asked Entra ID

    # --force tries anyway (and the wrong password fails again).
    code, document = check_json(capsys, config, "--force")
    assert code == 1
    token = results_by_check(document, "replicas")["token"]
    assert (token["reason"], token["code"]) == ("invalid_grant", "50126")
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 2

    # A changed secret retries at once, in every process that shares the state.
    mailbox.set_password_file(mailbox.password)
    code, document = check_json(capsys, config)
    assert code == 0, document
    assert not (tmp_path / "state" / "backoff" / "replicas.json").exists()
