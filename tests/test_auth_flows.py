"""Every sign-in flow against the fake Entra ID with the real msal, and the persisted cache."""

from __future__ import annotations

import json
import re
import stat
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from exporter.failures import (
    DEVICE_CODE_DECLINED_HINT,
    DEVICE_CODE_EXPIRED_HINT,
    classify_token_error,
)
from tests.conftest import (
    check_json,
    results_by_check,
    run_cli,
    use_client_secret,
    write_config,
    write_secret,
)
from tests.testbed import make_app_certificate


def _refresh_tokens(state_dir: Path, name: str) -> list[str]:
    cache = json.loads((state_dir / "tokens" / f"{name}.json").read_text())
    return [entry["secret"] for entry in cache.get("RefreshToken", {}).values()]


def test_password_flow_refreshes_and_persists_rotated_refresh_token(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    state = tmp_path / "state"

    assert check_json(capsys, config)[0] == 0  # first run: ROPC with the password
    first_rt = _refresh_tokens(state, "box")
    entra.reset_counters()
    assert check_json(capsys, config)[0] == 0  # second run: a real refresh, no password

    assert entra.attempts(username=mailbox.upn, grant_type="refresh_token") == 1
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 0
    second_rt = _refresh_tokens(state, "box")
    assert len(first_rt) == len(second_rt) == 1 and first_rt != second_rt
    cache_file = state / "tokens" / "box.json"
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_revoked_refresh_token_falls_back_to_password(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    assert check_json(capsys, config)[0] == 0
    entra.revoke_refresh_tokens(mailbox.upn)
    entra.reset_counters()

    code, document = check_json(capsys, config)

    assert code == 0, document
    assert entra.attempts(username=mailbox.upn, grant_type="refresh_token") == 1
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 1


def test_client_secret_flow(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("app")
    secret_file = tmp_path / "client.secret"
    use_client_secret(mailbox, entra, secret_file, "s3cret-value")
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    entra.reset_counters()

    assert check_json(capsys, config)[0] == 0
    code, document = check_json(capsys, config)  # a cached app token does not count

    assert code == 0, document
    assert entra.attempts(client_id=mailbox.client_id, grant_type="client_credentials") == 2

    write_secret(secret_file, "the-secret-id-not-its-value")
    _code, document = check_json(capsys, config)
    token = results_by_check(document, "app")["token"]
    assert (token["reason"], token["code"]) == ("invalid_client", "7000215")
    assert "Value" in token["hint"]


def test_client_certificate_flow(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("certapp")
    client_id = str(uuid.uuid4())
    credential = make_app_certificate()
    entra.add_app(client_id, public_client=False, certificate_pem=credential.cert_pem,
                  mailbox=mailbox.upn)
    cert_file = tmp_path / "app.pem"
    cert_file.write_bytes(credential.combined_pem)
    cert_file.chmod(0o600)
    mailbox.client_id = client_id
    mailbox.settings["auth"] = {"flow": "client_certificate", "certificate_file": str(cert_file)}
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    code, document = check_json(capsys, config)

    assert code == 0, document
    assert entra.attempts(client_id=client_id, grant_type="client_credentials") == 1


def test_device_code_login_seeds_the_cache(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("mfa")
    mailbox.settings["auth"] = {"flow": "device_code"}
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    code, document = check_json(capsys, config)  # nobody signed in yet
    token = results_by_check(document, "mfa")["token"]
    assert code == 1 and token["reason"] == "interaction_required"
    assert token["hint"] == (
        f"Run `o365-mailbox-exporter login --config.file={config} --mailbox mfa` to sign in "
        "with a device code."
    )

    entra.auto_approve_device_code = mailbox.upn
    try:
        code, out, _err = run_cli(capsys, "login", f"--config.file={config}", "--mailbox=mfa")
    finally:
        entra.auto_approve_device_code = None
    assert code == 0, out
    assert "Signed in as " + mailbox.upn in out

    entra.reset_counters()
    code, document = check_json(capsys, config)
    assert code == 0, document
    assert entra.attempts(username=mailbox.upn, grant_type="refresh_token") == 1


# -- `login`: the device-code flow against the fake Entra ID, as an admin meets it ------------
def _device_code_mailbox(make_mailbox, entra, dovecot, tmp_path, **settings):
    mailbox = make_mailbox("mfa", **settings)
    mailbox.settings["auth"] = {"flow": "device_code"}
    return mailbox, write_config(tmp_path, entra, dovecot, [mailbox])


def _in_the_browser(entra, action) -> threading.Thread:
    """What the admin does in a browser with the code `login` prints: `action(user_code)`."""
    since = time.time()

    def browser() -> None:
        action(entra.wait_for_device_code(since))

    thread = threading.Thread(target=browser, daemon=True)
    thread.start()
    return thread


def _login(capsys, config, entra, action) -> tuple[int, str, str]:
    thread = _in_the_browser(entra, action)
    code, out, err = run_cli(capsys, "login", f"--config.file={config}", "--mailbox=mfa")
    thread.join(timeout=10)
    return code, out, err


def test_login_prints_how_long_the_code_stays_valid(make_mailbox, entra, dovecot, tmp_path,
                                                    capsys):
    mailbox, config = _device_code_mailbox(make_mailbox, entra, dovecot, tmp_path)
    started = time.time()

    code, out, err = _login(capsys, config, entra,
                            lambda user_code: entra.approve_device_code(user_code, mailbox.upn))

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (f"Sign in as {mailbox.upn} (mailbox mfa); a private browser window keeps "
                        "your own account out of it.")
    assert lines[1].startswith("To sign in, use a web browser to open the page "
                               "https://microsoft.com/devicelogin and enter the code ")
    until = datetime.fromtimestamp(started + 900, UTC)
    assert re.fullmatch(r"The code is valid for 15 minutes \(until (.*)Z\); waiting for the "
                        r"sign-in\.\.\.", lines[2])
    shown = datetime.strptime(lines[2].split("until ")[1][:19], "%Y-%m-%d %H:%M:%S")
    assert abs(shown.replace(tzinfo=UTC) - until).total_seconds() < 5
    assert lines[3].startswith(f"Signed in as {mailbox.upn}; token cache seeded")
    assert len(_refresh_tokens(tmp_path / "state", "mfa")) == 1


def test_login_refuses_another_account_and_keeps_nothing_of_it(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox, config = _device_code_mailbox(make_mailbox, entra, dovecot, tmp_path)
    admin = f"admin-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"
    entra.add_user(admin, "Admin-pw-1")
    entra.reset_counters()

    # The admin's browser is signed in as the admin: the code is approved as the admin.
    code, out, err = _login(capsys, config, entra,
                            lambda user_code: entra.approve_device_code(user_code, admin))

    assert code == 1
    assert "Signed in as" not in out
    assert err.splitlines() == [
        f"sign-in refused: the device code was approved in a browser signed in as {admin}, not "
        f"as {mailbox.upn}; nothing was kept in the token cache",
        f"hint: Sign out of {admin} in that browser, or open a private window, run "
        f"`o365-mailbox-exporter login --config.file={config} --mailbox mfa` again and sign in "
        f"as {mailbox.upn}.",
    ]
    assert entra.attempts(username=admin, grant_type="device_code") == 1  # tokens were issued
    cache = json.loads((tmp_path / "state" / "tokens" / "mfa.json").read_text())
    assert cache.get("RefreshToken", {}) == {}
    assert cache.get("AccessToken", {}) == {}
    assert cache.get("IdToken", {}) == {}
    assert admin not in json.dumps(cache)

    # So `check` still says nobody is signed in, rather than using the admin's grant.
    code, document = check_json(capsys, config)
    token = results_by_check(document, "mfa")["token"]
    assert (code, token["reason"]) == (1, "interaction_required")
    assert entra.attempts(username=admin, grant_type="refresh_token") == 0


def test_login_compares_the_username_without_case(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox, _config = _device_code_mailbox(make_mailbox, entra, dovecot, tmp_path)
    mailbox.settings["username"] = mailbox.upn.upper()
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    code, out, err = _login(capsys, config, entra,
                            lambda user_code: entra.approve_device_code(user_code, mailbox.upn))

    assert code == 0, err
    assert f"Signed in as {mailbox.upn}; token cache seeded" in out


def test_login_with_an_expired_code(make_mailbox, entra, dovecot, tmp_path, capsys):
    _mailbox, config = _device_code_mailbox(make_mailbox, entra, dovecot, tmp_path)

    code, _out, err = _login(capsys, config, entra, entra.expire_device_code)

    assert code == 1
    assert err.splitlines() == [
        "sign-in failed: interaction_required 70019: the device code expired (15 minutes) "
        "before the sign-in was approved",
        "hint: The device code expired before the sign-in was approved (a code is valid for "
        f"about 15 minutes): run `o365-mailbox-exporter login --config.file={config} --mailbox "
        "mfa` again and enter the new code right away.",
    ]
    assert not (tmp_path / "state" / "tokens" / "mfa.json").exists()


def test_login_with_a_declined_code(make_mailbox, entra, dovecot, tmp_path, capsys):
    _mailbox, config = _device_code_mailbox(make_mailbox, entra, dovecot, tmp_path)

    code, _out, err = _login(capsys, config, entra, entra.decline_device_code)

    assert code == 1
    assert err.splitlines() == [
        "sign-in failed: interaction_required: The end user denied the authorization request.",
        "hint: The sign-in was declined in the browser: run `o365-mailbox-exporter login "
        f"--config.file={config} --mailbox mfa` again and approve it, signed in as the "
        "mailbox's user.",
    ]


def test_device_code_errors_have_their_own_reason_and_hint():
    pending = {"error": "authorization_pending", "error_codes": [70016],
               "error_description": "AADSTS70016: OAuth 2.0 device flow error. Authorization is "
               "pending. Continue polling."}
    expired = {"error": "expired_token", "error_description": "Verification code expired."}
    declined = {"error": "authorization_declined", "error_description": "declined"}

    assert classify_token_error(pending).reason == "interaction_required"
    assert classify_token_error(pending).hint == DEVICE_CODE_EXPIRED_HINT
    assert classify_token_error(expired).hint == DEVICE_CODE_EXPIRED_HINT
    assert classify_token_error(declined).hint == DEVICE_CODE_DECLINED_HINT
    assert classify_token_error(declined).reason == "interaction_required"
