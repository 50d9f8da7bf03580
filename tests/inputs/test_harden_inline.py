"""Issue 11 item 4: a tiny file that lives inside its inode cannot take the filesystem down.

An inline file's bytes sit in an inode-table block shared with 15 other inodes
(the root's among them).  A host source rewritten after planning, or a
generator that fails, must cost at most that one file: the filesystem mounts,
every other file reads, and the changed file reads its planned bytes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers.cli import cli_serving as serving

import ext4gen
from ext4gen.layout.inline import MAX_INLINE_SIZE

pytestmark = pytest.mark.root

GEN = '''
def boom(offset, length):
    raise RuntimeError("this generator always fails")
'''


def _manifest(tmp_path: Path) -> tuple[Path, bytes]:
    (tmp_path / "a.txt").write_bytes(b"hello world\n")
    big = os.urandom(100_000)
    (tmp_path / "b.bin").write_bytes(big)
    (tmp_path / "gen.py").write_text(GEN)
    m = tmp_path / "m.toml"
    m.write_text('["/a.txt"]\nsource = "a.txt"\n["/b.bin"]\nsource = "b.bin"\n'
                 '["/g"]\ngenerator = "gen:boom"\nsize = 10\n["/t"]\ntext = "tiny"\n')
    return m, big


def test_plan_keeps_inline_host_bytes_and_never_inlines_generators(tmp_path: Path):
    m, _big = _manifest(tmp_path)
    image = ext4gen.plan(*ext4gen.load(str(m)))
    by_name = {path: ip for path, ip in image.plan.paths()}
    assert by_name[b"/a.txt"].inline_size == 12
    assert image.plan.inline_bytes[by_name[b"/a.txt"].ino] == b"hello world\n"
    assert by_name[b"/g"].inline_size == -1 and by_name[b"/g"].extents  # in a data block
    assert by_name[b"/t"].inline_size == 4
    assert 10 <= MAX_INLINE_SIZE


def test_changed_inline_source_and_failing_generator_fail_alone(tmp_path: Path):
    m, big = _manifest(tmp_path)
    fuse_dir, mnt = tmp_path / "fuse", tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    disk = fuse_dir / "disk"
    with serving(m, tmp_path / "s.sock") as server:
        (tmp_path / "a.txt").write_bytes(b"changed\n")  # after planning, before any read
        nbdfuse = subprocess.Popen(["nbdfuse", "-r", str(disk), "--unix", str(server.sock)],
                                   stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        mounted = False
        try:
            deadline = time.monotonic() + 30
            while not disk.exists():
                assert nbdfuse.poll() is None, nbdfuse.stderr.read()
                assert time.monotonic() < deadline, "nbdfuse did not expose the disk"
                time.sleep(0.05)
            proc = subprocess.run(["mount", "-t", "ext4", "-o", "loop,ro", str(disk), str(mnt)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            mounted = True
            assert sorted(os.listdir(mnt)) == ["a.txt", "b.bin", "g", "lost+found", "t"]
            assert (mnt / "b.bin").read_bytes() == big
            assert (mnt / "t").read_bytes() == b"tiny"
            assert (mnt / "a.txt").read_bytes() == b"hello world\n"  # planned, never the new bytes
            assert (mnt / "g").stat().st_size == 10
            with pytest.raises(OSError) as err:
                (mnt / "g").read_bytes()
            assert err.value.errno == errno.EIO
            assert (mnt / "b.bin").read_bytes()[:10] == big[:10]
        finally:
            if mounted:
                subprocess.run(["umount", str(mnt)], check=False)
            subprocess.run(["fusermount3", "-u", str(fuse_dir)], check=False)
            try:
                nbdfuse.wait(30)
            except subprocess.TimeoutExpired:
                nbdfuse.kill()
                nbdfuse.wait()
        assert server.alive()
