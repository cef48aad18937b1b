"""Backoff arithmetic, failure classification and log line formats."""

from __future__ import annotations

import json
import logging
import stat

import pytest

from exporter.backoff import MAX_BACKOFF_SECONDS, Backoff, BackoffStore
from exporter.failures import Failure, classify_token_error, scrub
from exporter.logs import JsonFormatter, LogfmtFormatter


def test_backoff_doubles_and_is_capped():
    backoff = Backoff()
    cause = Failure("invalid_grant", "50126", "wrong password")
    waits = []
    for _ in range(12):
        backoff.record_failure(cause, now=1000.0, interval=60.0, cap=MAX_BACKOFF_SECONDS, key="a")
        waits.append(backoff.until - 1000.0)
    assert waits[:5] == [120.0, 240.0, 480.0, 960.0, 1920.0]
    assert max(waits) == MAX_BACKOFF_SECONDS
    assert backoff.active(1000.0 + 3599, "a")
    assert not backoff.active(1000.0 + 3599, "changed secret")
    assert not backoff.active(1000.0 + 3601, "a")
    # The record holds a salted slow hash, never the key itself.
    kind, salt, digest = backoff.fingerprint.split("$")
    assert (kind, len(salt), len(digest)) == ("pbkdf2-sha256", 32, 64)


def test_a_changed_key_starts_its_failures_afresh():
    backoff = Backoff()
    cause = Failure("invalid_grant", "50126", "wrong password")
    for _ in range(3):
        backoff.record_failure(cause, 0.0, 60.0, MAX_BACKOFF_SECONDS, "old secret")
    assert backoff.failures == 3
    backoff.record_failure(cause, 0.0, 60.0, MAX_BACKOFF_SECONDS, "new secret")
    assert (backoff.failures, backoff.until) == (1, 120.0)


def test_server_rejections_are_capped_at_four_intervals(tmp_path):
    store = BackoffStore(tmp_path, "box")
    cause = Failure("auth_rejected", "NO", "AUTHENTICATE failed.")
    waits = []
    for _ in range(6):
        store.failed("imap_login", cause, 0.0, 60.0, "key")
        waits.append(store.get("imap_login").until)
    assert waits == [120.0, 240.0, 240.0, 240.0, 240.0, 240.0]
    store.failed("token", Failure("invalid_grant", "50126"), 0.0, 60.0, "key")
    assert store.get("token").until == 120.0


def test_backoff_record_is_shared_through_the_file(tmp_path):
    first, second = BackoffStore(tmp_path, "box"), BackoffStore(tmp_path, "box")
    first.failed("token", Failure("invalid_grant", "50126", "wrong"), 100.0, 60.0, "key")
    held = second.holds_back("token", 130.0, "key")
    assert held is not None and (held.reason, held.code) == ("backoff", "50126")
    assert "next sign-in attempt at 1970-01-01 00:03:40Z (in 90s)" in held.message
    assert second.holds_back("token", 130.0, "another secret") is None
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    second.passed("token")
    assert not first.path.exists()
    assert first.holds_back("token", 130.0, "key") is None


def test_corrupt_backoff_record_is_set_aside(tmp_path):
    store = BackoffStore(tmp_path, "box")
    store.path.parent.mkdir()
    store.path.write_text("{not json")
    assert store.holds_back("token", 0.0, "key") is None
    assert not store.path.exists()
    assert len(list(store.path.parent.glob("box.json.corrupt-*"))) == 1


def test_retry_after_extends_backoff():
    backoff = Backoff()
    backoff.record_failure(Failure("throttled", "", retry_after=900.0), 0.0, 1.0, 3600.0, "a")
    assert backoff.until == 900.0


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        ({"error": "invalid_client", "error_codes": [7000218]}, 400,
         ("public_client_disabled", "7000218")),
        ({"error": "invalid_grant", "error_description": "AADSTS50126: Error validating"}, 400,
         ("invalid_grant", "50126")),
        ({"error": "invalid_grant", "suberror": "consent_required"}, 400,
         ("consent_required", "")),
        ({"error": "temporarily_unavailable"}, 429, ("throttled", "")),
        ({"error": "server_error"}, 400, ("unknown", "")),
    ],
)
def test_token_errors_are_classified(error, status, expected):
    failure = classify_token_error(error, status)
    assert (failure.reason, failure.code) == expected
    assert failure.remediation


def test_scrub_removes_tokens_but_keeps_words():
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJvaWQiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"
    text = f"AADSTS50126: Error for https://outlook.office365.com/IMAP.AccessAsUser.All {token}"
    assert scrub(text) == (
        "AADSTS50126: Error for https://outlook.office365.com/IMAP.AccessAsUser.All <redacted>"
    )


@pytest.mark.parametrize(
    "secret",
    [
        "Abc8Q~xyzDEFghiJKLmnoPQRstuVWXyz0123456.7_-",  # an Entra ID client secret's shape
        "Zm9vYmFyYmF6cXV4/abcDEF+ghiJKL09876/54321abcdEF==",  # standard base64
        "0.AXoA6WgJ~NpTq/9dz+xY-_abcdefghijklmnopqrstuvwxyz0123",
    ],
)
def test_scrub_redacts_secrets_with_tilde_and_slash(secret):
    text = f"AADSTS7000215: Invalid client secret provided: {secret}. Trace ID: 1"
    scrubbed = scrub(text)
    assert secret not in scrubbed
    assert scrubbed == "AADSTS7000215: Invalid client secret provided: <redacted> Trace ID: 1"


def test_scrub_keeps_urls_and_paths_but_not_tokens_inside_them():
    url = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    path = "/var/lib/o365-mailbox-exporter/state/tokens/servicedesk-fabrikam.json"
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9eyJvaWQiOiIxMjM0NTY3ODkwIn0"
    assert scrub(f"POST {url} failed; cache {path}") == f"POST {url} failed; cache {path}"
    assert scrub(f"{url}?assertion={token}") == f"{url}?<redacted>"
    line = f'level=warn msg="backoff record is corrupt; set aside" path={path}.corrupt-1764000000'
    assert scrub(line) == line  # logfmt's unquoted key=/path value stays readable


def test_quoted_server_text_is_cut_at_300_characters():
    failure = classify_token_error(
        {"error": "invalid_grant", "error_description": "AADSTS50126: " + "x " * 400}, 400
    )
    assert (failure.reason, failure.code) == ("invalid_grant", "50126")
    assert len(failure.message) <= 303 and failure.message.endswith("...")


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("exporter.scheduler", logging.WARNING, __file__, 1,
                               "check failed", (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_logfmt_line_carries_mailbox_check_reason_code_hint():
    line = LogfmtFormatter().format(_record(
        mailbox="desk", check="token", reason="invalid_grant", code="50126",
        hint="Wrong username or password: fix the password file."))
    assert line.split(" ", 1)[0].startswith("ts=")
    assert " level=warn " in line
    assert ' msg="check failed" mailbox=desk check=token reason=invalid_grant code=50126 ' in line
    assert line.endswith('hint="Wrong username or password: fix the password file."')


def test_json_line_carries_the_same_fields():
    document = json.loads(JsonFormatter().format(_record(mailbox="desk", check="imap_login",
                                                          reason="timeout", code="")))
    assert {k: document[k] for k in ("level", "msg", "mailbox", "check", "reason", "code")} == {
        "level": "warn", "msg": "check failed", "mailbox": "desk", "check": "imap_login",
        "reason": "timeout", "code": "",
    }
