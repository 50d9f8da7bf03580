"""A serve plans each source exactly once (issue 10.1): the CLI does not plan to
validate, and the supervisor keeps no plan; only the plugin inside nbdkit plans.

Every planning run appends "PID ORIGIN" to $EXT4GEN_PLAN_LOG, so the tests count
them across every process a serve starts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers.cli import CLI
from helpers.cli import cli_serving as serving
from helpers.processes import kill_pid, subreaper
from helpers.servers import connect
from helpers.trees import make_source_tree

from ext4gen.inputs.source import PLAN_LOG_ENV
from ext4gen.pytest_plugin import serving as fixture_serving


@pytest.fixture
def plan_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "plans.log"
    monkeypatch.setenv(PLAN_LOG_ENV, str(log))
    return log


def _runs(log: Path) -> list[tuple[int, str]]:
    if not log.exists():
        return []
    return [(int(pid), origin) for pid, origin in
            (line.split(" ", 1) for line in log.read_text().splitlines())]


def test_foreground_serve_plans_each_source_once_inside_nbdkit(plan_log: Path, tmp_path: Path):
    manifest = make_source_tree(tmp_path / "a")
    second = make_source_tree(tmp_path / "b", dedup="none", seed=5)
    with serving(manifest, tmp_path / "nbd.sock", more=(f"second={second}",)) as server:
        assert connect(server.uris[1]).pread(4096, 1024)
        runs = _runs(plan_log)
        assert sorted(origin for _pid, origin in runs) == sorted([str(manifest), str(second)]), runs
        assert {pid for pid, _origin in runs} == {server.nbdkit_pid}, "planned outside nbdkit"


def test_background_serve_plans_once(plan_log: Path, tmp_path: Path):
    manifest = make_source_tree(tmp_path)
    sock, pidfile = tmp_path / "bg.sock", tmp_path / "bg.pid"
    with subreaper():
        proc = subprocess.run([*CLI, "serve", str(manifest), "--socket", str(sock),
                               "--pidfile", str(pidfile)], capture_output=True, text=True,
                              timeout=120)
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        try:
            assert proc.returncode == 0, proc.stderr
            assert connect(proc.stdout.strip()).pread(4096, 1024)
            runs = _runs(plan_log)
            assert [origin for _pid, origin in runs] == [str(manifest)], runs
        finally:
            if pid:
                kill_pid(pid)


def test_a_bad_source_is_planned_once_and_reported_once(plan_log: Path, tmp_path: Path):
    """The plugin finds the error while planning; the CLI reports its one line, exit 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text('["/x"]\nsource = "missing.bin"\n')
    proc = subprocess.run([*CLI, "serve", str(bad), "--socket", str(tmp_path / "s"),
                           "--foreground"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing.bin" in proc.stderr, proc.stderr
    assert len(_runs(plan_log)) <= 1  # loading fails before planning: zero or one run


def test_pytest_fixture_export_plans_once(plan_log: Path, tmp_path: Path):
    manifest = make_source_tree(tmp_path)
    with fixture_serving(manifest, tmp_path) as server:
        assert connect(server.uri).pread(4096, 1024)
        assert [pid for pid, _origin in _runs(plan_log)] == [server.nbdkit_pid]
