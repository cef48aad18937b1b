"""State safety: the token cache survives `kill -9` at any moment, damage of any kind, and
several processes (`serve`, `check`, `login`) sharing it.

The cache is written by atomic replace (temporary file, fsync, rename) under msal-extensions'
file lock; a file that is not a JSON object is set aside and the mailbox signs in again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msal_extensions.persistence import PersistenceNotFound

from exporter.auth import AtomicFilePersistence
from tests.conftest import ROOT, check_json, results_by_check, write_secret
from tests.faults.observe import NamespacedExporter, scrape


def _mailboxes(entra: Any, dovecot: Any, directory: Path, names: list[str],
               device_code: str | None = None) -> list[dict[str, Any]]:
    entries = []
    for name in names:
        upn = f"{name}-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"
        client_id = str(uuid.uuid4())
        password = f"Pw-{uuid.uuid4().hex}"
        entra.add_user(upn, password)
        entra.add_app(client_id)
        dovecot.reset_mailbox(upn)
        auth: dict[str, str] = {"flow": "device_code"}
        if name != device_code:
            write_secret(directory / f"{name}.password", password)
            auth = {"flow": "password", "password_file": str(directory / f"{name}.password")}
        entries.append({"name": name, "username": upn, "client_id": client_id, "auth": auth})
    return entries


def _config(entra: Any, dovecot: Any, directory: Path, mailboxes: list[dict[str, Any]],
            interval: str = "500ms", timeout: str = "500ms") -> Path:
    config = directory / "config.yml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(directory / "state"),
        "defaults": {"interval": interval, "timeout": timeout, "authority_host": entra.url,
                     "tenant_id": "contoso.onmicrosoft.com", "ca_file": str(entra.ca_file),
                     "imap": {"host": "127.0.0.1", "port": dovecot.port},
                     "checks": ["token", "imap_login"]},
        "mailboxes": mailboxes,
    }, sort_keys=False))
    return config


def _assert_caches_sound(tokens: Path, names: list[str]) -> None:
    """Every cache file is a JSON object holding a refresh token; nothing was set aside."""
    for name in names:
        cache = json.loads((tokens / f"{name}.json").read_text())
        assert isinstance(cache, dict) and cache.get("RefreshToken"), name
        assert (tokens / f"{name}.json").stat().st_mode & 0o777 == 0o600
    assert not list(tokens.glob("*.corrupt-*"))


@pytest.mark.timeout(180)
def test_kill_9_at_any_moment_then_a_clean_start(entra, dovecot, tmp_path) -> None:
    names = ["a", "b", "c", "d"]
    config = _config(entra, dovecot, tmp_path, _mailboxes(entra, dovecot, tmp_path, names),
                     interval="200ms", timeout="200ms")
    tokens = tmp_path / "state" / "tokens"
    rng = random.Random()  # a different set of moments every time
    kills = 0
    for round_number in range(12):
        exporter = NamespacedExporter(config, tmp_path / f"serve-{round_number}.log", [])
        time.sleep(rng.uniform(0.1, 1.2))  # refreshes (cache writes) every 200 ms per mailbox
        os.kill(exporter.proc.pid, signal.SIGKILL)
        exporter.proc.wait(10)
        exporter.stop()
        kills += 1
        for path in tokens.glob("*.json"):
            assert isinstance(json.loads(path.read_text()), dict), path  # never torn

    # The moments a random kill rarely hits: inside the cache's write lock, and between the
    # temporary file's creation and its rename. Kill a process holding the lock; leave a
    # temporary file and msal-extensions' own lock file (its fallback lock, which a killed
    # process leaves behind for good) as such a kill would.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n",
         str(tokens / "a.json.lock")],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(10)
    (tokens / "a.json.lockfile").write_text("12345 killed\n")
    (tokens / ".a.json.tmpleft").write_text("{")
    exporter = NamespacedExporter(config, tmp_path / "serve-clean.log", [])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            current = scrape(exporter)
            ups = [current.value("o365_mailbox_up", mailbox=n) for n in names]
            if ups == [1.0] * len(names):
                break
            time.sleep(0.1)
        assert ups == [1.0] * len(names), (ups, exporter.log_path.read_text()[-3000:])
        # Up on the first run: no check waited behind the stale lock file.
        for name in names:
            failures = current.failures(name)
            assert not failures, (name, failures)
    finally:
        exporter.stop()
    _assert_caches_sound(tokens, names)
    assert kills == 12


@pytest.mark.timeout(180)
def test_serve_check_and_login_share_the_cache(entra, dovecot, tmp_path) -> None:
    names = ["a", "b", "mfa"]
    mailboxes = _mailboxes(entra, dovecot, tmp_path, names, device_code="mfa")
    mfa_upn = mailboxes[2]["username"]
    config = _config(entra, dovecot, tmp_path, mailboxes)
    tokens = tmp_path / "state" / "tokens"
    entra.auto_approve_device_code = mfa_upn
    serve = NamespacedExporter(config, tmp_path / "serve.log", [])

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter", *argv, f"--config.file={config}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            for _round in range(5):
                jobs = [pool.submit(run, "login", "--mailbox=mfa") for _ in range(2)]
                jobs += [pool.submit(run, "check", "--output=json", f"--mailbox={name}")
                         for name in ("a", "b", "a", "b")]
                results = [job.result() for job in jobs]
                for result in results[:2]:
                    assert result.returncode == 0, result.stderr
                for result in results[2:]:
                    assert result.returncode == 0, result.stdout + result.stderr
                    assert json.loads(result.stdout)["success"] is True
                _assert_caches_sound(tokens, names)
        current = scrape(serve)
        for name in names:
            assert current.value("o365_mailbox_up", mailbox=name) == 1.0, current.failures(name)
        check = run("check", "--output=json")
        assert check.returncode == 0, check.stdout
    finally:
        entra.auto_approve_device_code = None
        serve.stop()
    _assert_caches_sound(tokens, names)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty (a crash between create and write)"),
        (b'{"AccessToken": {"x": {"secret": "eyJ', "torn mid-write"),
        (b"\xff\xfe\x00garbage\x80", "not UTF-8 (a damaged disk block)"),
        (b"[]", "JSON but not an object"),
        (b"null", "JSON null"),
    ],
)
def test_a_damaged_cache_is_set_aside_and_sign_in_recovers(
    content, why, entra, dovecot, tmp_path, capsys
) -> None:
    mailboxes = _mailboxes(entra, dovecot, tmp_path, ["box"])
    config = _config(entra, dovecot, tmp_path, mailboxes, interval="60s")
    assert check_json(capsys, config)[0] == 0
    cache = tmp_path / "state" / "tokens" / "box.json"
    cache.write_bytes(content)

    code, document = check_json(capsys, config)

    assert code == 0, (why, document)
    assert results_by_check(document, "box")["token"]["success"] is True
    aside = list(cache.parent.glob("box.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content, why
    assert aside[0].stat().st_mode & 0o777 == 0o600
    assert isinstance(json.loads(cache.read_text()), dict)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_cache_content_loads_or_is_set_aside(content: bytes, tmp_path: Path) -> None:
    location = tmp_path / f"cache-{uuid.uuid4().hex}.json"
    location.write_bytes(content)
    location.chmod(0o600)
    persistence = AtomicFilePersistence(str(location))
    try:
        text = persistence.load()
    except PersistenceNotFound:
        assert not location.exists()
        assert len(list(tmp_path.glob(f"{location.name}.corrupt-*"))) == 1
    else:
        assert isinstance(json.loads(text), dict)
        assert location.read_bytes() == content
