"""A hint is a command you can paste: every command that `check` (table and JSON), `doctor`, a
log line or the landing page suggests carries the --config.file and --mailbox in use."""

from __future__ import annotations

import json
import shutil

from exporter.failures import command_line, pasteable
from tests.conftest import check_json, results_by_check, run_cli, write_config


def _not_signed_in(make_mailbox, entra, dovecot, tmp_path):
    """A device-code mailbox nobody has signed in yet: its hint sends the admin to `login`."""
    mailbox = make_mailbox("mfa")
    mailbox.settings["auth"] = {"flow": "device_code"}
    return write_config(tmp_path, entra, dovecot, [mailbox])


def test_check_table_and_json_carry_the_config_file(make_mailbox, entra, dovecot, tmp_path, capsys):
    config = _not_signed_in(make_mailbox, entra, dovecot, tmp_path)
    login = f"o365-mailbox-exporter login --config.file={config} --mailbox mfa"

    code, out, _err = run_cli(capsys, "check", f"--config.file={config}")

    assert code == 1
    what_to_do = out.split("What to do:\n", 1)[1].splitlines()
    assert what_to_do == [f"  mfa/token: Run `{login}` to sign in with a device code."]

    code, document = check_json(capsys, config)
    assert results_by_check(document, "mfa")["token"]["hint"] == (
        f"Run `{login}` to sign in with a device code."
    )


def test_admin_commands_failure_hints_carry_the_config_file(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    config = _not_signed_in(make_mailbox, entra, dovecot, tmp_path)
    login = f"o365-mailbox-exporter login --config.file={config} --mailbox mfa"
    for command in ("junk-review", "oversized"):
        code, _out, err = run_cli(capsys, command, f"--config.file={config}", "--mailbox=mfa")
        assert code == 1
        assert f"hint: Run `{login}` to sign in with a device code." in err, err


def test_a_relative_config_path_becomes_absolute(
    make_mailbox, entra, dovecot, tmp_path, capsys, monkeypatch
):
    _not_signed_in(make_mailbox, entra, dovecot, tmp_path)
    monkeypatch.chdir(tmp_path)

    _code, document = check_json(capsys, "config.yml")  # as typed in the config's directory

    assert results_by_check(document, "mfa")["token"]["hint"] == (
        f"Run `o365-mailbox-exporter login --config.file={tmp_path}/config.yml --mailbox mfa` "
        "to sign in with a device code."
    )


def test_doctor_fix_carries_the_config_file(make_mailbox, entra, dovecot, tmp_path, capsys):
    config = _not_signed_in(make_mailbox, entra, dovecot, tmp_path)

    code, out, _err = run_cli(
        capsys, "doctor", f"--config.file={config}", "--mailbox=mfa", "--output=json"
    )

    assert code == 1
    (broken,) = [step for step in json.loads(out)["steps"] if step["status"] == "fail"]
    assert broken["fix"] == (
        f"Run `o365-mailbox-exporter login --config.file={config} --mailbox mfa` to sign in "
        "with a device code."
    )
    code, out, _err = run_cli(capsys, "doctor", f"--config.file={config}", "--mailbox=mfa")
    assert f"Fix: Run `o365-mailbox-exporter login --config.file={config} --mailbox mfa`" in out


def test_landing_page_and_log_line_carry_the_config_file(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    directory = tmp_path / "etc o365"  # a path that needs quoting in a shell
    directory.mkdir()
    config = _not_signed_in(make_mailbox, entra, dovecot, tmp_path)
    config = shutil.move(config, directory / "config.yml")
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_check_success", 0.0, mailbox="mfa", check="token")

    _status, page = exporter.get("/")

    login = (
        f"o365-mailbox-exporter login --config.file=&#x27;{directory}/config.yml&#x27; "
        "--mailbox mfa"
    )
    assert f"<td>Run `{login}` to sign in with a device code.</td>" in page
    log = exporter.log_path.read_text()
    assert (
        f"o365-mailbox-exporter login --config.file='{directory}/config.yml' --mailbox mfa"
        in log.replace('\\"', '"')
    )


def test_pasteable_completes_each_command_once():
    hint = (
        "run `o365-mailbox-exporter check --log.level=debug`, then "
        "`o365-mailbox-exporter login`; not `import-esm`"
    )

    pasted = pasteable(hint, "/etc/o365/config.yml", "servicedesk")

    assert pasted == (
        "run `o365-mailbox-exporter check --config.file=/etc/o365/config.yml --mailbox "
        "servicedesk --log.level=debug`, then `o365-mailbox-exporter login "
        "--config.file=/etc/o365/config.yml --mailbox servicedesk`; not `import-esm`"
    )
    assert pasteable(pasted, "/other.yml", "other") == pasted
    assert command_line("import-esm", "/etc/o365/config.yml", "x") == (
        "o365-mailbox-exporter import-esm"
    )
