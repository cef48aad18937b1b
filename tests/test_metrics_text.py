"""The cached text renderer: valid exposition, fresh values after each result, no stale series."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.checks import FolderMeasurement, TokenMeasurement
from exporter.collector import FAMILIES, MetricsText
from exporter.config import AuthConfig, Config, Endpoint, Folders, MailboxConfig
from exporter.failures import Failure
from exporter.results import CheckResult, ResultStore


def _mailbox(name: str) -> MailboxConfig:
    return MailboxConfig(
        name=name, username=f"{name}@contoso.com", tenant_id="contoso.com",
        client_id="46a662fb-0fed-4f72-a212-95216e5b0f28",
        auth=AuthConfig("password", password_env="PW"), scopes=(),
        authority_host="https://login.microsoftonline.com", imap=Endpoint("imap", 993),
        smtp=Endpoint("smtp", 587), ca_file=None, folders=Folders(),
        checks=("token", "imap_login", "inbox"), interval=60.0, timeout=30.0,
        oversized_bytes=1000,
    )


def _samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_render_is_valid_fresh_and_forgets_removed_mailboxes():
    store = ResultStore()
    config = Config(Path("c.yml"), Path("state"), (_mailbox("a"), _mailbox('b"q')))
    current = [config]
    text = MetricsText(store, lambda: current[0], lambda: True)

    store.record("a", CheckResult("token", True, 0.25, 1000.0, None, (TokenMeasurement(4600.0),)))
    store.record("a", CheckResult("imap_login", False, 1.5, 1001.0, Failure("timeout")))
    store.record('b"q', CheckResult("token", True, 0.1, 1000.0))
    first = _samples(text.render())

    assert first[("o365_mailbox_up", frozenset({("mailbox", "a")}))] == 0.0
    assert first[("o365_mailbox_token_expiry_timestamp_seconds",
                  frozenset({("mailbox", "a")}))] == 4600.0
    assert first[("o365_mailbox_check_failures_total", frozenset(
        {("mailbox", "a"), ("check", "imap_login"), ("reason", "timeout"), ("code", "")}))] == 1
    assert first[("o365_mailbox_check_success",
                  frozenset({("mailbox", 'b"q'), ("check", "token")}))] == 1.0  # escaped

    store.record("a", CheckResult("imap_login", True, 0.5, 1060.0))
    store.record("a", CheckResult("inbox", True, 0.1, 1061.0, None,
                                  (FolderMeasurement("inbox", 7, 2, 900.0),)))
    second = _samples(text.render())
    assert second[("o365_mailbox_up", frozenset({("mailbox", "a")}))] == 1.0
    assert second[("o365_mailbox_folder_messages",
                   frozenset({("mailbox", "a"), ("folder", "inbox")}))] == 7.0

    current[0] = dataclasses.replace(config, mailboxes=(_mailbox("a"),))
    third = text.render()
    assert b'mailbox="b\\"q"' not in third
    assert all(f"# TYPE {name}" in third.decode() for name in ("o365_mailbox_up",))
    assert len(list(text_string_to_metric_families(third.decode()))) == len(FAMILIES)


def test_consecutive_failures_count_failed_runs_in_a_row_and_go_with_their_check():
    store = ResultStore()
    config = Config(Path("c.yml"), Path("state"), (_mailbox("a"),))
    text = MetricsText(store, lambda: config, lambda: True, reload_success_time=lambda: 1234.5)
    labels = frozenset({("mailbox", "a"), ("check", "token")})
    for ended in (1000.0, 1060.0, 1120.0):
        store.record("a", CheckResult("token", False, 0.1, ended, Failure("timeout")))
    samples = _samples(text.render())
    assert samples[("o365_mailbox_check_consecutive_failures", labels)] == 3.0
    assert samples[("o365_mailbox_check_interval_seconds", frozenset({("mailbox", "a")}))] == 60.0
    reloaded = ("o365_mailbox_exporter_config_last_reload_success_timestamp_seconds", frozenset())
    assert samples[reloaded] == 1234.5
    store.record("a", CheckResult("token", True, 0.1, 1180.0))
    assert _samples(text.render())[("o365_mailbox_check_consecutive_failures", labels)] == 0.0
    store.record("a", CheckResult("token", False, 0.1, 1240.0, Failure("timeout")))
    assert _samples(text.render())[("o365_mailbox_check_consecutive_failures", labels)] == 1.0
    store.retain({"a"}, {"a": ("imap_login",)})
    assert ("o365_mailbox_check_consecutive_failures", labels) not in _samples(text.render())


def test_probe_only_mode_has_no_interval():
    store = ResultStore()
    config = Config(Path("c.yml"), Path("state"), (_mailbox("a"),))
    store.record("a", CheckResult("token", True, 0.1, 1000.0))
    samples = _samples(MetricsText(store, lambda: config, lambda: True, scheduled=False).render())
    assert not any(name == "o365_mailbox_check_interval_seconds" for name, _ in samples)


def test_each_metric_and_check_is_declared_in_one_place():
    """Measurements declare their own families; the collector lists them; the README documents
    every family; the config knows exactly the checks of the check table."""
    from exporter.checks import CHECKS
    from exporter.checks.measurements import MEASUREMENTS
    from exporter.collector import FAMILIES, exposed_name
    from exporter.config import check_table, default_checks

    declared = {f.name: f for kind in MEASUREMENTS for f in kind.FAMILIES}
    for name, family in declared.items():
        assert FAMILIES[name] == (family.kind, family.help, family.labels)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    undocumented = [name for name in FAMILIES if f"`{exposed_name(name)}`" not in readme]
    assert undocumented == []
    names, needs, default = check_table()
    assert names == tuple(CHECKS)
    assert needs == {n: s.needs for n, s in CHECKS.items() if s.needs}
    assert default_checks() == default == ("token", "imap_login", "inbox", "oversized", "junk")
