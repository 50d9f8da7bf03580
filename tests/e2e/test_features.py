"""One proof per core feature: e2fsck clean, kernel read-back exact, rw mount refused.

Each test builds the smallest manifest that exercises its feature and hands it
to ``prove`` (tests/conftest.py); extra assertions check what compare_tree
cannot see (directory sizes, holes, extent depth).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import prove

import ext4gen
from ext4gen.format.ondisk import BLOCK_SIZE

pytestmark = pytest.mark.root

EPOCH = 1_700_000_000


@pytest.mark.parametrize("inline_data", [True, False])
def test_regular_files_of_every_content_kind(tmp_path: Path, inline_data: bool) -> None:
    host = tmp_path / "host.bin"
    host_bytes = os.urandom(3 * BLOCK_SIZE + 17)
    host.write_bytes(host_bytes)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rel.txt").write_bytes(b"relative to the manifest\n")
    blob = bytes(range(256)) * 40 + b"tail"
    doc = {
        "image": {"inline_data": inline_data},
        "defaults": {"mtime": EPOCH},
        "/text/ascii": {"text": "hello\n"},
        "/text/inline_max": {"text": "i" * 128},
        "/text/inline_max_plus_1": {"text": "j" * 129},
        "/text/utf8": {"text": "grüße, 世界 🌍\n" * 300},
        "/b64/small": {"base64": base64.b64encode(b"\x00\x01\xfe\xff").decode()},
        "/b64/blocks": {"base64": base64.b64encode(blob).decode()},
        "/host/abs": {"source": str(host)},
        "/host/rel": {"source": "sub/rel.txt"},
        "/sparse/one_block": {"size": BLOCK_SIZE},
        "/sparse/odd": {"size": 10 * BLOCK_SIZE + 3},
        "/empty/text": {"text": ""},
        "/empty/size": {"size": 0},
        "/empty/default": {"type": "file"},
    }

    def extra(mnt: str) -> None:
        with open(os.path.join(mnt, "host/abs"), "rb") as f:
            assert f.read() == host_bytes
        st = os.stat(os.path.join(mnt, "sparse/odd"))
        assert st.st_size == 10 * BLOCK_SIZE + 3
        assert st.st_blocks == 0, "a size-only file must be one hole"
        for name in ("empty/text", "empty/size", "empty/default"):
            st = os.stat(os.path.join(mnt, name))
            assert (st.st_size, st.st_blocks) == (0, 0)
            assert stat.S_ISREG(st.st_mode)

    prove(doc, tmp_path, while_mounted=extra)


@pytest.mark.parametrize("inline_data", [True, False])
def test_directories_empty_nested_and_explicit(tmp_path: Path, inline_data: bool) -> None:
    deep = "/" + "/".join(f"level{i:02d}" for i in range(40))
    doc = {
        "image": {"inline_data": inline_data},
        "defaults": {"mtime": EPOCH, "dir_mode": "0750"},
        "/empty": {"type": "dir"},
        "/also/empty/below/implied": {"type": "dir", "mode": "0700", "mtime": EPOCH + 5},
        # an explicit directory refines one that a later entry would imply
        "/explicit": {"type": "dir", "mode": "0711", "uid": 7, "gid": 8, "mtime": EPOCH + 1},
        "/explicit/child": {"text": "x"},
        deep + "/leaf": {"text": "deep\n"},
        "/": {"type": "dir", "mode": "0755", "mtime": EPOCH + 9},
    }

    def extra(mnt: str) -> None:
        assert os.listdir(os.path.join(mnt, "empty")) == []
        assert stat.S_IMODE(os.stat(os.path.join(mnt, "also")).st_mode) == 0o750
        assert os.stat(mnt).st_mtime == EPOCH + 9

    prove(doc, tmp_path, while_mounted=extra)


def test_directory_spanning_several_blocks(tmp_path: Path) -> None:
    doc: dict[str, object] = {"defaults": {"mtime": EPOCH}}
    for i in range(400):
        doc[f"/big/{'n' * 40}{i:04d}"] = {"text": str(i)}
    for i in range(150):  # subdirectories exercise the dir's own link count too
        doc[f"/big/d{i:03d}"] = {"type": "dir"}

    def extra(mnt: str) -> None:
        st = os.stat(os.path.join(mnt, "big"))
        assert st.st_size >= 4 * BLOCK_SIZE and st.st_size % BLOCK_SIZE == 0
        assert st.st_nlink == 2 + 150

    prove(doc, tmp_path, while_mounted=extra)


def test_symlinks_fast_and_slow(tmp_path: Path) -> None:
    targets = {
        "/l/one": "x",
        "/l/fast59": "f" * 59,
        "/l/slow60": "s" * 60,
        "/l/slow_utf8": "ü" * 500,
        "/l/max": "/" + "m" * 4094,
        "/l/dangling": "/no/such/thing",
        "/l/relative": "../data/file",
    }
    doc: dict[str, object] = {"defaults": {"mtime": EPOCH}, "/data/file": {"text": "target\n"}}
    for path, target in targets.items():
        doc[path] = {"type": "symlink", "target": target}
    doc["/l/moded"] = {"type": "symlink", "target": "x", "mode": "0644", "uid": 5}

    def extra(mnt: str) -> None:
        with open(os.path.join(mnt, "l/relative")) as f:
            assert f.read() == "target\n"
        assert len(os.readlink(os.path.join(mnt, "l/max"))) == 4095

    prove(doc, tmp_path, while_mounted=extra)


def test_hard_links_share_inode_and_count(tmp_path: Path) -> None:
    doc = {
        "defaults": {"mtime": EPOCH},
        "/a/file": {"text": "shared\n", "mode": "0640", "uid": 1000},
        "/a/again": {"type": "hardlink", "target": "/a/file"},
        "/b/elsewhere": {"type": "hardlink", "target": "/a/file"},
        "/b/chain": {"type": "hardlink", "target": "/b/elsewhere"},
        "/c/link": {"type": "symlink", "target": "/a/file"},
        "/c/link2": {"type": "hardlink", "target": "/c/link"},
        "/d/declared_before_target": {"type": "hardlink", "target": "/z/late"},
        "/z/late": {"size": 5},
    }

    def extra(mnt: str) -> None:
        st = os.stat(os.path.join(mnt, "a/file"))
        assert st.st_nlink == 4
        assert os.stat(os.path.join(mnt, "b/chain")).st_ino == st.st_ino
        assert os.lstat(os.path.join(mnt, "c/link2")).st_nlink == 2
        assert os.stat(os.path.join(mnt, "z/late")).st_nlink == 2

    prove(doc, tmp_path, while_mounted=extra)


def test_modes_including_setuid_setgid_sticky(tmp_path: Path) -> None:
    modes = ["4755", "2755", "6711", "1777", "7777", "0000", "0400", "0644", "0111"]
    doc: dict[str, object] = {"defaults": {"mtime": EPOCH}}
    for m in modes:
        doc[f"/f/{m}"] = {"text": m, "mode": m}
        doc[f"/d/{m}"] = {"type": "dir", "mode": m}
    doc["/f/int"] = {"text": "int mode", "mode": 0o4711}
    prove(doc, tmp_path)


def test_32bit_owners(tmp_path: Path) -> None:
    ids = [0, 1, 65535, 65536, 70000, 1 << 31, 4294967294]
    doc: dict[str, object] = {"defaults": {"mtime": EPOCH, "uid": 100000, "gid": 200000}}
    for i, uid in enumerate(ids):
        doc[f"/u{i}"] = {"text": str(uid), "uid": uid, "gid": ids[-1 - i]}
        doc[f"/dir{i}"] = {"type": "dir", "uid": uid, "gid": uid}
    doc["/by_default"] = {"text": "defaults"}
    prove(doc, tmp_path)


def test_times_with_nanoseconds_across_ext4_range(tmp_path: Path) -> None:
    stamps = {
        "epoch": "0",
        "neg_frac": "-1.5",
        "just_before_1970": "-0.000000001",
        "y1901_min": "-2147483648",
        "y1950": "1950-06-01T12:00:00.123456789Z",
        "ns": "1700000000.000000001",
        "y2038_last": "2147483647.999999999",
        "y2038_after": "2147483648",
        "y2106": "4294967296.5",
        "offset_tz": "2204-02-29T23:59:59.5+05:30",
        "y2446_max": "2446-05-10T22:38:55.999999999Z",
    }
    doc: dict[str, object] = {}
    names = list(stamps)
    for i, (name, t) in enumerate(stamps.items()):
        other = stamps[names[(i + 3) % len(names)]]
        doc[f"/t/{name}"] = {"text": name, "mtime": t, "atime": other,
                             "ctime": stamps[names[(i + 5) % len(names)]], "crtime": t}
        doc[f"/dirs/{name}"] = {"type": "dir", "mtime": other, "crtime": t}
        doc[f"/links/{name}"] = {"type": "symlink", "target": name, "mtime": t, "crtime": other}
    doc["/t/int_seconds"] = {"size": 1, "mtime": 1234567890, "crtime": 42}

    def extra(mnt: str) -> None:
        st = os.stat(os.path.join(mnt, "t/y2446_max"))
        assert st.st_mtime_ns == ((1 << 34) - (1 << 31)) * 10**9 - 1
        assert os.stat(os.path.join(mnt, "t/neg_frac")).st_mtime_ns == -1_500_000_000

    prove(doc, tmp_path, while_mounted=extra)


def test_far_future_and_past_default_times(tmp_path: Path) -> None:
    """Entry times anywhere in ext4's range must not make the superblock itself invalid
    (e2fsck complains about a last-write time in the future)."""
    doc = {"defaults": {"mtime": "2200-01-01T00:00:00Z"}, "/a": {"text": "x"},
           "/b": {"text": "y", "mtime": "1901-12-14T00:00:00Z"}}
    prove(doc, tmp_path)


def test_large_sparse_file_over_4gib(tmp_path: Path) -> None:
    size = 5 * (1 << 30) + 123
    doc = {"/huge": {"size": size}, "/small": {"text": "after the hole\n"}}

    def extra(mnt: str) -> None:
        path = os.path.join(mnt, "huge")
        st = os.stat(path)
        assert st.st_size == size and st.st_blocks == 0
        with open(path, "rb") as f:
            with pytest.raises(OSError):  # ENXIO: no data anywhere
                os.lseek(f.fileno(), 0, os.SEEK_DATA)
            f.seek(size - 10)
            assert f.read() == bytes(10)
            f.seek(1 << 32)
            assert f.read(4096) == bytes(4096)

    # reading 5 GiB of holes back proves nothing more than SEEK_DATA does
    prove(doc, tmp_path, check_content=False, while_mounted=extra)


class _PatternSource(ext4gen.Source):
    """Zeros except for a few distinct data blocks at chosen byte offsets (cheap to plan)."""

    def __init__(self, size: int, blocks: dict[int, bytes]) -> None:
        self.size = size
        self.blocks = blocks

    def data_ranges(self) -> list[tuple[int, int]]:
        """Only the marks can hold data: the planner need not hash 4 GiB of zeros."""
        return sorted((at, at + len(data)) for at, data in self.blocks.items())

    def readinto(self, buf: memoryview, offset: int) -> None:
        buf[:] = bytes(len(buf))
        end = offset + len(buf)
        for at, data in self.blocks.items():
            lo, hi = max(at, offset), min(at + len(data), end)
            if lo < hi:
                buf[lo - offset : hi - offset] = data[lo - at : hi - at]


def test_large_file_with_data_beyond_4gib(tmp_path: Path) -> None:
    """i_size_high and extents past logical block 2^20: data on both sides of 4 GiB."""
    size = (1 << 32) + 3 * BLOCK_SIZE + 100
    marks = {0: b"start" * 800, (1 << 32) - 10: b"straddles 4 GiB",
             (1 << 32) + BLOCK_SIZE: os.urandom(BLOCK_SIZE), size - 100: b"E" * 100}
    src = _PatternSource(size, marks)
    meta = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    tree.add("/big", ext4gen.Node("file", meta, source=src))

    def extra(mnt: str) -> None:
        with open(os.path.join(mnt, "big"), "rb") as f:
            st = os.fstat(f.fileno())
            assert st.st_size == size
            assert st.st_blocks == 5 * BLOCK_SIZE // 512  # five non-zero blocks
            for at, data in marks.items():
                f.seek(at)
                assert f.read(len(data)) == data, at
            assert os.lseek(f.fileno(), BLOCK_SIZE, os.SEEK_DATA) == (1 << 32) - BLOCK_SIZE

    prove(tree, tmp_path, check_content=False, while_mounted=extra)


def test_json_and_toml_manifests_give_identical_images(tmp_path: Path) -> None:
    (tmp_path / "src.bin").write_bytes(b"host bytes\n" * 1000)
    toml = """
