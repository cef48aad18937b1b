"""A real Prometheus and Alertmanager on loopback, for the end-to-end test and the demo.

* `start_prometheus(workdir, scrape_targets, rule_files, alertmanager_url=None, port=None)`
  runs `prometheus` scraping the targets as job ``o365-mailbox-exporter`` (the job the rules
  select) every second, evaluating the rules every second.
* `start_alertmanager(workdir, webhook_url, port=None)` runs `prometheus-alertmanager` routing
  ``severity="critical"`` to the webhook (everything else to a receiver that drops it), with
  one-second group timers.
* `WebhookReceiver` is the pager: an HTTP server that records Alertmanager's notifications.
* `rules_for_quick_test(dest)` writes a copy of the alert rules with every `for:` shortened.
* `dashboard_queries(dashboard)` lists every panel's PromQL; `grafana_to_promql(expr, ...)`
  substitutes Grafana's variables as Grafana does (`grafana_regex` for the multi-value ones)
  so Prometheus can run it; `variable_values(prometheus, definition)` answers a
  `label_values(selector, label)` variable query as Grafana asks Prometheus for it.

Both servers log to a file in their workdir; `stop()` ends only the process it started.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "alerts" / "o365-mailbox.rules.yml"
DASHBOARD_FILE = ROOT / "dashboards" / "o365-mailbox.json"
ADMIN_DASHBOARD_FILE = ROOT / "dashboards" / "o365-mailbox-admin.json"
DASHBOARD_FILES = (DASHBOARD_FILE, ADMIN_DASHBOARD_FILE)
JOB = "o365-mailbox-exporter"  # the scrape job the rules select
PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"  # Debian's name for the alertmanager binary

_FOR_RE = re.compile(r"^(\s*)for:\s*\S+\s*$", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shorten_for(rules_text: str, duration: str = "2s") -> str:
    """The rules with every `for:` set to `duration` (the thresholds in the expressions stay)."""
    return _FOR_RE.sub(lambda m: f"{m.group(1)}for: {duration}", rules_text)


def rules_for_quick_test(dest: Path, duration: str = "2s", source: Path = RULES_FILE) -> Path:
    """Write a copy of the alert rules with `for:` shortened to `duration`; returns its path."""
    dest.write_text(shorten_for(source.read_text(), duration))
    return dest


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s; waits for the process either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """A process serving HTTP on a loopback port, started by us."""

    def __init__(self, name: str, argv: list[str], url: str, log_path: Path) -> None:
        self.name = name
        self.url = url
        self.log_path = log_path
        self._log = log_path.open("w")
        try:
            self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        except OSError:
            self._log.close()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = self.get(path + ("?" + query if query else ""))
        if status != 200:
            raise AssertionError(f"{self.name} {path} {params}: HTTP {status}: {body[:500]!r}")
        return json.loads(body)

    def wait_ready(self, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.get("/-/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready after {deadline}s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class Prometheus(Server):
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; returns the result vector (a list of {metric, value})."""
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        document = self.get_json("/api/v1/query", **params)
        data = document["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(
        self, expr: str, start: float, end: float, step: str = "1s"
    ) -> list[dict[str, Any]]:
        document = self.get_json(
            "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step
        )
        return list(document["data"]["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        document = self.get_json(f"/api/v1/label/{label}/values", **{"match[]": match})
        return list(document["data"])

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' active alerts (pending and firing)."""
        return list(self.get_json("/api/v1/alerts")["data"]["alerts"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v1/rules")["data"]["groups"])

    def wait_for(
        self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 20.0,
    ) -> list[dict[str, Any]]:
        """Poll an instant query until `predicate(result)` holds (default: any result)."""
        end = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < end:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.1)
        raise AssertionError(f"{expr}: {result} after {timeout}s")


class Alertmanager(Server):
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v2/alerts"))


def _host_port(target: str) -> str:
    """`host:port`, also from a URL such as the exporter fixture's `http://127.0.0.1:PORT`."""
    return urllib.parse.urlsplit(target).netloc if "://" in target else target


def prometheus_config(
    scrape_targets: Iterable[str],
    rule_files: Iterable[Path],
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    job: str = JOB,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [_host_port(target) for target in scrape_targets]}
                ],
            }
        ],
    }
    if alertmanager_url:
        config["alerting"] = {
            "alertmanagers": [
                {"static_configs": [{"targets": [urllib.parse.urlsplit(alertmanager_url).netloc]}]}
            ]
        }
    return config


