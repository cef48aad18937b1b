"""Scale-out on Prometheus' terms: /probe (multi-target mode) and --shard=I/N."""

from __future__ import annotations

import time
import urllib.request

import pytest

from exporter.service import Shard
from tests.conftest import write_config
from tests.test_failure_reasons import hung_server  # noqa: F401 - fixture


def _probe(exporter, mailbox: str, timeout_header: str | None = None) -> tuple[int, str, float]:
    request = urllib.request.Request(f"{exporter.url}/probe?mailbox={mailbox}")
    if timeout_header is not None:
        request.add_header("X-Prometheus-Scrape-Timeout-Seconds", timeout_header)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), time.monotonic() - started


def test_probe_runs_one_mailbox_now_and_returns_just_its_metrics(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    first, second = make_mailbox("first"), make_mailbox("second")
    config = write_config(tmp_path, entra, dovecot, [first, second], interval="1s")
    exporter = exporter_process(config, "--probe.only")
    time.sleep(1.5)
    assert exporter.value("o365_mailbox_up", mailbox="first") is None  # no schedule ran
    assert entra.attempts(username=first.upn) == 0

    status, body, _elapsed = _probe(exporter, "first", "5")

    assert status == 200
    assert 'o365_mailbox_up{mailbox="first"} 1.0' in body
    assert 'o365_mailbox_check_success{check="inbox",mailbox="first"} 1.0' in body
    assert 'mailbox="second"' not in body
    assert "o365_mailbox_exporter_build_info" not in body
    assert entra.attempts(username=first.upn) == 1
    _probe(exporter, "first", "5")
    assert entra.attempts(username=first.upn) == 2  # every probe is a real refresh
    assert exporter.value("o365_mailbox_up", mailbox="first") == 1.0  # also on /metrics
    assert _probe(exporter, "nobody", "5")[0] == 400


def test_probe_answers_within_the_scrape_timeout(
    make_mailbox, entra, dovecot, tmp_path, exporter_process, hung_server  # noqa: F811
):
    stuck = make_mailbox("stuck", imap={"host": "127.0.0.1", "port": hung_server})
    config = write_config(tmp_path, entra, dovecot, [stuck], timeout="20s")
    exporter = exporter_process(config, "--probe.only")

    status, body, elapsed = _probe(exporter, "stuck", "2")

    assert status == 200
    assert elapsed < 2.0
    assert 'o365_mailbox_check_failures_total{check="imap_login",code="",mailbox="stuck",' \
        'reason="timeout"} 1.0' in body


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_cover_every_mailbox_exactly_once(count):
    names = [f"mailbox-{i}" for i in range(500)]
    owners = {name: [i for i in range(count) if Shard(i, count).owns(name)] for name in names}
    assert all(len(found) == 1 for found in owners.values())
    sizes = [sum(1 for found in owners.values() if found == [i]) for i in range(count)]
    assert min(sizes) > 500 / count * 0.7  # spread, not lumped


def test_shard_flag_is_validated(capsys):
    from exporter.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--config.file=x.yml", "--shard=3/3"])
    assert exit_.value.code == 2
    assert "must be I/N with 0 <= I < N" in capsys.readouterr().err


def test_replicas_run_and_cache_only_their_own_mailboxes(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    mailboxes = [make_mailbox(f"m{i}") for i in range(6)]
    seen: dict[str, int] = {}
    for index in range(3):
        state = tmp_path / f"replica-{index}"
        config = write_config(tmp_path, entra, dovecot, mailboxes, interval="1s")
        config.write_text(config.read_text().replace(str(tmp_path / "state"), str(state)))
        exporter = exporter_process(config, f"--shard={index}/3")
        owned = [m.name for m in mailboxes if Shard(index, 3).owns(m.name)]
        for name in owned:
            exporter.wait_for("o365_mailbox_up", 1.0, mailbox=name)
        ups = {dict(labels)["mailbox"] for name, labels in exporter.metrics()
               if name == "o365_mailbox_up"}
        exporter.stop()
        assert ups == set(owned)
        assert sorted(p.stem for p in (state / "tokens").glob("*.json")) == sorted(owned)
        for name in owned:
            seen[name] = seen.get(name, 0) + 1
    assert seen == {m.name: 1 for m in mailboxes}
