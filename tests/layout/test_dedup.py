"""Dedup: identical blocks stored once, zeros as holes, hash hits confirmed by bytes.

The expected block counts are computed here from the raw file contents, and
the on-disk sharing is read back with debugfs (independent of the planner),
so "blocks used = unique non-zero data blocks + metadata" is checked twice.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from conftest import prove
from helpers.readers import superblock

import ext4gen
import ext4gen.layout.dedup
from ext4gen.format.ondisk import BLOCK_SIZE, RO_COMPAT_SHARED_BLOCKS
from ext4gen.layout.inline import MAX_INLINE_SIZE

pytestmark = pytest.mark.root

META = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)


def _blocks_only(dedup: str = "content") -> ext4gen.ImageOptions:
    """Dedup is about blocks: keep small files out of their inodes unless a test says so."""
    return ext4gen.ImageOptions(dedup=dedup, inline_data=False)


def _blocks(seed: int, n: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(BLOCK_SIZE) for _ in range(n)]


U1, U2, U3, U4, X = _blocks(1, 5)
Z = bytes(BLOCK_SIZE)
TAIL = b"t" * 100

CONTENTS: dict[str, bytes] = {
    "/a": U1 + U2 + X + X,  # a block repeated inside one file
    "/b": X + U3 + Z + U1 + TAIL,  # a hole in the middle, a partial last block
    "/dup/a_copy": U1 + U2 + X + X,  # a duplicate file
    "/zeros": Z * 3,  # stored zeros become one hole
    "/tail_only": TAIL,  # equals /b's padded last block
    "/unique": U4 + b"u" * 10,
    "/empty": b"",
}


def _tree(contents: dict[str, bytes] = CONTENTS, holes: dict[str, int] | None = None) -> ext4gen.Tree:
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    for path, data in contents.items():
        tree.add(path, ext4gen.Node("file", META, source=ext4gen.InlineSource(data)))
    for path, size in (holes or {"/hole": 1 << 30}).items():
        tree.add(path, ext4gen.Node("file", META, source=ext4gen.ZeroSource(size)))
    return tree


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0") for i in range(0, len(data), BLOCK_SIZE)]


def _inline(data: bytes) -> bool:
    return 0 < len(data) <= MAX_INLINE_SIZE


def _expected(contents: dict[str, bytes], inline: bool = False) -> tuple[int, int, int]:
    """(unique non-zero blocks, non-zero block references, all-zero blocks)."""
    refs = [b for data in contents.values() if not (inline and _inline(data)) for b in _split(data)]
    nonzero = [b for b in refs if b != Z]
    return len(set(nonzero)), len(nonzero), len(refs) - len(nonzero)


def _metadata_blocks(image: ext4gen.Image) -> int:
    counts = image.block_counts()
    return sum(n for kind, n in counts.items() if kind not in ("data", "free"))


def _used_blocks(image: ext4gen.Image) -> int:
    sb = superblock(image)
    total = sb.s_blocks_count_lo | (sb.s_blocks_count_hi << 32)
    free = sb.s_free_blocks_count_lo | (sb.s_free_blocks_count_hi << 32)
    return total - free


def _debugfs_blocks(image_path: Path, path: str) -> list[int]:
    out = subprocess.run(["debugfs", "-R", f"blocks {path}", str(image_path)], capture_output=True,
                         text=True, check=True).stdout
    return [int(x) for x in out.split()]


def test_blocks_used_are_unique_nonzero_blocks_plus_metadata(tmp_path: Path) -> None:
    unique, refs, zeros = _expected(CONTENTS)
    assert (unique, refs) == (7, 15)  # U1 U2 X U3 TAIL U4 u*10; guards the fixture itself

    def extra(mnt: str) -> None:
        for path, data in CONTENTS.items():
            st = os.stat(mnt + path)
            nonzero = sum(1 for b in _split(data) if b != Z)
            assert st.st_blocks == nonzero * (BLOCK_SIZE // 512), path
        with open(mnt + "/b", "rb") as f:
            assert os.lseek(f.fileno(), 0, os.SEEK_HOLE) == 2 * BLOCK_SIZE
            assert os.lseek(f.fileno(), 2 * BLOCK_SIZE, os.SEEK_DATA) == 3 * BLOCK_SIZE

    proof = prove(_tree(), tmp_path, options=_blocks_only(), while_mounted=extra)
    image = proof.image
    assert image.block_counts()["data"] == unique
    assert _used_blocks(image) == _metadata_blocks(image) + unique
    stats = image.plan.dedup_stats
    assert stats.unique_blocks == unique
    assert stats.data_blocks_referenced == refs
    assert stats.shared_references == refs - unique
    assert stats.zero_blocks == zeros
    assert stats.collisions == 0

    # On disk (debugfs, not the planner): equal content <=> equal physical block.
    where: dict[bytes, set[int]] = {}
    for path, data in CONTENTS.items():
        phys = _debugfs_blocks(proof.path, path)
        nonzero = [b for b in _split(data) if b != Z]
        assert len(phys) == len(nonzero), path
        for content, block in zip(nonzero, phys, strict=True):
            where.setdefault(content, set()).add(block)
    assert all(len(blocks) == 1 for blocks in where.values())
    assert len({b for blocks in where.values() for b in blocks}) == unique
    assert superblock(proof.path).s_feature_ro_compat & RO_COMPAT_SHARED_BLOCKS


def test_dedup_none_stores_every_block(tmp_path: Path) -> None:
    stored = sum(-(-len(d) // BLOCK_SIZE) for d in CONTENTS.values())
    proof = prove(_tree(), tmp_path, options=_blocks_only("none"))
    image = proof.image
    assert image.block_counts()["data"] == stored
    assert _used_blocks(image) == _metadata_blocks(image) + stored
    assert not image.plan.shared_blocks
    assert not superblock(image).s_feature_ro_compat & RO_COMPAT_SHARED_BLOCKS
    phys = [b for path in CONTENTS for b in _debugfs_blocks(proof.path, path)]
    assert len(phys) == len(set(phys)) == stored


@pytest.mark.parametrize(("contents", "shared"), [
    ({"/a": U1, "/b": U2 + U3, "/c": TAIL}, False),
    ({"/a": U1 + Z + U2, "/b": Z * 4}, False),  # zeros are holes, not shared blocks
    ({"/a": U1 + U1}, True),  # within one file
    ({"/a": U1, "/b": U2 + U1}, True),  # across files
    ({"/a": TAIL, "/b": TAIL + b"\0" * 10}, True),  # equal once padded
])
def test_shared_blocks_flag_iff_a_block_is_shared(tmp_path: Path, contents: dict[str, bytes],
                                                  shared: bool) -> None:
    proof = prove(_tree(contents, holes={}), tmp_path, options=_blocks_only())
    flag = bool(superblock(proof.image).s_feature_ro_compat & RO_COMPAT_SHARED_BLOCKS)
    assert flag == shared == proof.image.plan.shared_blocks
    assert proof.image.block_counts()["data"] == _expected(contents)[0]


def test_crafted_hash_collision_is_not_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block hashes alike: only a byte comparison can tell them apart."""
    calls = []

    def colliding(block: bytes | memoryview) -> bytes:
        calls.append(1)
        return b"\x42" * 16

    monkeypatch.setattr(ext4gen.layout.dedup, "block_hash", colliding)
    contents = {"/a": U1 + U2 + U3, "/b": U3 + U2 + U4 + Z, "/c": X + TAIL, "/d": TAIL}
    unique, refs, _zeros = _expected(contents)
    proof = prove(_tree(contents), tmp_path, options=_blocks_only())
    assert calls, "the planner no longer hashes through ext4gen.layout.dedup.block_hash"
    stats = proof.image.plan.dedup_stats
    assert stats.unique_blocks == proof.image.block_counts()["data"] == unique
    assert stats.shared_references == refs - unique
    assert stats.collisions > 0
    for path, data in contents.items():  # prove() already compared every byte via the kernel
        assert len(_debugfs_blocks(proof.path, path)) == sum(1 for b in _split(data) if b != Z)


