"""Every sign-in flow against the fake Entra ID with the real msal, and the persisted cache."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

from tests.conftest import check_json, results_by_check, run_cli, write_config, write_secret
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
    client_id = str(uuid.uuid4())
    entra.add_app(client_id, public_client=False, client_secret="s3cret-value",
                  mailbox=mailbox.upn)
    secret_file = tmp_path / "client.secret"
    write_secret(secret_file, "s3cret-value")
    mailbox.client_id = client_id
    mailbox.settings["auth"] = {"flow": "client_secret", "client_secret_file": str(secret_file)}
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    entra.reset_counters()

    assert check_json(capsys, config)[0] == 0
    code, document = check_json(capsys, config)  # a cached app token does not count

    assert code == 0, document
    assert entra.attempts(client_id=client_id, grant_type="client_credentials") == 2

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
    assert "login --mailbox mfa" in token["hint"]

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
