"""Packaging and installation: what a user or a packager gets from this repository.

* `scripts/without-service-starts` (used by `scripts/install-deps` around `apt-get install`)
  leaves the machine's policy-rc.d as it found it: created and removed when absent, untouched
  (content, mode, mtime) when present, removed also when the command fails or the script is
  killed. Run against a temporary path (`POLICY_RC_D`); the machine's own file is never used.
* `scripts/install-deps` itself, with `apt-get`, `dpkg-query` and Python replaced by recording
  stubs: the policy file exists only while `apt-get install` runs, and `--venv` leaves the
  system Python's packages alone.
* `python -m build` (offline: `--no-isolation`, setuptools and build come from the test
  extras) makes an sdist carrying LICENSE, README, CHANGELOG and the package, and a wheel built
  from that sdist with every package and the console script; the wheel installs into a fresh
  venv and runs (`--version`, `--config.check`). Its metadata matches pyproject.toml, and every
  third-party module the package imports is a declared dependency.
"""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "scripts" / "without-service-starts"
INSTALL_DEPS = ROOT / "scripts" / "install-deps"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
DIST = "o365_mailbox_exporter"
# The Apache License 2.0 as published by the ASF (apache.org/licenses/LICENSE-2.0.txt).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


# -- the policy-rc.d guard ----------------------------------------------------------------------
def _guard(policy: Path, *command: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"POLICY_RC_D": str(policy)}
    return subprocess.run(
        [str(GUARD), *command], env=env, capture_output=True, text=True, timeout=30, check=check
    )


# While the command runs: the file the guard wrote, as `sh` would run it (exit 101 = deny).
SHOW_POLICY = 'cat "$POLICY_RC_D"; "$POLICY_RC_D" start dovecot; echo "exit=$?"'


