"""The credential backoff (the Smart Lockout guard), kept in `state_dir` so restarts honour it.

After a credential failure (wrong password, disabled user, expired secret) a sign-in step waits
interval * 2^failures before it is tried again: a wrong password retried every minute would
trip Entra ID Smart Lockout (10 failures by default) and lock the very account we watch. The
record lives in `state_dir/backoff/NAME.json` (0600, atomic replace), so a crash loop, a
redeploy, a second replica sharing the state, and `check`, `doctor` and `login` all see the same
wait. A changed secret or config retries at once: the record carries a salted, slow hash of
both (never the secret), and a record whose hash does not match the current secret and config
does not hold anything back.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.config import MailboxConfig, read_secret
from exporter.errors import SecretError
from exporter.failures import Failure
from exporter.statefile import atomic_write

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600.0
# An IMAP/SMTP rejection of a freshly issued token tries no password, so it risks no lockout:
# it is retried within a few intervals, so that an admin's fix (a permission, an Exchange
# setting) shows within minutes, not after an hour's wait.
SERVER_REJECTION_CAP_INTERVALS = 4
# Checks whose failure with a credential reason puts that step into backoff, and the most
# intervals each waits (None: MAX_BACKOFF_SECONDS).
SIGN_IN_STEPS: dict[str, int | None] = {
    "token": None,
    "imap_login": SERVER_REJECTION_CAP_INTERVALS,
}
_KDF_ITERATIONS = 20_000  # the record must not be a cheap oracle for the password
_FORMAT = 1


def secret_key(mailbox: MailboxConfig) -> str:
    """What a change of retries at once: the mailbox's config and its secret. Never stored."""
    try:
        secret = read_secret(mailbox.auth)
    except SecretError:
        secret = ""
    return repr(mailbox) + "\0" + secret


def _kdf(key: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), salt, _KDF_ITERATIONS).hex()


def fingerprint(key: str) -> str:
    """A salted, slow hash of `key`: `pbkdf2-sha256$SALT$HASH`."""
    salt = secrets.token_bytes(16)
    return f"pbkdf2-sha256${salt.hex()}${_kdf(key, salt)}"


@dataclass
class Backoff:
    """One sign-in step's wait after credential failures."""

    failures: int = 0
    until: float = 0.0  # unix time: the next attempt is allowed from then on
    fingerprint: str = ""
    cause: Failure | None = None
    # (fingerprint, sha256 of the key) -> match: the slow hash runs once per key, not per run.
    _matches: dict[tuple[str, str], bool] = field(default_factory=dict, repr=False)

    def matches(self, key: str) -> bool:
        memo = (self.fingerprint, hashlib.sha256(key.encode()).hexdigest())
        if memo not in self._matches:
            kind, _sep, rest = self.fingerprint.partition("$")
            salt_hex, _sep, digest = rest.partition("$")
            try:
                salt = bytes.fromhex(salt_hex)
            except ValueError:
                salt = b""
            self._matches[memo] = (
                kind == "pbkdf2-sha256"
                and bool(salt)
                and hmac.compare_digest(_kdf(key, salt), digest)
            )
        return self._matches[memo]

    def active(self, now: float, key: str) -> bool:
        return self.cause is not None and now < self.until and self.matches(key)

    def record_failure(
        self, failure: Failure, now: float, interval: float, cap: float, key: str
    ) -> None:
        if not (self.fingerprint and self.matches(key)):
            self.failures = 0  # another secret or config: its failures start afresh
            self.fingerprint = fingerprint(key)
        self.failures += 1
        delay = min(interval * 2.0**self.failures, max(cap, interval))
        if failure.retry_after:
            delay = max(delay, failure.retry_after)
        self.until = now + delay
        self.cause = failure


