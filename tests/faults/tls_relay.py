"""The plumbing the bed's IMAP relays share: a TLS listener on the bed's event loop (its
certificate from the bed's CA), the sessions it relays, and closing them on a switch.

A relay subclasses `TlsRelay` and writes `_accept(reader, writer)`: it registers its session
with `_track()` and relays to `self.upstream` with `self._client_ctx`. `command_name()` and
`read_logical_line()` read IMAP the way both relays need it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from typing import Any, Protocol, Self

import trustme

from tests.faults.loop import run

LINE_LIMIT = 2**20  # one IMAP line, literals excluded
LITERAL_RE = re.compile(rb"\{(\d+)\+?\}\r\n$")  # a line announcing a literal of n bytes


def command_name(line: bytes) -> tuple[bytes, str] | None:
    """(tag, command) of a client command line (`UID FETCH` is `FETCH`); None for a
    continuation (SASL data ...)."""
    words = line.split()
    if len(words) < 2 or not words[0].isalnum():
        return None
    name = words[1].decode("ascii", "replace").upper()
    if name == "UID" and len(words) > 2:
        name = words[2].decode("ascii", "replace").upper()
    return words[0], name


async def read_logical_line(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(first line, the rest: the literals it announces and the lines that go on after them),
    read byte-exact."""
    first = await reader.readline()
    rest = b""
    data = first
    while data and (match := LITERAL_RE.search(data)):
        rest += await reader.readexactly(int(match.group(1)))
        data = await reader.readline()
        rest += data
    return first, rest


class Session(Protocol):
    writers: list[asyncio.StreamWriter]


class TlsRelay:
    """`host:port` speaks TLS with a certificate from `ca` for `names`; relays to upstream."""

    def __init__(
        self,
        ca: trustme.CA,
        upstream_host: str,
        upstream_port: int,
        *,
        names: tuple[str, ...] = ("127.0.0.1",),
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.upstream = (upstream_host, upstream_port)
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(self._server_ctx)
        self._client_ctx = ssl.create_default_context()
        ca.configure_trust(self._client_ctx)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._live: dict[asyncio.Task[None], Any] = {}  # task -> its Session
        self.accepted = 0

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> Self:
        run(self._listen())
        return self

    def stop(self) -> None:
        run(self._stop())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _track(self, session: Session) -> asyncio.Task[None]:
        """Count and remember the session of the running `_accept`; returns its task."""
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._live[task] = session
        return task

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self._port, ssl=self._server_ctx, limit=LINE_LIMIT,
            reuse_address=True, ssl_handshake_timeout=5,
        )  # fmt: skip
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _stop(self) -> None:
        await self._close_listener()
        await self._drop_sessions(lambda _session: True)

    async def _drop_sessions(self, doomed_if: Callable[[Any], bool]) -> None:
        """Close the sessions `doomed_if` picks; they end as the client sees EOF."""
        doomed = [task for task, session in self._live.items() if doomed_if(session)]
        for task in doomed:
            for writer in self._live[task].writers:
                writer.close()
        if doomed:
            _done, stuck = await asyncio.wait(doomed, timeout=2)
            for task in stuck:
                task.cancel()