def test_guard_creates_the_policy_for_the_command_and_removes_it(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    proc = _guard(policy, "sh", "-c", SHOW_POLICY, check=True)
    assert proc.stdout.startswith("#!/bin/sh\n")
    assert proc.stdout.rstrip().endswith("exit 101\nexit=101")
    assert not policy.exists()


def test_guard_leaves_an_existing_policy_untouched(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# the admin's own policy\nexit 0\n")
    policy.chmod(0o750)
    os.utime(policy, (1_600_000_000, 1_600_000_000))
    before = policy.stat()
    proc = _guard(policy, "sh", "-c", SHOW_POLICY, check=True)
    assert "the admin's own policy" in proc.stdout
    assert proc.stdout.rstrip().endswith("exit=0")
    after = policy.stat()
    assert policy.read_text() == "#!/bin/sh\n# the admin's own policy\nexit 0\n"
    assert (after.st_ino, after.st_mode, after.st_mtime) == (
        before.st_ino, before.st_mode, 1_600_000_000)  # fmt: skip


def test_guard_leaves_a_dangling_symlink_alone(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.symlink_to(tmp_path / "elsewhere")
    _guard(policy, "true", check=True)
    assert policy.is_symlink() and os.readlink(policy) == str(tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_guard_removes_the_policy_when_the_command_fails(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    proc = _guard(policy, "sh", "-c", 'test -x "$POLICY_RC_D" && exit 100')
    assert proc.returncode == 100  # apt-get's status for a failed install, passed on
    assert not policy.exists()


def test_guard_removes_the_policy_when_killed(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    ready = tmp_path / "ready"
    env = os.environ | {"POLICY_RC_D": str(policy)}
    proc = subprocess.Popen(
        [str(GUARD), "sh", "-c", f"touch {ready}; sleep 0.5"], env=env, start_new_session=True
    )
    try:
        end = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < end:
            time.sleep(0.02)
        assert policy.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not policy.exists()


def test_guard_does_not_remove_a_file_that_replaced_its_own(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    # rm + create: the new file may well get the freed inode number; its content tells.
    replace = 'rm "$POLICY_RC_D"; printf "#!/bin/sh\\nexit 0\\n" > "$POLICY_RC_D"'
    _guard(policy, "sh", "-c", replace, check=True)
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


# -- scripts/install-deps with stubs ------------------------------------------------------------
STUB = """#!/bin/sh
# Records each call: its path, arguments and whether the policy file exists at that moment.
policy=$(test -e "$POLICY_RC_D" && echo yes || echo no)
printf '%s %s policy=%s\\n' "$0" "$*" "$policy" >> "$STUB_LOG"
case "$(basename "$0") $*" in
  "dpkg-query "*) exit 1 ;;
  "apt-get install"*) exit "${APT_STATUS:-0}" ;;
  *" -m venv "*) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
  *" -c import sys; print(sys.prefix)") dirname "$(dirname "$0")" ;;
esac
exit 0
"""


def _install_deps(tmp_path: Path, *args: str, apt_status: int = 0) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("apt-get", "dpkg-query", "python"):
        stub = bin_dir / name
        stub.write_text(STUB)
        stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = os.environ | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "POLICY_RC_D": str(tmp_path / "policy-rc.d"),
        "PYTHON": str(bin_dir / "python"),
        "STUB_LOG": str(log),
        "APT_STATUS": str(apt_status),
    }
    proc = subprocess.run(
        [str(INSTALL_DEPS), *args], env=env, capture_output=True, text=True, timeout=60,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    calls = log.read_text().splitlines() if log.exists() else []
    # The stubs in bin/ by their names (as the script calls them), anything else by its path.
    calls = [call.replace(f"{bin_dir}/", "").replace(str(tmp_path), "TMP") for call in calls]
    return proc.returncode, calls


def test_install_deps_holds_services_only_while_apt_installs(tmp_path: Path) -> None:
    code, calls = _install_deps(tmp_path)
    assert code == 0, calls
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert len(installs) == 1
    assert "dovecot-imapd" in installs[0] and installs[0].endswith("policy=yes")
    assert next(c for c in calls if c.startswith("apt-get update")).endswith("policy=no")
    assert not (tmp_path / "policy-rc.d").exists()
    pip = [c for c in calls if " -m pip install " in c]
    assert pip == ["python -m pip install -q --disable-pip-version-check -e .[test] policy=no"]


def test_install_deps_removes_the_policy_when_apt_fails(tmp_path: Path) -> None:
    code, calls = _install_deps(tmp_path, apt_status=100)
    assert code == 100
    assert not (tmp_path / "policy-rc.d").exists()
    assert not any(" -m pip " in c for c in calls)  # stopped at the failure


def test_install_deps_keeps_an_existing_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n# container image's own\n")
    os.utime(policy, (1_500_000_000, 1_500_000_000))
    code, _calls = _install_deps(tmp_path)
    assert code == 0
    assert policy.read_text() == "#!/bin/sh\nexit 101\n# container image's own\n"
    assert policy.stat().st_mtime == 1_500_000_000


def test_install_deps_venv_leaves_the_system_python_alone(tmp_path: Path) -> None:
    code, calls = _install_deps(tmp_path, "--venv", str(tmp_path / "venv"))
    assert code == 0, calls
    system = [c for c in calls if c.startswith("python ")]
    assert not any(" pip " in c for c in system), system
    assert "python -m venv TMP/venv policy=no" in system
    assert [c for c in calls if " -m pip install " in c] == [
        "TMP/venv/bin/python -m pip install -q --disable-pip-version-check -e .[test] policy=no"
    ]


# -- python -m build ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An sdist, and a wheel built from that sdist (`python -m build`'s default), offline."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


def _version() -> str:
    init = ast.parse((ROOT / "exporter" / "__init__.py").read_text())
    for node in init.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__":
            return str(ast.literal_eval(node.value))
    raise AssertionError("exporter/__init__.py has no __version__")


def _package_modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / "exporter").rglob("*.py")}


def test_sdist_carries_license_readme_changelog_and_the_package(built: dict[str, Path]) -> None:
    version = _version()
    assert built["sdist"].name == f"{DIST}-{version}.tar.gz"
    prefix = f"{DIST}-{version}/"
    with tarfile.open(built["sdist"]) as sdist:
        names = {n.removeprefix(prefix) for n in sdist.getnames()}
        for name in ("LICENSE", "README.md", "CHANGELOG.md"):
            member = sdist.extractfile(prefix + name)
            assert member is not None
            assert member.read() == (ROOT / name).read_bytes(), name
    assert {"pyproject.toml", "PKG-INFO"} <= names
    assert _package_modules() <= names


def test_wheel_has_every_package_the_license_and_the_console_script(
    built: dict[str, Path],
) -> None:
    version = _version()
    assert built["wheel"].name == f"{DIST}-{version}-py3-none-any.whl"
    info = f"{DIST}-{version}.dist-info"
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        license_text = wheel.read(f"{info}/licenses/LICENSE")
        meta = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    assert _package_modules() <= names
    for package in ("exporter", "exporter/checks", "exporter/admin"):
        assert f"{package}/__init__.py" in names
    assert not any(n.startswith("tests/") for n in names)
    assert "[console_scripts]\no365-mailbox-exporter = exporter.cli:main" in entry_points
    assert hashlib.sha256(license_text).hexdigest() == APACHE_2_SHA256
    # The metadata says what pyproject.toml says.
    assert meta["Name"] == PROJECT["name"] and meta["Version"] == version
    assert meta["License-Expression"] == "Apache-2.0" == PROJECT["license"]
    assert meta.get_all("Requires-Dist")[: len(PROJECT["dependencies"])] == PROJECT["dependencies"]
    assert meta.get_all("Classifier") == PROJECT["classifiers"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls == PROJECT["urls"]
    assert set(urls) >= {"Homepage", "Issues", "Changelog", "Documentation"}
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Description-Content-Type"] == "text/markdown"


def test_license_file_is_the_apache_license_pyproject_names() -> None:
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256


def test_changelog_keeps_a_changelog_with_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "[Keep a Changelog](https://keepachangelog.com/" in text
    assert "\n## [Unreleased]\n" in text
    unreleased = text.split("\n## [Unreleased]\n", 1)[1].split("\n## [", 1)[0]
    for section in ("### Added", "### Fixed"):
        assert section in unreleased
    assert "\n[Unreleased]: https://" in text


def test_every_third_party_import_is_a_declared_dependency() -> None:
    stdlib = set(sys.stdlib_module_names)
    imported: set[str] = set()
    for path in (ROOT / "exporter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - stdlib - {"exporter"}
    declared = {_name(dep) for dep in PROJECT["dependencies"]}
    providers = metadata.packages_distributions()
    missing = {}
    for module in sorted(third_party):
        dists = {_canonical(d) for d in providers.get(module, [])}
        assert dists, f"{module}: imported by exporter/ but no installed distribution provides it"
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not in [project] dependencies: {missing}"
    assert {"msal", "imapclient", "yaml", "prometheus_client"} <= third_party


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _name(requirement: str) -> str:
    for stop in "<>=!~;[ ":
        requirement = requirement.split(stop, 1)[0]
    return _canonical(requirement)


def test_wheel_installs_and_runs_in_a_fresh_venv(built: dict[str, Path], tmp_path: Path) -> None:
    """The wheel alone, in a new venv: the dependencies come from this Python's site-packages
    (no network), the package and its console script from the wheel."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True, timeout=60,
    )  # fmt: skip
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "-q", str(built["wheel"])],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import exporter, importlib.metadata as m; print(exporter.__file__);"
         " print(m.distribution('o365-mailbox-exporter').locate_file(''))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    module_file, dist_root = where.stdout.split()
    assert Path(module_file).is_relative_to(venv), where.stdout  # not the clone's editable copy
    assert Path(dist_root).is_relative_to(venv), where.stdout

    script = venv / "bin" / "o365-mailbox-exporter"
    version = subprocess.run(
        [str(script), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert _version() in version.stdout

    secret = tmp_path / "servicedesk.password"
    secret.write_text("not-a-real-password\n")
    secret.chmod(0o600)
    config = tmp_path / "config.yml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "mailboxes:\n"
        "  - name: servicedesk\n"
        "    username: servicedesk@contoso.com\n"
        "    tenant_id: b921b89c-a960-4187-9872-28191e34a8f3\n"
        "    client_id: 46a662fb-0fed-4f72-a212-95216e5b0f28\n"
        "    auth:\n"
        "      flow: password\n"
        f"      password_file: {secret}\n"
    )
    good = subprocess.run(
        [str(script), "--config.check", f"--config.file={config}"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    config.write_text(config.read_text().replace("flow: password", "flow: pasword"))
    bad = subprocess.run(
        [str(script), "--config.check", f"--config.file={config}"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert f"{config}:8:" in bad.stderr and "auth.flow" in bad.stderr, bad.stderr
