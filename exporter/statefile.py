"""Files in `state_dir`: written by atomic replace, so a crash mid-write leaves the previous
version, never a torn file; the mode is set before the content exists. And who owns them: a
file another user wrote (an admin running the CLI as root) is one the service cannot read."""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` (fsynced, `mode`); raises OSError, leaving no temp file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The directories whose files the exporter and its CLI write: the token caches (and their lock
# files), the credential backoff records and the recorded Junk reviews.
STATE_SUBDIRS = ("tokens", "backoff", "review")


@dataclass(frozen=True, slots=True)
class ForeignOwned:
    """A directory or file in `state_dir` that belongs to another user than the process."""

    path: Path
    owner_uid: int


def foreign_owned(state_dir: Path, uid: int | None = None) -> list[ForeignOwned]:
    """What in `state_dir` (the directory itself, tokens/, backoff/, review/ and the entries in
    them) is owned by another uid than `uid` (default: this process's effective uid).

    The usual cause: an admin ran `login`, `check` or `junk-review --ack` as root. The files are
    0600, so the service's user can neither read them nor, for the lock files, open them.
    `state_dir` may be a symlink (systemd's DynamicUser= points /var/lib/NAME into
    /var/lib/private/); below it nothing is followed. A missing or unreadable directory is not
    reported here: the code that uses it says what is wrong.
    """
    me = os.geteuid() if uid is None else uid
    try:
        top = Path(os.path.realpath(state_dir))
        top_owner = top.stat().st_uid
    except OSError:
        return []
    found = [ForeignOwned(top, top_owner)] if top_owner != me else []
    for name in STATE_SUBDIRS:
        directory = top / name
        try:
            info = directory.lstat()
            if info.st_uid != me:
                found.append(ForeignOwned(directory, info.st_uid))
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            try:
                owner = entry.stat(follow_symlinks=False).st_uid
            except OSError:
                continue
            if owner != me:
                found.append(ForeignOwned(Path(entry.path), owner))
    return found


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def warn_foreign_owned(state_dir: Path, logger: logging.Logger | None = None) -> list[ForeignOwned]:
    """Log one warning when something in `state_dir` belongs to another user than this process:
    the first such path, its owner, this process's uid, how many there are, and the `chown`
    that hands them back. Returns what it found."""
    found = foreign_owned(state_dir)
    if found:
        uid, gid = os.geteuid(), os.getegid()
        first, owner, me = found[0].path, _user(found[0].owner_uid), _user(uid)
        others = f" and {len(found) - 1} more" if len(found) > 1 else ""
        fix = f"chown -R {uid}:{gid} {shlex.quote(os.path.realpath(state_dir))}"
        # The message repeats the fields: logfmt's secret scrubber can swallow an unquoted
        # `path=/long/path` field, never a path inside the quoted message.
        (logger or log).warning(
            f"{first}{others} belongs to {owner}, but the exporter runs as {me}: it may fail "
            f"to read or replace its token cache, backoff or review records; run: {fix}",
            extra={
                "path": str(first),
                "owner": owner,
                "exporter_uid": me,
                "count": len(found),
                "fix": fix,
            },
        )
    return found
