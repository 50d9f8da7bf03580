"""Issue 11 item 4: a tiny file that lives inside its inode cannot take the filesystem down.

An inline file's bytes sit in an inode-table block shared with 15 other inodes
(the root's among them).  A host source rewritten after planning, or a
generator that fails, must cost at most that one file: the filesystem mounts,
every other file reads, and the changed file reads its planned bytes.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers.cli import cli_serving as serving
from helpers.mounts import nbdfuse_loop_mount

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
    with serving(m, tmp_path / "s.sock") as server:
        (tmp_path / "a.txt").write_bytes(b"changed\n")  # after planning, before any read
        with nbdfuse_loop_mount(server.sock, tmp_path) as mnt:
            assert sorted(os.listdir(mnt)) == ["a.txt", "b.bin", "g", "lost+found", "t"]
            assert (mnt / "b.bin").read_bytes() == big
            assert (mnt / "t").read_bytes() == b"tiny"
            assert (mnt / "a.txt").read_bytes() == b"hello world\n"  # planned, never the new bytes
            assert (mnt / "g").stat().st_size == 10
            with pytest.raises(OSError) as err:
                (mnt / "g").read_bytes()
            assert err.value.errno == errno.EIO
            assert (mnt / "b.bin").read_bytes()[:10] == big[:10]
        assert server.alive()