def start_prometheus(
    workdir: Path,
    scrape_targets: Iterable[str],
    rule_files: Iterable[Path],
    alertmanager_url: str | None = None,
    port: int | None = None,
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    wait: bool = True,
) -> Prometheus:
    """Start Prometheus on 127.0.0.1 with its TSDB in `workdir`.

    `scrape_targets` are `host:port` (or URLs); they form job ``o365-mailbox-exporter``.
    With `wait` (the default) this returns once Prometheus is ready; its first sample comes
    about 5.5 s after start, so poll (`wait_for`) rather than sleep.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            prometheus_config(
                scrape_targets, rule_files, alertmanager_url, scrape_interval, evaluation_interval
            ),
            sort_keys=False,
        )
    )
    url = f"http://127.0.0.1:{port}"
    server = Prometheus(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url={url}",
        ],
        url,
        workdir / "prometheus.log",
    )
    if wait:
        try:
            server.wait_ready()
        except AssertionError:
            server.stop()
            raise
    return server


def alertmanager_config(
    webhook_url: str,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "drop",
            "group_by": ["alertname", "mailbox"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
            "routes": [{"matchers": ['severity="critical"'], "receiver": "pager"}],
        },
        "receivers": [
            {"name": "drop"},
            {"name": "pager", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]},
        ],
    }


def start_alertmanager(
    workdir: Path,
    webhook_url: str,
    port: int | None = None,
    *,
    wait: bool = True,
    **timers: str,
) -> Alertmanager:
    """Start Alertmanager on 127.0.0.1 (no clustering) paging `severity="critical"` alerts to
    `webhook_url`; `timers` may override group_wait, group_interval, repeat_interval."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = workdir / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(webhook_url, **timers), sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    server = Alertmanager(
        "alertmanager",
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url={url}",
            "--cluster.listen-address=",  # no gossip on 0.0.0.0:9094
        ],
        url,
        workdir / "alertmanager.log",
    )
    if wait:
        try:
            server.wait_ready()
        except AssertionError:
            server.stop()
            raise
    return server


class WebhookReceiver:
    """Alertmanager's webhook target: records each notification with its arrival time."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.notifications: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                document = json.loads(self.rfile.read(length) or b"{}")
                with receiver._cond:
                    receiver.notifications.append((time.monotonic(), document))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self) -> Iterator[tuple[float, dict[str, Any]]]:
        """Every alert of every notification so far, with the notification's arrival time."""
        with self._cond:
            notifications = list(self.notifications)
        for arrived, document in notifications:
            for alert in document.get("alerts", []):
                yield arrived, alert

    def wait_for_alert(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> tuple[float, dict[str, Any]]:
        """The first alert (with its arrival time) for which `predicate` holds."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for arrived, document in self.notifications:
                    for alert in document.get("alerts", []):
                        if predicate(alert):
                            return arrived, alert
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no matching alert within {timeout}s; got {self.notifications}"
                    )
                self._cond.wait(left)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- dashboards -------------------------------------------------------------------------------

def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def grafana_regex(values: Iterable[str]) -> str:
    """A multi-value variable's selection as Grafana puts it into a `=~"..."` matcher: each
    value's regex metacharacters escaped (with a doubled backslash, as PromQL strings need),
    more than one joined as `(a|b)`."""
    escaped = [re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", v.replace("\\", "\\\\\\\\"))
               for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def grafana_to_promql(
    expr: str,
    mailbox: str = ".*",
    interval: str = "1m",
    range_: str = "1m",
    *,
    job: str = ".*",
    instance: str = ".*",
) -> str:
    """Replace Grafana's variables so Prometheus can run the expression (`job`, `instance`
    and `mailbox` as the regex Grafana would put there, e.g. from `grafana_regex`)."""
    replacements = {
        "job": job,
        "instance": instance,
        "mailbox": mailbox,
        "__rate_interval": interval,
        "__interval": interval,
        "__range": range_,
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in replacements:
            raise KeyError(f"unknown Grafana variable ${name} in {expr}")
        return replacements[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", substitute, expr)


_LABEL_VALUES_RE = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


def variable_values(prometheus: Prometheus, definition: str, **variables: str) -> list[str]:
    """The values Grafana lists for a `label_values(selector, label)` query variable: it asks
    Prometheus' /api/v1/label/LABEL/values with the selector (its variables substituted)."""
    match = _LABEL_VALUES_RE.match(definition)
    if not match:
        raise ValueError(f"not a label_values() query: {definition}")
    selector, label = match.groups()
    return sorted(prometheus.label_values(label, grafana_to_promql(selector, **variables)))
