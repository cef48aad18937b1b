"""Arrival counters from UIDNEXT growth, and the expiry of credentials and server certificates."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from cryptography import x509

from tests.conftest import (
    check_json,
    results_by_check,
    use_client_secret,
    write_config,
)
from tests.testbed import make_app_certificate, make_message


def _deliver(dovecot, upn: str, folder: str, count: int) -> None:
    for i in range(count):
        dovecot.deliver(upn, folder, make_message(f"message {i}", "a@fabrikam.example"),
                        internaldate=datetime.now(UTC))


def test_arrivals_count_messages_delivered_between_runs(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    mailbox = make_mailbox("box")
    _deliver(dovecot, mailbox.upn, "INBOX", 2)  # already there: not arrivals
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="1s")
    exporter = exporter_process(config)
    inbox = {"mailbox": "box", "folder": "inbox"}
    sent = {"mailbox": "box", "folder": "sent"}
    name = "o365_mailbox_folder_arrived_messages_total"
    exporter.wait_for(name, 0.0, **inbox)
    exporter.wait_for(name, 0.0, **sent)

    _deliver(dovecot, mailbox.upn, "INBOX", 3)
    _deliver(dovecot, mailbox.upn, "Sent Items", 2)
    exporter.wait_for(name, 3.0, **inbox)
    exporter.wait_for(name, 2.0, **sent)
    exporter.wait_for("o365_mailbox_folder_messages", 5.0, **inbox)

    # A new UIDVALIDITY (the folder was recreated) restarts counting without a jump.
    dovecot.reset_mailbox(mailbox.upn)
    _deliver(dovecot, mailbox.upn, "INBOX", 4)
    exporter.wait_for("o365_mailbox_folder_messages", 4.0, **inbox)
    assert exporter.value(name, **inbox) == 3.0
    _deliver(dovecot, mailbox.upn, "INBOX", 1)
    exporter.wait_for(name, 4.0, **inbox)


def test_credential_and_server_certificate_expiry(make_mailbox, entra, dovecot, tmp_path,
                                                  capsys):
    secret_box = make_mailbox("secretapp")
    use_client_secret(secret_box, entra, tmp_path / "secret", "v4lue",
                      client_secret_expires="2027-03-31")

    cert_box = make_mailbox("certapp")
    cert_client = str(uuid.uuid4())
    credential = make_app_certificate()
    entra.add_app(cert_client, public_client=False, certificate_pem=credential.cert_pem,
                  mailbox=cert_box.upn)
    cert_file = tmp_path / "app.pem"
    cert_file.write_bytes(credential.combined_pem)
    cert_file.chmod(0o600)
    cert_box.client_id = cert_client
    cert_box.settings["auth"] = {"flow": "client_certificate", "certificate_file": str(cert_file)}
    for box in (secret_box, cert_box):
        box.settings["smtp"] = {"host": "127.0.0.1", "port": dovecot.submission_port}
        box.settings["checks"] = ["token", "imap_login", "smtp_login"]
    config = write_config(tmp_path, entra, dovecot, [secret_box, cert_box])

    code, document = check_json(capsys, config)

    assert code == 0, document
    secret_token = results_by_check(document, "secretapp")["token"]
    assert secret_token["credential_expiry_timestamp_seconds"] == {
        "client_secret": int(datetime(2027, 3, 31, tzinfo=UTC).timestamp())
    }
    app_cert = x509.load_pem_x509_certificate(credential.cert_pem.encode())
    cert_token = results_by_check(document, "certapp")["token"]
    assert cert_token["credential_expiry_timestamp_seconds"] == {
        "certificate": int(app_cert.not_valid_after_utc.timestamp())
    }
    server_cert = x509.load_pem_x509_certificate((dovecot.workdir / "server.pem").read_bytes())
    server_not_after = int(server_cert.not_valid_after_utc.timestamp())
    for box in ("secretapp", "certapp"):
        results = results_by_check(document, box)
        assert results["imap_login"]["tls_certificate_expiry_timestamp_seconds"] == (
            server_not_after
        )
        assert results["smtp_login"]["tls_certificate_expiry_timestamp_seconds"] == (
            server_not_after
        )


def test_expiry_metrics_are_exposed(make_mailbox, entra, dovecot, tmp_path, exporter_process):
    mailbox = make_mailbox("box")
    # The refresh fails (another secret is registered): the expiry still shows.
    use_client_secret(mailbox, entra, tmp_path / "secret", "expired-secret",
                      registered="wrong-on-purpose-no", client_secret_expires="2026-11-01")
    mailbox.settings["smtp"] = {"host": "127.0.0.1", "port": dovecot.submission_port}
    config = write_config(tmp_path, entra, dovecot, [mailbox], interval="2s")

    exporter = exporter_process(config)

    expiry = exporter.wait_for("o365_mailbox_credential_expiry_timestamp_seconds", mailbox="box",
                               kind="client_secret")
    assert expiry == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert exporter.value("o365_mailbox_check_success", mailbox="box", check="token") == 0.0
