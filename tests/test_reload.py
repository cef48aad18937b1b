"""POST /-/reload and SIGHUP: a good config is adopted (removed mailboxes vanish), a bad one
keeps the old config and sets the reload metric to 0."""

from __future__ import annotations

import signal

from tests.conftest import write_config


def test_reload_adopts_good_config_and_keeps_old_on_bad(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    first, second = make_mailbox("first"), make_mailbox("second")
    config = write_config(tmp_path, entra, dovecot, [first, second], interval="1s")
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="first")
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="second")

    write_config(tmp_path, entra, dovecot, [first], interval="1s")
    assert exporter.post("/-/reload")[0] == 200
    metrics = exporter.metrics()
    assert not any(("mailbox", "second") in labels for _name, labels in metrics)
    assert exporter.value("o365_mailbox_up", mailbox="first") == 1.0
    assert exporter.value("o365_mailbox_exporter_config_last_reload_successful") == 1.0

    config.write_text(config.read_text().replace("flow: password", "flow: pasword"))
    status, body = exporter.post("/-/reload")
    assert status == 500
    assert "auth.flow: must be one of password" in body
    assert exporter.value("o365_mailbox_exporter_config_last_reload_successful") == 0.0
    assert exporter.value("o365_mailbox_up", mailbox="first") == 1.0
    assert exporter.get("/-/reload")[0] == 405

    write_config(tmp_path, entra, dovecot, [first, second], interval="1s")
    exporter.proc.send_signal(signal.SIGHUP)
    exporter.wait_for("o365_mailbox_exporter_config_last_reload_successful", 1.0)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="second")
