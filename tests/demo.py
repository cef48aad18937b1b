"""`make demo`: a sandbox tenant and mailboxes, the exporter, Prometheus and Alertmanager,
all on loopback.

    python -m tests.demo [--workdir DIR] [--port 9865] [--smoke]

Starts the test bed (fake Entra ID + a private Dovecot) with two mailboxes of realistic content,
writes an exporter config, runs the exporter, a Prometheus scraping it with the alert rules
(`for:` shortened to 15 s so that a page comes quickly) and an Alertmanager whose pager is this
process: pages and resolutions are printed here. It prints where to look and how to break a
mailbox on purpose (create the file `WORKDIR/break-sales`: the sandbox tenant then answers
AADSTS53003, Conditional Access blocked), and runs until Ctrl-C. `--smoke` waits until
Prometheus sees both mailboxes up, then stops (for CI). Needs root: the fake Entra ID must
also listen on port 443 (MSAL drops the port for one call).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
import yaml

from tests.helpers_prometheus import (
    WebhookReceiver,
    rules_for_quick_test,
    start_alertmanager,
    start_prometheus,
)
from tests.testbed import Dovecot, FakeEntra, make_message, start_fake_entra

ROOT = Path(__file__).resolve().parent.parent
TENANT = "contoso.onmicrosoft.com"


def _write_secret(path: Path, value: str) -> None:
    path.write_text(value + "\n")
    path.chmod(0o600)


def _seed(dovecot: Dovecot, upn: str, now: datetime, backlog_days: int, junk_days: int) -> None:
    """A believable service-desk inbox: some read, some not, one 30 MB scan, some Junk."""
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
    for subject, days in [("You have won", junk_days), ("Invoice 4711 overdue", 2)]:
        dovecot.deliver(
            upn,
            "Junk Email",
            make_message(subject, "offers@spam.example", size=2_000),
            internaldate=now - timedelta(days=days),
        )


class Demo:
    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.processes: list[subprocess.Popen[bytes]] = []
        self.entra: FakeEntra | None = None
        self.dovecot: Dovecot | None = None
        self.mailboxes: dict[str, tuple[str, str, Path]] = {}  # name -> (upn, password, file)

    def start(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "secrets").mkdir(parents=True)
        ca = trustme.CA()
        self.entra = start_fake_entra(ca)
        self.dovecot = Dovecot(self.workdir / "dovecot", ca, self.entra).start()
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
            _seed(self.dovecot, upn, now, backlog_days, junk_days)
            mailboxes.append(
                {
                    "name": name,
                    "username": upn,
                    "tenant_id": TENANT,
                    "client_id": client_id,
                    "auth": {"flow": "password", "password_file": str(secret)},
                }
            )
        config = {
            "state_dir": str(self.workdir / "state"),
            "defaults": {
                "interval": "15s",
                "timeout": "5s",
                "authority_host": self.entra.url,
                "imap": {"host": "127.0.0.1", "port": self.dovecot.port},
                "ca_file": str(self.entra.ca_file),
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

    def watch(self, stop: threading.Event) -> None:
        """Break and fix the sales mailbox by a file, and print each page as it arrives."""
        upn = self.mailboxes["sales"][0]
        switch = self.workdir / "break-sales"
        broken = False
        printed = 0
        while not stop.wait(0.5):
            if switch.exists() != broken and self.entra is not None:
                broken = switch.exists()
                if broken:
                    self.entra.set_error(53003, username=upn)
                else:
                    self.entra.clear_errors()
                print(f"sales: {'broken (AADSTS53003)' if broken else 'fixed'}", flush=True)
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
        switch = self.workdir / "break-sales"
        return f"""
o365-mailbox-exporter demo is running (workdir {self.workdir}).

  exporter landing page  {self.exporter_url}/
  exporter metrics       {self.exporter_url}/metrics
  Prometheus             {self.prometheus.url}/graph?g0.expr=o365_mailbox_up
  Prometheus alerts      {self.prometheus.url}/alerts
  Alertmanager           {self.alertmanager.url}
  fake Entra ID          {self.entra.url if self.entra else ""}   (sandbox tenant {TENANT})

Run the checks once by hand:
  python -m exporter check --config.file={self.config_path}

Break a mailbox on purpose (the sandbox tenant starts answering AADSTS53003, Conditional Access
blocked; the token check fails, the landing page says what to do, and about 30 s later the
critical alert O365MailboxTokenRefreshFailing pages: the page is printed here):
  touch {switch}
Fix it again (the resolved notice follows within about 30 s):
  rm {switch}

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
        "--smoke", action="store_true", help="exit 0 once Prometheus sees every mailbox up"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: run as root (the fake Entra ID also listens on port 443)", file=sys.stderr)
        return 2
    demo = Demo(args.workdir.resolve(), args.port)
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
