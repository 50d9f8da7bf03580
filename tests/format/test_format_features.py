"""Feature flags: ``ext4gen inspect IMAGE`` names every bit exactly as ``dumpe2fs -h`` does.

dumpe2fs (libe2p) is the reference reader: for a mkfs.ext4 image with a
journal and resize_inode, for one with every bit of all three feature words
set (named and unnamed alike), and for an image ext4gen made.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import ext4gen
from ext4gen.format.features import FEATURE_NAMES, feature_names

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "E2FSPROGS_FAKE_TIME": "1700000000"}
# the feature words, at the offsets ext4.h's struct ext4_super_block gives them
FEATURE_WORDS = {"compat": 0x5C, "incompat": 0x60, "ro_compat": 0x64}


def _dumpe2fs_features(path: Path) -> list[str]:
    out = subprocess.run(["dumpe2fs", "-f", "-h", str(path)], capture_output=True, text=True,
                         env=ENV, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Filesystem features:"):
            return line.split(":", 1)[1].split()
    raise AssertionError(f"dumpe2fs printed no feature line:\n{out}")


def _inspect_features(path: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "ext4gen.cli", "inspect", str(path)],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("features:"):
            return line.split(":", 1)[1].split()
    raise AssertionError(f"inspect printed no feature line:\n{out}")


def _mkfs(path: Path, *options: str, size: str = "32M") -> Path:
    subprocess.run(["mkfs.ext4", "-q", "-F", *options, str(path), size], check=True,
                   capture_output=True, env=ENV)
    return path


def test_mkfs_default_image_with_journal_and_resize_inode(tmp_path: Path) -> None:
    img = _mkfs(tmp_path / "default.img", "-b", "4096")
    want = _dumpe2fs_features(img)
    assert {"has_journal", "resize_inode", "ext_attr", "dir_index"} <= set(want)
    assert _inspect_features(img) == want


def test_mkfs_image_with_rarer_features(tmp_path: Path) -> None:
    img = _mkfs(tmp_path / "rare.img", "-b", "4096", "-O",
                "quota,project,metadata_csum_seed,inline_data,large_dir,^resize_inode,sparse_super2,"
                "orphan_file,encrypt,casefold,stable_inodes")
    want = _dumpe2fs_features(img)
    assert {"quota", "project", "orphan_file", "casefold", "encrypt", "large_dir"} <= set(want)
    assert _inspect_features(img) == want


def test_every_bit_of_every_feature_word(tmp_path: Path) -> None:
    """Named bits by their names, unnamed ones as FEATURE_C/I/Rn, in dumpe2fs's order."""
    img = _mkfs(tmp_path / "all.img", "-b", "4096", size="8M")
    with open(img, "r+b") as f:
        for offset in FEATURE_WORDS.values():
            f.seek(1024 + offset)
            f.write(struct.pack("<I", 0xFFFFFFFF))
    want = _dumpe2fs_features(img)
    assert len(want) == 96
    got = _inspect_features(img)
    assert got == want
    named = sum(len(v) for v in FEATURE_NAMES.values())
    assert sum(not n.startswith("FEATURE_") for n in got) == named


def test_an_ext4gen_image(tmp_path: Path) -> None:
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    tree.add("/f", ext4gen.Node("file", ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0),
                                source=ext4gen.InlineSource(b"x" * 5000)))
    img = tmp_path / "gen.img"
    ext4gen.plan(tree).write(os.fspath(img))
    want = _dumpe2fs_features(img)
    assert "metadata_csum" in want and "read-only" in want
    assert _inspect_features(img) == want


@pytest.mark.parametrize(("kind", "mask", "names"), [
    ("compat", 0, []),
    ("compat", 0x0004 | 0x1000, ["has_journal", "orphan_file"]),
    ("compat", 1 << 7, ["FEATURE_C7"]),
    ("incompat", 0x0040 | 0x80000000, ["extent", "FEATURE_I31"]),
    ("ro_compat", 0x0010 | 0x0004, ["FEATURE_R2", "uninit_bg"]),
])
def test_feature_names(kind: str, mask: int, names: list[str]) -> None:
    assert feature_names(kind, mask) == names
