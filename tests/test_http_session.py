"""MSAL's requests to the authority skip requests' session layer (`HttpSession._send_directly`):
they must reach the real fake Entra ID exactly as requests would send them, with the answer,
status and error fields read the same; anything else takes requests' whole path."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from exporter.auth import HttpSession, _form

SCOPE = "https://outlook.office365.com/.default"


def _app(entra: Any) -> tuple[str, str]:
    upn = f"direct-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"
    client_id, secret = str(uuid.uuid4()), f"Secret-{uuid.uuid4().hex}"
    entra.add_user(upn, f"Pw-{uuid.uuid4().hex}")
    entra.add_app(client_id, public_client=False, client_secret=secret, mailbox=upn)
    return client_id, secret


def _token_url(entra: Any) -> str:
    return f"{entra.url}/contoso.onmicrosoft.com/oauth2/v2.0/token"


def test_a_token_post_goes_straight_to_the_adapter_and_is_answered(entra: Any) -> None:
    client_id, secret = _app(entra)
    session = HttpSession(entra.ca_file, 5.0)
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "scope": SCOPE,
        "claims": None,  # MSAL leaves unset fields as None: not sent, as requests does
    }
    direct = session._send_directly(
        "POST", _token_url(entra), timeout=5.0, verify=entra.ca_file, proxies={},
        data=form, headers={"x-client-sku": "MSAL.Python", "Accept": None},
    )  # fmt: skip
    assert direct is not None
    assert direct.status_code == 200 and session.last_status == 200
    assert direct.json()["token_type"] == "Bearer"
    assert direct.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Accept" not in direct.request.headers

    # The same through MSAL's entry point (requests' post() adds json=None, allow_redirects).
    answer = session.post(_token_url(entra), data=form, headers={"x-client-sku": "MSAL.Python"})
    assert answer.status_code == 200 and "access_token" in answer.json()


def test_an_error_answer_is_remembered_with_its_aadsts_code(entra: Any) -> None:
    client_id, _secret = _app(entra)
    session = HttpSession(entra.ca_file, 5.0)
    answer = session.post(
        _token_url(entra),
        data={"grant_type": "client_credentials", "client_id": client_id,
              "client_secret": "wrong", "scope": SCOPE},
    )  # fmt: skip
    assert answer.status_code == 401
    assert session.last_status == 401
    assert session.last_error is not None
    assert session.last_error["error"] == "invalid_client"
    assert 7000215 in session.last_error["error_codes"]


def test_a_get_carries_its_query(entra: Any) -> None:
    session = HttpSession(entra.ca_file, 5.0)
    url = f"{entra.url}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"
    answer = session._send_directly(
        "GET", url, timeout=5.0, verify=entra.ca_file, proxies={}, params={"appid": "a b&c"}
    )
    assert answer is not None and answer.status_code == 200
    assert answer.request.url == url + "?appid=a+b%26c"
    assert answer.json()["token_endpoint"].endswith("/oauth2/v2.0/token")


@pytest.mark.parametrize(
    "fields",
    [
        {"a": "1", "b": "x y+z&w=é"},
        {"scope": "openid profile offline_access", "none": None},
        {"list": ["1", "2"], "n": 5},
        {},
    ],
)
def test_forms_are_encoded_as_requests_encodes_them(fields: dict[str, Any]) -> None:
    expected = requests.models.RequestEncodingMixin._encode_params(fields)
    assert _form(fields) == (expected if fields else "")


def test_other_requests_take_requests_whole_path(entra: Any) -> None:
    session = HttpSession(entra.ca_file, 5.0)
    common: dict[str, Any] = {"timeout": 5.0, "verify": entra.ca_file, "proxies": {}}
    url = _token_url(entra)
    assert session._send_directly("POST", url, data="grant_type=x", **common) is None
    assert session._send_directly("POST", url, json={"a": 1}, **common) is None
    assert session._send_directly("POST", url, data={"a": object()}, **common) is None
    assert session._send_directly("GET", url.replace("contoso", "contosö"), **common) is None
    # ... and requests' path still answers them.
    answer = session.post(url, data="grant_type=client_credentials")
    assert answer.status_code == 400
