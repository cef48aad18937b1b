"""`make demo`: a sandbox tenant and mailboxes, the exporter, Prometheus and Alertmanager,
all on loopback.

    python -m tests.demo [--workdir DIR] [--port 9865] [--interval 15s] [--smoke]

Starts the test bed (fake Entra ID, a private Dovecot behind one IMAP relay per mailbox, an
Exchange-like SMTP submission server) with two mailboxes of realistic content (the Junk folder
holds messages with Exchange Online's spam-verdict headers, for `junk-review`), writes an
exporter config, runs the exporter, a Prometheus scraping it with the alert rules (`for:`
shortened to 15 s so that a page comes quickly) and an Alertmanager whose pager is this
process: pages and resolutions are printed here. It prints where to look (links that work with
Debian's Prometheus and Alertmanager packages: Prometheus' classic UI, and `amtool` for
Alertmanager, which Debian ships without its web UI) and how to break a mailbox on purpose:
creating the file `WORKDIR/break-NAME-KIND` (KIND one of `SWITCHES`) breaks mailbox NAME that
way, removing it undoes it. Runs until Ctrl-C. `--smoke` waits until Prometheus sees both
mailboxes up, then stops (for CI). Needs root: the fake Entra ID must also listen on port 443
(MSAL drops the port for one call).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
import yaml

from exporter.config import parse_duration
from tests.faults.imap_proxy import ImapFaultProxy
from tests.helpers_prometheus import (
    WebhookReceiver,
    rules_for_quick_test,
    start_alertmanager,
    start_prometheus,
)
from tests.testbed import Dovecot, ExchangeLikeSmtp, FakeEntra, make_message, start_fake_entra
from tests.testbed.spam import demo_junk_samples

ROOT = Path(__file__).resolve().parent.parent
TENANT = "contoso.onmicrosoft.com"
CHECKS = ["token", "imap_login", "inbox", "oversized", "junk", "smtp_login"]


@dataclass(frozen=True)
class Switch:
    """One way to break a mailbox (`touch WORKDIR/break-NAME-KIND`) and what the exporter then
    reports: the failing check and its `reason` and `code` labels."""

    what: str
    check: str
    reason: str
    code: str
    aadsts: int | None = None  # the fake Entra ID answers token requests with this code

    def expect(self) -> str:
        code = self.code or '""'
        return f"reason={self.reason} code={code}"


SWITCHES: dict[str, Switch] = {
    "ca": Switch(
        "Conditional Access blocks the sign-in", "token", "interaction_required", "53003", 53003
    ),
    "password": Switch(
        "the password was changed in Entra ID; the password file still holds the old one "
        "(removing the switch file writes the new one into it, as the admin would)",
        "token", "invalid_grant", "50126",
    ),
    "public-client": Switch(
        "'Allow public client flows' is switched off in the app registration",
        "token", "public_client_disabled", "7000218", 7000218,
    ),
    "consent": Switch(
        "the admin consent for the app is revoked", "token", "consent_required", "65001", 65001
    ),
    "smtp": Switch(
        "SMTP AUTH is disabled for the mailbox (Exchange answers 535 5.7.139)",
        "smtp_login", "auth_rejected", "5.7.139",
    ),
    "imap-hang": Switch(
        "the IMAP server accepts the connection and never says a word",
        "imap_login", "timeout", "",
    ),
}  # fmt: skip


def _write_secret(path: Path, value: str) -> None:
    path.write_text(value + "\n")
    path.chmod(0o600)


def _seed(dovecot: Dovecot, upn: str, now: datetime, backlog_days: int, junk_days: int) -> None:
    """A believable service-desk inbox: some read, some not, one 30 MB scan, and a Junk
    folder for the weekly review (spam-verdict headers as Exchange Online writes them)."""
    inbox = [
        ("Printer on floor 3 is jammed", 4_000, now - timedelta(days=backlog_days), ["\\Seen"]),
        ("VPN drops every hour", 6_000, now - timedelta(hours=20), []),
        ("Scanned contract (30 MB)", 30 * 1024 * 1024, now - timedelta(hours=5), []),
        ("Password reset for j.doe", 3_000, now - timedelta(minutes=40), []),
    ]
    for subject, size, when, flags in inbox:
        dovecot.deliver(
            upn,
            "INBOX",
            make_message(subject, "customer@fabrikam.example", size=size),
            internaldate=when,
            flags=flags,
        )
    for sample in demo_junk_samples(now, oldest_days=junk_days):
        dovecot.deliver(upn, "Junk Email", sample.message(), internaldate=sample.received)


class Demo:
    def __init__(self, workdir: Path, port: int, interval: str = "15s") -> None:
        self.workdir = workdir
        self.port = port
        self.interval = interval
        self.processes: list[subprocess.Popen[bytes]] = []
        self.entra: FakeEntra | None = None
        self.dovecot: Dovecot | None = None
        self.smtp: ExchangeLikeSmtp | None = None
        self.relays: dict[str, ImapFaultProxy] = {}  # name -> the mailbox's own IMAP relay
        self.mailboxes: dict[str, tuple[str, str, Path]] = {}  # name -> (upn, password, file)
        self.client_ids: dict[str, str] = {}
        self.broken: set[tuple[str, str]] = set()  # (mailbox, switch kind)

    def start(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "secrets").mkdir(parents=True)
        ca = trustme.CA()
        self.entra = start_fake_entra(ca)
        self.dovecot = Dovecot(self.workdir / "dovecot", ca, self.entra).start()
        # aiosmtpd warns about its own deprecated API on every AUTH: not news for the terminal.
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        self.smtp = ExchangeLikeSmtp(ca, self.entra).start()
        now = datetime.now(UTC)
        mailboxes = []
        for name, backlog_days, junk_days in [("servicedesk", 1, 3), ("sales", 4, 12)]:
            upn = f"{name}@{TENANT}"
            password = f"demo-{uuid.uuid4().hex[:12]}"
            client_id = str(uuid.uuid4())
            self.entra.add_user(upn, password)
            self.entra.add_app(client_id)
            secret = self.workdir / "secrets" / f"{name}.password"
            _write_secret(secret, password)
            self.mailboxes[name] = (upn, password, secret)
            self.client_ids[name] = client_id
            _seed(self.dovecot, upn, now, backlog_days, junk_days)
            # Its own relay in front of Dovecot, so that one mailbox's IMAP server can hang.
            relay = self.relays[name] = ImapFaultProxy(ca, "127.0.0.1", self.dovecot.port)
            relay.start()
            mailboxes.append(
                {
                    "name": name,
                    "username": upn,
                    "tenant_id": TENANT,
                    "client_id": client_id,
                    "auth": {"flow": "password", "password_file": str(secret)},
                    "imap": {"host": "127.0.0.1", "port": relay.port},
                }
            )
        timeout = min(parse_duration("5s"), parse_duration(self.interval))
        config = {
            "state_dir": str(self.workdir / "state"),
            "defaults": {
                "interval": self.interval,
                "timeout": f"{timeout:g}s",
                "authority_host": self.entra.url,
                "smtp": {"host": "127.0.0.1", "port": self.smtp.port},
                "ca_file": str(self.entra.ca_file),
                "checks": CHECKS,
            },
            "mailboxes": mailboxes,
        }
        self.config_path = self.workdir / "config.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.exporter_url = f"http://127.0.0.1:{self.port}"
        self._spawn(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={self.config_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
        )
        _wait_http(self.exporter_url + "/-/ready")
        self._start_monitoring()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes.append(subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log))

    def _start_monitoring(self) -> None:
        self.pager = WebhookReceiver()
        self.alertmanager = start_alertmanager(
            self.workdir / "alertmanager", self.pager.url, group_wait="2s", group_interval="5s"
        )
        rules = rules_for_quick_test(self.workdir / "rules.yml", duration="15s")
        self.prometheus = start_prometheus(
            self.workdir / "prometheus",
            [f"127.0.0.1:{self.port}"],
            [rules],
            alertmanager_url=self.alertmanager.url,
            scrape_interval="5s",
            evaluation_interval="5s",
        )

    # -- the switches ---------------------------------------------------------------------------
    def switch_file(self, name: str, kind: str) -> Path:
        return self.workdir / f"break-{name}-{kind}"

    def _wanted(self) -> set[tuple[str, str]]:
        wanted = set()
        for path in self.workdir.glob("break-*"):
            rest = path.name.removeprefix("break-")
            for name in self.mailboxes:
                kind = rest.removeprefix(f"{name}-")
                if rest.startswith(f"{name}-") and kind in SWITCHES:
                    wanted.add((name, kind))
        return wanted

    def _apply(self, name: str, kind: str, broken: bool) -> None:
        assert self.entra is not None and self.smtp is not None
        upn, _password, secret = self.mailboxes[name]
        if kind == "password":
            if broken:  # the admin rotates the password in Entra ID, not in the file
                new = f"demo-{uuid.uuid4().hex[:12]}"
                self.entra.set_password(upn, new)
                self.mailboxes[name] = (upn, new, secret)
            else:  # ... and then fixes the password file
                _write_secret(secret, self.mailboxes[name][1])
        elif kind == "smtp":
            self.smtp.disable_smtp_auth(upn, broken)
        elif kind == "imap-hang":
            self.relays[name].set_fault("silent" if broken else "pass")

    def _set_entra_errors(self) -> None:
        """The fake Entra ID's error rules: one per switch that is on (rebuilt on a change)."""
        assert self.entra is not None
        self.entra.clear_errors()
        for name, kind in sorted(self.broken):
            code = SWITCHES[kind].aadsts
            if code == 7000218:  # a property of the app registration, whoever signs in
                self.entra.set_error(code, client_id=self.client_ids[name])
            elif code is not None:
                self.entra.set_error(code, username=self.mailboxes[name][0])

    def sync_switches(self) -> None:
        wanted = self._wanted()
        if wanted == self.broken:
            return
        for name, kind in sorted(wanted ^ self.broken):
            broken = (name, kind) in wanted
            self._apply(name, kind, broken)
            switch = SWITCHES[kind]
            if broken:
                print(
                    f"{name}: broken ({kind}: {switch.what}); expect {switch.check} to fail "
                    f"with {switch.expect()}",
                    flush=True,
                )
            else:
                print(f"{name}: fixed ({kind})", flush=True)
        self.broken = wanted
        self._set_entra_errors()

    def watch(self, stop: threading.Event) -> None:
        """Break and fix mailboxes by the switch files, and print each page as it arrives."""
        printed = 0
        while not stop.wait(0.5):
            self.sync_switches()
            pages = list(self.pager.alerts())
            for _arrived, alert in pages[printed:]:
                labels = alert.get("labels", {})
                print(
                    f"PAGE {alert.get('status', '?')}: {labels.get('alertname')} "
                    f"mailbox={labels.get('mailbox', '')} reason={labels.get('reason', '')} "
                    f"code={labels.get('code', '')}",
                    flush=True,
                )
            printed = len(pages)

    def explain(self) -> str:
        cli = Path(sys.executable).parent / "o365-mailbox-exporter"
        command = shlex.quote(str(cli)) if cli.exists() else f"{sys.executable} -m exporter"
        config = shlex.quote(str(self.config_path))
        switches = "\n".join(
            f"  touch {self.switch_file('sales', kind)}\n"
            f"      {switch.what}\n"
            f"      -> {switch.check} fails: {switch.expect()}"
            for kind, switch in SWITCHES.items()
        )
        entra = self.entra.url if self.entra else ""
        return f"""
o365-mailbox-exporter demo is running (workdir {self.workdir}).

  exporter landing page  {self.exporter_url}/
  exporter metrics       {self.exporter_url}/metrics
  Prometheus             {self.prometheus.url}/classic/graph?g0.expr=o365_mailbox_up&g0.tab=1
  Prometheus alerts      {self.prometheus.url}/classic/alerts
  Alertmanager (API)     {self.alertmanager.url}/api/v2/alerts
  fake Entra ID          {entra}/{TENANT}/v2.0/.well-known/openid-configuration

Alertmanager's alerts (Debian's package has no web UI; amtool comes with it):
  amtool alert query --alertmanager.url={self.alertmanager.url}

Run the checks once by hand, and the weekly Junk review (likely false positives first):
  {command} check --config.file={config}
  {command} junk-review --config.file={config} --mailbox servicedesk

Break a mailbox on purpose: create a file `break-NAME-KIND` in the workdir (NAME: servicedesk
or sales). The check fails at its next run (every {self.interval}), the landing page and
/metrics say why, and about 30 s later the critical alert pages: the page is printed here.
Remove the file to fix it again (the resolved notice follows within about 30 s):
{switches}
  rm {self.workdir}/break-sales-*

Alert rules: alerts/o365-mailbox.rules.yml with `for:` shortened to 15 s for the demo.
Logs: {self.workdir}/exporter.log, prometheus/, alertmanager/. Ctrl-C stops everything.
"""

    def stop(self) -> None:
        for server in (getattr(self, "prometheus", None), getattr(self, "alertmanager", None)):
            if server is not None:
                server.stop()
        if getattr(self, "pager", None) is not None:
            self.pager.stop()
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for relay in self.relays.values():
            relay.stop()
        if self.smtp is not None:
            self.smtp.stop()
        if self.dovecot is not None:
            self.dovecot.stop()
        if self.entra is not None:
            self.entra.stop()


def _wait_http(url: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {url} did not come up within {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo-run")
    parser.add_argument("--port", type=int, default=9865)
    parser.add_argument(
        "--interval", default="15s", help="the mailboxes' check interval (default 15s)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="exit 0 once Prometheus sees every mailbox up"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: run as root (the fake Entra ID also listens on port 443)", file=sys.stderr)
        return 2
    demo = Demo(args.workdir.resolve(), args.port, args.interval)
    try:
        demo.start()
        if args.smoke:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                up = demo.prometheus.query("o365_mailbox_up == 1")
                if len(up) == len(demo.mailboxes):
                    print(f"demo ok: Prometheus sees {len(up)} mailboxes up")
                    return 0
                time.sleep(0.5)
            print("demo: mailboxes not up in Prometheus within 60 s", file=sys.stderr)
            return 1
        print(demo.explain(), flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        stop = threading.Event()
        watcher = threading.Thread(target=demo.watch, args=(stop,), daemon=True)
        watcher.start()
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("\nstopping ...", flush=True)
        stop.set()
        return 0
    finally:
        # A second Ctrl-C must not leave Dovecot or Prometheus behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