[image]
label = "same"
dedup = "content"

[defaults]
uid = 1000
gid = 1000
mode = "0640"
dir_mode = "0750"
mtime = "2024-01-02T03:04:05.123456789Z"

["/etc/hostname"]
text = "box\\n"
mode = "0644"

["/bin/tool"]
source = "src.bin"
mode = 0o4755
crtime = -5

["/var/empty"]
type = "dir"

["/var/sparse"]
size = 100000

["/lib/link"]
type = "symlink"
target = "../bin/tool"

["/lib/hard"]
type = "hardlink"
target = "/bin/tool"

["/blob"]
base64 = "AAECAwQ="
"""
    json_doc = {
        "image": {"label": "same", "dedup": "content"},
        "defaults": {"uid": 1000, "gid": 1000, "mode": "0640", "dir_mode": "0750",
                     "mtime": "2024-01-02T03:04:05.123456789Z"},
        "/etc/hostname": {"text": "box\n", "mode": "0644"},
        "/bin/tool": {"source": "src.bin", "mode": 0o4755, "crtime": -5},
        "/var/empty": {"type": "dir"},
        "/var/sparse": {"size": 100000},
        "/lib/link": {"type": "symlink", "target": "../bin/tool"},
        "/lib/hard": {"type": "hardlink", "target": "/bin/tool"},
        "/blob": {"base64": "AAECAwQ="},
    }
    (tmp_path / "m.toml").write_text(toml)
    (tmp_path / "m.json").write_text(json.dumps(json_doc))
    from_toml = ext4gen.plan(*ext4gen.load(str(tmp_path / "m.toml")))
    from_json = ext4gen.plan(*ext4gen.load(str(tmp_path / "m.json")))
    assert from_toml.size == from_json.size
    assert from_toml.read(0, from_toml.size) == from_json.read(0, from_json.size)
    out = tmp_path / "toml"
    out.mkdir()
    prove(tmp_path / "m.toml", out)
