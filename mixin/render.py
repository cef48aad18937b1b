"""Render every committed file that comes from mixin/config.yml.

    python -m mixin.render                       # rewrite the committed files
    python -m mixin.render --check               # exit 1 if one differs from what it renders
    python -m mixin.render --job NAME --out DIR  # the same files for your own job, into DIR
    python -m mixin.render --config my.yml --out DIR

Each render step takes the config and returns {path relative to the repository: text}; add a
step to STEPS to render more.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from mixin import dashboards, rules

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "config.yml"

RenderStep = Callable[[rules.Config], dict[Path, str]]
STEPS: list[RenderStep] = [
    rules.render_files,  # alerts/*.rules.yml and the Kubernetes PrometheusRules
    dashboards.render_files,  # dashboards/o365-mailbox.json, dashboards/o365-mailbox-admin.json
]


def render_all(config: rules.Config) -> dict[Path, str]:
    files: dict[Path, str] = {}
    for step in STEPS:
        files.update(step(config))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    parser.add_argument("--config", type=Path, default=CONFIG, help="default: mixin/config.yml")
    parser.add_argument("--job", help="the scrape job of the mailbox metrics (overrides config)")
    parser.add_argument("--self-job", help="probe mode: the job of the exporters' own /metrics")
    parser.add_argument("--out", type=Path, default=ROOT, help="write under DIR (default: repo)")
    args = parser.parse_args(argv)
    config = rules.load_config(args.config)
    if args.job:
        self_job = args.self_job or f"{args.job}-self"
        config = dataclasses.replace(config, job=args.job, probe_self_job=self_job)
    elif args.self_job:
        config = dataclasses.replace(config, probe_self_job=args.self_job)
    files = render_all(config)
    stale = []
    for relative, text in sorted(files.items()):
        path = args.out / relative
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(relative))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        sys.stderr.write("out of date (run `python -m mixin.render`): " + ", ".join(stale) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
