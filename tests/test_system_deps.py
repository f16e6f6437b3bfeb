"""scripts/system-deps: the programs the suite starts, found, installed where allowed, or a clear stop
before any test runs (what `make test` runs first)."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "system-deps"
BASH = shutil.which("bash")


def fake_programs(directory: Path, *names: str) -> Path:
    """A PATH directory holding only ``names``; a fake ``apt-get`` records that it was called and fails."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        program = directory / name
        program.write_text(f"#!{BASH}\necho {name} \"$@\" >> {directory / 'calls'}\nexit 100\n")
        program.chmod(0o755)
    return directory


def system_deps(path: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": str(path), "SYSTEM_DEPS_PREFIX": str(path / "no-system")}  # nothing under /usr/lib either
    command = [BASH, str(SCRIPT), *args]
    if user:
        command = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *command]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env} if not user else None, timeout=60)


def test_everything_present_is_silent_and_passes(tmp_path):
    path = fake_programs(tmp_path / "bin", "make", "chromium", "initdb", "pg_ctl", "createdb", "apt-get")
    result = system_deps(path)
    assert (result.returncode, result.stderr) == (0, "")
    assert not (path / "calls").exists()  # nothing was installed


def test_without_apt_it_stops_naming_each_missing_program_and_the_way_out(tmp_path):
    path = fake_programs(tmp_path / "bin", "make", "initdb", "pg_ctl")  # no chromium, no createdb, no apt-get
    result = system_deps(path)
    assert result.returncode == 1
    first, second = result.stderr.strip().splitlines()
    assert "missing chromium" in first and "postgresql" in first and "no apt-get" in first
    assert "apt-get install -y --no-install-recommends chromium postgresql" in first
    assert second.endswith('make test TEST_MARKERS="not browser and not postgres"')


def test_not_root_it_stops_before_calling_apt():
    directory = Path(tempfile.mkdtemp(prefix="hwl-system-deps-"))  # pytest's tmp_path is private to its owner
    directory.chmod(0o755)
    try:
        path = fake_programs(directory / "bin", "make", "initdb", "pg_ctl", "createdb", "apt-get")
        result = system_deps(path, user="nobody" if os.geteuid() == 0 else None)  # as root: as the user nobody
        assert result.returncode == 1, result.stderr
        assert "missing chromium" in result.stderr and "(not root)" in result.stderr and "sudo apt-get install" in result.stderr
        assert not (path / "calls").exists()
    finally:
        shutil.rmtree(directory)


def test_where_apt_fails_or_is_not_allowed_it_is_a_clear_stop(tmp_path):
    path = fake_programs(tmp_path / "bin", "make", "initdb", "pg_ctl", "createdb", "apt-get")
    result = system_deps(path)
    assert result.returncode == 1
    if os.geteuid() == 0:  # root tries apt, which fails here (the fake one exits 100, as apt does offline)
        assert "installing chromium with apt-get" in result.stderr and "apt-get failed" in result.stderr
        assert (path / "calls").read_text().startswith("apt-get update")
    else:
        assert "(not root)" in result.stderr and not (path / "calls").exists()


def test_a_deselected_group_needs_no_program_and_a_bad_group_is_named(tmp_path):
    path = fake_programs(tmp_path / "bin", "make")
    assert system_deps(path, "--without", "browser", "--without", "postgres").returncode == 0
    bad = system_deps(path, "--without", "gpu")
    assert bad.returncode == 2 and "--without 'gpu': allowed groups are browser, postgres" in bad.stderr


def test_make_test_runs_it_before_the_suite_and_ci_only_runs_make_test():
    dry = subprocess.run(["make", "-n", "test"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    steps = [line for line in dry if "system-deps" in line or "pytest" in line]
    assert "system-deps" in steps[0] and "pytest" in steps[-1] and "--durations=15" in steps[-1]
    marked = subprocess.run(["make", "-n", "test", "TEST_MARKERS=not browser"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            check=True).stdout
    assert "system-deps --without browser" in marked and '-m "not browser"' in marked
    ci = [line for line in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert "make test" in ci[-1] and not any("apt" in line for line in ci)
