"""The token cache survives damage: a torn or corrupt file is set aside, never a crash."""

from __future__ import annotations

from tests.conftest import check_json, write_config


def test_corrupt_token_cache_is_set_aside_and_sign_in_recovers(
    make_mailbox, entra, dovecot, tmp_path, capsys
):
    mailbox = make_mailbox("box")
    config = write_config(tmp_path, entra, dovecot, [mailbox])
    assert check_json(capsys, config)[0] == 0
    cache = tmp_path / "state" / "tokens" / "box.json"
    cache.write_text(cache.read_text()[:40])  # torn, as by a crash of a non-atomic writer

    code, document = check_json(capsys, config)

    assert code == 0, document
    assert entra.attempts(username=mailbox.upn, grant_type="password") == 2  # fell back once
    aside = list(cache.parent.glob("box.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o600
    assert '"RefreshToken"' in cache.read_text()
