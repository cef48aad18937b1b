"""Deadlines that hold for every authority step, against a peer that trickles.

The authority (here: `AuthorityFaultProxy` in front of the FakeEntra, the real msal talking to
it) accepts the connection, reads the request and then sends one byte of its answer every
0.3 s. Every read gets a byte before its timeout, so no per-read socket timeout ever fires:
only the run's deadline, which shuts the in-flight sockets from the watchdog, ends the step.
Both steps are covered: the token request, and MSAL's OIDC discovery made while the
application object is built (a fresh `MailboxAuth`).

At the end: what an authority step's failure says (an unknown tenant_id refused at discovery,
a server error), so that the code and the hint point at what to fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.auth import MailboxAuth, drop_idle_connections
from exporter.config import MailboxConfig, load_config
from exporter.failures import CheckFailed
from exporter.results import CheckResult
from exporter.runner import MailboxRunner, Watchdog
from tests.conftest import check_json, results_by_check, write_config, write_secret
from tests.faults import AuthorityFaultProxy
from tests.faults.observe import Watch

TIMEOUT = 2.0  # the in-process runs
MARGIN = 1.0  # a run ends within TIMEOUT + MARGIN
GUARD = 16.0  # how long a test waits for a run that does not end


@dataclass
class Victim:
    """An app-only mailbox (no user-realm call going around the proxy) behind the proxy."""

    upn: str
    client_id: str
    secret_file: Path


@pytest.fixture
def authority(entra: Any, ca: Any) -> Iterator[AuthorityFaultProxy]:
    proxy = AuthorityFaultProxy(ca, entra.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def add_victim(entra: Any, directory: Path) -> Victim:
    directory.mkdir(parents=True, exist_ok=True)
    upn = f"drip-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"
    client_id = str(uuid.uuid4())
    secret = f"Secret-{uuid.uuid4().hex}"
    entra.add_user(upn, f"Pw-{uuid.uuid4().hex}")
    entra.add_app(client_id, public_client=False, client_secret=secret, mailbox=upn)
    write_secret(directory / "victim.secret", secret)
    return Victim(upn, client_id, directory / "victim.secret")


@pytest.fixture
def victim(entra: Any, tmp_path: Path) -> Victim:
    return add_victim(entra, tmp_path)


def write_victim_config(
    tmp_path: Path, entra: Any, victim: Victim, authority_url: str, interval: str, timeout: str
) -> Path:
    document = {
        "state_dir": str(tmp_path / "state"),
        "mailboxes": [
            {
                "name": "victim",
                "username": victim.upn,
                "tenant_id": "contoso.onmicrosoft.com",
                "client_id": victim.client_id,
                "auth": {"flow": "client_secret", "client_secret_file": str(victim.secret_file)},
                "authority_host": authority_url,
                "ca_file": str(entra.ca_file),
                "checks": ["token"],
                "interval": interval,
                "timeout": timeout,
            },
        ],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def timed_run(runner: MailboxRunner) -> tuple[float, list[CheckResult]]:
    """Run once on a helper thread; (seconds to the token result, results so far)."""
    results: list[CheckResult] = []
    got_token = threading.Event()

    def on_result(result: CheckResult) -> None:
        results.append(result)
        got_token.set()

    started = time.monotonic()
    threading.Thread(target=runner.run, args=(on_result,), daemon=True).start()
    got_token.wait(GUARD)
    return time.monotonic() - started, list(results)


def assert_token_passed(results: list[CheckResult]) -> None:
    assert [(r.check, r.success) for r in results] == [("token", True)]


def assert_timed_out(elapsed: float, results: list[CheckResult]) -> None:
    """The token step ended at its deadline, as a `timeout`."""
    assert results, f"no token result within {GUARD}s"
    assert elapsed < TIMEOUT + MARGIN
    failure = results[0].failure
    assert failure is not None and (failure.reason, failure.code) == ("timeout", "")


def in_process_mailbox(tmp_path: Path, entra: Any, victim: Victim, url: str) -> MailboxConfig:
    config = write_victim_config(tmp_path, entra, victim, url, "60s", f"{TIMEOUT:g}s")
    return load_config(config).mailbox("victim")


@pytest.mark.timeout(60)
def test_trickling_token_endpoint_ends_at_the_deadline(
    entra: Any, authority: AuthorityFaultProxy, victim: Victim, tmp_path: Path
) -> None:
    mailbox = in_process_mailbox(tmp_path, entra, victim, authority.url)
    runner = MailboxRunner(mailbox, tmp_path / "state", Watchdog())
    _, results = timed_run(runner)  # builds the application: discovery is done
    assert_token_passed(results)

    authority.set_fault("trickle")
    authority.requests.clear()
    elapsed, results = timed_run(runner)
    print(f"\ntrickling token endpoint: token result after {elapsed:.2f}s (timeout {TIMEOUT}s)")
    assert_timed_out(elapsed, results)
    assert [path.rsplit("/", 1)[-1] for _, path in authority.requests] == ["token"]

    authority.set_fault("pass")
    _, results = timed_run(runner)  # fresh connections, the same application
    assert_token_passed(results)


@pytest.mark.timeout(60)
def test_trickling_discovery_ends_at_the_deadline(
    entra: Any, authority: AuthorityFaultProxy, victim: Victim, tmp_path: Path
) -> None:
    mailbox = in_process_mailbox(tmp_path, entra, victim, authority.url)
    authority.set_fault("trickle")
    runner = MailboxRunner(mailbox, tmp_path / "state", Watchdog())  # discovery not done yet
    elapsed, results = timed_run(runner)
    print(f"\ntrickling OIDC discovery: token result after {elapsed:.2f}s (timeout {TIMEOUT}s)")
    assert_timed_out(elapsed, results)
    assert [path for _, path in authority.requests] == [
        "/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"
    ]

    authority.set_fault("pass")
    _, results = timed_run(runner)
    assert_token_passed(results)


# --- one connection pool per authority, shared by every mailbox --------------------------------


def _two_runners(
    entra: Any, authority: AuthorityFaultProxy, tmp_path: Path
) -> tuple[MailboxRunner, MailboxRunner]:
    """Two mailboxes of one config (one state_dir) at the authority."""
    watchdog = Watchdog()
    runners = []
    for name in ("a", "b"):
        directory = tmp_path / name
        mailbox = in_process_mailbox(directory, entra, add_victim(entra, directory), authority.url)
        mailbox = dataclasses.replace(mailbox, name=name)
        runners.append(MailboxRunner(mailbox, tmp_path / "state", watchdog))
    return runners[0], runners[1]


@pytest.mark.timeout(60)
def test_mailboxes_share_one_kept_alive_connection_to_the_authority(
    entra: Any, authority: AuthorityFaultProxy, tmp_path: Path
) -> None:
    """Two mailboxes of one authority refresh over one TLS connection (1,000 mailboxes held
    1,000 connections, and at a 60 s interval each refresh made a new one). One mailbox's
    abort (the watchdog ends its IMAP step) leaves the pooled connection to the other."""
    drop_idle_connections()
    a, b = _two_runners(entra, authority, tmp_path)
    before = authority.connections
    for runner in (a, b, a, b):
        _, results = timed_run(runner)
        assert_token_passed(results)
    a.auth.abort()  # between requests: the connection is in the pool, not a's
    _, results = timed_run(b)
    assert_token_passed(results)
    _, results = timed_run(a)  # a's next run resumes
    assert_token_passed(results)
    assert authority.connections - before == 1
    assert [path.rsplit("/", 1)[-1] for _, path in authority.requests].count("token") == 6


@pytest.mark.timeout(60)
def test_a_kept_alive_connection_that_starts_trickling_ends_at_the_deadline(
    entra: Any, authority: AuthorityFaultProxy, tmp_path: Path
) -> None:
    """The connection b's request takes from the pool was opened by a's: b's deadline still
    shuts it, and a's next request gets a fresh connection and passes."""
    drop_idle_connections()
    a, b = _two_runners(entra, authority, tmp_path)
    for runner in (a, b):
        _, results = timed_run(runner)
        assert_token_passed(results)
    _, results = timed_run(a)  # a opened nothing new: the connection in the pool is b's
    before = authority.connections
    authority.set_fault("trickle", keep_open=True)
    elapsed, results = timed_run(b)
    print(f"\ntrickling kept-alive connection: token result after {elapsed:.2f}s")
    assert_timed_out(elapsed, results)
    assert authority.connections == before  # the trickle came on the kept-alive connection
    authority.set_fault("pass", keep_open=True)
    _, results = timed_run(a)
    assert_token_passed(results)
    assert authority.connections == before + 1


