"""Issue 3: ``ext4gen mount`` / ``ext4gen umount`` stack and unstack serve + nbdfuse + loop.

Run as the user runs them (the CLI in a subprocess), then checked from
outside: the kernel's mount table, the loop devices, and the processes by pid.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import CLI
from helpers.processes import kill_pid, pid_running, program, subreaper
from helpers.trees import make_source_tree

import ext4gen
from ext4gen.serve import is_mountpoint, mount_state_dir
from ext4gen.verify import compare_tree

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source_tree(tmp_path_factory.mktemp("mount"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=180)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (our state directory)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and pid_running(int(d)):
                found.append(int(d))
    return found


def loop_devices_backed_by(path: str) -> list[str]:
    out = subprocess.run(["losetup", "-n", "-O", "NAME", "-j", path], capture_output=True, text=True)
    return out.stdout.split()


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """A mountpoint that is torn down by pid whatever the test did."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sdir = str(mount_state_dir(str(mnt)))
    with subreaper():
        try:
            yield mnt
        finally:
            if is_mountpoint(str(mnt)):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
            for dev in loop_devices_backed_by(os.path.join(sdir, "fuse", "disk")):
                subprocess.run(["losetup", "-d", dev], check=False)
            if is_mountpoint(os.path.join(sdir, "fuse")):
                subprocess.run(["fusermount3", "-u", "-z", os.path.join(sdir, "fuse")], check=False)
            for pid in processes_mentioning(sdir):
                kill_pid(pid)
            subprocess.run(["rm", "-rf", sdir], check=False)


def test_mount_shows_the_manifest_tree_and_umount_removes_every_piece(manifest: Path, mountpoint: Path):
    mnt = str(mountpoint)
    proc = run("mount", str(manifest), mnt)
    assert proc.returncode == 0, proc.stderr
    sdir = mount_state_dir(mnt)
    state = json.loads((sdir / "state.json").read_text())
    server = state["server"]
    pids = {"supervisor": server["pid"], "nbdkit": server["nbdkit_pid"], "nbdfuse": state["nbdfuse_pid"]}
    assert {k: pid_running(p) for k, p in pids.items()} == dict.fromkeys(pids, True)
    assert program(pids["nbdkit"]) == "nbdkit" and program(pids["nbdfuse"]) == "nbdfuse"

    # The kernel sees a read-only ext4 on a loop device backed by the nbdfuse file.
    src = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", mnt],
                         capture_output=True, text=True, check=True).stdout.split()
    assert src[1] == "ext4" and "ro" in src[2].split(",")
    assert loop_devices_backed_by(state["disk"]) == [src[0]]
    tree, _options = ext4gen.load(str(manifest))
    assert compare_tree(tree, mnt) == []
    with pytest.raises(OSError):
        Path(mnt, "etc", "new").write_text("x")

    proc = run("umount", mnt)
    assert proc.returncode == 0, proc.stderr
    assert "ext4gen: served " in proc.stderr  # the server's summary is handed back
    assert not is_mountpoint(mnt)
    assert loop_devices_backed_by(state["disk"]) == []
    assert {k: pid_running(p) for k, p in pids.items()} == dict.fromkeys(pids, False)
    assert not sdir.exists()
    assert processes_mentioning(str(sdir)) == []


def test_umount_of_a_busy_filesystem_fails_and_keeps_it_working(manifest: Path, mountpoint: Path):
    mnt = str(mountpoint)
    assert run("mount", str(manifest), mnt).returncode == 0
    with open(os.path.join(mnt, "bin", "big.bin"), "rb") as busy:
        proc = run("umount", mnt)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "umount" in proc.stderr and "busy" in proc.stderr
        assert is_mountpoint(mnt)
        busy.seek(1 << 20)
        assert len(busy.read(1 << 20)) == 1 << 20  # still served
    proc = run("umount", mnt)
    assert proc.returncode == 0, proc.stderr
    assert not is_mountpoint(mnt)


def test_a_failed_mount_stops_what_it_started(manifest: Path, mountpoint: Path, tmp_path: Path):
    """The loop mount (last step) fails: nbdfuse and nbdkit, already running, must go."""
    shims = tmp_path / "shims"
    shims.mkdir()
    fake = shims / "mount"
    fake.write_text("#!/bin/sh\necho 'mount: simulated failure of the loop mount' >&2\nexit 32\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}")
    mnt = str(mountpoint)
    sdir = mount_state_dir(mnt)
    proc = run("mount", str(manifest), mnt, env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"ext4gen: mount {mnt} failed: mount: simulated failure of the "
                                        "loop mount"], proc.stderr
    assert not is_mountpoint(mnt) and not is_mountpoint(str(sdir / "fuse"))
    assert processes_mentioning(str(sdir)) == []
    assert not sdir.exists()
    # ... and a real mount afterwards works.
    assert run("mount", str(manifest), mnt).returncode == 0
    assert run("umount", mnt).returncode == 0


@pytest.mark.parametrize("case", ["bad_manifest", "not_a_directory", "twice", "unknown_umount"])
def test_mount_and_umount_refuse_bad_requests_in_one_line(case: str, manifest: Path, mountpoint: Path,
                                                          tmp_path: Path):
    mnt = str(mountpoint)
    if case == "bad_manifest":
        bad = tmp_path / "bad.toml"
        bad.write_text('["/x"]\ntext = 1\n')
        proc, needle = run("mount", str(bad), mnt), "text"
    elif case == "not_a_directory":
        f = tmp_path / "file"
        f.write_text("")
        proc, needle = run("mount", str(manifest), str(f)), "not a directory"
    elif case == "twice":
        assert run("mount", str(manifest), mnt).returncode == 0
        proc, needle = run("mount", str(manifest), mnt), "already mounted"
        assert compare_tree(ext4gen.load(str(manifest))[0], mnt) == []  # the first mount is intact
        assert run("umount", mnt).returncode == 0
    else:
        proc, needle = run("umount", mnt), "not mounted by ext4gen"
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ext4gen: ") and needle in lines[0], proc.stderr
    assert not is_mountpoint(mnt)
    assert processes_mentioning(str(mount_state_dir(mnt))) == []
