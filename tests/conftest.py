"""Shared fixtures: the test bed (fake Entra ID + real Dovecot) and mailbox/config factories."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import main
from exporter.config import parse_duration
from tests.helpers_prometheus import stop_process

pytest_plugins = ["tests.testbed.fixtures"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mailbox:
    """A test mailbox: a user in the fake Entra ID, an app registration, a Dovecot maildir."""

    name: str
    upn: str
    password: str
    client_id: str
    password_file: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "username": self.upn,
            "tenant_id": "contoso.onmicrosoft.com",
            "client_id": self.client_id,
            "auth": {"flow": "password", "password_file": str(self.password_file)},
        }
        entry.update(self.settings)
        return entry

    def set_password_file(self, password: str) -> None:
        write_secret(self.password_file, password)


def write_secret(path: Path, value: str) -> None:
    path.write_text(value + "\n")
    path.chmod(0o600)


def use_client_secret(
    mailbox: Mailbox,
    entra: Any,
    secret_file: Path,
    value: str,
    *,
    registered: str | None = None,
    **auth: Any,
) -> None:
    """Make `mailbox` app-only with a client secret: a confidential app for its user whose
    secret is `registered` (default `value`), `value` in `secret_file`, `auth` added."""
    mailbox.client_id = str(uuid.uuid4())
    entra.add_app(
        mailbox.client_id,
        public_client=False,
        client_secret=value if registered is None else registered,
        mailbox=mailbox.upn,
    )
    write_secret(secret_file, value)
    mailbox.settings["auth"] = {
        "flow": "client_secret",
        "client_secret_file": str(secret_file),
        **auth,
    }


@pytest.fixture
def make_mailbox(entra, dovecot, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Create a fresh mailbox (unique user, app and empty maildir) for one test."""

    def factory(name: str = "servicedesk", **settings: Any) -> Mailbox:
        local = f"{name}-{uuid.uuid4().hex[:8]}"
        upn = f"{local}@contoso.onmicrosoft.com"
        password = f"Pw-{uuid.uuid4().hex}"
        client_id = str(uuid.uuid4())
        entra.add_user(upn, password)
        entra.add_app(client_id)
        dovecot.reset_mailbox(upn)
        secret = tmp_path / f"{name}.password"
        write_secret(secret, password)
        return Mailbox(name, upn, password, client_id, secret, settings)

    return factory


def write_config(
    tmp_path: Path, entra: Any, dovecot: Any, mailboxes: list[Mailbox], **defaults: Any
) -> Path:
    short = parse_duration(str(defaults.get("interval", "60s"))) < 5
    merged = {
        "interval": "60s",
        "timeout": "1s" if short else "5s",
        "authority_host": entra.url,
        "imap": {"host": "127.0.0.1", "port": dovecot.port},
        "ca_file": str(entra.ca_file),
        **defaults,
    }
    document = {
        "state_dir": str(tmp_path / "state"),
        "defaults": {key: value for key, value in merged.items() if value is not None},
        "mailboxes": [m.config() for m in mailboxes],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check_json(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> tuple[int, dict]:
    code, out, _err = run_cli(capsys, "check", f"--config.file={config}", "--output=json", *extra)
    return code, json.loads(out)


def results_by_check(document: dict, mailbox: str) -> dict[str, dict]:
    for entry in document["mailboxes"]:
        if entry["mailbox"] == mailbox:
            return {c["check"]: c for c in entry["checks"]}
    raise KeyError(mailbox)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ExporterProcess:
    """`python -m exporter` serving on a loopback port, as users run it."""

    def __init__(
        self, config: Path, log_path: Path, *extra: str, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{self.port}", *extra],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.wait_http("/-/ready")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def post(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, method="POST", data=b"")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def wait_http(self, path: str, deadline: float = 15.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited: {self.log_path.read_text()}")
            try:
                if self.get(path, timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"exporter not ready: {self.log_path.read_text()}")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def names_and_label_values(self) -> tuple[set[str], dict[str, set[str]]]:
        """The sample names of one scrape, and every value each label takes in it."""
        samples = self.metrics()
        values: dict[str, set[str]] = {}
        for _name, labels in samples:
            for label, value in labels:
                values.setdefault(label, set()).add(value)
        return {name for name, _labels in samples}, values

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, frozenset(labels.items())))

    def wait_for(self, name: str, expected: float | None = None, timeout: float = 20.0,
                 **labels: str) -> float:
        end = time.monotonic() + timeout
        value = None
        while time.monotonic() < end:
            value = self.value(name, **labels)
            if value is not None and (expected is None or value == expected):
                return value
            time.sleep(0.1)
        raise AssertionError(f"{name}{labels} = {value}, wanted {expected}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture
def exporter_process(tmp_path: Path) -> Iterator[Any]:
    started: list[ExporterProcess] = []

    def start(config: Path, *extra: str) -> ExporterProcess:
        proc = ExporterProcess(config, tmp_path / f"exporter-{len(started)}.log", *extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