def _token_runs(watch: Watch, since: float, until: float) -> list[Any]:
    return [r for r in watch.runs_of("victim", "token", since) if r.start <= until]


@pytest.mark.timeout(120)
def test_runs_keep_their_schedule_while_the_authority_trickles(
    entra: Any,
    authority: AuthorityFaultProxy,
    victim: Victim,
    tmp_path: Path,
    exporter_process: Any,
) -> None:
    """A real exporter, 1 s interval, 0.5 s timeout: discovery trickles from the start (the
    application is never built), then recovers, then the token endpoint trickles."""
    interval, timeout = 1.0, 0.5
    config = write_victim_config(tmp_path, entra, victim, authority.url, "1s", "500ms")
    authority.set_fault("trickle")
    exporter = exporter_process(config)
    watch = Watch(exporter, ("victim",), ("token",))
    for phase in ("discovery", "token endpoint"):
        injected_at = time.time()
        authority.set_fault("trickle")
        watch.poll_for(4.5)
        authority.set_fault("pass")
        removed_at = time.time()
        runs = _token_runs(watch, injected_at + 0.1, removed_at - timeout - 0.1)
        # Each run ended at its deadline, and the next one started on schedule.
        assert len(runs) >= 3, (phase, runs)
        assert not any(r.success for r in runs), (phase, runs)
        assert max(r.end - r.start for r in runs) < timeout + 0.5, (phase, runs)
        gaps = [b.start - a.start for a, b in itertools.pairwise(runs)]
        assert max(gaps) < interval * 1.5, (phase, gaps)
        failures = watch.last.failures("victim") if watch.last else {}
        assert failures.get(("token", "timeout", ""), 0) >= len(runs), failures
        # The first run that starts after the fault is gone passes.
        end = time.monotonic() + 10
        while time.monotonic() < end:
            watch.poll()
            after = watch.runs_of("victim", "token", removed_at)
            if after:
                break
            time.sleep(0.1)
        assert after and after[0].success, (phase, after)
        print(
            f"\n{phase} trickling: {len(runs)} runs, longest "
            f"{max(r.end - r.start for r in runs):.2f}s, start gaps "
            f"{min(gaps):.2f}-{max(gaps):.2f}s; first run after removal passed"
        )
    assert exporter.proc.poll() is None


