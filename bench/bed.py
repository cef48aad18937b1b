"""The benchmark's test bed: the fake Entra ID and a private Dovecot from tests/testbed, with
many users and large inboxes, and exporter configs that point at them.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import socket
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trustme
import yaml

from bench.maildir import MaildirWriter, Message
from bench.measure import ByteCountingProxy, CommandRecorder, SessionCount
from tests.testbed import Dovecot, FakeEntra, start_fake_entra

TENANT = "contoso.onmicrosoft.com"
ROOT = Path(__file__).resolve().parent.parent
_SITE = str(Path(shutil.__file__).parent) + "/"  # the standard library's directory
OVERSIZED = 26 * 1024 * 1024  # one message over the default 25 MiB threshold
PAUSE = 0.2  # seconds between in-process runs (see cpu_by_check)


def small_inbox(now: datetime) -> list[Message]:
    """A service-desk inbox that is being worked: five messages of the last two days."""
    return [
        Message(now - timedelta(hours=40), seen=True),
        Message(now - timedelta(hours=20)),
        Message(now - timedelta(hours=5), seen=True, size=6_000),
        Message(now - timedelta(hours=2)),
        Message(now - timedelta(minutes=30)),
    ]


def steady_inbox(count: int, now: datetime) -> list[Message]:
    """`count` messages arriving one every 10 minutes (144 a day) up to now, three in four
    read, one oversized in the middle: an inbox nobody empties."""
    messages = [
        Message(now - timedelta(minutes=10 * (count - i)), seen=i % 4 != 0) for i in range(count)
    ]
    middle = count // 2
    messages[middle] = Message(messages[middle].internaldate, size=OVERSIZED)
    return messages


def storm_inbox(count: int, now: datetime) -> list[Message]:
    """`count` messages that all arrived within the last few hours (a mail loop)."""
    span = timedelta(hours=3).total_seconds()
    start = now - timedelta(hours=3)
    return [Message(start + timedelta(seconds=span * i / count)) for i in range(count)]


def junk_folder(now: datetime) -> list[Message]:
    return [Message(now - timedelta(days=3)), Message(now - timedelta(hours=9))]


class BenchBed:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ca = trustme.CA()
        self.entra: FakeEntra | None = None
        self.dovecot: Dovecot | None = None
        self.writer: MaildirWriter | None = None
        self.mailboxes: dict[str, dict[str, Any]] = {}  # name -> mailbox config entry
        self.users: dict[str, str] = {}  # name -> UPN (lower case)
        self.now = datetime.now(UTC)

    def start(self) -> BenchBed:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "secrets").mkdir(parents=True)
        self.entra = start_fake_entra(self.ca)
        self.dovecot = Dovecot(self.workdir / "dovecot", self.ca, self.entra).start()
        self.writer = MaildirWriter(self.dovecot)
        return self

    def stop(self) -> None:
        if self.dovecot is not None:
            self.dovecot.stop()
        if self.entra is not None:
            self.entra.stop()

    def add_mailbox(self, name: str, inbox: list[Message]) -> None:
        """A user and an app in the fake tenant, a password file, and the user's Maildir."""
        assert self.entra is not None and self.writer is not None
        upn = f"{name}@{TENANT}"
        password = uuid.uuid4().hex
        client_id = str(uuid.uuid4())
        self.entra.add_user(upn, password)
        self.entra.add_app(client_id)
        secret = self.workdir / "secrets" / name
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        self.writer.write(upn, "INBOX", inbox)
        self.writer.write(upn, "Junk Email", junk_folder(self.now))
        self.mailboxes[name] = {
            "name": name,
            "username": upn,
            "tenant_id": TENANT,
            "client_id": client_id,
            "auth": {"flow": "password", "password_file": str(secret)},
        }
        self.users[name] = upn.lower()

    def index(self, name: str) -> None:
        """Let Dovecot build its index and cache once, as it has long done for a real mailbox,
        with the same queries the exporter makes."""
        assert self.dovecot is not None and self.entra is not None
        upn = self.users[name]
        client = self.dovecot.login(upn, self.entra.mint_access_token(upn))
        try:
            client.normalise_times = False
            client.select_folder("INBOX", readonly=True)
            client.search(["UNSEEN"])
            client.search(["LARGER", 25 * 1024 * 1024])
            client.search(["BEFORE", self.now.date() + timedelta(days=1)])
            client.select_folder("Junk Email", readonly=True)
            client.search(["BEFORE", self.now.date() + timedelta(days=1)])
        finally:
            client.logout()

    def write_config(
        self,
        path: Path,
        names: list[str],
        *,
        interval: float,
        timeout: float,
        imap_port: int | None = None,
    ) -> Path:
        assert self.entra is not None and self.dovecot is not None
        state = path.with_suffix(".state")
        shutil.rmtree(state, ignore_errors=True)
        config = {
            "state_dir": str(state),
            "defaults": {
                "interval": f"{round(interval * 1000)}ms",
                "timeout": f"{round(timeout * 1000)}ms",
                "authority_host": self.entra.url,
                "imap": {"host": "127.0.0.1", "port": imap_port or self.dovecot.port},
                "ca_file": str(self.entra.ca_file),
            },
            "mailboxes": [self.mailboxes[name] for name in names],
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def count_imap_session(self, name: str) -> SessionCount:
        """One steady-state run of `name` in this process: its IMAP commands (as Dovecot gets
        them, through a recording relay), its bytes on the wire (through a counting relay)
        and its token requests."""
        from exporter.config import load_config
        from exporter.runner import MailboxRunner, Watchdog

        assert self.dovecot is not None and self.entra is not None
        recorder = CommandRecorder(self.ca, self.dovecot.port)
        proxy = ByteCountingProxy(("127.0.0.1", recorder.port))
        try:
            path = self.write_config(
                self.workdir / f"count-{name}.yml",
                [name],
                interval=120,
                timeout=120,
                imap_port=proxy.port,
            )
            config = load_config(path)
            runner = MailboxRunner(config.mailboxes[0], config.state_dir, Watchdog())
            runner.run(lambda _result: None)  # first run: OIDC discovery and a password sign-in
            proxy.reset()
            recorder.commands.clear()
            token_requests = self.entra.attempts()
            results = runner.run(lambda _result: None)
            time.sleep(0.1)  # the relay forwards the last TLS records after LOGOUT returns
            return SessionCount(
                commands=list(recorder.commands),
                wire_sent=proxy.sent,
                wire_received=proxy.received,
                token_requests=self.entra.attempts() - token_requests,
                success=all(result.success for result in results),
            )
        finally:
            proxy.close()
            recorder.close()

    def _runner(self, name: str, tag: str) -> Any:
        from exporter.config import load_config
        from exporter.runner import MailboxRunner, Watchdog

        path = self.write_config(
            self.workdir / f"{tag}-{name}.yml", [name], interval=120, timeout=120
        )
        config = load_config(path)
        runner = MailboxRunner(config.mailboxes[0], config.state_dir, Watchdog())
        runner.run(lambda _result: None)  # first run: OIDC discovery and a password sign-in
        runner.run(lambda _result: None)
        return runner

    def cpu_by_check(self, name: str, runs: int, pause: float = PAUSE) -> dict[str, float]:
        """Median thread CPU milliseconds of each check (and LOGOUT) over `runs` runs, calling
        the checks the way the runner does, on this thread (the fake Entra ID's threads in
        this process do not count). Runs are `pause` seconds apart: back to back they cost a
        third less (warm CPU caches), which no real schedule sees."""
        from exporter.auth import tls_context
        from exporter.checks import CHECKS, RunContext
        from exporter.runner import runnable_checks

        runner = self._runner(name, "cpu")
        mailbox = runner.mailbox
        tls = tls_context(mailbox.ca_file)
        samples: dict[str, list[float]] = {}
        for _ in range(runs):
            time.sleep(pause)
            ctx = RunContext(mailbox, runner.auth, tls)
            total = time.thread_time()
            for check in runnable_checks(mailbox):
                ctx.deadline = time.monotonic() + mailbox.timeout
                began = time.thread_time()
                CHECKS[check].run(ctx)
                samples.setdefault(check, []).append(time.thread_time() - began)
            began = time.thread_time()
            if ctx.imap is not None:
                ctx.imap.logout()
            ended = time.thread_time()
            samples.setdefault("LOGOUT", []).append(ended - began)
            samples.setdefault("whole run", []).append(ended - total)
        return {key: 1000 * statistics.median(values) for key, values in samples.items()}

    def cpu_by_connection(self, name: str, runs: int, pause: float = PAUSE) -> dict[str, float]:
        """Median thread CPU ms of a whole run when the HTTPS connection to the authority is
        kept alive between runs, and when it is gone (the server closed it while idle: each
        run then opens a new one, as the fake Entra ID's 30 s idle timeout makes every run
        at a 60 s interval do)."""
        from exporter.auth import drop_idle_connections

        runner = self._runner(name, "conn")
        found: dict[str, float] = {}
        for label, reconnect in (("kept alive", False), ("new connection", True)):
            samples = []
            for _ in range(runs):
                time.sleep(pause)
                if reconnect:
                    drop_idle_connections()
                began = time.thread_time()
                runner.run(lambda _result: None)
                samples.append(time.thread_time() - began)
            found[label] = 1000 * statistics.median(samples)
        return found

    def cprofile(self, name: str, runs: int, top: int = 20) -> list[str]:
        """cProfile (timer: this thread's CPU time) over `runs` whole runs of the runner."""
        runner = self._runner(name, "cprofile")
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for _ in range(runs):
            runner.run(lambda _result: None)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        lines = [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
        return [line.replace(str(ROOT) + "/", "").replace(_SITE, "") for line in lines]

    def python_banner_probe(self, runs: int, pause: float = PAUSE) -> float:
        """Median thread CPU milliseconds of blackbox's probe done in Python: TCP connect, TLS
        handshake (verifying the server), read the `* OK` greeting, close."""
        assert self.dovecot is not None
        context = self.dovecot.ssl_context()
        samples = []
        for _ in range(runs):
            time.sleep(pause)
            began = time.thread_time()
            with (
                socket.create_connection(("127.0.0.1", self.dovecot.port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                greeting = tls.recv(1024)
            samples.append(time.thread_time() - began)
            if not greeting.startswith(b"* OK"):
                raise RuntimeError(f"unexpected greeting {greeting[:40]!r}")
        return 1000 * statistics.median(samples)
