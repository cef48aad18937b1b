"""The token cache is serialised and written (atomic replace + fsync) at most once per refresh,
and a write never drops what another process wrote to the same file meanwhile."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import exporter.auth
from exporter.auth import MailboxAuth, token_cache
from exporter.config import load_config
from tests.conftest import use_client_secret, write_config


class Writes:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def of(self, name: str) -> int:
        return sum(1 for path in self.paths if path.name == name)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    """Counts the durable writes of token caches (AtomicFilePersistence.save's atomic_write)."""
    seen = Writes()
    real = exporter.auth.atomic_write

    def counting(path: Path, data: bytes, mode: int = 0o600) -> None:
        seen.paths.append(Path(path))
        real(path, data, mode)

    monkeypatch.setattr(exporter.auth, "atomic_write", counting)
    yield seen


def _auth(tmp_path: Path, entra: Any, dovecot: Any, mailbox: Any) -> MailboxAuth:
    config = load_config(write_config(tmp_path, entra, dovecot, [mailbox]))
    return MailboxAuth(config.mailboxes[0], config.state_dir)


def test_one_write_per_refresh(
    writes: Writes, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path
) -> None:
    mailbox = make_mailbox("onewrite")
    auth = _auth(tmp_path, entra, dovecot, mailbox)
    name = f"{mailbox.name}.json"
    auth.refresh()  # the password sign-in
    assert writes.of(name) == 1
    before = json.loads((tmp_path / "state" / "tokens" / name).read_text())["RefreshToken"]
    for runs in range(2, 5):
        auth.refresh()  # refresh-token grants: a new refresh token each time
        assert writes.of(name) == runs
    after = json.loads((tmp_path / "state" / "tokens" / name).read_text())["RefreshToken"]
    assert before.keys() == after.keys()
    assert [v["secret"] for v in before.values()] != [v["secret"] for v in after.values()]
    # A second process (the CLI) reads what the service wrote, and refreshes with it.
    other = _auth(tmp_path, entra, dovecot, mailbox)
    other.refresh()
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 1


def test_one_write_per_app_only_refresh(
    writes: Writes, entra: Any, dovecot: Any, make_mailbox: Any, tmp_path: Path
) -> None:
    """Client credentials: the old app token's removal rides along with the new one's write."""
    mailbox = make_mailbox("appwrite")
    use_client_secret(mailbox, entra, tmp_path / "client.secret", "s3cret")
    auth = _auth(tmp_path, entra, dovecot, mailbox)
    name = f"{mailbox.name}.json"
    for runs in range(1, 4):
        auth.refresh()
        assert writes.of(name) == runs
    cached = json.loads((tmp_path / "state" / "tokens" / name).read_text())
    assert len(cached["AccessToken"]) == 1  # the removed ones are gone from the file too


def test_a_write_keeps_what_another_process_wrote(tmp_path: Path) -> None:
    """Changes of another cache object on the same file (another process) survive this one's
    deferred write: its version is loaded under the lock and the pending changes replayed."""
    ours = token_cache(tmp_path, "shared")
    theirs = token_cache(tmp_path, "shared")
    ours.add(_event("ours", "rt-ours"))
    theirs.add(_event("theirs", "rt-theirs"))  # another account, written by the other
    # A later change of ours: both accounts must stay.
    os.utime(tmp_path / "tokens" / "shared.json")  # mtime granularity: make "newer" certain
    ours.add(_event("ours", "rt-ours-2"))
    document = json.loads((tmp_path / "tokens" / "shared.json").read_text())
    secrets = sorted(v["secret"] for v in document["RefreshToken"].values())
    assert secrets == ["rt-ours-2", "rt-theirs"]


def _event(user: str, refresh_token: str) -> dict[str, Any]:
    return {
        "client_id": "client",
        "scope": ["https://outlook.office365.com/IMAP.AccessAsUser.All"],
        "token_endpoint": "https://login.example/tenant/oauth2/v2.0/token",
        "response": {
            "access_token": f"at-{user}",
            "expires_in": 3600,
            "refresh_token": refresh_token,
            "client_info": _client_info(user),
        },
        "environment": "login.example",
    }


def _client_info(user: str) -> str:
    import base64

    raw = json.dumps({"uid": user, "utid": "tenant"}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
