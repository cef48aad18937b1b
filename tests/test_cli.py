"""Exit codes and output channels of the command line."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, run_cli, write_config


def test_config_check_valid_and_invalid(make_mailbox, entra, dovecot, tmp_path, capsys):
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("box")])
    code, _out, err = run_cli(capsys, "--config.check", f"--config.file={config}")
    assert code == 0
    assert "ok (1 mailboxes)" in err

    config.write_text(config.read_text().replace("interval: 60s", "interval: soon"))
    code, out, err = run_cli(capsys, "--config.check", f"--config.file={config}")
    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [
        f"{config}:3: defaults.interval: must be a duration like 30s, 5m or 1h"
    ]
    assert "Traceback" not in err


def test_bad_config_at_start_exits_2(tmp_path, capsys):
    missing = tmp_path / "absent.yml"
    code, _out, err = run_cli(capsys, f"--config.file={missing}")
    assert code == 2
    assert err.startswith(f"{missing}: cannot read")


def test_unknown_mailbox_is_a_usage_error(make_mailbox, entra, dovecot, tmp_path, capsys):
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("box")])
    code, _out, err = run_cli(capsys, "check", f"--config.file={config}", "--mailbox=nope")
    assert code == 2
    assert "no such mailbox (have: box)" in err


def test_check_json_writes_only_json_to_stdout(make_mailbox, entra, dovecot, tmp_path):
    mailbox = make_mailbox("box")
    mailbox.set_password_file("wrong")  # a failure: its log line goes to stderr
    config = write_config(tmp_path, entra, dovecot, [mailbox])

    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "check", f"--config.file={config}", "--output=json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )

    assert proc.returncode == 1
    document = json.loads(proc.stdout)
    assert document["success"] is False
    assert document["mailboxes"][0]["checks"][0]["code"] == "50126"


def test_usage_error_exits_2(capsys):
    code = None
    try:
        run_cli(capsys, "check", "--output=xml", "--config.file=x.yml")
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
