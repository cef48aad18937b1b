"""Fill a Dovecot Maildir fast: thousands of small messages written straight into ``cur/``.

`Dovecot.deliver()` builds each message and takes a lock per file; for a 100,000-message
inbox this writer reuses one message body per size and writes with plain syscalls. As with
the test bed, INTERNALDATE is the file's mtime, the file name carries a strictly increasing
delivery time (Dovecot assigns UIDs in that order), and files belong to nobody:nogroup.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tests.testbed import Dovecot, make_message, virtual_size


@dataclass(frozen=True, slots=True)
class Message:
    internaldate: datetime  # timezone-aware
    seen: bool = False
    size: int = 2_000


class MaildirWriter:
    """Writes messages into a user's folder of a started (or not yet started) `Dovecot`."""

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self._bodies: dict[int, bytes] = {}
        self._serial = 0
        self._last_us = 0
        self._uid = os.stat(dovecot.mail_root).st_uid
        self._gid = os.stat(dovecot.mail_root).st_gid

    def _body(self, size: int) -> bytes:
        body = self._bodies.get(size)
        if body is None:
            body = make_message("Ticket update", "customer@fabrikam.example", size=size)
            self._bodies[size] = body
        return body

    def write(self, user: str, folder: str, messages: Sequence[Message]) -> int:
        """Write `messages` in order (their delivery order); returns how many were written."""
        directory = self.dovecot.folder_dir(user, folder, create=True)
        cur = directory / "cur"
        pid = os.getpid()
        for message in messages:
            body = self._body(message.size)
            self._serial += 1
            now_us = max(time.time_ns() // 1000, self._last_us + 1)
            self._last_us = now_us
            secs, usecs = divmod(now_us, 1_000_000)
            info = ":2,S" if message.seen else ":2,"
            name = (
                f"{secs}.M{usecs}P{pid}Q{self._serial}.bench,S={len(body)},"
                f"W={virtual_size(body)}{info}"
            )
            path = os.path.join(cur, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, body)
                os.fchown(fd, self._uid, self._gid)
                stamp = message.internaldate.timestamp()
                os.utime(fd, (stamp, stamp))
            finally:
                os.close(fd)
        return len(messages)
