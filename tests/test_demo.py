"""The README's first command: the demo starts the sandbox, the exporter and Prometheus."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, free_port


def test_demo_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.demo", "--smoke", f"--workdir={tmp_path / 'demo'}",
         f"--port={free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "demo ok: Prometheus sees 2 mailboxes up"
