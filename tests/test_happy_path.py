"""Every core check against the real bed: `check` output and `/metrics` carry exact values."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT, check_json, results_by_check, run_cli, write_config
from tests.content import seed_standard

CORE_CHECKS = ["token", "imap_login", "inbox", "oversized", "junk"]


def test_check_json_reports_exact_values(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("servicedesk")
    expected = seed_standard(dovecot, mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox], oversized_bytes="100KB")

    before = time.time()
    code, document = check_json(capsys, config)
    after = time.time()

    assert code == 0, document
    assert document["success"] is True
    results = results_by_check(document, "servicedesk")
    assert list(results) == CORE_CHECKS
    assert all(r["success"] for r in results.values())
    lifetime = entra.access_token_lifetime
    expiry = results["token"]["token_expiry_timestamp_seconds"]
    assert before + lifetime - 2 <= expiry <= after + lifetime + 2
    assert results["inbox"]["messages"] == expected.inbox_messages
    assert results["inbox"]["unseen_messages"] == expected.inbox_unseen
    assert results["inbox"]["oldest_message_timestamp_seconds"] == expected.inbox_oldest
    assert results["oversized"]["oversized_messages"] == expected.oversized_count
    assert results["oversized"]["largest_bytes"] == expected.oversized_largest
    assert results["junk"]["messages"] == expected.junk_messages
    assert results["junk"]["oldest_message_timestamp_seconds"] == expected.junk_oldest


def test_check_table_is_readable(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("desk")
    seed_standard(dovecot, mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox], oversized_bytes="100KB")

    code, out, err = run_cli(capsys, "check", f"--config.file={config}")

    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split() == ["MAILBOX", "CHECK", "RESULT", "TIME", "DETAIL"]
    inbox_line = next(line for line in lines if line.split()[1] == "inbox")
    assert "4 messages, 2 unseen, oldest 2026-09-15 08:30:00Z" in inbox_line
    oversized_line = next(line for line in lines if line.split()[1] == "oversized")
    assert "2 oversized, largest 300000 bytes" in oversized_line
    junk_line = next(line for line in lines if line.split()[1] == "junk")
    assert "2 messages, oldest 2026-11-01 12:00:00Z" in junk_line


def test_empty_mailbox_has_no_oldest_message(make_mailbox, entra, dovecot, tmp_path, capsys):
    mailbox = make_mailbox("empty")
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    code, document = check_json(capsys, config)

    assert code == 0
    results = results_by_check(document, "empty")
    assert results["inbox"]["messages"] == 0
    assert results["inbox"]["oldest_message_timestamp_seconds"] is None
    assert results["oversized"]["oversized_messages"] == 0
    assert results["oversized"]["largest_bytes"] == 0


def test_metrics_show_every_core_metric(
    make_mailbox, entra, dovecot, tmp_path: Path, exporter_process
):
    mailbox = make_mailbox("servicedesk")
    expected = seed_standard(dovecot, mailbox.upn)
    config = write_config(tmp_path, entra, dovecot, [mailbox], oversized_bytes="100KB",
                          interval="2s")

    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="servicedesk")
    m = exporter.metrics()

    def v(name: str, **labels: str) -> float | None:
        return m.get((name, frozenset(labels.items())))

    box = {"mailbox": "servicedesk"}
    for check in CORE_CHECKS:
        labels = {**box, "check": check}
        assert v("o365_mailbox_check_success", **labels) == 1.0
        duration = v("o365_mailbox_check_duration_seconds", **labels)
        assert duration is not None and 0 < duration < 5
        last_run = v("o365_mailbox_check_last_run_timestamp_seconds", **labels)
        assert last_run is not None and abs(last_run - time.time()) < 30
        assert v("o365_mailbox_check_last_success_timestamp_seconds", **labels) is not None
    inbox = {**box, "folder": "inbox"}
    junk = {**box, "folder": "junk"}
    assert v("o365_mailbox_folder_messages", **inbox) == expected.inbox_messages
    assert v("o365_mailbox_folder_unseen_messages", **inbox) == expected.inbox_unseen
    oldest = "o365_mailbox_folder_oldest_message_timestamp_seconds"
    assert v(oldest, **inbox) == expected.inbox_oldest
    assert v("o365_mailbox_oversized_messages", **inbox) == expected.oversized_count
    assert v("o365_mailbox_oversized_largest_bytes", **inbox) == expected.oversized_largest
    assert v("o365_mailbox_oversized_threshold_bytes", **box) == expected.oversized_threshold
    assert v("o365_mailbox_folder_messages", **junk) == expected.junk_messages
    assert v(oldest, **junk) == expected.junk_oldest
    expiry = v("o365_mailbox_token_expiry_timestamp_seconds", **box)
    assert expiry is not None and abs(expiry - (time.time() + entra.access_token_lifetime)) < 30
    tls_expiry = v("o365_mailbox_tls_certificate_expiry_timestamp_seconds", **box, endpoint="imap")
    assert tls_expiry is not None and tls_expiry > time.time() + 86400
    assert v("o365_mailbox_folder_arrived_messages_total", **inbox) == 0.0
    build = [labels for name, labels in m if name == "o365_mailbox_exporter_build_info"]
    assert len(build) == 1
    build_labels = dict(build[0])
    assert build_labels["version"] == "0.1.0"
    assert build_labels["python_version"] == platform.python_version()
    assert build_labels["revision"] == subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    assert v("o365_mailbox_exporter_config_last_reload_successful") == 1.0
    reloaded = v("o365_mailbox_exporter_config_last_reload_success_timestamp_seconds")
    assert reloaded is not None and time.time() - 120 < reloaded <= time.time()
    assert v("o365_mailbox_check_interval_seconds", **box) == 2.0
    for check in ("token", "imap_login", "inbox", "oversized", "junk"):
        assert v("o365_mailbox_check_consecutive_failures", **box, check=check) == 0.0
    assert not any(name == "o365_mailbox_check_failures_total" for name, _ in m)

    status, page = exporter.get("/")
    assert status == 200
    assert "servicedesk" in page and "junk" in page
    assert exporter.get("/-/healthy")[0] == 200
    assert exporter.get("/-/ready")[0] == 200
    assert exporter.get("/nope")[0] == 404
