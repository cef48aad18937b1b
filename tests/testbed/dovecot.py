"""A private Dovecot 2.3 IMAP server that validates XOAUTH2 tokens against :class:`FakeEntra`.

Dovecot's ``oauth2`` passdb POSTs ``token=<access token>`` to the fake IdP's ``/introspect``
and accepts the login when the answer is ``{"active": true, "username": <the login user>}``.
Mail lives in Maildir folders that tests fill directly (:meth:`Dovecot.deliver`).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import trustme
from imapclient import IMAPClient, imap_utf7

from .entra import FakeEntra
from .mail import maildir_info, virtual_size
from .smtp import SmtpSink

__all__ = ["EXCHANGE_FOLDERS", "Dovecot", "DovecotStartError", "MessageInfo"]

DOVECOT_BINARY = "/usr/sbin/dovecot"

#: Folder name -> SPECIAL-USE flag, as an English Exchange Online mailbox shows them.
EXCHANGE_FOLDERS: dict[str, str] = {
    "Archive": "\\Archive",
    "Deleted Items": "\\Trash",
    "Drafts": "\\Drafts",
    "Junk Email": "\\Junk",
    "Sent Items": "\\Sent",
}

_MAX_SOCKET_DIR = 60  # unix socket paths are limited to 108 bytes; keep base_dir short


class MessageInfo(NamedTuple):
    """What a read-only IMAP session sees of one message."""

    flags: frozenset[str]  # without \\Recent
    internaldate: datetime  # timezone-aware
    size: int  # RFC822.SIZE


class DovecotStartError(RuntimeError):
    """Dovecot did not come up; the message carries the tail of its log."""


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _make_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on ``path`` and its ancestors.

    pytest creates its temporary directories with mode 0700; Dovecot's auth process (user
    ``dovecot``) must read the CA file and the mail processes (user ``nobody``) must reach
    the Maildirs below it.
    """
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            part.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


