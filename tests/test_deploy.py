"""The deployment files in deploy/ are valid and agree with each other and with the exporter.

Kubernetes objects: every YAML parses; the core kinds validate against the Kubernetes JSON
schemas (strict: unknown fields fail) when `kubernetes-validate` is installed, and the Prometheus
Operator kinds against the field lists of their CRDs (v0.80); cross-references (selectors and
labels, volumes and mounts, Secret keys and secret files, the Service and the ServiceMonitor,
replicas and the shard count) are checked here; `kubectl kustomize` builds both variants when
kubectl is installed. Each PrometheusRule's groups equal its variant in alerts/ (both rendered
by `python -m mixin.render`). The systemd unit passes
`systemd-analyze verify` and `security --offline`; the container file and every command line
name the console script and parse with the exporter's own argument parser.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SHARDED = K8S / "sharded"
PROBE = K8S / "probe-mode"
UNIT = DEPLOY / "systemd" / "o365-mailbox-exporter.service"
CONTAINERFILE = DEPLOY / "Containerfile"
PROBE_SCRAPE = DEPLOY / "prometheus" / "probe-mode.yml"
CONSOLE_SCRIPT = "o365-mailbox-exporter"
NAME = "o365-mailbox-exporter"
PORT = 9865


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    return load_all(directory / "kustomization.yaml")[0]


def objects(directory: Path) -> list[dict[str, Any]]:
    """The Kubernetes objects a kustomization lists (its own files, not its bases)."""
    found = []
    for entry in kustomization(directory)["resources"]:
        path = directory / entry
        if path.is_file():
            found.extend(load_all(path))
    return found


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="module")
def sharded() -> dict[str, dict[str, Any]]:
    return by_kind(objects(SHARDED))


@pytest.fixture(scope="module")
def statefulset(sharded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return sharded["StatefulSet"]


def pod_spec(statefulset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = statefulset["spec"]["template"]["spec"]
    return spec


def container(statefulset: dict[str, Any], name: str = "exporter") -> dict[str, Any]:
    return next(c for c in pod_spec(statefulset)["containers"] if c["name"] == name)


def serve_args(argv: list[str]) -> Any:
    """Parse a command line the way the exporter does (SystemExit 2 on an unknown flag)."""
    assert Path(argv[0]).name == CONSOLE_SCRIPT, argv
    return build_parser("serve").parse_args(argv[1:])


# -- every file parses -------------------------------------------------------------------------
def test_every_yaml_file_parses_and_every_object_is_named() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 10
    for path in files:
        for doc in load_all(path):
            assert isinstance(doc, dict), path
            if "kind" in doc and doc["kind"] != "Kustomization":
                assert doc.get("apiVersion"), path
                assert doc.get("metadata", {}).get("name"), path


@pytest.mark.parametrize("directory", [SHARDED, PROBE], ids=["sharded", "probe-mode"])
def test_kustomization_lists_existing_files(directory: Path) -> None:
    spec = kustomization(directory)
    listed = {directory / entry for entry in spec["resources"]}
    listed |= {directory / patch["path"] for patch in spec.get("patches", [])}
    for path in listed:
        assert path.exists(), f"{directory.name}/kustomization.yaml names missing {path}"
    present = {p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert present <= listed, f"not in kustomization.yaml: {sorted(present - listed)}"


# -- schemas -----------------------------------------------------------------------------------
CORE_KINDS = {"ConfigMap", "Secret", "Service", "StatefulSet"}


def test_core_objects_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate as validate  # test extra: pip install -e '.[test]'

    docs = objects(SHARDED) + objects(PROBE)
    checked = 0
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            validate.validate(doc, "1.29.0", strict=True)
            checked += 1
    # A patch is a partial object; as merged it is checked by the kustomize test below.
    assert checked == len(CORE_KINDS)


# Field names of the Prometheus Operator CRDs (v0.80) for the parts these files use: an unknown
# key is a typo the operator would reject (or, worse, ignore).
SERVICE_MONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "endpoints", "fallbackScrapeProtocol", "jobLabel",
    "keepDroppedTargets", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "namespaceSelector", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "podTargetLabels", "sampleLimit", "scrapeClass", "scrapeClassicHistograms",
    "scrapeProtocols", "selector", "selectorMechanism", "targetLabels", "targetLimit",
}  # fmt: skip
ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
    "filterRunning", "followRedirects", "honorLabels", "honorTimestamps", "interval",
    "metricRelabelings", "oauth2", "params", "path", "port", "proxyUrl", "relabelings",
    "scheme", "scrapeTimeout", "targetPort", "tlsConfig", "trackTimestampsStaleness",
}  # fmt: skip
SCRAPE_CONFIG_SPEC = {
    "authorization", "basicAuth", "enableCompression", "enableHTTP2", "fallbackScrapeProtocol",
    "fileSDConfigs", "honorLabels", "honorTimestamps", "httpSDConfigs", "jobName",
    "keepDroppedTargets", "kubernetesSDConfigs", "labelLimit", "labelNameLengthLimit",
    "labelValueLengthLimit", "metricRelabelings", "metricsPath", "noProxy", "oauth2", "params",
    "proxyUrl", "relabelings", "sampleLimit", "scheme", "scrapeClass", "scrapeInterval",
    "scrapeProtocols", "scrapeTimeout", "staticConfigs", "targetLimit", "tlsConfig",
    "trackTimestampsStaleness",
}  # fmt: skip
RELABELING = {"action", "modulus", "regex", "replacement", "separator", "sourceLabels",
              "targetLabel"}  # fmt: skip
RELABEL_ACTIONS = {
    "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
    "uppercase", "keepequal", "dropequal",
}  # fmt: skip
RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset",
              "labels"}  # fmt: skip
RULE = {"alert", "annotations", "expr", "for", "keep_firing_for", "labels", "record"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def check_relabelings(relabelings: list[dict[str, Any]]) -> None:
    for rule in relabelings:
        assert set(rule) <= RELABELING, set(rule) - RELABELING
        assert rule.get("action", "replace").lower() in RELABEL_ACTIONS
        if rule.get("action", "").lower() == "hashmod":
            assert isinstance(rule["modulus"], int) and rule["modulus"] > 0


def test_service_monitor_fields(sharded: dict[str, dict[str, Any]]) -> None:
    monitor = sharded["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= SERVICE_MONITOR_SPEC
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= ENDPOINT, set(endpoint) - ENDPOINT
        for key in ("interval", "scrapeTimeout"):
            assert DURATION.match(endpoint[key])
        check_relabelings(endpoint.get("relabelings", []))


def test_scrape_config_fields() -> None:
    scrape = by_kind(objects(PROBE))["ScrapeConfig"]
    assert scrape["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    spec = scrape["spec"]
    assert set(spec) <= SCRAPE_CONFIG_SPEC, set(spec) - SCRAPE_CONFIG_SPEC
    for static in spec["staticConfigs"]:
        assert set(static) <= {"labels", "targets"}
    check_relabelings(spec["relabelings"])
    assert spec["metricsPath"] == "/probe"


@pytest.mark.parametrize(
    ("directory", "rules_file"),
    [(SHARDED, "o365-mailbox.rules.yml"), (PROBE, "o365-mailbox-probe.rules.yml")],
    ids=["sharded", "probe-mode"],
)
def test_prometheus_rule_wraps_exactly_the_groups_of_its_variant(
    directory: Path, rules_file: str
) -> None:
    (rule,) = [doc for doc in objects(directory) if doc["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = yaml.safe_load((ROOT / "alerts" / rules_file).read_text())["groups"]
    assert rule["spec"]["groups"] == groups, "run python -m mixin.render"
    for group in rule["spec"]["groups"]:
        assert set(group) <= RULE_GROUP
        for item in group["rules"]:
            assert set(item) <= RULE
            assert ("alert" in item) != ("record" in item)


def test_rule_files_are_what_the_renderer_writes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mixin.render", "--check"], capture_output=True, text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_probe_mode_keeps_the_self_scrape_the_rules_read() -> None:
    """The probe-mode rules read `up` and the reload metric from the self job: the plain
    Prometheus config and the Kubernetes ServiceMonitor patch both keep that scrape."""
    mixin = yaml.safe_load((ROOT / "mixin" / "config.yml").read_text())
    self_job = mixin["probe"]["self_job"]
    config = yaml.safe_load(PROBE_SCRAPE.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs[self_job]["metrics_path"] == "/metrics"
    assert jobs[mixin["job"]]["scrape_interval"] == mixin["probe"]["scrape_interval"]
    patch = load_all(PROBE / "servicemonitor-self.yaml")[0]
    (endpoint,) = patch["spec"]["endpoints"]
    assert set(endpoint) <= ENDPOINT
    assert {"targetLabel": "job", "replacement": self_job} in endpoint["relabelings"]
    scrape = by_kind(objects(PROBE))["ScrapeConfig"]["spec"]
    assert scrape["scrapeInterval"] == mixin["probe"]["scrape_interval"]
    rules = (ROOT / "alerts" / "o365-mailbox-probe.rules.yml").read_text()
    assert f'up{{job="{self_job}"}} == 0' in rules
    assert f'o365_mailbox_exporter_config_last_reload_successful{{job="{self_job}"}}' in rules


# -- cross-references --------------------------------------------------------------------------
def test_selectors_match_labels(sharded: dict[str, dict[str, Any]]) -> None:
    statefulset, service = sharded["StatefulSet"], sharded["Service"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    selector = statefulset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = sharded["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_headless_service_names_the_statefulset_and_its_port(
    sharded: dict[str, dict[str, Any]],
) -> None:
    statefulset, service = sharded["StatefulSet"], sharded["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"] == NAME
    # The ServiceMonitor's job label is the Service's name: what alerts/ selects on.
    assert 'job="o365-mailbox-exporter"' in (ROOT / "alerts" / "o365-mailbox.rules.yml").read_text()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    endpoint_ports = {e["port"] for e in sharded["ServiceMonitor"]["spec"]["endpoints"]}
    assert endpoint_ports <= set(ports)
    exporter = container(statefulset)
    container_ports = {p["name"]: p["containerPort"] for p in exporter["ports"]}
    assert container_ports == {"http": PORT}
    assert all(ports[name]["targetPort"] in container_ports for name in ports)
    for probe in ("readinessProbe", "livenessProbe"):
        assert exporter[probe]["httpGet"]["port"] in container_ports


def test_volumes_and_mounts_refer_to_each_other(sharded: dict[str, dict[str, Any]]) -> None:
    statefulset = sharded["StatefulSet"]
    spec = pod_spec(statefulset)
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert not set(volumes) & claims
    mounted = set()
    for c in spec["initContainers"] + spec["containers"]:
        for mount in c["volumeMounts"]:
            assert mount["name"] in set(volumes) | claims, mount
            mounted.add(mount["name"])
    assert mounted == set(volumes) | claims, "a volume nobody mounts"
    config_map = sharded["ConfigMap"]["metadata"]["name"]
    secret = sharded["Secret"]["metadata"]["name"]
    assert volumes["config"]["configMap"]["name"] == config_map
    assert volumes["secrets-in"]["secret"]["secretName"] == secret
    assert volumes["secrets-in"]["secret"]["defaultMode"] == 0o400
    assert volumes["secrets"]["emptyDir"]["medium"] == "Memory"


def test_pods_run_unprivileged(statefulset: dict[str, Any]) -> None:
    spec = pod_spec(statefulset)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for c in spec["initContainers"] + spec["containers"]:
        context = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "memory" in c["resources"]["limits"]


def configmap_config(sharded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(sharded["ConfigMap"]["data"]["config.yml"])
    return config


def test_config_in_the_configmap_loads(sharded: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The exporter's own loader accepts it, with the secret files where the pod has them."""
    text = sharded["ConfigMap"]["data"]["config.yml"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, value in sharded["Secret"]["stringData"].items():
        (secrets / key).write_text(value + "\n")
        (secrets / key).chmod(0o400)
    text = text.replace("/run/secrets/o365/", f"{secrets}/")
    text = text.replace("/var/lib/o365-mailbox-exporter/", f"{tmp_path}/")
    (tmp_path / "config.yml").write_text(text)
    config = load_config(tmp_path / "config.yml")
    assert len(config.mailboxes) >= 2


def test_every_secret_file_of_the_config_is_a_key_of_the_secret(
    sharded: dict[str, dict[str, Any]], statefulset: dict[str, Any]
) -> None:
    mount = next(
        m["mountPath"] for m in container(statefulset)["volumeMounts"] if m["name"] == "secrets"
    )
    keys = set(sharded["Secret"]["stringData"])
    for mailbox in configmap_config(sharded)["mailboxes"]:
        for field in ("password_file", "client_secret_file", "certificate_file"):
            if field in mailbox["auth"]:
                path = Path(mailbox["auth"][field])
                assert path.parent == Path(mount), path
                assert path.name in keys, f"{path.name} is not a key of the Secret"


def test_state_dir_is_on_the_per_replica_volume(
    sharded: dict[str, dict[str, Any]], statefulset: dict[str, Any]
) -> None:
    state = Path(configmap_config(sharded)["state_dir"])
    mounts = {m["name"]: Path(m["mountPath"]) for m in container(statefulset)["volumeMounts"]}
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert state.is_relative_to(mounts[claim["metadata"]["name"]])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


# -- the command lines -------------------------------------------------------------------------
def fake_exporter(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has an `o365-mailbox-exporter` that prints its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / CONSOLE_SCRIPT
    script.write_text('#!/bin/sh\nfor a in "$0" "$@"; do printf "%s\\n" "$a"; done\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


@pytest.mark.parametrize("ordinal", [0, 1, 2])
def test_statefulset_gives_each_replica_its_shard(
    statefulset: dict[str, Any], tmp_path: Path, ordinal: int
) -> None:
    exporter = container(statefulset)
    env = {e["name"]: e for e in exporter["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    replicas = statefulset["spec"]["replicas"]
    assert env["SHARD_COUNT"]["value"] == str(replicas), "SHARD_COUNT must equal replicas"
    environ = fake_exporter(tmp_path) | {
        "POD_NAME": f"{statefulset['metadata']['name']}-{ordinal}",
        "SHARD_COUNT": env["SHARD_COUNT"]["value"],
    }
    argv = subprocess.run(
        exporter["command"], env=environ, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    args = serve_args(argv)
    assert (args.shard.index, args.shard.count) == (ordinal, replicas)
    assert args.config_file == "/etc/o365-mailbox-exporter/config.yml"
    assert not args.probe_only


def test_probe_mode_patch_runs_checks_only_on_probe(statefulset: dict[str, Any]) -> None:
    patch = load_all(PROBE / "statefulset-probe-only.yaml")[0]
    assert patch["metadata"]["name"] == statefulset["metadata"]["name"]
    command = container(patch)["command"]
    args = serve_args(command)
    assert args.probe_only and args.shard is None
    scrape = by_kind(objects(PROBE))["ScrapeConfig"]["spec"]
    hashmod = next(r for r in scrape["relabelings"] if r.get("action", "").lower() == "hashmod")
    assert hashmod["modulus"] == statefulset["spec"]["replicas"]


def test_init_container_copies_secrets_owner_only(
    statefulset: dict[str, Any], tmp_path: Path
) -> None:
    """Run the init container's script against a Secret volume laid out as the kubelet does
    (`..data` symlinks, files 0440 because of the pod's fsGroup)."""
    init = next(c for c in pod_spec(statefulset)["initContainers"] if c["name"] == "secrets")
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    source, target = tmp_path / "in", tmp_path / "out"
    data = source / "..2026_11_28_00_00_00.000000001"
    data.mkdir(parents=True)
    target.mkdir()
    for name, value in {"servicedesk": "pw-1\n", "sales": "pw-2\n"}.items():
        (data / name).write_text(value)
        (data / name).chmod(0o440)
        (source / name).symlink_to(Path("..data") / name)
    (source / "..data").symlink_to(data.name)
    script = "\n".join(init["command"][2:])
    script = script.replace(mounts["secrets-in"], str(source))
    script = script.replace(mounts["secrets"], str(target))
    subprocess.run([*init["command"][:2], script], check=True)
    copied = {p.name: p for p in target.iterdir()}
    assert set(copied) == {"servicedesk", "sales"}
    for name, path in copied.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
        assert path.read_text() == (data / name).read_text()


def test_kustomize_builds_both_variants() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (part of this machine image) is needed"
    for directory, kinds in [
        (SHARDED, {"ConfigMap", "Secret", "Service", "StatefulSet", "ServiceMonitor",
                   "PrometheusRule"}),
        (PROBE, {"ConfigMap", "Secret", "Service", "StatefulSet", "ScrapeConfig",
                 "PrometheusRule", "ServiceMonitor"}),
    ]:  # fmt: skip
        result = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True
        )
        if result.returncode != 0 and "unknown field" in result.stderr:
            pytest.skip(f"kubectl's kustomize is too old: {result.stderr.strip()[:200]}")
        assert result.returncode == 0, result.stderr
        built = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert {d["kind"] for d in built} == kinds
        assert {d["metadata"]["namespace"] for d in built} == {"monitoring"}
        statefulset = next(d for d in built if d["kind"] == "StatefulSet")
        command = container(statefulset)["command"]
        if directory == PROBE:  # the patch replaced the command and kept the rest
            assert serve_args(command).probe_only
            assert container(statefulset)["volumeMounts"]
            (rule,) = [d for d in built if d["kind"] == "PrometheusRule"]
            assert rule["metadata"]["name"] == "o365-mailbox-exporter-probe"
            (monitor,) = [d for d in built if d["kind"] == "ServiceMonitor"]
            assert monitor["spec"]["endpoints"][0]["metricRelabelings"][0]["action"] == "keep"
        else:
            assert command[:2] == ["sh", "-c"]
        if importlib.util.find_spec("kubernetes_validate") is not None:
            import kubernetes_validate

            kubernetes_validate.validate(statefulset, "1.29.0", strict=True)


# -- Prometheus config for the multi-target mode ------------------------------------------------
def test_probe_scrape_config_is_valid_for_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    result = subprocess.run(
        [promtool, "check", "config", str(PROBE_SCRAPE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_probe_scrape_config_matches_the_kubernetes_objects(statefulset: dict[str, Any]) -> None:
    config = yaml.safe_load(PROBE_SCRAPE.read_text())
    job = next(j for j in config["scrape_configs"] if j["metrics_path"] == "/probe")
    assert job["job_name"] == NAME  # what alerts/ selects on
    relabel = job["relabel_configs"]
    assert relabel[0] == {"source_labels": ["__address__"], "target_label": "__param_mailbox"}
    hashmod = next(r for r in relabel if r.get("action") == "hashmod")
    assert hashmod["modulus"] == statefulset["spec"]["replicas"]
    address = relabel[-1]["replacement"]
    namespace = kustomization(SHARDED)["namespace"]
    assert address == f"{NAME}-$1.{NAME}.{namespace}.svc:{PORT}"
    # The ScrapeConfig object says the same as this plain Prometheus config.
    scrape = by_kind(objects(PROBE))["ScrapeConfig"]["spec"]
    assert scrape["relabelings"][-2]["replacement"] == address
    assert scrape["scrapeTimeout"] == job["scrape_timeout"]


def test_hashmod_spreads_mailboxes_over_every_replica() -> None:
    """Prometheus' hashmod: md5 of the label value, its last 8 bytes big-endian, mod N."""
    names = [f"desk{i:04d}" for i in range(300)]
    replicas = {int.from_bytes(hashlib.md5(n.encode()).digest()[8:], "big") % 3 for n in names}
    assert replicas == {0, 1, 2}


# -- systemd -----------------------------------------------------------------------------------
def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    text = UNIT.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    return directives


def test_unit_is_hardened() -> None:
    d = unit_directives()
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "o365-mailbox-exporter",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }.items():
        assert d.get(key) == [value], key


def test_unit_starts_the_console_script_with_valid_flags() -> None:
    d = unit_directives()
    argv = shlex.split(d["ExecStart"][0])
    args = serve_args(argv)
    assert args.config_file.startswith("/etc/o365-mailbox-exporter/")
    credentials = "/run/credentials/o365-mailbox-exporter.service/"
    assert credentials in UNIT.read_text()  # config.yml's secret files point there
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    return tool


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary swapped for one that exists here."""
    copy = tmp_path / UNIT.name
    text = UNIT.read_text()
    binary = shlex.split(unit_directives()["ExecStart"][0])[0]
    copy.write_text(text.replace(binary, os.path.realpath(sys.executable)))
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = systemd_analyze()
    result = subprocess.run(
        [tool, "verify", str(unit_copy(tmp_path))], capture_output=True, text=True
    )
    # verify exits 0 even for unknown keys or bad values; it only prints them.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    tool = systemd_analyze()
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline unsupported: {result.stderr[:200]}")
    assert float(match.group(1)) <= 2.0, result.stdout


# -- container file ----------------------------------------------------------------------------
def instructions() -> list[tuple[str, str]]:
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_containerfile_runs_the_console_script() -> None:
    steps = instructions()
    entrypoint = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == [CONSOLE_SCRIPT] and CONSOLE_SCRIPT in scripts
    args = serve_args(entrypoint + cmd)
    assert args.config_file == "/etc/o365-mailbox-exporter/config.yml"


def test_containerfile_builds_from_this_tree_and_drops_root() -> None:
    steps = instructions()
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            *sources, _target = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        if word == "FROM":
            image = rest.split()[0]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
        assert word != "ADD", "ADD fetches URLs and unpacks archives; use COPY"
    user = [rest for word, rest in steps if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ("EXPOSE", str(PORT)) in steps
    assert any(word == "HEALTHCHECK" and "/-/healthy" in rest for word, rest in steps)


def test_container_build_context_is_enough_for_a_complete_install() -> None:
    """The build stage copies pyproject.toml, the readme it names and exporter/, and builds a
    wheel of the packages pyproject.toml lists: every package under exporter/ must be listed
    (a new subpackage missing there would ship an image that fails on import)."""
    copied = set()
    for word, rest in instructions():
        if word == "COPY" and "--from" not in rest:
            copied.update(rest.split()[:-1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"pyproject.toml", project["project"]["readme"], "exporter"} <= copied
    listed = set(project["tool"]["setuptools"]["packages"])
    packages = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "exporter").rglob("__init__.py")
    }
    assert packages <= listed, f"not in [tool.setuptools] packages: {sorted(packages - listed)}"
