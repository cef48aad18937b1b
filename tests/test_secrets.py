"""A canary password and every token issued never appear in logs, metrics, the page or `check`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import run_cli, write_config
from tests.content import seed_standard


def _tokens_in_cache(state_dir: Path) -> list[str]:
    secrets: list[str] = []
    for path in (state_dir / "tokens").glob("*.json"):
        cache = json.loads(path.read_text())
        for kind in ("AccessToken", "RefreshToken", "IdToken"):
            secrets += [entry["secret"] for entry in cache.get(kind, {}).values()]
    return secrets


def test_canary_secrets_never_leak(make_mailbox, entra, dovecot, tmp_path, capsys,
                                   exporter_process):
    canary = "CANARY-Pa55word-7f3e9c1d"
    good = make_mailbox("good")
    entra.set_password(good.upn, canary)
    good.password = canary
    good.set_password_file(canary)
    seed_standard(dovecot, good.upn)
    bad = make_mailbox("bad")
    bad.set_password_file(canary + "-wrong")
    config = write_config(tmp_path, entra, dovecot, [good, bad], interval="1s")

    exporter = exporter_process(config, "--log.level=debug")
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="good")
    exporter.wait_for("o365_mailbox_up", 0.0, mailbox="bad")
    time.sleep(2.5)  # a few refreshes: rotated refresh tokens too
    outputs = {"metrics": exporter.get("/metrics")[1], "page": exporter.get("/")[1]}
    for fmt in ("table", "json"):
        _code, out, err = run_cli(capsys, "check", f"--config.file={config}", f"--output={fmt}",
                                  "--log.level=debug")
        outputs[f"check-{fmt}"] = out + err
    exporter.stop()
    outputs["log"] = exporter.log_path.read_text()

    secrets = [canary, *_tokens_in_cache(tmp_path / "state")]
    assert len(secrets) >= 4  # the password plus access, refresh and id tokens
    assert "check failed" in outputs["log"] and "50126" in outputs["log"]
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"
