"""Write prometheusrule.yaml: the rule groups of alerts/*.rules.yml wrapped in a PrometheusRule.

    python deploy/kubernetes/render_prometheusrule.py          # rewrite the file
    python deploy/kubernetes/render_prometheusrule.py --check  # exit 1 if it is out of date

alerts/ stays the single source of the rules (promtool-tested there); tests/test_deploy.py
fails when the two drift apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RULES = sorted((ROOT / "alerts").glob("*.rules.yml"))
OUTPUT = HERE / "sharded" / "prometheusrule.yaml"
HEADER = """\
# Generated from alerts/*.rules.yml by deploy/kubernetes/render_prometheusrule.py: do not edit
# here. The rules select job="o365-mailbox-exporter", the job label the ServiceMonitor gives.
# Your Prometheus' ruleSelector may want another label on this object (e.g. `release: ...`).
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in RULES:
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def render() -> str:
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "o365-mailbox-exporter",
            "labels": {"app.kubernetes.io/name": "o365-mailbox-exporter"},
        },
        "spec": {"groups": rule_groups()},
    }
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)  # noqa: T201
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