class Dovecot:
    """Dovecot 2.3 on an IMAPS loopback port, with XOAUTH2/OAUTHBEARER via ``entra``.

    ``folders`` maps extra folder names to SPECIAL-USE flags (default: the English Exchange
    Online set, ``Junk Email`` = ``\\Junk`` ...); they are auto-created at first login.

    Extending the configuration (e.g. SMTP submission): subclass and override
    :meth:`config_blocks`, or append text to :attr:`extra_config` and names to
    :attr:`protocols` before :meth:`start`. For submission that means ``protocols``
    += ``["submission"]``, a ``service submission-login { inet_listener submission {...} }``
    block on a free port, ``submission_relay_host``/``submission_relay_port`` pointing at a
    local sink and ``submission_relay_trusted = yes`` (see docs/testbed.md).
    """

    def __init__(
        self,
        workdir: Path,
        ca: trustme.CA,
        entra: FakeEntra,
        *,
        host: str = "127.0.0.1",
        folders: Mapping[str, str] | None = None,
        binary: str = DOVECOT_BINARY,
        submission: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.ca = ca
        self.entra = entra
        self.host = host
        self.folders = dict(EXCHANGE_FOLDERS if folders is None else folders)
        self.binary = binary
        self.protocols: list[str] = ["imap"]
        self.extra_config: list[str] = []
        # SMTP submission (STARTTLS, AUTH XOAUTH2 via the same oauth2 passdb), relaying to a
        # local sink that records anything sent (the exporter must never send).
        self.submission = submission
        self.sink: SmtpSink | None = None
        self.submission_port: int | None = None
        self.max_connections_per_user = 20  # Exchange Online allows about 20 per mailbox
        self.startup_seconds: float | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._short_run_dir: str | None = None
        self._counter = 0
        self._last_delivery_us = 0
        self._counter_lock = threading.Lock()
        self._uid = pwd.getpwnam("nobody").pw_uid
        self._gid = grp.getgrnam("nogroup").gr_gid

    # ------------------------------------------------------------------ paths

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Dovecot is not started")
        return self._port

    @property
    def log_path(self) -> Path:
        return self.workdir / "dovecot.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    @property
    def mail_root(self) -> Path:
        return self.workdir / "mail"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def base_dir(self) -> Path:
        if self._short_run_dir is not None:
            return Path(self._short_run_dir)
        return self.workdir / "run"

    def maildir(self, user: str) -> Path:
        """The Maildir of ``user`` (Dovecot lower-cases login names)."""
        return self.mail_root / user.lower() / "Maildir"

    # ------------------------------------------------------------------ configuration

    def config_blocks(self) -> list[str]:
        """The pieces of dovecot.conf, in order. Override to extend (see class docstring)."""
        w = self.workdir
        mailboxes = "".join(
            f'  mailbox "{name}" {{\n    special_use = {flag}\n    auto = create\n  }}\n'
            for name, flag in self.folders.items()
        )
        return [
            "# Generated by tests/testbed/dovecot.py - private test instance\n"
            f"protocols = {' '.join(self.protocols)}\n"
            f"base_dir = {self.base_dir}\n"
            f"state_dir = {w / 'state'}\n"
            f"log_path = {self.log_path}\n"
            f"info_log_path = {self.log_path}\n"
            f"listen = {self.host}\n"
            "ssl = yes\n"
            f"ssl_cert = <{w / 'server.pem'}\n"
            f"ssl_key = <{w / 'server.key'}\n"
            "ssl_min_protocol = TLSv1.2\n",
            # Authentication: XOAUTH2/OAUTHBEARER only, checked by introspection every time.
            "auth_mechanisms = xoauth2 oauthbearer\n"
            "disable_plaintext_auth = no\n"
            "auth_cache_size = 0\n"
            "auth_failure_delay = 0\n"
            "auth_verbose = yes\n"
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {w / 'dovecot-oauth2.conf.ext'}\n"
            "}\n"
            "userdb {\n"
            "  driver = static\n"
            f"  args = uid=nobody gid=nogroup home={self.mail_root}/%u\n"
            "}\n",
            # Mail storage: Maildir++, '/' as the IMAP separator like Exchange.
            f"mail_location = maildir:{self.mail_root}/%u/Maildir\n"
            "mail_fsync = never\n"
            "namespace inbox {\n"
            "  inbox = yes\n"
            "  separator = /\n"
            f"{mailboxes}"
            "}\n"
            "protocol imap {\n"
            f"  mail_max_userip_connections = {self.max_connections_per_user}\n"
            "}\n",
            # Services: IMAPS only (no plain 143), long-lived login processes.
            "service imap-login {\n"
            "  inet_listener imap {\n"
            "    port = 0\n"
            "  }\n"
            "  inet_listener imaps {\n"
            f"    address = {self.host}\n"
            f"    port = {self.port}\n"
            "    ssl = yes\n"
            "  }\n"
            "  service_count = 0\n"
            "  process_min_avail = 2\n"
            "  client_limit = 256\n"
            "}\n"
            "service imap {\n"
            "  process_limit = 256\n"
            "}\n"
            # Without this every failed login is delayed 2-15 s by the auth penalty.
            "service anvil {\n"
            "  unix_listener anvil-auth-penalty {\n"
            "    mode = 0\n"
            "  }\n"
            "}\n",
            # Hook: e.g. a submission service (see the class docstring).
            "".join(block if block.endswith("\n") else block + "\n" for block in self.extra_config),
        ]

    def oauth2_config(self) -> str:
        return (
            f"introspection_url = {self.entra.introspection_url}\n"
            "introspection_mode = post\n"
            "username_attribute = username\n"
            "username_format = %Lu\n"
            "active_attribute = active\n"
            "active_value = true\n"
            f"tls_ca_cert_file = {self.ca_file}\n"
            "timeout_msecs = 10000\n"
        )

    def _write_files(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        _make_traversable(w)
        (w / "state").mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, self._uid, self._gid)
        self.mail_root.chmod(0o755)
        cert = self.ca.issue_cert(self.host)
        cert.cert_chain_pems[0].write_to_path(str(w / "server.pem"))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(w / "server.pem"), append=True)
        cert.private_key_pem.write_to_path(str(w / "server.key"))
        (w / "server.key").chmod(0o600)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.ca_file.chmod(0o644)
        oauth2 = w / "dovecot-oauth2.conf.ext"
        oauth2.write_text(self.oauth2_config())
        oauth2.chmod(0o644)
        self.config_path.write_text("".join(self.config_blocks()))
        self.config_path.chmod(0o644)

    # ------------------------------------------------------------------ lifecycle

    def _add_submission(self) -> None:
        self.sink = SmtpSink(self.host).start()
        self.submission_port = _free_port(self.host)
        self.protocols.append("submission")
        self.extra_config.append(
            "hostname = mail.contoso.test\n"
            f"submission_relay_host = {self.host}\n"
            f"submission_relay_port = {self.sink.port}\n"
            "submission_relay_trusted = yes\n"
            "service submission-login {\n"
            "  inet_listener submission {\n"
            f"    address = {self.host}\n"
            f"    port = {self.submission_port}\n"
            "  }\n"
            "}\n"
        )

    def start(self, timeout: float = 10.0) -> Dovecot:
        """Write the configuration, run ``dovecot -F -c CONF`` and wait for the greeting."""
        if self._proc is not None:
            return self
        if self.submission and self.sink is None:
            self._add_submission()
        if len(str(self.workdir / "run")) > _MAX_SOCKET_DIR:
            self._short_run_dir = tempfile.mkdtemp(prefix="dcrun-")
        for attempt in range(3):
            self._port = _free_port(self.host)
            self._write_files()
            began = time.monotonic()
            stderr = (self.workdir / "dovecot.stderr").open("wb")
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # own process group: stop() signals it as a whole
            )
            stderr.close()
            try:
                self._wait_for_greeting(began + timeout)
            except DovecotStartError:
                self._terminate()
                if attempt < 2 and "Address already in use" in self.log_tail():
                    continue  # lost a race for the port; pick another
                raise
            self.startup_seconds = time.monotonic() - began
            return self
        raise AssertionError("unreachable")

    def _wait_for_greeting(self, deadline: float) -> None:
        context = self.ssl_context()
        last_error = "no attempt"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise DovecotStartError(
                    f"dovecot exited with status {self._proc.returncode}\n{self.log_tail()}"
                )
            try:
                with (
                    socket.create_connection((self.host, self.port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname=self.host) as tls,
                ):
                    greeting = tls.recv(1024)
                if greeting.startswith(b"* OK"):
                    return
                last_error = f"unexpected greeting {greeting[:80]!r}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.005)
        raise DovecotStartError(
            f"no IMAPS greeting on {self.host}:{self._port} ({last_error})\n{self.log_tail()}"
        )

    def stop(self) -> None:
        self._terminate()
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        if self._short_run_dir is not None:
            shutil.rmtree(self._short_run_dir, ignore_errors=True)
            self._short_run_dir = None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # SIGTERM to the master alone takes ~1.1 s (it waits for its children); the
            # group is only this instance's processes, so signal them all at once.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for path in (self.log_path, self.workdir / "dovecot.stderr"):
            with contextlib.suppress(OSError):
                chunks.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(chunks)

    # ------------------------------------------------------------------ IMAP clients

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context

    def connect(self, timeout: float = 10.0) -> IMAPClient:
        return IMAPClient(
            self.host, port=self.port, ssl=True, ssl_context=self.ssl_context(), timeout=timeout
        )

    def login(self, user: str, token: str) -> IMAPClient:
        """A connected client after ``AUTHENTICATE XOAUTH2`` (raises ``LoginError``)."""
        client = self.connect()
        try:
            client.oauth2_login(user, token)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client

    def imap_snapshot(
        self, user: str, folder: str, token: str | None = None
    ) -> dict[int, MessageInfo]:
        """``{uid: MessageInfo(flags, internaldate, size)}`` from a read-only EXAMINE session.

        Without ``token`` a helper token is minted (no sign-in attempt is counted).
        """
        client = self.login(user, token or self.entra.mint_access_token(user))
        try:
            client.normalise_times = False
            client.select_folder(folder, readonly=True)
            data = client.fetch(client.search("ALL"), ["FLAGS", "INTERNALDATE", "RFC822.SIZE"])
            return {
                uid: MessageInfo(
                    frozenset(
                        f.decode() if isinstance(f, bytes) else str(f)
                        for f in item[b"FLAGS"]
                        if f not in (b"\\Recent", "\\Recent")
                    ),
                    item[b"INTERNALDATE"],
                    int(item[b"RFC822.SIZE"]),
                )
                for uid, item in data.items()
            }
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    # ------------------------------------------------------------------ mail content

    def _own(self, path: Path) -> None:
        os.chown(path, self._uid, self._gid)

    def _ensure_dir(self, path: Path) -> None:
        if not path.is_dir():
            path.mkdir(mode=0o700)
            self._own(path)

    def folder_dir(self, user: str, folder: str, *, create: bool = True) -> Path:
        """The Maildir++ directory of ``folder`` ("INBOX", "Junk Email", "A/B" ...)."""
        root = self.maildir(user)
        if folder.upper() == "INBOX":
            path = root
        else:
            parts = folder.split("/")
            if any(not p or "." in p for p in parts):
                raise ValueError(f"unsupported folder name {folder!r}")
            encoded = [imap_utf7.encode(p).decode("ascii") for p in parts]
            path = root / ("." + ".".join(encoded))
        if create:
            self._ensure_dir(self.mail_root / user.lower())
            self._ensure_dir(root)
            for sub in ("cur", "new", "tmp"):
                self._ensure_dir(root / sub)
            if path != root:
                self._ensure_dir(path)
                for sub in ("cur", "new", "tmp"):
                    self._ensure_dir(path / sub)
                marker = path / "maildirfolder"
                if not marker.exists():
                    marker.touch(mode=0o600)
                    self._own(marker)
        return path

    def create_folder(self, user: str, name: str) -> Path:
        return self.folder_dir(user, name, create=True)

    def deliver(
        self,
        user: str,
        folder: str,
        message: bytes,
        *,
        internaldate: datetime,
        flags: Iterable[str] = (),
    ) -> str:
        """Put ``message`` into ``folder`` of ``user``'s Maildir; returns the file name.

        INTERNALDATE is the file's mtime (whole seconds); ``flags`` are IMAP system flags
        (``\\Seen``, ``\\Flagged``, ``\\Answered``, ``\\Draft``, ``\\Deleted``). Files are
        owned by nobody:nogroup like the mail processes.
        """
        if internaldate.tzinfo is None:
            raise ValueError("internaldate must be timezone-aware")
        info = maildir_info(flags)
        directory = self.folder_dir(user, folder, create=True)
        stamp = internaldate.timestamp()
        # The name carries the *delivery* time, strictly increasing: Dovecot sorts new files
        # by it when assigning UIDs, so UIDs follow delivery order as on a real server (a
        # message moved in later gets a higher UID whatever its INTERNALDATE).
        with self._counter_lock:
            self._counter += 1
            now_us = max(time.time_ns() // 1000, self._last_delivery_us + 1)
            self._last_delivery_us = now_us
            counter = self._counter
        secs, usecs = divmod(now_us, 1_000_000)
        unique = f"{secs}.M{usecs}P{os.getpid()}Q{counter}.testbed"
        name = f"{unique},S={len(message)},W={virtual_size(message)}{info}"
        tmp = directory / "tmp" / unique
        tmp.write_bytes(message)
        tmp.chmod(0o600)
        self._own(tmp)
        os.utime(tmp, (stamp, stamp))
        tmp.rename(directory / "cur" / name)
        return name

    def reset_mailbox(self, user: str) -> None:
        """Delete everything of ``user`` (mail, indexes). Close that user's sessions first."""
        shutil.rmtree(self.mail_root / user.lower(), ignore_errors=True)
