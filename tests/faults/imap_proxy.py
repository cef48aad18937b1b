"""A TLS-terminating IMAP proxy in front of the real Dovecot that misbehaves on demand.

Dovecot is a correct server: it cannot hang half-way through a reply, answer garbage or send a
10 GiB literal when asked to. This proxy relays a real Dovecot session and breaks it in one
chosen way, switchable at run time (`set_fault`). A fault applies to connections accepted
after the switch; switching closes the connections that were accepted under a fault, so a hung
session never outlives its fault.

| fault | what the client sees |
|---|---|
| `pass` | Dovecot, through one more TLS hop |
| `refuse` | the port is closed: connection refused |
| `silent` | TCP and TLS are accepted, the greeting never comes |
| `hang` | the reply to `command` stops half-way through its first line |
| `trickle` | as `hang`, then one byte every 0.2 s forever (no read timeout ever fires) |
| `garbage` | `payload` instead of the reply to `command`, then the connection closes |
| `literal` | the reply to `command` is an endless literal announced as `literal_size` bytes |
| `drop` | the connection closes right after the server's OK to AUTHENTICATE |
| `rewrite` | the reply to `command` (up to its tagged completion) goes through `rewrite` |

`command` matches the IMAP command name, `UID FETCH` counting as `FETCH`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
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

KINDS = ("pass", "refuse", "silent", "hang", "trickle", "garbage", "literal", "drop", "rewrite")
GARBAGE = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 \xff\xfeHTTP/1.1 400 Bad Request\r\n"
_LINE_LIMIT = LINE_LIMIT


@dataclass(frozen=True)
class ImapFault:
    kind: str = "pass"
    command: str = "FETCH"
    payload: bytes = GARBAGE
    literal_size: int = 10 * 2**30
    rewrite: Callable[[bytes], bytes] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown IMAP fault {self.kind!r}")


@dataclass
class _Session:
    fault: ImapFault
    pending: dict[bytes, str] = field(default_factory=dict)  # tag -> command
    current: str = ""
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class ImapFaultProxy(TlsRelay):
    """`host:port` speaks IMAPS with a certificate from `ca` for `names`; relays to upstream."""

    def __init__(
        self,
        ca: trustme.CA,
        upstream_host: str,
        upstream_port: int,
        *,
        names: tuple[str, ...] = ("127.0.0.1",),
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(ca, upstream_host, upstream_port, names=names, host=host)
        self._fault = ImapFault()
        self.literal_bytes_sent = 0

    # -- control (from test code) -----------------------------------------------------------
    @property
    def fault(self) -> ImapFault:
        return self._fault

    def set_fault(self, kind: str, **options: object) -> None:
        """Switch to a fault (see the module docstring); `pass` removes it."""
        run(self._switch(ImapFault(kind, **options)))  # type: ignore[arg-type]

    # -- the event loop side ----------------------------------------------------------------
    async def _switch(self, fault: ImapFault) -> None:
        self._fault = fault
        # Close the sessions accepted under a fault (a hung one never outlives it).
        await self._drop_sessions(lambda session: session.fault.kind != "pass")
        if fault.kind == "refuse":
            await self._close_listener()
        elif self._server is None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self._fault, writers=[writer])
        task = self._track(session)
        try:
            await self._serve(session, reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            pass  # the client or Dovecot went away: that is what faults do
        finally:
            self._live.pop(task, None)
            for w in session.writers:
                w.close()

    async def _serve(
        self, session: _Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if session.fault.kind == "silent":
            while await reader.read(65536):
                pass
            return
        up_reader, up_writer = await asyncio.open_connection(
            *self.upstream, ssl=self._client_ctx, limit=_LINE_LIMIT
        )
        session.writers.append(up_writer)
        tasks = {
            asyncio.ensure_future(self._client_to_server(session, reader, up_writer)),
            asyncio.ensure_future(self._server_to_client(session, up_reader, writer)),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _client_to_server(
        self, session: _Session, reader: asyncio.StreamReader, up: asyncio.StreamWriter
    ) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            parsed = command_name(line)
            if parsed is not None:
                tag, name = parsed
                session.pending[tag] = name
                session.current = name
            up.write(line)
            while match := LITERAL_RE.search(line):
                up.write(await reader.readexactly(int(match.group(1))))
                line = await reader.readline()
                up.write(line)
            await up.drain()

    async def _server_to_client(
        self, session: _Session, up: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        fault = session.fault
        rewritten: list[bytes] = []
        while True:
            first, rest = await read_logical_line(up)
            line = first + rest
            if not line:
                return
            tag = line.split(b" ", 1)[0]
            completes = tag in session.pending
            command = session.pending.pop(tag) if completes else session.current
            if fault.kind == "drop" and command == "AUTHENTICATE" and completes:
                writer.write(line)
                await writer.drain()
                return
            if command != fault.command or fault.kind in ("pass", "drop"):
                writer.write(line)
                await writer.drain()
                continue
            if fault.kind == "rewrite":
                rewritten.append(line)
                if completes:
                    assert fault.rewrite is not None
                    writer.write(fault.rewrite(b"".join(rewritten)))
                    await writer.drain()
                    rewritten.clear()
                continue
            await self._misbehave(fault, line, writer)
            return

    async def _misbehave(self, fault: ImapFault, line: bytes, writer: asyncio.StreamWriter) -> None:
        if fault.kind == "garbage":
            writer.write(fault.payload)
            await writer.drain()
            return
        if fault.kind == "literal":
            writer.write(b"* 1 FETCH (INTERNALDATE {%d}\r\n" % fault.literal_size)
            chunk, sent = b"\0" * 65536, 0
            while sent < fault.literal_size and not writer.is_closing():
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0)  # drain() need not yield: let the client's EOF in
                sent += len(chunk)
                self.literal_bytes_sent += len(chunk)
            return
        writer.write(line[: max(1, len(line) // 2)])
        await writer.drain()
        while not writer.is_closing():  # hang / trickle: until the client gives up
            await asyncio.sleep(0.2)
            if fault.kind == "trickle":
                writer.write(b"x")
                await writer.drain()
