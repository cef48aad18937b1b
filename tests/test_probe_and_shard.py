"""Scale-out on Prometheus' terms: /probe (multi-target mode) and --shard=I/N."""

from __future__ import annotations

import time
import urllib.request

import pytest
import yaml

from exporter.service import Shard
from tests.conftest import free_port, write_config
from tests.helpers_prometheus import Server
from tests.test_failure_reasons import hung_server  # noqa: F401 - fixture


def _probe(
    exporter, mailbox: str, timeout_header: str | None = None, param: str = "mailbox"
) -> tuple[int, str, float]:
    request = urllib.request.Request(f"{exporter.url}/probe?{param}={mailbox}")
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
    status, body, _elapsed = _probe(exporter, "second", "5", param="target")
    assert status == 200 and 'o365_mailbox_up{mailbox="second"} 1.0' in body


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


def test_shard_agrees_with_prometheus_hashmod(tmp_path):
    """A real Prometheus keeps, with `hashmod` on the mailbox name for replica I, exactly the
    mailboxes that --shard=I/3 owns (so the two scale-out modes can share a layout)."""
    names = [f"mailbox-{i}" for i in range(24)]
    config = {
        "scrape_configs": [
            {
                "job_name": f"replica-{index}",
                "scrape_interval": "1h",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{i + 1}"], "labels": {"mailbox": name}}
                    for i, name in enumerate(names)
                ],
                "relabel_configs": [
                    {"source_labels": ["mailbox"], "modulus": 3, "target_label": "__tmp_shard",
                     "action": "hashmod"},
                    {"source_labels": ["__tmp_shard"], "regex": str(index), "action": "keep"},
                ],
            }
            for index in range(3)
        ]
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = Server(
        "prometheus",
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        f"http://127.0.0.1:{port}",
        tmp_path / "prometheus.log",
    )
    try:
        server.wait_ready()
        kept: dict[int, list[str]] = {}
        end = time.monotonic() + 20
        while time.monotonic() < end:
            active = server.get_json("/api/v1/targets", state="active")["data"]["activeTargets"]
            kept = {}
            for target in active:
                index = int(target["labels"]["job"].rsplit("-", 1)[1])
                kept.setdefault(index, []).append(target["labels"]["mailbox"])
            if sum(len(v) for v in kept.values()) == len(names):
                break
            time.sleep(0.2)
    finally:
        server.stop()
    for index in range(3):
        assert sorted(kept.get(index, [])) == sorted(n for n in names if Shard(index, 3).owns(n))


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


def test_probe_runs_take_a_concurrency_slot(make_mailbox, entra, dovecot, ca, tmp_path):
    """/probe runs count against --checks.max-concurrency: with one slot held by a hung run,
    a second mailbox's probe does not open a second IMAP session; it gives up at its
    deadline, and runs once the slot is free."""
    import threading

    from exporter.config import load_config
    from exporter.results import ResultStore
    from exporter.scheduler import Scheduler
    from tests.content import seed_standard
    from tests.faults.imap_proxy import ImapFaultProxy

    proxy = ImapFaultProxy(ca, "127.0.0.1", dovecot.port).start()
    try:
        imap = {"host": "127.0.0.1", "port": proxy.port}
        hung, other = make_mailbox("hung", imap=imap), make_mailbox("other", imap=imap)
        seed_standard(dovecot, hung.upn)  # messages, so that the inbox check FETCHes
        config = load_config(write_config(tmp_path, entra, dovecot, [hung, other],
                                          interval="60s", timeout="3s"))
        store = ResultStore()
        scheduler = Scheduler(store, max_concurrency=1, scheduled=False)
        scheduler.apply(config)
        proxy.set_fault("hang", command="FETCH")
        first = threading.Thread(
            target=scheduler.run_now, args=("hung", time.monotonic() + 20), daemon=True
        )
        first.start()
        end = time.monotonic() + 10
        while time.monotonic() < end and proxy.accepted < 1:
            time.sleep(0.02)
        assert proxy.accepted == 1

        started = time.monotonic()
        assert scheduler.run_now("other", started + 1.0) is True
        assert time.monotonic() - started < 1.5
        assert proxy.accepted == 1  # no second session while the slot was taken
        assert store.snapshot_of("other") is None

        first.join(10)
        proxy.set_fault("pass")
        assert scheduler.run_now("other", time.monotonic() + 10) is True
        latest = store.latest("other", "imap_login")
        assert latest is not None and latest.success
        scheduler.stop()
    finally:
        proxy.stop()
