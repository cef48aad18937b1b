"""A loopback DNS server with switchable failures, and a way to make one process use it.

No DNS query ever leaves loopback: the exporter under test runs in its own mount namespace
(`unshare --mount`, we are root) where /etc/resolv.conf is a bind mount of a file naming this
server, so nothing else on the machine is affected.

| fault | answer to every query (or to the queries for `names` only) |
|---|---|
| `pass` | the configured A records (AAAA: no data), NXDOMAIN for other names |
| `servfail` | SERVFAIL (a broken recursive resolver) |
| `nxdomain` | NXDOMAIN (the name is gone) |
| `silent` | none: queries are dropped (resolver down behind a firewall) |
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import threading
from pathlib import Path

KINDS = ("pass", "servfail", "nxdomain", "silent")
_A, _AAAA, _IN = 1, 28, 1


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset) of the first question."""
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype = struct.unpack("!H", packet[offset + 1 : offset + 3])[0]
    return ".".join(labels).lower(), qtype, offset + 5


class FakeDns:
    """UDP DNS on `host:53`, a random 127.x.y.z address so that parallel sessions never meet."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = {name.lower(): address for name, address in records.items()}
        self.fault = "pass"
        self.fault_names: frozenset[str] | None = None  # None: every name
        self.queries: list[tuple[str, int]] = []
        self.host = ""
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> FakeDns:
        rng = random.Random()  # picking a test address, not cryptography
        for _ in range(50):
            host = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((host, 53))
            except OSError as err:
                sock.close()
                if err.errno == errno.EADDRINUSE:
                    continue
                raise
            self.host, self._sock = host, sock
            break
        else:
            raise RuntimeError("no free loopback address for the fake DNS server")
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # close() would not wake a thread blocked in recvfrom()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def set_fault(self, kind: str, names: tuple[str, ...] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown DNS fault {kind!r}")
        self.fault_names = frozenset(n.lower() for n in names) if names else None
        self.fault = kind

    def resolv_conf(self, directory: Path) -> Path:
        """A resolv.conf naming this server with glibc's default timeout and attempts."""
        path = directory / "resolv.conf"
        path.write_text(f"nameserver {self.host}\n")
        path.chmod(0o644)
        return path

    def _serve(self) -> None:
        assert self._sock is not None
        self._sock.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                packet, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                answer = self._answer(packet)
            except (IndexError, struct.error, UnicodeError):
                continue
            if answer is not None:
                self._sock.sendto(answer, peer)

    def _answer(self, packet: bytes) -> bytes | None:
        name, qtype, end = _question(packet)
        self.queries.append((name, qtype))
        fault = self.fault
        if self.fault_names is not None and name not in self.fault_names:
            fault = "pass"
        if fault == "silent":
            return None
        address = self.records.get(name)
        rcode = {"servfail": 2, "nxdomain": 3}.get(fault, 0 if address else 3)
        answers = b""
        if rcode == 0 and qtype == _A and address is not None:
            answers = struct.pack("!HHHIH", 0xC00C, _A, _IN, 5, 4) + socket.inet_aton(address)
        flags = 0x8180 | rcode  # response, recursion desired + available
        header = struct.pack("!HHHHHH", struct.unpack("!H", packet[:2])[0], flags, 1,
                             1 if answers else 0, 0, 0)
        return header + packet[12:end] + answers


def in_namespace(resolv_conf: Path, argv: list[str]) -> list[str]:
    """`argv` run in a private mount namespace whose /etc/resolv.conf is `resolv_conf`."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            str(resolv_conf), *argv]
