"""`doctor` names the first broken step of the chain, and its fix in the words of the Entra ID /
Exchange setup, for every failure the fake Entra ID and Dovecot can produce."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import run_cli, use_client_secret, write_config

STEPS = [
    "secret",
    "authority discovery",
    "token (password)",
    "token claims",
    "IMAP TLS connect",
    "IMAP capabilities",
    "XOAUTH2 login",
    "EXAMINE inbox",
    "folder discovery",
    "SMTP",
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def doctor(capsys, config) -> tuple[int, dict]:
    code, out, _err = run_cli(capsys, "doctor", f"--config.file={config}", "--mailbox=box",
                              "--output=json")  # fmt: skip
    return code, json.loads(out)


def test_a_healthy_mailbox_passes_every_step(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("box", smtp={"host": "127.0.0.1", "port": dovecot.submission_port},
                           checks=["token", "imap_login", "junk", "smtp_login"])  # fmt: skip
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    code, document = doctor(capsys, config)

    assert code == 0
    assert document["ok"] is True and document["broken_step"] is None
    assert [(s["step"], s["status"]) for s in document["steps"]] == [(s, "ok") for s in STEPS]
    details = {s["step"]: s["detail"] for s in document["steps"]}
    assert details["token claims"] == (
        "audience https://outlook.office365.com, scopes IMAP.AccessAsUser.All SMTP.Send, "
        f"user {mailbox.upn}"
    )
    assert details["IMAP capabilities"] == "IMAP4REV1 SASL-IR AUTH=XOAUTH2"
    assert details["folder discovery"] == "Junk: Junk Email; Sent: Sent Items"
    assert dovecot.sink is not None and dovecot.sink.messages == []  # SMTP never sends


def test_table_output_names_the_broken_step_and_the_fix(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    entra.add_app(mailbox.client_id, public_client=False)
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    code, out, _err = run_cli(capsys, "doctor", f"--config.file={config}", "--mailbox=box")

    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"doctor: mailbox box ({mailbox.upn}, flow password)"
    assert (
        lines[2] == f"  ok    secret               password readable from {mailbox.password_file}"
    )
    assert lines[4].startswith("  FAIL  token (password)")
    assert lines[5] == "  -     token claims         not run"
    assert lines[-3] == "Broken step: token (password) (public_client_disabled 7000218)"
    assert lines[-2].startswith("What is wrong: AADSTS7000218: ")
    assert lines[-1] == (
        "Fix: Enable 'Allow public client flows' in the app registration "
        "(Authentication > Advanced settings)."
    )


def _wrong_password(mailbox, entra, dovecot, tmp_path):
    mailbox.set_password_file("not-the-password")


def _public_client_disabled(mailbox, entra, dovecot, tmp_path):
    entra.add_app(mailbox.client_id, public_client=False)


def _no_consent(mailbox, entra, dovecot, tmp_path):
    entra.set_error(65001, username=mailbox.upn)


def _wrong_client_secret(mailbox, entra, dovecot, tmp_path):
    use_client_secret(mailbox, entra, tmp_path / "secret", "the-secret-id-not-its-value",
                      registered="the-value")


def _imap_rejects_token(mailbox, entra, dovecot, tmp_path):
    entra.reject_imap_tokens = True


def _connection_refused(mailbox, entra, dovecot, tmp_path):
    mailbox.settings["imap"] = {"host": "127.0.0.1", "port": closed_port()}


def _missing_inbox(mailbox, entra, dovecot, tmp_path):
    mailbox.settings["folders"] = {"inbox": "Posteingang"}


def _untrusted_authority(mailbox, entra, dovecot, tmp_path):
    return {"ca_file": None}


def _imap_name_mismatch(mailbox, entra, dovecot, tmp_path):
    # The server certificate names 127.0.0.1, not localhost.
    mailbox.settings["imap"] = {"host": "localhost", "port": dovecot.port}


def _unknown_tenant(mailbox, entra, dovecot, tmp_path):
    mailbox.settings["tenant_id"] = "nosuchtenant.onmicrosoft.com"


def _graph_scope(mailbox, entra, dovecot, tmp_path):
    mailbox.settings["scopes"] = ["https://graph.microsoft.com/IMAP.AccessAsUser.All"]


def _no_smtp_scope(mailbox, entra, dovecot, tmp_path):
    mailbox.settings["scopes"] = ["https://outlook.office365.com/IMAP.AccessAsUser.All"]
    mailbox.settings["smtp"] = {"host": "127.0.0.1", "port": dovecot.submission_port}
    mailbox.settings["checks"] = ["token", "imap_login", "smtp_login"]


def _smtp_refused(mailbox, entra, dovecot, tmp_path):
    mailbox.settings["smtp"] = {"host": "127.0.0.1", "port": closed_port()}
    mailbox.settings["checks"] = ["token", "imap_login", "smtp_login"]


CASES = [
    # setup, words of the problem, broken step, reason, code, words of the fix
    (_wrong_password, "AADSTS50126: Error validating credentials",
     "token (password)", "invalid_grant", "50126",
     "Wrong username or password: fix the password file."),
    (_public_client_disabled, "AADSTS7000218: The request body must contain",
     "token (password)", "public_client_disabled", "7000218",
     "Allow public client flows"),
    (_no_consent, "AADSTS65001: The user or administrator has not consented",
     "token (password)", "consent_required", "65001",
     "Grant admin consent for the tenant"),
    (_wrong_client_secret, "AADSTS7000215: Invalid client secret provided",
     "token (client_secret)", "invalid_client", "7000215",
     "copy its Value, not its ID"),
    (_imap_rejects_token, "AUTHENTICATE XOAUTH2: [AUTHENTICATIONFAILED] Authentication failed.",
     "XOAUTH2 login", "auth_rejected", "AUTHENTICATIONFAILED",
     "IMAP.AccessAsUser.All with Grant admin consent"),
    (_connection_refused, "connect: [Errno 111] Connection refused",
     "IMAP TLS connect", "connection", "",
     "check imap.host and imap.port (outlook.office365.com:993)"),
    (_missing_inbox, "EXAMINE Posteingang: select failed: Mailbox doesn't exist: Posteingang",
     "EXAMINE inbox", "folder_missing", "NO",
     "There is no folder 'Posteingang': fix folders.inbox"),
    (_untrusted_authority,
     "failed: certificate verify failed: unable to get local issuer certificate",
     "authority discovery", "tls", "", "set ca_file to the proxy's CA"),
    (_imap_name_mismatch, "Hostname mismatch, certificate is not valid for 'localhost'",
     "IMAP TLS connect", "tls", "", "does not name localhost"),
    (_unknown_tenant, "tenant nosuchtenant.onmicrosoft.com: AADSTS90002: Tenant",
     "authority discovery", "invalid_client", "90002",
     "The tenant was not found: check tenant_id and authority_host."),
    (_graph_scope, "the token is for 00000003-0000-0000-c000-000000000000, not Exchange Online",
     "token claims", "auth_rejected", "",
     "https://outlook.office365.com/IMAP.AccessAsUser.All"),
    (_no_smtp_scope,
     "the token lacks the delegated permission(s) SMTP.Send (scp: IMAP.AccessAsUser.All)",
     "token claims", "auth_rejected", "",
     "Add the delegated permission(s) SMTP.Send (Office 365 Exchange Online), Grant admin "
     "consent for the tenant"),
    (_smtp_refused, "STARTTLS: [Errno 111] Connection refused",
     "SMTP", "connection", "",
     "check smtp.host and smtp.port (smtp.office365.com:587)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "problem", "step", "reason", "code", "fix"),
    CASES,
    ids=[c[0].__name__[1:] for c in CASES],
)
def test_doctor_names_the_broken_step(
    setup, problem, step, reason, code, fix, make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    defaults = setup(mailbox, entra, dovecot, tmp_path) or {}
    config = write_config(tmp_path, entra, dovecot, [mailbox], **defaults)

    exit_code, document = doctor(capsys, config)

    assert exit_code == 1
    assert document["broken_step"] == step
    statuses = [(s["step"], s["status"]) for s in document["steps"]]
    broken_at = [s for s, _ in statuses].index(step)
    assert all(status in ("ok", "skipped") for _s, status in statuses[:broken_at])
    assert all(status == "not_run" for _s, status in statuses[broken_at + 1 :])
    broken = document["steps"][broken_at]
    assert (broken["status"], broken["reason"], broken["code"] or "") == ("fail", reason, code)
    assert problem in broken["detail"]
    assert fix in broken["fix"]
    assert mailbox.password not in json.dumps(document)
