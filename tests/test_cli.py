"""Exit codes and output channels of the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from exporter.cli import COMMAND_HELP, COMMANDS, main
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
        f"{config}:3: defaults.interval: 'soon' is not a duration (use 30s, 5m, 1h)"
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


def test_help_lists_every_command_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    listed = out.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == list(COMMANDS)
    assert COMMANDS == ("serve", "check", "login", "junk-review", "oversized", "doctor",
                        "import-esm")
    assert "  check        run every enabled check once and print the results with what to do" \
        in listed


@pytest.mark.parametrize("command", [c for c in COMMAND_HELP if c != "serve"])
def test_each_command_has_its_own_help_and_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith(f"usage: o365-mailbox-exporter {command} ")
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert examples and all(
        line.startswith(f"  o365-mailbox-exporter {command} ") for line in examples
    )


def test_check_help_shows_an_example_line(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    assert "\n  o365-mailbox-exporter check --config.file=config.yml\n" in out
    assert "Exit 0 when all passed, 1 when a check failed" in " ".join(out.split())


def test_a_typo_names_the_nearest_command(capsys):
    code, out, err = run_cli(capsys, "chek", "--config.file=x.yml")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "o365-mailbox-exporter: error: unknown command 'chek'; did you mean 'check'?",
        "Run `o365-mailbox-exporter --help` for the list of commands.",
    ]
    code, _out, err = run_cli(capsys, "junkreview")
    assert code == 2 and "did you mean 'junk-review'?" in err
    code, _out, err = run_cli(capsys, "frobnicate")
    assert code == 2
    assert err.splitlines()[0] == (
        "o365-mailbox-exporter: error: unknown command 'frobnicate'; commands: serve, check, "
        "login, junk-review, oversized, doctor, import-esm"
    )


def test_serve_is_still_the_default_and_can_be_named(make_mailbox, entra, dovecot, tmp_path,
                                                      capsys):
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("box")])
    for argv in (["--config.check", f"--config.file={config}"],
                 ["serve", "--config.check", f"--config.file={config}"]):
        code, _out, err = run_cli(capsys, *argv)
        assert code == 0 and "ok (1 mailboxes)" in err


def test_help_command(capsys):
    with pytest.raises(SystemExit):
        main(["help", "login"])
    assert capsys.readouterr().out.startswith("usage: o365-mailbox-exporter login ")
