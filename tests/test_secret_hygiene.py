"""Secret hygiene: canary secrets planted in every sign-in flow never leave the process.

Planted: a password (right and wrong), a client secret (right and wrong), a client
certificate's private key, and the access, refresh and ID tokens the FakeEntra issues (for the
password, device-code, client-secret and certificate flows), plus short token-shaped canaries
in a token answer that a proxy cut short (MSAL logs such an answer whole; tokens of 40 or more
characters would be caught by the log scrubber anyway, so the canaries are shorter).

Looked for in: the log of `serve` at debug level (logfmt and JSON), `/metrics`, the landing
page, `check` (table and JSON, with its debug log), `doctor` (table and JSON), `login`'s
output, and the state directory's permissions.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_cli, write_secret
from tests.content import seed_standard
from tests.faults import AuthorityFaultProxy
from tests.faults.observe import NamespacedExporter
from tests.testbed import make_app_certificate

TAG = uuid.uuid4().hex[:8]
PASSWORD = f"Cnry-pw-{TAG}"
WRONG_PASSWORD = f"Cnry-wrongpw-{TAG}"
CLIENT_SECRET = f"Cnry-sec-{TAG}"
WRONG_SECRET = f"Cnry-wrongsec-{TAG}"
ACCESS_CANARY = f"Cnry-at-{TAG}"
REFRESH_CANARY = f"Cnry-rt-{TAG}"
# A token answer cut short on its way (a proxy, a load balancer): MSAL cannot parse it.
TRUNCATED = (f'{{"token_type": "Bearer", "expires_in": 3600, "access_token": "{ACCESS_CANARY}", '
             f'"refresh_token": "{REFRESH_CANARY}", "id_token": "eyJ').encode()


def _user(entra: Any, dovecot: Any, name: str, password: str = PASSWORD) -> tuple[str, str]:
    upn = f"{name}-{TAG}@contoso.onmicrosoft.com"
    client_id = str(uuid.uuid4())
    entra.add_user(upn, password)
    entra.add_app(client_id)
    dovecot.reset_mailbox(upn)
    seed_standard(dovecot, upn)
    return upn, client_id


def _tokens_in(state_dir: Path) -> set[str]:
    found: set[str] = set()
    for path in (state_dir / "tokens").glob("*.json"):
        cache = json.loads(path.read_text())
        for kind in ("AccessToken", "RefreshToken", "IdToken"):
            found |= {entry["secret"] for entry in cache.get(kind, {}).values()}
    return found


@pytest.mark.timeout(120)
def test_canaries_never_leave_the_process(entra, dovecot, ca, tmp_path, capsys) -> None:
    secrets: set[str] = {PASSWORD, WRONG_PASSWORD, CLIENT_SECRET, WRONG_SECRET, ACCESS_CANARY,
                         REFRESH_CANARY}
    mailboxes: list[dict[str, Any]] = []

    def password_file(name: str, value: str) -> str:
        path = tmp_path / f"{name}.secret"
        write_secret(path, value)
        return str(path)

    upn, client_id = _user(entra, dovecot, "pw")
    mailboxes.append({"name": "pw", "username": upn, "client_id": client_id,
                      "auth": {"flow": "password", "password_file": password_file("pw", PASSWORD)}})
    upn, client_id = _user(entra, dovecot, "pwwrong")
    mailboxes.append({"name": "pwwrong", "username": upn, "client_id": client_id,
                      "auth": {"flow": "password",
                               "password_file": password_file("pwwrong", WRONG_PASSWORD)}})
    dc_upn, client_id = _user(entra, dovecot, "dc")
    mailboxes.append({"name": "dc", "username": dc_upn, "client_id": client_id,
                      "auth": {"flow": "device_code"}})
    for name, value in (("secret", CLIENT_SECRET), ("secretwrong", WRONG_SECRET)):
        upn, _ = _user(entra, dovecot, name)
        app = str(uuid.uuid4())
        entra.add_app(app, public_client=False, client_secret=CLIENT_SECRET, mailbox=upn)
        mailboxes.append({"name": name, "username": upn, "client_id": app,
                          "auth": {"flow": "client_secret",
                                   "client_secret_file": password_file(name, value)}})
    upn, _ = _user(entra, dovecot, "cert")
    credential = make_app_certificate()
    app = str(uuid.uuid4())
    entra.add_app(app, public_client=False, certificate_pem=credential.cert_pem, mailbox=upn)
    key_file = tmp_path / "cert.pem"
    key_file.write_bytes(credential.combined_pem)
    key_file.chmod(0o600)
    mailboxes.append({"name": "cert", "username": upn, "client_id": app,
                      "auth": {"flow": "client_certificate", "certificate_file": str(key_file)}})
    key_lines = [line for line in credential.key_pem.splitlines()
                 if line and not line.startswith("-----")]
    secrets |= set(key_lines)
    proxy = AuthorityFaultProxy(ca, entra.url, host=entra.host, names=(entra.host,)).start()
    proxy.set_fault("malformed", body=TRUNCATED)
    upn, client_id = _user(entra, dovecot, "cut")
    mailboxes.append({"name": "cut", "username": upn, "client_id": client_id,
                      "authority_host": proxy.url,
                      "auth": {"flow": "password",
                               "password_file": password_file("cut", PASSWORD)}})

    state = tmp_path / "state"
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(state),
        "defaults": {"interval": "1s", "timeout": "1s", "authority_host": entra.url,
                     "tenant_id": "contoso.onmicrosoft.com", "ca_file": str(entra.ca_file),
                     "imap": {"host": "127.0.0.1", "port": dovecot.port}},
        "mailboxes": mailboxes,
    }, sort_keys=False))
    outputs: dict[str, str] = {}
    try:
        # `login` (device code) as a user runs it, in its own process.
        entra.auto_approve_device_code = dc_upn
        login = subprocess.run(
            [sys.executable, "-m", "exporter", "login", f"--config.file={config}",
             "--mailbox=dc", "--log.level=debug"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
        entra.auto_approve_device_code = None
        assert login.returncode == 0, login.stderr
        outputs["login"] = login.stdout + login.stderr
        secrets |= _tokens_in(state)

        for fmt in ("logfmt", "json"):
            exporter = NamespacedExporter(config, tmp_path / f"serve-{fmt}.log", [],
                                          "--log.level=debug", f"--log.format={fmt}")
            try:
                for _ in range(8):  # a few runs: rotated refresh tokens, new access tokens
                    time.sleep(0.5)
                    secrets |= _tokens_in(state)
                outputs[f"metrics-{fmt}"] = exporter.get("/metrics")[1]
                outputs[f"page-{fmt}"] = exporter.get("/")[1]
                assert exporter.value("o365_mailbox_up", mailbox="pw") == 1.0
                assert exporter.value("o365_mailbox_up", mailbox="dc") == 1.0
                assert exporter.value("o365_mailbox_up", mailbox="cert") == 1.0
            finally:
                exporter.stop()
            outputs[f"serve-{fmt}"] = exporter.log_path.read_text()

        for fmt in ("table", "json"):
            _code, out, err = run_cli(capsys, "check", f"--config.file={config}",
                                      f"--output={fmt}", "--log.level=debug")
            outputs[f"check-{fmt}"] = out + err
            secrets |= _tokens_in(state)
            for name in ("pw", "pwwrong", "cut"):
                _code, out, err = run_cli(capsys, "doctor", f"--config.file={config}",
                                          f"--mailbox={name}", f"--output={fmt}",
                                          "--log.level=debug")
                outputs[f"doctor-{name}-{fmt}"] = out + err
    finally:
        entra.auto_approve_device_code = None
        proxy.stop()

    for upn in {m["username"] for m in mailboxes}:
        latest = entra.latest_refresh_token(upn)
        if latest:
            secrets.add(latest)
    tokens = secrets - {PASSWORD, WRONG_PASSWORD, CLIENT_SECRET, WRONG_SECRET, ACCESS_CANARY,
                        REFRESH_CANARY} - set(key_lines)
    assert len(tokens) >= 12, len(tokens)  # access, refresh and ID tokens of every flow

    # The failures the canaries passed through were reported (so the paths were exercised).
    log = outputs["serve-logfmt"]
    assert "50126" in log and "7000215" in log, log[-2000:]
    assert "not in json format" in log  # MSAL's record of the cut-short answer
    assert "reason=protocol" in log  # ... reported by us as a protocol failure
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:12]}...) leaked into {where}"

    # What is stored: the state directory 0700, token caches 0600, nothing else secret.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "tokens").stat().st_mode) == 0o700
    for path in state.rglob("*"):
        if path.is_file() and any(s in path.read_text(errors="replace") for s in secrets):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            assert path.parent == state / "tokens", path
