"""`make demo`: a sandbox tenant and mailboxes, the exporter, and Prometheus, all on loopback.

    python -m tests.demo [--workdir DIR] [--port 9865] [--smoke]

Starts the test bed (fake Entra ID + a private Dovecot) with two mailboxes of realistic content,
writes an exporter config, runs the exporter and a Prometheus scraping it (with the alert rules
when `alerts/` has them), prints where to look and how to break a mailbox on purpose, and runs
until Ctrl-C. `--smoke` waits until Prometheus sees both mailboxes up, then stops (for CI).
Needs root: the fake Entra ID must also listen on port 443 (MSAL drops the port for one call).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
import yaml

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
        dovecot.deliver(upn, "INBOX", make_message(subject, "customer@fabrikam.example", size=size),
                        internaldate=when, flags=flags)
    for subject, days in [("You have won", junk_days), ("Invoice 4711 overdue", 2)]:
        dovecot.deliver(upn, "Junk Email", make_message(subject, "offers@spam.example", size=2_000),
                        internaldate=now - timedelta(days=days))


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
            mailboxes.append({
                "name": name, "username": upn, "tenant_id": TENANT, "client_id": client_id,
                "auth": {"flow": "password", "password_file": str(secret)},
            })
        config = {
            "state_dir": str(self.workdir / "state"),
            "defaults": {
                "interval": "15s", "timeout": "5s", "authority_host": self.entra.url,
                "imap": {"host": "127.0.0.1", "port": self.dovecot.port},
                "ca_file": str(self.entra.ca_file),
            },
            "mailboxes": mailboxes,
        }
        self.config_path = self.workdir / "config.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.exporter_url = f"http://127.0.0.1:{self.port}"
        self._spawn("exporter", [sys.executable, "-m", "exporter",
                                 f"--config.file={self.config_path}",
                                 f"--web.listen-address=127.0.0.1:{self.port}"])
        _wait_http(self.exporter_url + "/-/ready")
        self.prometheus_url = self._start_prometheus()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes.append(subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log))

    def _start_prometheus(self) -> str:
        port = _free_port()
        rules = sorted(str(p) for p in (ROOT / "alerts").glob("*.yml"))
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": rules,
            "scrape_configs": [{
                "job_name": "o365-mailbox-exporter",
                "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
            }],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn("prometheus", [
            "prometheus", f"--config.file={path}", f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
        ])
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/-/ready", timeout=30)
        return url

    def query(self, expr: str) -> list[dict[str, object]]:
        url = self.prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            result: list[dict[str, object]] = json.load(response)["data"]["result"]
            return result

    def explain(self) -> str:
        _upn, _pw, sales_secret = self.mailboxes["sales"]
        return f"""
o365-mailbox-exporter demo is running (workdir {self.workdir}).

  exporter landing page  {self.exporter_url}/
  exporter metrics       {self.exporter_url}/metrics
  Prometheus             {self.prometheus_url}/graph?g0.expr=o365_mailbox_up
  Prometheus alerts      {self.prometheus_url}/alerts
  fake Entra ID          {self.entra.url if self.entra else ""}   (sandbox tenant {TENANT})

Run the checks once by hand:
  python -m exporter check --config.file={self.config_path}

Break a mailbox on purpose (wrong password -> token check fails with AADSTS50126, then backoff):
  cp {sales_secret} {sales_secret}.good && echo wrong > {sales_secret}
Fix it again (picked up on the next run, at most 15 s later):
  cp {sales_secret}.good {sales_secret}

Logs: {self.workdir}/exporter.log, prometheus.log. Ctrl-C stops everything.
"""

    def stop(self) -> None:
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    parser.add_argument("--smoke", action="store_true",
                        help="exit 0 once Prometheus sees every mailbox up")
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
                up = demo.query("o365_mailbox_up == 1")
                if len(up) == len(demo.mailboxes):
                    print(f"demo ok: Prometheus sees {len(up)} mailboxes up")
                    return 0
                time.sleep(0.5)
            print("demo: mailboxes not up in Prometheus within 60 s", file=sys.stderr)
            return 1
        print(demo.explain(), flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("\nstopping ...", flush=True)
        return 0
    finally:
        # A second Ctrl-C must not leave Dovecot or Prometheus behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
