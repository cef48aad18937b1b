"""The Smart Lockout guard, measured: one minute of a 1 s interval against a wrong password,
and against an IMAP server that refuses every login, counting what the servers saw.

Without the guard that minute is 60 sign-ins, and Entra ID's Smart Lockout locks the account
after 10. With it, the sign-in step waits interval * 2^failures (at most an hour) after each
credential failure: attempts at about 0, 2, 6, 14 and 30 s, the sixth at 62 s. The bound for a
window of W seconds is floor(log2(W / interval + 2)) attempts: 5 in 60 s.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_secret
from tests.faults.observe import NamespacedExporter, scrape

INTERVAL = 1.0
WINDOW = 60.0
BOUND = math.floor(math.log2(WINDOW / INTERVAL + 2))  # 5
# An IMAP rejection of a fresh token tries no password: it waits 2, then 4 intervals at most.
IMAP_BOUND = 2 + math.ceil((WINDOW - 2 * INTERVAL) / (4 * INTERVAL))  # 17


@dataclass(frozen=True)
class Measured:
    sign_ins: int  # token requests for the wrong-password user
    imap_logins: int  # XOAUTH2 logins (introspections) for the refused user
    imap_password_grants: int  # password sign-ins of the refused user (the first only)
    token_backoff_runs: float
    imap_backoff_runs: float
    locked: bool
    window: float


@pytest.fixture(scope="module")
def measured(entra, dovecot, tmp_path_factory) -> Iterator[Measured]:  # type: ignore[no-untyped-def]
    directory: Path = tmp_path_factory.mktemp("lockout")
    users = {}
    for name in ("wrongpw", "imapreject"):
        upn = f"{name}-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"
        client_id = str(uuid.uuid4())
        password = f"Pw-{uuid.uuid4().hex}"
        entra.add_user(upn, password)
        entra.add_app(client_id)
        dovecot.reset_mailbox(upn)
        secret = directory / f"{name}.password"
        write_secret(secret, "not-the-password" if name == "wrongpw" else password)
        users[name] = (upn, client_id, secret)
    document = {
        "state_dir": str(directory / "state"),
        "defaults": {"interval": "1s", "timeout": "1s", "authority_host": entra.url,
                     "tenant_id": "contoso.onmicrosoft.com", "ca_file": str(entra.ca_file),
                     "imap": {"host": "127.0.0.1", "port": dovecot.port}},
        "mailboxes": [
            {"name": name, "username": upn, "client_id": client_id,
             "auth": {"flow": "password", "password_file": str(secret)}}
            for name, (upn, client_id, secret) in users.items()
        ],
    }
    config = directory / "config.yml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    wrong_upn, imap_upn = users["wrongpw"][0], users["imapreject"][0]
    entra.lockout_threshold = 10  # Entra ID's default
    entra.reject_imap_users.add(imap_upn)
    entra.reset_counters()
    started = time.monotonic()
    exporter = NamespacedExporter(config, directory / "exporter.log", [])
    try:
        time.sleep(WINDOW - (time.monotonic() - started))
        sign_ins = entra.attempts(username=wrong_upn)
        imap_logins = entra.introspections(username=imap_upn)
        window = time.monotonic() - started
        samples = scrape(exporter)
        yield Measured(
            sign_ins=sign_ins,
            imap_logins=imap_logins,
            imap_password_grants=entra.attempts(username=imap_upn, grant_type="password"),
            token_backoff_runs=sum(v for (c, r, _), v in samples.failures("wrongpw").items()
                                   if c == "token" and r == "backoff"),
            imap_backoff_runs=sum(v for (c, r, _), v in samples.failures("imapreject").items()
                                  if c == "imap_login" and r == "backoff"),
            locked=entra.is_locked(wrong_upn),
            window=window,
        )
    finally:
        exporter.stop()
        entra.reject_imap_users.discard(imap_upn)
        entra.lockout_threshold = None


@pytest.mark.timeout(180)
def test_wrong_password_sign_ins_stay_under_the_bound(measured: Measured) -> None:
    print(f"\nLOCKOUT wrong password: {measured.sign_ins} sign-in attempts in "
          f"{measured.window:.0f}s at a {INTERVAL:g}s interval (bound {BOUND}, without the guard "
          f"{int(measured.window / INTERVAL)}); {measured.token_backoff_runs:.0f} runs waited "
          f"(reason backoff); account locked: {measured.locked}")
    assert 4 <= measured.sign_ins <= BOUND
    assert measured.token_backoff_runs >= WINDOW / INTERVAL - 10
    assert not measured.locked  # 10 wrong passwords lock the account: never reached


@pytest.mark.timeout(180)
def test_refused_imap_logins_stay_under_the_bound(measured: Measured) -> None:
    print(f"\nLOCKOUT IMAP refuses every login: {measured.imap_logins} XOAUTH2 logins in "
          f"{measured.window:.0f}s (bound {IMAP_BOUND}, retried within 4 intervals); "
          f"{measured.imap_backoff_runs:.0f} runs waited; password sign-ins "
          f"{measured.imap_password_grants}")
    assert 8 <= measured.imap_logins <= IMAP_BOUND
    assert measured.imap_backoff_runs >= WINDOW / INTERVAL - IMAP_BOUND - 5
    # The retries refresh the token: the password was used once, by the very first sign-in.
    assert measured.imap_password_grants == 1
