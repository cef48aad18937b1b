"""A busy service desk: a second IMAP session working the same inbox while the exporter reads it.

A ticket system keeps its inbox selected read-write and, all the time, flags and unflags
messages, marks them read, files them into other folders, deletes them, while new mail keeps
arriving. Dovecot then tells every other session about it with unsolicited responses in the
middle of that session's commands: ``* N FETCH (FLAGS (...))``, ``* N EXPUNGE``,
``* N EXISTS``. :class:`BusyDesk` does exactly that, on a thread, for a bounded time:

* it toggles ``\\Flagged`` on the inbox's original messages, one after another (add when
  absent, remove when present), so the state really changes between the exporter's commands;
* it toggles ``\\Seen`` the same way, on every other step;
* every few steps it delivers a new message (small or oversized, dated now) and MOVEs or
  deletes + EXPUNGEs (by UID) one of the messages *it* delivered, alternately into
  ``move_to`` folders (``Archive`` and ``Junk Email`` by default).

It never moves or deletes the messages that were there before :meth:`BusyDesk.start`, so that
:meth:`BusyDesk.stop` can restore the mailbox exactly: the original messages get their
original flags back (UIDs and dates never changed), and every message the desk delivered is
deleted wherever it went. What it did is counted in :attr:`BusyDesk.done`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from imapclient import IMAPClient

from .mail import make_message

__all__ = ["DESK_HEADER", "BusyDesk"]

DESK_HEADER = "X-Testbed-Desk"  # marks the messages the desk delivered (for the clean-up)
_FLAGGED = b"\\Flagged"
_SEEN = b"\\Seen"


def _flag_bytes(flags: Sequence[object]) -> frozenset[bytes]:
    return frozenset(
        f if isinstance(f, bytes) else str(f).encode() for f in flags if f not in (b"\\Recent",)
    )


class BusyDesk:
    """A ticket system's IMAP session on ``user``'s inbox; ``start()`` / ``stop()``.

    ``dovecot`` is the bed's :class:`~tests.testbed.dovecot.Dovecot` (its ``entra`` mints the
    desk's token, so no sign-in is counted). The thread stops by itself after
    ``max_seconds``. ``step_pause`` is the pause between two changes (each change is one
    round trip to Dovecot besides).
    """

    def __init__(
        self,
        dovecot: Any,
        user: str,
        *,
        folder: str = "INBOX",
        move_to: Sequence[str] = ("Archive", "Junk Email"),
        max_seconds: float = 120.0,
        step_pause: float = 0.002,
        deliver_every: int = 6,
        small_size: int = 2_000,
        large_size: int = 120_000,
    ) -> None:
        self.dovecot = dovecot
        self.user = user
        self.folder = folder
        self.move_to = tuple(move_to)
        self.max_seconds = max_seconds
        self.step_pause = step_pause
        self.deliver_every = deliver_every
        self.sizes = (small_size, large_size)
        self.done: Counter[str] = Counter()  # flagged, unflagged, seen, unseen, delivered, ...
        self.error: BaseException | None = None
        self._client: IMAPClient | None = None
        self._original: dict[int, frozenset[bytes]] = {}
        self._current: dict[int, set[bytes]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> BusyDesk:
        for name in self.move_to:
            self.dovecot.create_folder(self.user, name)
        client = self._login()
        client.select_folder(self.folder)  # read-write, like a ticket system
        flags = client.get_flags(client.search("ALL"))
        self._original = {int(uid): _flag_bytes(f) for uid, f in flags.items()}
        if not self._original:
            client.logout()
            raise ValueError(f"{self.folder} of {self.user} is empty: nothing to work on")
        self._current = {uid: set(f) for uid, f in self._original.items()}
        self._client = client
        self._thread = threading.Thread(target=self._work, name="busy-desk", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop working, restore the original flags, delete what the desk delivered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                raise RuntimeError("the busy desk did not stop within 30 s")
        client, self._client = self._client, None
        if client is None:
            return
        try:
            self._restore(client)
        finally:
            with contextlib.suppress(Exception):
                client.logout()
        if self.error is not None:
            raise RuntimeError(f"the busy desk failed: {self.error!r}") from self.error

    def __enter__(self) -> BusyDesk:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def changes(self) -> int:
        """Changes the other sessions were told about (flag changes, arrivals, removals)."""
        return sum(self.done.values())

    # ------------------------------------------------------------------ the work

    def _login(self) -> IMAPClient:
        client: IMAPClient = self.dovecot.login(
            self.user, self.dovecot.entra.mint_access_token(self.user)
        )
        return client

    def _work(self) -> None:
        assert self._client is not None
        client = self._client
        originals = sorted(self._original)
        deadline = time.monotonic() + self.max_seconds
        step = 0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._toggle(client, originals[step % len(originals)], _FLAGGED)
                if step % 2 == 1:
                    self._toggle(client, originals[(step // 2) % len(originals)], _SEEN)
                if step % self.deliver_every == 0:
                    self._deliver(step)
                if step % self.deliver_every == self.deliver_every // 2:
                    self._remove_one(client, step)
                step += 1
                self._stop.wait(self.step_pause)
        except BaseException as err:  # reported by stop()
            self.error = err

    def _toggle(self, client: IMAPClient, uid: int, flag: bytes) -> None:
        current = self._current[uid]
        name = flag.decode().lstrip("\\").lower()
        if flag in current:
            client.remove_flags([uid], [flag], silent=True)
            current.discard(flag)
            self.done[f"un{name}"] += 1
        else:
            client.add_flags([uid], [flag], silent=True)
            current.add(flag)
            self.done[name] += 1

    def _deliver(self, step: int) -> None:
        size = self.sizes[(step // self.deliver_every) % 2]
        message = make_message(
            f"Ticket {step}", "customer@fabrikam.example", size=size, headers={DESK_HEADER: "1"}
        )
        self.dovecot.deliver(self.user, self.folder, message, internaldate=datetime.now(UTC))
        self.done["delivered"] += 1

    def _remove_one(self, client: IMAPClient, step: int) -> None:
        """MOVE or delete + UID EXPUNGE the oldest message the desk delivered itself."""
        own = [uid for uid in client.search("ALL") if uid not in self._original]
        if not own:
            return
        uid = min(own)
        turn = step // self.deliver_every
        if turn % 3 == 2 or not self.move_to:
            client.add_flags([uid], [b"\\Deleted"], silent=True)
            client.uid_expunge([uid])
            self.done["expunged"] += 1
        else:
            client.move([uid], self.move_to[turn % len(self.move_to)])
            self.done["moved"] += 1

    # ------------------------------------------------------------------ clean-up

    def _restore(self, client: IMAPClient) -> None:
        client.select_folder(self.folder)
        for uid, flags in self._original.items():
            client.set_flags([uid], sorted(flags) if flags else [], silent=True)
        for folder in (self.folder, *self.move_to):
            client.select_folder(folder)
            own = client.search(["HEADER", DESK_HEADER, "1"])
            if own:
                client.add_flags(own, [b"\\Deleted"], silent=True)
                client.uid_expunge(own)
        client.select_folder(self.folder)
        after = client.get_flags(client.search("ALL"))
        restored = {int(uid): _flag_bytes(f) for uid, f in after.items()}
        if restored != self._original:
            raise RuntimeError(f"the inbox was not restored: {restored} != {self._original}")