def test_inline_files_take_no_data_blocks(tmp_path: Path) -> None:
    """With inline_data (the default) files of 1..MAX_INLINE_SIZE bytes live in their inode:
    they neither use nor share data blocks, and the accounting still holds."""
    contents = {**CONTENTS, "/tiny": b"t", "/max_inline": b"m" * MAX_INLINE_SIZE,
                "/just_over": b"o" * (MAX_INLINE_SIZE + 1), "/tail_again": TAIL}
    unique, refs, _zeros = _expected(contents, inline=True)

    def extra(mnt: str) -> None:
        for path, data in contents.items():
            st = os.stat(mnt + path)
            if _inline(data):  # the kernel reports one sector per 512 bytes of inline data
                assert st.st_blocks == -(-len(data) // 512), path
            else:
                nonzero = sum(1 for b in _split(data) if b != Z)
                assert st.st_blocks == nonzero * (BLOCK_SIZE // 512), path

    proof = prove(_tree(contents), tmp_path, while_mounted=extra)
    image = proof.image
    assert image.block_counts()["data"] == unique
    assert _used_blocks(image) == _metadata_blocks(image) + unique
    assert image.plan.dedup_stats.data_blocks_referenced == refs
    for path, data in contents.items():
        if _inline(data):
            assert _debugfs_blocks(proof.path, path) == [], path
