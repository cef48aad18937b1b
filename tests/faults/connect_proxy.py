"""A small HTTP CONNECT proxy, the kind enterprises put between their servers and Entra ID.

It alone resolves the names in `names` (e.g. `login.fabrikam.test` -> the FakeEntra's
address): the client has no DNS entry for them, as behind a proxy that does the lookups.
Like Squid, it answers `407` with `Proxy-Authenticate: Basic` when credentials are required
and missing or wrong, `502` for a name it cannot resolve, and relays bytes both ways after
`200 Connection established`. `connects` lists the `host:port` of every tunnel it opened.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import threading
from collections.abc import Mapping

_MAX_HEAD = 16 * 1024


class ConnectProxy:
    def __init__(
        self, names: Mapping[str, str], *, credentials: tuple[str, str] | None = None
    ) -> None:
        self.names = {name.lower(): address for name, address in names.items()}
        self.credentials = credentials
        self.connects: list[str] = []  # tunnels opened, as host:port
        self.refused: list[tuple[str, int]] = []  # (host:port, status) of refused CONNECTs
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        threading.Thread(target=self._accept, name="connect-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        self._track(client, True)
        try:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target, _version = [*lines[0].split(" "), "", "", ""][:3]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:])
            }
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                return
            if self.credentials is not None:
                wanted = base64.b64encode(":".join(self.credentials).encode()).decode()
                if headers.get("proxy-authorization", "") != f"Basic {wanted}":
                    self.refused.append((target, 407))
                    client.sendall(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="proxy"\r\n'
                        b"Content-Length: 0\r\n\r\n"
                    )
                    return
            host, _, port = target.rpartition(":")
            address = self.names.get(host.lower())
            if address is None:
                self.refused.append((target, 502))
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            upstream = socket.create_connection((address, int(port)), timeout=10)
            self._track(upstream, True)
            self.connects.append(target)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._relay(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._track(sock, False)
                    sock.close()

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        while True:
            readable, _, _ = select.select(list(peers), [], [], 30)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)

    def _track(self, sock: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._open.add(sock)
            else:
                self._open.discard(sock)
