"""After a start or reload, first runs start at most about ten a second, in a stable order by
name: 1,000 mailboxes never sign in within the same few seconds (a burst of password grants
from one address is what Entra ID throttles). Later runs keep their phase."""

from __future__ import annotations

from tests.conftest import write_config

MAILBOXES = 25


def _token_starts(exporter, names: list[str]) -> dict[str, float]:
    starts = {}
    for name in names:
        ended = exporter.value("o365_mailbox_check_last_run_timestamp_seconds",
                               mailbox=name, check="token")
        took = exporter.value("o365_mailbox_check_duration_seconds", mailbox=name, check="token")
        assert ended is not None and took is not None, name
        starts[name] = ended - took
    return starts


def test_first_runs_are_spread_in_name_order(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    names = [f"box{i:02d}" for i in range(MAILBOXES)]
    mailboxes = [make_mailbox(name, checks=["token"]) for name in reversed(names)]
    config = write_config(tmp_path, entra, dovecot, mailboxes, interval="60s")
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox=names[-1], timeout=15)
    starts = _token_starts(exporter, names)

    # A stable order by name (the config lists them the other way round) ...
    assert sorted(names, key=starts.__getitem__) == names
    # ... at most about ten a second: 25 first runs take 2.4 s, not one burst.
    span = starts[names[-1]] - starts[names[0]]
    assert 2.2 <= span <= 4.0, span
    ordered = sorted(starts.values())
    most_in_a_second = max(
        sum(1 for t in ordered if first <= t < first + 1.0) for first in ordered
    )
    assert most_in_a_second <= 11, most_in_a_second
    print(f"\nfirst runs of {MAILBOXES} mailboxes over {span:.2f} s; "
          f"at most {most_in_a_second} in any second")