# --- what an authority step's failure says -----------------------------------------------------


def test_unknown_tenant_is_reported_with_its_aadsts_code_and_a_tenant_id_hint(
    make_mailbox: Any, entra: Any, dovecot: Any, tmp_path: Path, capsys: Any
) -> None:
    """Entra ID refuses the OIDC discovery of an unknown tenant with HTTP 400 and AADSTS90002;
    MSAL raises a bare ValueError. The check reports the code and says to check tenant_id."""
    mailbox = make_mailbox("box", tenant_id="nosuchtenant.onmicrosoft.com")
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    exit_code, document = check_json(capsys, config)

    assert exit_code == 1
    token = results_by_check(document, "box")["token"]
    assert (token["success"], token["reason"], token["code"]) == (False, "invalid_client", "90002")
    assert "tenant_id" in token["hint"]
    assert token["message"].startswith(
        "AADSTS90002: Tenant 'nosuchtenant.onmicrosoft.com' not found. Check to make sure you "
        "have the correct tenant ID"
    )
    assert [r.path for r in entra.requests] == [
        "/nosuchtenant.onmicrosoft.com/v2.0/.well-known/openid-configuration"
    ]


def test_a_server_error_has_no_code_but_its_status_in_the_message(
    entra: Any, victim: Victim, tmp_path: Path
) -> None:
    """The `code` label carries AADSTS / IMAP / SMTP codes only, never an HTTP status."""
    mailbox = in_process_mailbox(tmp_path, entra, victim, entra.url)
    entra.set_error(None, error="server_error", status=500, client_id=victim.client_id)

    with pytest.raises(CheckFailed) as caught:
        MailboxAuth(mailbox, tmp_path / "state").refresh()

    failure = caught.value.failure
    assert (failure.reason, failure.code) == ("unknown", "")
    assert "HTTP 500" in failure.message
