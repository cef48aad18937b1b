"""Behind an outbound proxy: HTTPS to the authority through an HTTP CONNECT proxy.

The authority is `https://login.fabrikam.test`, a name only the proxy can resolve (there is
no such DNS name; the proxy maps it to the FakeEntra). A real exporter process signs in with
the password flow (OIDC discovery, MSAL's user-realm call on port 443, the token request),
then logs in over IMAP, which connects directly. The proxy comes from `HTTPS_PROXY` in the
exporter's environment, or from the mailbox's `proxy_url` (with a password, which must never
show), and `NO_PROXY` sends the authority around it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.auth import MailboxAuth
from exporter.config import load_config
from exporter.failures import CheckFailed
from tests.conftest import write_config
from tests.faults.connect_proxy import ConnectProxy
from tests.testbed.entra import EXTRA_NAMES

AUTHORITY_NAME = EXTRA_NAMES[0]  # login.fabrikam.test, in the FakeEntra's certificate
AUTHORITY = f"https://{AUTHORITY_NAME}"
CHECKS = ("token", "imap_login", "inbox", "oversized", "junk")
PROXY_USER = "svc-monitor"
PROXY_PASSWORD = f"Pxy-{uuid.uuid4().hex[:12]}"
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the machine; a test sets its own (the exporter inherits them)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def proxy(entra: Any) -> Iterator[ConnectProxy]:
    server = ConnectProxy({AUTHORITY_NAME: entra.host}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def locked_proxy(entra: Any) -> Iterator[ConnectProxy]:
    server = ConnectProxy(
        {AUTHORITY_NAME: entra.host}, credentials=(PROXY_USER, PROXY_PASSWORD)
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _config(tmp_path: Path, entra: Any, dovecot: Any, mailbox: Any) -> Path:
    return write_config(
        tmp_path, entra, dovecot, [mailbox], interval="5s", authority_host=AUTHORITY
    )


def _authority_requests(entra: Any) -> list[str]:
    return [
        f"{r.method} {r.path.split('/', 2)[-1]}" for r in entra.requests if r.path != "/introspect"
    ]


def _all_checks_passed(exporter: Any) -> None:
    exporter.wait_for("o365_mailbox_up", 1.0, timeout=20, mailbox="box")
    for check in CHECKS:
        assert exporter.value("o365_mailbox_check_success", mailbox="box", check=check) == 1.0


def test_https_proxy_from_the_environment(
    make_mailbox: Any,
    entra: Any,
    dovecot: Any,
    tmp_path: Path,
    exporter_process: Any,
    proxy: ConnectProxy,
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    mailbox = make_mailbox("box")
    config = _config(tmp_path, entra, dovecot, mailbox)
    no_proxy_env.setenv("HTTPS_PROXY", proxy.url())
    no_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")  # as often set: not our host

    exporter = exporter_process(config)
    _all_checks_passed(exporter)

    # Every authority request went through the proxy, to the name (no local lookup of it);
    # one kept-alive tunnel carries discovery, user realm and token.
    assert proxy.connects and set(proxy.connects) == {f"{AUTHORITY_NAME}:443"}
    assert _authority_requests(entra) == [
        "GET v2.0/.well-known/openid-configuration",
        f"GET userrealm/{mailbox.upn}",
        "POST oauth2/v2.0/token",
    ]


def test_proxy_url_in_the_config_with_a_password(
    make_mailbox: Any,
    entra: Any,
    dovecot: Any,
    tmp_path: Path,
    exporter_process: Any,
    locked_proxy: ConnectProxy,
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    mailbox = make_mailbox("box", proxy_url=locked_proxy.url(PROXY_USER, PROXY_PASSWORD))
    config = _config(tmp_path, entra, dovecot, mailbox)

    exporter = exporter_process(config, "--log.level=debug")
    _all_checks_passed(exporter)

    assert locked_proxy.connects and set(locked_proxy.connects) == {f"{AUTHORITY_NAME}:443"}
    assert locked_proxy.refused == []
    status, landing = exporter.get("/")
    assert status == 200
    _, metrics = exporter.get("/metrics")
    exporter.stop()
    log = exporter.log_path.read_text()
    for text in (log, metrics, landing):
        assert PROXY_PASSWORD not in text


def test_the_proxy_url_overrides_no_proxy(
    make_mailbox: Any,
    entra: Any,
    dovecot: Any,
    tmp_path: Path,
    locked_proxy: ConnectProxy,
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    """In-process: `proxy_url` wins over the environment; a wrong proxy password is a
    `connection` failure whose message names the proxy's answer but not the password."""
    no_proxy_env.setenv("NO_PROXY", AUTHORITY_NAME)
    wrong = f"Wrong-{uuid.uuid4().hex[:8]}"
    mailbox = make_mailbox("box", proxy_url=locked_proxy.url(PROXY_USER, wrong))
    config = load_config(_config(tmp_path, entra, dovecot, mailbox)).mailbox("box")
    assert wrong not in repr(config)

    with pytest.raises(CheckFailed) as caught:
        MailboxAuth(config, tmp_path / "state").refresh()
    failure = caught.value.failure
    assert (failure.reason, failure.code) == ("connection", "")
    assert "407" in failure.message and wrong not in failure.message
    assert locked_proxy.refused == [(f"{AUTHORITY_NAME}:443", 407)]

    mailbox.settings["proxy_url"] = locked_proxy.url(PROXY_USER, PROXY_PASSWORD)
    right = load_config(_config(tmp_path, entra, dovecot, mailbox)).mailbox("box")
    token = MailboxAuth(right, tmp_path / "state").refresh()
    assert token.expires_at > time.time()
    assert locked_proxy.connects == [f"{AUTHORITY_NAME}:443"]


def test_no_proxy_sends_the_authority_around_the_proxy(
    make_mailbox: Any,
    entra: Any,
    dovecot: Any,
    tmp_path: Path,
    exporter_process: Any,
    proxy: ConnectProxy,
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    mailbox = make_mailbox("box")
    config = _config(tmp_path, entra, dovecot, mailbox)
    no_proxy_env.setenv("HTTPS_PROXY", proxy.url())
    no_proxy_env.setenv("NO_PROXY", "localhost,.fabrikam.test")  # requests' suffix match

    exporter = exporter_process(config)
    exporter.wait_for(
        "o365_mailbox_check_failures_total",
        1.0,
        timeout=20,
        mailbox="box",
        check="token",
        reason="connection",
        code="",
    )
    # Direct, so the client looked the name up itself, and there is no such name.
    assert proxy.connects == []
    assert _authority_requests(entra) == []
    assert exporter.value("o365_mailbox_up", mailbox="box") == 0.0
