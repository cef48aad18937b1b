"""Exchange Online's IMAP personality in front of the real Dovecot, and a wire recorder.

Dovecot cannot answer like outlook.office365.com. :class:`ExchangeImapRelay` terminates TLS
(a certificate from the bed's trustme CA), relays every session to Dovecot and, in its
``exchange`` personality, rewrites what Exchange words differently:

* the greeting: ``* OK The Microsoft Exchange IMAP4 service is ready. [...]`` (no capability
  list in it, so clients ask ``CAPABILITY``);
* ``* CAPABILITY`` answers and ``[CAPABILITY ...]`` response codes: Exchange's list
  (:data:`EXCHANGE_CAPABILITIES`);
* ``LIST`` answers: the RFC 6154 SPECIAL-USE attributes (``\\Junk``, ``\\Sent`` ...) are
  removed (Exchange lists none; folders are found by their localized names);
* a refused token: ``<tag> NO AUTHENTICATE failed.``

and, switchable at run time (:meth:`ExchangeImapRelay.set_mode`, for sessions accepted after
the switch):

* ``normal``: Exchange's wording, Dovecot's data;
* ``refuse_token``: every AUTHENTICATE is answered ``NO AUTHENTICATE failed.`` (Dovecot is
  not asked);
* ``not_connected``: the login succeeds; every later command but LOGOUT is answered
  ``BAD User is authenticated but not connected.``

With ``personality="dovecot"`` nothing is rewritten (a transparent TLS hop). Either way, the
relay records the server's *unsolicited* responses per command it arrived in
(:attr:`ExchangeImapRelay.unsolicited`): ``EXPUNGE``, ``EXISTS`` outside SELECT/EXAMINE, and
``FETCH`` outside a FETCH or carrying ``FLAGS`` the command did not ask for. Literals
(``{n}`` then n bytes) pass through byte-exact in both directions; rewrites touch only the
first line of an answer, before any literal.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import Counter
from dataclasses import dataclass, field

import trustme

from tests.faults.loop import run
from tests.faults.tls_relay import (
    LINE_LIMIT,
    LITERAL_RE,
    TlsRelay,
    command_name,
    read_logical_line,
)

__all__ = [
    "EXCHANGE_CAPABILITIES",
    "EXCHANGE_GREETING",
    "MODES",
    "NOT_CONNECTED",
    "REFUSED",
    "ExchangeImapRelay",
]

EXCHANGE_CAPABILITIES = (
    b"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE "
    b"NAMESPACE LITERAL+"
)
EXCHANGE_GREETING = (
    b"* OK The Microsoft Exchange IMAP4 service is ready. "
    b"[TQBXADIAUABSADAAMgBDAEEAMAAwADAAMQAuAGUAdQByAHAAcgBkADAAMgAuAHAAcgBvAGQALgBvAHUAdABs"
    b"AG8AbwBrAC4AYwBvAG0A]\r\n"
)
REFUSED = b"NO AUTHENTICATE failed."
NOT_CONNECTED = b"BAD User is authenticated but not connected."
MODES = ("normal", "refuse_token", "not_connected")
SPECIAL_USE = (b"\\All", b"\\Archive", b"\\Drafts", b"\\Flagged", b"\\Junk", b"\\Sent", b"\\Trash")

_CAPABILITY_CODE_RE = re.compile(rb"\[CAPABILITY [^\]]*\]")
_LIST_RE = re.compile(rb"^(\* (?:X?LIST|LSUB) \()([^)]*)(\).*)$", re.DOTALL)
_UNTAGGED_NUMBERED_RE = re.compile(rb"^\* (\d+) (FETCH|EXPUNGE|EXISTS)\b", re.IGNORECASE)
_LINE_LIMIT = LINE_LIMIT


@dataclass
class _Session:
    mode: str
    personality: str
    pending: dict[bytes, bytes] = field(default_factory=dict)  # tag -> command line
    authenticated: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class ExchangeImapRelay(TlsRelay):
    """`host:port` speaks IMAPS with a certificate from `ca` for `names`; relays to Dovecot."""

    def __init__(
        self,
        ca: trustme.CA,
        upstream_host: str,
        upstream_port: int,
        *,
        personality: str = "exchange",
        names: tuple[str, ...] = ("127.0.0.1",),
        host: str = "127.0.0.1",
    ) -> None:
        if personality not in ("exchange", "dovecot"):
            raise ValueError(f"unknown personality {personality!r}")
        super().__init__(ca, upstream_host, upstream_port, names=names, host=host)
        self.personality = personality
        self._mode = "normal"
        # (kind, command it arrived in) -> count; kind is FETCH, EXPUNGE or EXISTS.
        self.unsolicited: Counter[tuple[str, str]] = Counter()
        self.commands: Counter[str] = Counter()  # command name -> count, all sessions

    # -- control (from test code) -----------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch the behaviour for sessions accepted from now on; live sessions are closed."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        run(self._switch(mode))

    def reset_counters(self) -> None:
        self.unsolicited.clear()
        self.commands.clear()

    # -- the event loop side ----------------------------------------------------------------
    async def _switch(self, mode: str) -> None:
        self._mode = mode
        await self._drop_sessions(lambda _session: True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self._mode, self.personality, writers=[writer])
        task = self._track(session)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self.upstream, ssl=self._client_ctx, limit=_LINE_LIMIT
            )
            session.writers.append(up_writer)
            tasks = {
                asyncio.ensure_future(self._client_to_server(session, reader, writer, up_writer)),
                asyncio.ensure_future(self._server_to_client(session, up_reader, writer)),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pending in tasks:
                    pending.cancel()
                for pending in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            pass  # the client or Dovecot went away
        finally:
            self._live.pop(task, None)
            for w in session.writers:
                w.close()

    async def _client_to_server(
        self,
        session: _Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: asyncio.StreamWriter,
    ) -> None:
        while True:
            first = await reader.readline()
            if not first:
                return
            parsed = command_name(first)
            if parsed is not None:
                tag, name = parsed
                self.commands[name] += 1
                answer = self._answer_locally(session, tag, name, first)
                if answer is not None:
                    if name == "AUTHENTICATE" and len(first.split()) == 3:
                        # No initial response: ask for it, read it, then refuse.
                        writer.write(b"+ \r\n")
                        await writer.drain()
                        await reader.readline()
                    writer.write(answer)
                    await writer.drain()
                    continue
                session.pending[tag] = first
            # Line by line: a synchronizing literal ({n} without +) is sent only after the
            # server's "+" continuation, which the server sends only after this line.
            up.write(first)
            await up.drain()
            line = first
            while match := LITERAL_RE.search(line):
                up.write(await reader.readexactly(int(match.group(1))))
                line = await reader.readline()
                up.write(line)
                await up.drain()

    def _answer_locally(
        self, session: _Session, tag: bytes, name: str, line: bytes
    ) -> bytes | None:
        """The relay's own answer to a command (Dovecot is not asked), or None to relay it."""
        if session.mode == "refuse_token" and name == "AUTHENTICATE":
            return tag + b" " + REFUSED + b"\r\n"
        if session.mode == "not_connected" and session.authenticated and name != "LOGOUT":
            return tag + b" " + NOT_CONNECTED + b"\r\n"
        return None

    async def _server_to_client(
        self, session: _Session, up: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        greeted = False
        while True:
            first, rest = await read_logical_line(up)
            if not first:
                return
            if not greeted:
                greeted = True
                if session.personality == "exchange":
                    first = EXCHANGE_GREETING
                writer.write(first + rest)
                await writer.drain()
                continue
            tag = first.split(b" ", 1)[0]
            command = session.pending.pop(tag, None) if tag not in (b"*", b"+") else None
            if command is not None:
                name = (command_name(command) or (b"", ""))[1]
                if name == "AUTHENTICATE" and first.split()[1:2] == [b"OK"]:
                    session.authenticated = True
                first = self._rewrite_tagged(session, tag, name, first)
            elif tag == b"*":
                self._record(session, first)
                if self._dropped(session, first):
                    continue
                first = self._rewrite_untagged(session, first)
            writer.write(first + rest)
            await writer.drain()

    def _record(self, session: _Session, line: bytes) -> None:
        match = _UNTAGGED_NUMBERED_RE.match(line)
        if match is None:
            return
        kind = match.group(2).upper().decode()
        requests = list(session.pending.values())
        request = requests[-1] if requests else b""
        name = (command_name(request) or (b"", "(between commands)"))[1]
        if kind == "EXPUNGE":
            unsolicited = True
        elif kind == "EXISTS":
            unsolicited = name not in ("SELECT", "EXAMINE")
        else:
            asked_flags = b"FLAGS" in request.upper()
            unsolicited = name != "FETCH" or (b"FLAGS" in line.upper() and not asked_flags)
        if unsolicited:
            self.unsolicited[(kind, name)] += 1

    def _dropped(self, session: _Session, line: bytes) -> bool:
        """Exchange sends no capability list with its answer to AUTHENTICATE (Dovecot does)."""
        if session.personality != "exchange" or not line.upper().startswith(b"* CAPABILITY "):
            return False
        requests = list(session.pending.values())
        return bool(requests) and (command_name(requests[-1]) or (b"", ""))[1] == "AUTHENTICATE"

    def _rewrite_untagged(self, session: _Session, line: bytes) -> bytes:
        if session.personality != "exchange":
            return line
        if line.upper().startswith(b"* CAPABILITY "):
            return b"* CAPABILITY " + EXCHANGE_CAPABILITIES + b"\r\n"
        if match := _LIST_RE.match(line):
            kept = [a for a in match.group(2).split() if a not in SPECIAL_USE]
            return match.group(1) + b" ".join(kept) + match.group(3)
        return _CAPABILITY_CODE_RE.sub(b"[CAPABILITY " + EXCHANGE_CAPABILITIES + b"]", line)

    def _rewrite_tagged(self, session: _Session, tag: bytes, name: str, line: bytes) -> bytes:
        if session.personality != "exchange":
            return line
        status = line.split(b" ", 2)[1:2]
        if name == "AUTHENTICATE":
            if status == [b"OK"]:
                return tag + b" OK AUTHENTICATE completed.\r\n"
            return tag + b" " + REFUSED + b"\r\n"
        return _CAPABILITY_CODE_RE.sub(b"[CAPABILITY " + EXCHANGE_CAPABILITIES + b"]", line)
