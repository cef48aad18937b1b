"""The exporter warns, once at start-up, when a file in state_dir belongs to another user.

The case it is for: the service runs as its own user, and an admin ran `login`, `check` or
`junk-review --ack` as root. The token cache, its lock file, the backoff record and the review
record it wrote are 0600 root files the service cannot read. The warning names the path, its
owner, the exporter's uid and the `chown` that hands the files back (docs/deployment.md).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
from pathlib import Path

import pytest

from exporter.config import Config
from exporter.logs import JsonFormatter, LogfmtFormatter
from exporter.service import Service
from exporter.statefile import foreign_owned, warn_foreign_owned

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")

NOBODY = pwd.getpwnam("nobody").pw_uid


def state_dir_with_tokens(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    (state / "tokens").mkdir(parents=True, mode=0o700)
    for name in ("servicedesk.json", "servicedesk.json.lock", "sales.json"):
        path = state / "tokens" / name
        path.write_text("{}")
        path.chmod(0o600)
    return state


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "exporter.statefile" and r.levelno == logging.WARNING
    ]


def test_a_file_of_another_user_is_named_with_owner_uid_and_chown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = state_dir_with_tokens(tmp_path)
    cache = state / "tokens" / "servicedesk.json"
    os.chown(cache, NOBODY, NOBODY)

    with caplog.at_level(logging.WARNING):
        found = warn_foreign_owned(state)

    assert [f.path for f in found] == [cache]
    (record,) = warnings(caplog)
    fields = vars(record)
    assert fields["path"] == str(cache)
    assert fields["owner"] == f"nobody (uid {NOBODY})"
    assert fields["exporter_uid"] == "root (uid 0)"
    assert fields["count"] == 1
    assert fields["fix"] == f"chown -R 0:0 {state}"
    # As an operator reads it in the journal (logfmt, through the secret scrubber).
    line = LogfmtFormatter().format(record)
    assert (
        f"{cache} belongs to nobody (uid {NOBODY}), but the exporter runs as root (uid 0)" in line
    )
    assert f'fix="chown -R 0:0 {state}"' in line
    assert json.loads(JsonFormatter().format(record))["path"] == str(cache)


def test_every_kind_of_state_file_and_directory_is_looked_at(tmp_path: Path) -> None:
    state = state_dir_with_tokens(tmp_path)
    for sub, name in [("backoff", "servicedesk.json"), ("review", "servicedesk.json")]:
        (state / sub).mkdir(mode=0o700)
        (state / sub / name).write_text("{}")
    lock = state / "tokens" / "servicedesk.json.lock"
    review_dir = state / "review"
    backoff = state / "backoff" / "servicedesk.json"
    for path in (lock, review_dir, backoff):
        os.chown(path, NOBODY, NOBODY)
    found = {f.path: f.owner_uid for f in foreign_owned(state)}
    assert found == {lock: NOBODY, review_dir: NOBODY, backoff: NOBODY}


def test_nothing_is_said_when_everything_is_the_processs_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = state_dir_with_tokens(tmp_path)
    (tmp_path / "missing").mkdir()
    with caplog.at_level(logging.WARNING):
        assert warn_foreign_owned(state) == []
        assert warn_foreign_owned(tmp_path / "missing" / "state") == []  # not created yet
    assert warnings(caplog) == []


def test_a_symlinked_state_dir_is_followed_once(tmp_path: Path) -> None:
    """systemd's DynamicUser= makes /var/lib/NAME a root-owned symlink into
    /var/lib/private/NAME: the link is not the state, its target is."""
    state = state_dir_with_tokens(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(state)
    os.lchown(link, NOBODY, NOBODY)
    assert foreign_owned(link) == []
    os.chown(state / "tokens" / "sales.json", NOBODY, NOBODY)
    (found,) = foreign_owned(link)
    assert found.path == state / "tokens" / "sales.json"


def test_the_service_warns_once_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = state_dir_with_tokens(tmp_path)
    os.chown(state / "tokens" / "sales.json", NOBODY, NOBODY)
    config = Config(path=tmp_path / "config.yml", state_dir=state, mailboxes=())
    service = Service(tmp_path / "config.yml")
    with caplog.at_level(logging.WARNING):
        service.start(config)
        service.stop()
    (record,) = warnings(caplog)
    assert vars(record)["path"] == str(state / "tokens" / "sales.json")
