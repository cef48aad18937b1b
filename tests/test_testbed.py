"""Tests of the test bed itself, against the real msal, imapclient and Dovecot."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msal
import pytest
import trustme
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from tests.testbed import (
    AADSTS_ERRORS,
    Dovecot,
    FakeEntra,
    MessageInfo,
    make_app_certificate,
    make_message,
)

IMAP_SCOPE = "https://outlook.office365.com/IMAP.AccessAsUser.All"
APP_SCOPE = "https://outlook.office365.com/.default"

# ROPC is what the exporter's password flow uses; msal warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore:This API has been deprecated:DeprecationWarning")


def unique(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"


def public_app(entra: FakeEntra, client_id: str, tenant: str = "contoso") -> Any:
    return msal.PublicClientApplication(
        client_id,
        authority=entra.url + "/" + tenant,
        instance_discovery=False,
        http_client=entra.http_session(),
    )


def confidential_app(entra: FakeEntra, client_id: str, credential: Any) -> Any:
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=entra.url + "/contoso",
        instance_discovery=False,
        http_client=entra.http_session(),
    )


@pytest.fixture
def user(entra: FakeEntra) -> tuple[str, str, str]:
    """(upn, password, client_id) of a fresh user and public-client app."""
    upn, password, client_id = unique(), f"Pw-{uuid.uuid4().hex}", str(uuid.uuid4())
    entra.add_user(upn, password)
    entra.add_app(client_id)
    return upn, password, client_id


def ropc(entra: FakeEntra, user: tuple[str, str, str]) -> tuple[Any, dict[str, Any]]:
    upn, password, client_id = user
    app = public_app(entra, client_id)
    return app, app.acquire_token_by_username_password(upn, password, scopes=[IMAP_SCOPE])


def post_token(entra: FakeEntra, **form: str) -> tuple[int, dict[str, Any], Any]:
    with entra.http_session() as session:
        response = session.post(f"{entra.url}/contoso/oauth2/v2.0/token", data=form)
        return response.status_code, response.json(), response.headers


# ---------------------------------------------------------------------------- FakeEntra + msal


def test_ropc_gives_a_token_and_an_account(entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, _password, client_id = user
    app, result = ropc(entra, user)

    assert "error" not in result, result
    token = result["access_token"]
    assert token.startswith("eyJ") and token.count(".") == 2 and len(token) >= 100
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == entra.access_token_lifetime == 3600
    assert result["scope"] == IMAP_SCOPE
    assert result["refresh_token"] == entra.latest_refresh_token(upn, client_id)
    assert result["id_token_claims"]["preferred_username"] == upn
    assert result["id_token_claims"]["tid"] == entra.tenant_id("contoso")
    [account] = app.get_accounts()
    assert account["username"] == upn
    assert entra.attempts(username=upn) == 1
    assert entra.attempts(username=upn, grant_type="password") == 1
    # msal called user-realm discovery on port 443 (no port in the URL).
    paths = [r.path for r in entra.requests]
    assert f"/common/userrealm/{upn}" in paths
    assert entra.server_errors == []


def test_force_refresh_sends_exactly_one_refresh_grant(
    entra: FakeEntra, user: tuple[str, str, str]
) -> None:
    upn, _password, client_id = user
    app, first = ropc(entra, user)
    [account] = app.get_accounts()
    before = entra.attempts(username=upn, grant_type="refresh_token")

    second = app.acquire_token_silent_with_error([IMAP_SCOPE], account, force_refresh=True)

    assert second is not None and "error" not in second, second
    assert entra.attempts(username=upn, grant_type="refresh_token") == before + 1
    assert entra.attempts(username=upn) == 2
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]  # rotated
    assert entra.latest_refresh_token(upn, client_id) == second["refresh_token"]
    # without force_refresh the cached access token is used: no request at all
    third = app.acquire_token_silent_with_error([IMAP_SCOPE], account)
    assert third is not None and third["access_token"] == second["access_token"]
    assert entra.attempts(username=upn) == 2


def test_set_error_gives_an_entra_shaped_answer(
    entra: FakeEntra, user: tuple[str, str, str]
) -> None:
    upn = user[0]
    rule = entra.set_error(50126, username=upn, times=1)

    _app, result = ropc(entra, user)

    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [50126]
    assert result["error_description"].startswith("AADSTS50126: Error validating credentials")
    assert "Trace ID: " in result["error_description"]
    assert {"timestamp", "trace_id", "correlation_id"} <= set(result)
    assert rule.hits == 1
    # times=1: a new application object (msal caches a 400 per object) now succeeds
    _app, again = ropc(entra, user)
    assert "access_token" in again, again
    assert entra.attempts(username=upn) == 2


@pytest.mark.parametrize(
    ("code", "error", "suberror", "status"),
    [
        (65001, "invalid_grant", "consent_required", 400),
        (50076, "invalid_grant", "basic_action", 400),
        (53003, "interaction_required", "message_only", 400),
        (50055, "invalid_grant", "user_password_expired", 400),
        (7000222, "invalid_client", None, 401),
        (700082, "invalid_grant", None, 400),
    ],
)
def test_error_table_defaults(
    entra: FakeEntra, user: tuple[str, str, str], code: int, error: str, suberror: str | None,
    status: int,
) -> None:  # fmt: skip
    upn, password, client_id = user
    entra.set_error(code)

    got_status, body, _headers = post_token(
        entra, grant_type="password", client_id=client_id, username=upn, password=password,
        scope=IMAP_SCOPE,
    )  # fmt: skip

    assert got_status == status == AADSTS_ERRORS[code].status
    assert (body["error"], body["error_codes"], body.get("suberror")) == (error, [code], suberror)
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert body["error_uri"].endswith(f"?code={code}")


def test_filters_and_retry_after(entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, password, client_id = user
    entra.set_error(53003, username="someone-else@contoso.onmicrosoft.com")
    entra.set_error(50076, grant_types="refresh_token")
    entra.set_error(None, error="temporarily_unavailable", status=429, retry_after=30,
                    client_id="another-app")  # fmt: skip
    form = {"grant_type": "password", "client_id": client_id, "username": upn,
            "password": password, "scope": IMAP_SCOPE}  # fmt: skip
    assert post_token(entra, **form)[0] == 200  # no rule matches

    entra.set_error(90055, client_id=client_id, retry_after=30)
    status, body, headers = post_token(entra, **form)
    assert (status, body["error_codes"], headers["Retry-After"]) == (429, [90055], "30")

    # msal keeps a 429 for Retry-After seconds: the second call never reaches the server
    entra.reset_counters()
    app = public_app(entra, client_id)
    first = app.acquire_token_by_username_password(upn, password, scopes=[IMAP_SCOPE])
    second = app.acquire_token_by_username_password(upn, password, scopes=[IMAP_SCOPE])
    assert first["error"] == second["error"] == "temporarily_unavailable"
    assert entra.attempts(username=upn) == 1


def test_real_credential_failures(entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, password, client_id = user
    app = public_app(entra, client_id)

    wrong = app.acquire_token_by_username_password(upn, "nope", scopes=[IMAP_SCOPE])
    unknown = app.acquire_token_by_username_password(unique(), password, scopes=[IMAP_SCOPE])
    no_app = public_app(entra, str(uuid.uuid4())).acquire_token_by_username_password(
        upn, password, scopes=[IMAP_SCOPE]
    )
    confidential_id = str(uuid.uuid4())
    entra.add_app(confidential_id, public_client=False)
    no_public_flows = public_app(entra, confidential_id).acquire_token_by_username_password(
        upn, password, scopes=[IMAP_SCOPE]
    )

    assert wrong["error_codes"] == [50126] and wrong["error"] == "invalid_grant"
    assert unknown["error_codes"] == [50034]
    assert no_app["error_codes"] == [700016] and no_app["error"] == "unauthorized_client"
    assert no_public_flows["error_codes"] == [7000218]
    assert no_public_flows["error"] == "invalid_client"
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        public_app(entra, client_id, tenant="no-such-tenant.onmicrosoft.com")
    with entra.http_session() as session:
        discovery = session.get(f"{entra.url}/nope/v2.0/.well-known/openid-configuration")
    assert discovery.status_code == 400
    assert (discovery.json()["error"], discovery.json()["error_codes"]) == (
        "invalid_tenant",
        [90002],
    )
    assert password not in repr(entra.requests)


def test_password_change_revokes_refresh_tokens(
    entra: FakeEntra, user: tuple[str, str, str]
) -> None:
    upn = user[0]
    app, _ = ropc(entra, user)
    [account] = app.get_accounts()

    entra.set_password(upn, "a-new-password")
    result = app.acquire_token_silent_with_error([IMAP_SCOPE], account, force_refresh=True)

    assert result is not None and result["error_codes"] == [50173]
    assert result["error"] == "invalid_grant"


def test_smart_lockout(entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, password, client_id = user
    entra.lockout_threshold = 3
    form = {"grant_type": "password", "client_id": client_id, "username": upn,
            "scope": IMAP_SCOPE}  # fmt: skip
    codes = [post_token(entra, password="wrong", **form)[1]["error_codes"] for _ in range(3)]
    locked = post_token(entra, password=password, **form)[1]

    assert codes == [[50126]] * 3
    assert locked["error_codes"] == [50053] and entra.is_locked(upn)
    entra.unlock_user(upn)
    assert "access_token" in post_token(entra, password=password, **form)[1]


def test_delay_and_request_log(entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, password, client_id = user
    entra.delay = 0.3
    form = {"grant_type": "password", "client_id": client_id, "username": upn,
            "password": password, "scope": IMAP_SCOPE}  # fmt: skip
    began = time.perf_counter()
    assert post_token(entra, **form)[0] == 200
    assert time.perf_counter() - began >= 0.3

    [logged] = [r for r in entra.requests if r.grant_type == "password"]
    assert (logged.method, logged.who) == ("POST", upn)
    assert logged.path == "/contoso/oauth2/v2.0/token"
    assert password not in repr(entra.requests)
    entra.reset_counters()
    assert entra.requests == [] and entra.attempts() == 0


def test_device_code_flow(entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, _password, client_id = user
    app = public_app(entra, client_id)

    pending = app.initiate_device_flow(scopes=[IMAP_SCOPE])
    assert pending["interval"] == 1 and len(pending["user_code"]) == 9
    assert pending["user_code"] in pending["message"]
    pending["expires_at"] = 0  # poll once
    waiting = app.acquire_token_by_device_flow(pending)
    assert (waiting["error"], waiting["error_codes"]) == ("authorization_pending", [70016])

    flow = app.initiate_device_flow(scopes=[IMAP_SCOPE])
    entra.approve_device_code(flow["user_code"], upn)
    approved = app.acquire_token_by_device_flow(flow)
    assert approved["id_token_claims"]["preferred_username"] == upn

    entra.auto_approve_device_code = upn
    flow = app.initiate_device_flow(scopes=[IMAP_SCOPE])
    auto = app.acquire_token_by_device_flow(flow)
    assert "access_token" in auto, auto
    assert entra.attempts(username=upn, grant_type="device_code") == 2
    [account] = app.get_accounts()
    refreshed = app.acquire_token_silent_with_error([IMAP_SCOPE], account, force_refresh=True)
    assert refreshed is not None and "access_token" in refreshed


def test_device_code_approved_while_polling(entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, _password, client_id = user
    app = public_app(entra, client_id)
    flow = app.initiate_device_flow(scopes=[IMAP_SCOPE])
    timer = threading.Timer(0.2, entra.approve_device_code, args=(None, upn))
    timer.start()
    try:
        result = app.acquire_token_by_device_flow(flow)
    finally:
        timer.cancel()
    assert "access_token" in result, result
    assert entra.attempts(username=upn, grant_type="device_code") == 1  # 1st poll was anonymous


def test_client_credentials_with_secret(entra: FakeEntra) -> None:
    client_id, mailbox = str(uuid.uuid4()), unique("shared")
    entra.add_app(client_id, public_client=False, client_secret="the-value", mailbox=mailbox)

    good = confidential_app(entra, client_id, "the-value").acquire_token_for_client([APP_SCOPE])
    wrong = confidential_app(entra, client_id, "the-id").acquire_token_for_client([APP_SCOPE])
    no_default = confidential_app(entra, client_id, "the-value").acquire_token_for_client(
        [IMAP_SCOPE]
    )

    assert "access_token" in good and "refresh_token" not in good, good
    assert good["token_type"] == "Bearer" and good["expires_in"] == 3600
    assert (wrong["error"], wrong["error_codes"]) == ("invalid_client", [7000215])
    assert no_default["error_codes"] == [1002012]
    assert entra.attempts(client_id=client_id, grant_type="client_credentials") == 3


def test_client_credentials_with_certificate(entra: FakeEntra) -> None:
    client_id = str(uuid.uuid4())
    cert = make_app_certificate()
    entra.add_app(client_id, public_client=False, certificate_pem=cert.cert_pem)
    other_key = make_app_certificate().key_pem

    # PS256 + x5t#S256 (msal computes it from the certificate) and RS256 + x5t (SHA-1)
    by_cert = {"private_key": cert.key_pem, "public_certificate": cert.cert_pem}
    by_thumbprint = {"private_key": cert.key_pem, "thumbprint": cert.sha1_thumbprint}
    forged = {"private_key": other_key, "thumbprint": cert.sha1_thumbprint}
    results = [
        confidential_app(entra, client_id, c).acquire_token_for_client([APP_SCOPE])
        for c in (by_cert, by_thumbprint, forged)
    ]

    assert "access_token" in results[0], results[0]
    assert "access_token" in results[1], results[1]
    assert (results[2]["error"], results[2]["error_codes"]) == ("invalid_client", [700027])
    # trustme's default (ECDSA) keys cannot sign msal's PS256/RS256 assertions
    ec_key = trustme.CA().issue_cert("x.example").private_key_pem.bytes().decode()
    with pytest.raises(Exception, match="Invalid Key type"):
        confidential_app(
            entra, client_id, {"private_key": ec_key, "thumbprint": cert.sha1_thumbprint}
        ).acquire_token_for_client([APP_SCOPE])


# ---------------------------------------------------------------------------- Dovecot + imapclient


def imap_login(dovecot: Dovecot, upn: str, token: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=dovecot.port, ssl=True, ssl_context=dovecot.ssl_context())
    client.oauth2_login(upn, token)
    return client


def test_xoauth2_login(dovecot: Dovecot, entra: FakeEntra, user: tuple[str, str, str]) -> None:
    upn, password, client_id = user
    _app, result = ropc(entra, user)
    token = result["access_token"]

    client = imap_login(dovecot, upn, token)
    assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0
    client.logout()
    assert entra.introspections(upn) == 1

    # Each refusal costs Dovecot's fixed 0.5 s failure delay: try them in parallel.
    rejected, expired = unique("rejected"), unique("expired")
    entra.reject_imap_users = {rejected}
    graph = public_app(entra, client_id).acquire_token_by_username_password(
        upn, password, scopes=["User.Read"]
    )
    cases = {
        "garbage": (upn, "not-a-token"),
        "another user's token": (unique(), token),
        "Graph audience": (upn, graph["access_token"]),
        "reject_imap_users": (rejected, entra.mint_access_token(rejected)),
        "expired": (expired, entra.mint_access_token(expired)),
    }
    entra.expire_access_tokens(expired)
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(login_error, dovecot, *case) for name, case in cases.items()}
    outcomes = {name: future.result() for name, future in futures.items()}
    assert all("AUTHENTICATIONFAILED" in str(e) for e in outcomes.values()), outcomes

    entra.reject_imap_tokens = True
    assert "AUTHENTICATIONFAILED" in login_error(dovecot, upn, token)
    entra.reject_imap_tokens = False
    entra.introspection_status = 503  # IdP/Exchange trouble: a temporary failure
    assert "UNAVAILABLE" in login_error(dovecot, upn, token)


def login_error(dovecot: Dovecot, upn: str, token: str) -> str:
    try:
        imap_login(dovecot, upn, token).logout()
    except LoginError as err:
        return str(err)
    return "logged in"


def test_app_only_token_opens_its_mailbox(dovecot: Dovecot, entra: FakeEntra) -> None:
    client_id, mailbox = str(uuid.uuid4()), unique("shared")
    entra.add_app(client_id, public_client=False, client_secret="v", mailbox=mailbox)
    token = confidential_app(entra, client_id, "v").acquire_token_for_client([APP_SCOPE])

    imap_login(dovecot, mailbox, token["access_token"]).logout()
    with pytest.raises(LoginError):
        imap_login(dovecot, unique(), token["access_token"])


def test_delivered_mail_is_what_imap_shows(
    dovecot: Dovecot, entra: FakeEntra, user: tuple[str, str, str]
) -> None:
    upn = user[0]
    dovecot.reset_mailbox(upn)
    plan = [
        ("old and read", 2_000, datetime(2026, 9, 15, 8, 30, tzinfo=UTC), {"\\Seen"}),
        ("big", 150_001, datetime(2026, 11, 25, 10, 0, 5, tzinfo=UTC), set()),
        ("flagged", 777, datetime(2026, 11, 26, 11, 0, tzinfo=UTC), {"\\Flagged", "\\Answered"}),
    ]
    for subject, size, when, flags in plan:
        message = make_message(subject, "customer@fabrikam.example", size=size)
        assert len(message) == size
        dovecot.deliver(upn, "INBOX", message, internaldate=when, flags=flags)
    junk = make_message("You won", "spam@spam.example", size=1_500,
                        headers={"X-Forefront-Antispam-Report": "SFV:SPM;SCL:5;"})  # fmt: skip
    dovecot.deliver(upn, "Junk Email", junk, internaldate=datetime(2026, 11, 1, tzinfo=UTC))
    _app, result = ropc(entra, user)

    client = imap_login(dovecot, upn, result["access_token"])
    client.normalise_times = False
    try:
        assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 3
        data = client.fetch(client.search("ALL"), ["INTERNALDATE", "RFC822.SIZE", "FLAGS"])
        got = [
            (d[b"INTERNALDATE"], d[b"RFC822.SIZE"], set(d[b"FLAGS"]) - {b"\\Recent"})
            for _, d in sorted(data.items())
        ]
        want = [(when, size, {f.encode() for f in flags}) for _, size, when, flags in plan]
        assert got == want
        special = {name: set(flags) for flags, _sep, name in client.list_folders()}
        assert b"\\Junk" in special["Junk Email"] and b"\\Sent" in special["Sent Items"]
        assert client.select_folder("Junk Email", readonly=True)[b"EXISTS"] == 1
    finally:
        client.logout()

    snapshot = dovecot.imap_snapshot(upn, "INBOX")
    assert sorted(snapshot.values(), key=lambda m: m.internaldate) == [
        MessageInfo(frozenset(flags), when, size) for _, size, when, flags in plan
    ]


def test_uids_follow_delivery_order_not_dates(dovecot: Dovecot, user: tuple[str, str, str]) -> None:
    upn = user[0]
    dovecot.reset_mailbox(upn)
    dates = [datetime(2026, 11, d, tzinfo=UTC) for d in (20, 25, 26)] + [
        datetime(2026, 9, 15, tzinfo=UTC)  # "rescued from Junk": oldest, delivered last
    ]
    for when in dates:
        dovecot.deliver(upn, "INBOX", make_message("m", "a@b.example"), internaldate=when)

    snapshot = dovecot.imap_snapshot(upn, "INBOX")

    assert [snapshot[uid].internaldate for uid in sorted(snapshot)] == dates


def test_localized_and_nested_folders(dovecot: Dovecot, user: tuple[str, str, str]) -> None:
    upn = user[0]
    dovecot.reset_mailbox(upn)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    dovecot.create_folder(upn, "Courrier indésirable")
    dovecot.deliver(upn, "Service/Tickets", make_message("t", "a@b.example"), internaldate=when)

    client = dovecot.login(upn, dovecot.entra.mint_access_token(upn))
    try:
        names = {name for _flags, _sep, name in client.list_folders()}
    finally:
        client.logout()
    assert {"Courrier indésirable", "Service/Tickets", "Junk Email"} <= names
    [info] = dovecot.imap_snapshot(upn, "Service/Tickets").values()
    assert info.internaldate == when and info.flags == frozenset()


def test_make_message_exact_sizes() -> None:
    base = len(make_message("s", "a@b.example"))
    for size in [base, base + 1, base + 2, base + 79, base + 157, 1_000_000]:
        message = make_message("s", "a@b.example", size=size)
        assert len(message) == size
        assert b"\n" not in message.replace(b"\r\n", b"")
    with pytest.raises(ValueError, match="at least"):
        make_message("s", "a@b.example", size=base - 1)
    encoded = make_message("Grüße", "Jörg <j@b.example>")
    assert b"Subject: =?utf-8?" in encoded


# ---------------------------------------------------------------------------- figures


def test_measure_startup_and_login_times(
    tmp_path: Path, ca: trustme.CA, entra: FakeEntra, user: tuple[str, str, str]
) -> None:
    """Figures for docs/testbed.md (printed with -s); bounds are loose on purpose."""
    upn = user[0]
    token = ropc(entra, user)[1]["access_token"]
    server = Dovecot(tmp_path / "dovecot", ca, entra)
    server.start()
    try:
        assert server.startup_seconds is not None
        logins, failures = [], []
        for _ in range(5):
            began = time.perf_counter()
            server.login(upn, token).logout()
            logins.append(time.perf_counter() - began)
        for _ in range(1):
            began = time.perf_counter()
            with pytest.raises(LoginError):
                server.login(upn, "garbage")
            failures.append(time.perf_counter() - began)
    finally:
        server.stop()
    login, failure = statistics.median(logins), statistics.median(failures)
    print(
        f"\nDovecot start-up {server.startup_seconds * 1000:.0f} ms; XOAUTH2 login+logout "
        f"median {login * 1000:.1f} ms; failed login {failure * 1000:.0f} ms"
    )
    assert server.startup_seconds < 5
    assert login < 1.0
    assert failure < 2.0  # without the anvil-auth-penalty trick: 2-15 s
