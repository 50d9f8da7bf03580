"""A serve plans each source exactly once (issue 10.1): the CLI does not plan to
validate, and the supervisor keeps no plan; only the plugin inside nbdkit plans.

Every planning run appends "PID ORIGIN" to $EXT4GEN_PLAN_LOG, so the tests count
them across every process a serve starts.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers.cli import CLI
from helpers.cli import cli_serving as serving
from helpers.processes import kill_pid, subreaper
from helpers.servers import connect
from helpers.trees import make_source_tree

from ext4gen.inputs.source import PLAN_LOG_ENV, plan_source
from ext4gen.model import host_reads
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


def _saved_entry(cache: Path, timeout: float = 60.0) -> Path:
    """The plan the first serve saves in a thread while it serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((cache / "plans").glob("*.plan"))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the serve saved no plan")


def _export_bytes(uri: str) -> bytes:
    h = connect(uri)
    size = h.get_size()
    return b"".join(h.pread(min(1 << 20, size - off), off) for off in range(0, size, 1 << 20))


def test_a_restart_over_an_unchanged_tree_plans_nothing_and_a_change_replans(
        plan_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Issue 10: instant restarts. The second serve takes the saved plan (no planning run,
    so no file data read), a changed file makes the third plan again, and every serve's
    bytes are what planning the tree as it is gives."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EXT4GEN_CACHE", str(cache))
    manifest = make_source_tree(tmp_path)
    time.sleep(host_reads.RACY_NS / 1e9 + 0.05)  # past the racy window, or nothing is saved
    sock = tmp_path / "nbd.sock"
    with serving(manifest, sock) as server:
        first = _export_bytes(server.uris[0])
        _saved_entry(cache)
    assert len(_runs(plan_log)) == 1
    with serving(manifest, sock) as server:
        assert _export_bytes(server.uris[0]) == first
    assert len(_runs(plan_log)) == 1, "the restart planned again"

    victim = tmp_path / "src" / "odd.bin"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[7] ^= 0x5A
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the ctime moved
    with serving(manifest, sock) as server:
        changed = _export_bytes(server.uris[0])
    assert len(_runs(plan_log)) == 2, "a changed file was served from the saved plan"
    fresh, _tree = plan_source(str(manifest))
    assert changed == fresh.read(0, fresh.size) != first


def test_a_directory_is_listed_ahead_on_a_first_serve_only(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """The plugin starts listing a directory SOURCE before it loads the planner, unless a
    saved plan may make the walk unnecessary; the bytes are the same either way."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EXT4GEN_CACHE", str(cache))
    src = tmp_path / "tree"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}").write_bytes(bytes([i]) * (i * 997))
    time.sleep(host_reads.RACY_NS / 1e9 + 0.05)
    sock = tmp_path / "nbd.sock"
    ahead = f"listing {src} ahead"
    with serving(src, sock, "-v") as server:
        first = _export_bytes(server.uris[0])
        _saved_entry(cache)
        assert ahead in server.stderr()
    with serving(src, sock, "-v") as server:
        assert _export_bytes(server.uris[0]) == first
        log = server.stderr()
        assert "reused the saved plan" in log and ahead not in log
    fresh, _tree = plan_source(str(src))
    assert first == fresh.read(0, fresh.size)


def test_a_serve_stopped_at_once_still_leaves_its_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Stopping waits (briefly) for the plan being saved, so the next serve is a restart.

    30,000 files take a few tenths of a second to save, longer than a serve
    takes to answer one read and stop: without the wait the plan would be lost.
    """
    cache = tmp_path / "cache"
    monkeypatch.setenv("EXT4GEN_CACHE", str(cache))
    manifest = tmp_path / "many.json"
    entries = ",\n".join(f'"/d{i % 30}/f{i}": {{"text": "{i}"}}' for i in range(30_000))
    manifest.write_text("{" + entries + "}\n")
    time.sleep(host_reads.RACY_NS / 1e9 + 0.05)
    with serving(manifest, tmp_path / "nbd.sock") as server:
        assert connect(server.uris[0]).pread(4096, 0)
    assert list((cache / "plans").glob("*.plan")), "the plan was not saved before nbdkit stopped"