def backoff_failure(backoff: Backoff, now: float) -> Failure:
    """The `backoff` failure a held-back step reports: the cause, its code, the next try."""
    cause = backoff.cause
    assert cause is not None
    at = datetime.fromtimestamp(backoff.until, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return Failure(
        "backoff",
        cause.code,
        f"after {cause.reason}: next sign-in attempt at {at} (in {backoff.until - now:.0f}s); "
        f"last error: {cause.message}",
        cause.remediation,
    )


class BackoffStore:
    """One mailbox's backoff record: loaded when the file changed, saved after each change.

    Processes sharing `state_dir` see each other's records: every lookup compares the file's
    identity (inode, size, mtime) with the one last read. A corrupt file is set aside and
    treated as empty: it costs at most one attempt, never a crash.
    """

    def __init__(self, state_dir: Path, mailbox: str) -> None:
        self.path = state_dir / "backoff" / f"{mailbox}.json"
        self.mailbox = mailbox
        self._steps: dict[str, Backoff] = {}
        self._seen: tuple[int, int, int] | None = None

    def get(self, step: str) -> Backoff:
        self._refresh()
        return self._steps.setdefault(step, Backoff())

    def holds_back(self, step: str, now: float, key: str) -> Failure | None:
        """The `backoff` failure if `step` must wait, else None."""
        backoff = self.get(step)
        return backoff_failure(backoff, now) if backoff.active(now, key) else None

    def failed(self, step: str, failure: Failure, now: float, interval: float, key: str) -> None:
        cap_intervals = SIGN_IN_STEPS.get(step)
        cap = MAX_BACKOFF_SECONDS if cap_intervals is None else interval * cap_intervals
        self.get(step).record_failure(failure, now, interval, cap, key)
        self._save()

    def passed(self, step: str) -> None:
        backoff = self.get(step)
        if backoff.cause is None and backoff.failures == 0:
            return
        self._steps[step] = Backoff()
        self._save()

    def clear(self) -> None:
        """Forget every step's wait (a fresh interactive sign-in)."""
        self._steps = {}
        self._save()

    # -- the file ------------------------------------------------------------------------------
    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self) -> None:
        identity = self._identity()
        if identity == self._seen:
            return
        self._seen = identity
        self._steps = self._load() if identity is not None else {}

    def _load(self) -> dict[str, Backoff]:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            steps = document["steps"]
            if not isinstance(steps, dict):
                raise TypeError("steps is not a mapping")
            return {str(step): _backoff_from(entry) for step, entry in steps.items()}
        except FileNotFoundError:
            return {}
        except OSError as err:
            log.warning(
                "cannot read the backoff record",
                extra={"path": str(self.path), "error": err.strerror},
            )
            return {}
        except (ValueError, KeyError, TypeError):
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
                log.warning("backoff record is corrupt; set aside", extra={"path": str(aside)})
            self._seen = None
            return {}

    def _save(self) -> None:
        steps = {step: _entry_of(b) for step, b in self._steps.items() if b.cause is not None}
        try:
            if not steps:
                self.path.unlink(missing_ok=True)
            else:
                document = {"format": _FORMAT, "mailbox": self.mailbox, "steps": steps}
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                atomic_write(self.path, json.dumps(document, indent=1).encode(), 0o600)
        except OSError as err:
            # The wait still holds in this process; only other processes miss it.
            log.warning(
                "cannot save the backoff record",
                extra={"path": str(self.path), "error": err.strerror},
            )
        self._seen = self._identity()


def _entry_of(backoff: Backoff) -> dict[str, Any]:
    cause = backoff.cause
    assert cause is not None
    return {
        "failures": backoff.failures,
        "until": round(backoff.until, 3),
        "until_utc": datetime.fromtimestamp(backoff.until, UTC).isoformat(timespec="seconds"),
        "fingerprint": backoff.fingerprint,
        "reason": cause.reason,
        "code": cause.code,
        "message": cause.message,
        "hint": cause.hint,
        "retry_after": cause.retry_after,
    }


def _backoff_from(entry: Any) -> Backoff:
    if not isinstance(entry, dict):
        raise TypeError("a step is not a mapping")
    retry_after = entry.get("retry_after")
    cause = Failure(
        str(entry["reason"]),
        str(entry.get("code", "")),
        str(entry.get("message", "")),
        str(entry.get("hint", "")),
        float(retry_after) if retry_after is not None else None,
    )
    return Backoff(
        failures=int(entry["failures"]),
        until=float(entry["until"]),
        fingerprint=str(entry["fingerprint"]),
        cause=cause,
    )
