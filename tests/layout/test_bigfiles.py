"""Big files: over 4 GiB, over 128 GiB and up to ext4's 16 TiB limit, with minimal extent trees.

A tree is minimal when it has the fewest levels and blocks its extent count
allows (4 entries in the inode, 340 per 4 KiB block); e2fsck -fn says so
("could be narrower/shorter" would be a complaint) and debugfs shows the
entries per level, which must equal :func:`minimal_levels`.  Data comes from
sparse host files (SEEK_DATA runs), from alternating duplicate blocks under
dedup, and from a 3 TiB generator whose image is checked without producing
its data.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from helpers.mounts import mounted, scratch_tmpfs
from helpers.readers import debugfs, image_offset
from helpers.trees import BLOCK

import ext4gen
from ext4gen.render.image import DATA, ZERO
from ext4gen.verify import compare_tree, e2fsck

pytestmark = pytest.mark.root

GiB = 1 << 30
ROOT_ENTRIES, BLOCK_ENTRIES = 4, 340
MAX_SIZE = ((1 << 32) - 1) * BLOCK  # ext4 with 4 KiB blocks: 2^32 - 1 logical blocks


def minimal_levels(n_extents: int) -> list[int]:
    """Entries per level, root first, of the smallest extent tree holding ``n_extents``."""
    levels = [n_extents]
    while levels[0] > ROOT_ENTRIES:
        levels.insert(0, -(-levels[0] // BLOCK_ENTRIES))
    return levels


def extent_levels(image: Path, path: str) -> list[int]:
    """Entries per level as debugfs's ``ex`` (dump_extents) lists them."""
    counts: dict[int, int] = {}
    for line in debugfs(image, f"ex {path}").splitlines()[1:]:
        m = re.match(r"\s*(\d+)/\s*(\d+)", line)
        if m:
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    return [counts[k] for k in sorted(counts)]


def _sparse_file(path: Path, size: int, runs: list[tuple[int, int]], seed: int) -> None:
    """``size`` bytes, data (random, never zero blocks) only in ``runs`` of (offset, length)."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in runs:
            os.pwrite(f.fileno(), rnd.randbytes(length).replace(b"\0", b"\1"), off)


SPARSE_CASES = {
    # name: (size, runs); each run block-aligned and apart, so one run = one extent
    "over4g_depth0": (5 * GiB + 1234, [(0, 2 * BLOCK), ((1 << 32) - BLOCK, 2 * BLOCK),
                                       (5 * GiB, 1234)]),
    "over4g_depth1": (6 * GiB, [(i * 6 * (1 << 20) + (i % 5) * BLOCK, BLOCK * (1 + i % 3))
                                for i in range(1000)]),
    "over128g_depth2": (200 * GiB, [(i * 128 * (1 << 20) + (i % 7) * BLOCK, BLOCK) for i in range(1600)]),
    "max_size": (MAX_SIZE, [(0, BLOCK), (128 * GiB - BLOCK, 2 * BLOCK), (MAX_SIZE - BLOCK, BLOCK)]),
}


@pytest.mark.slow
def test_sparse_host_files_get_minimal_extent_trees(tmp_path: Path, ext4_image) -> None:
    with scratch_tmpfs(tmp_path / "tmpfs", size="64m") as fs:  # noatime: reads leave atimes alone
        _check_sparse_cases(fs / "src", ext4_image)


def _check_sparse_cases(src: Path, ext4_image) -> None:
    src.mkdir()
    for i, (name, (size, runs)) in enumerate(SPARSE_CASES.items()):
        _sparse_file(src / name, size, runs, seed=i)
    image = ext4_image(src)
    rc, complaints = e2fsck(str(image))
    assert (rc, complaints) == (0, []), "\n".join(complaints)  # incl. "could be narrower/shorter"
    for name, (_size, runs) in SPARSE_CASES.items():
        assert extent_levels(image, f"/{name}") == minimal_levels(len(runs)), name
    assert minimal_levels(1600)[0] == 1 and len(minimal_levels(1600)) == 3  # the 200 GiB file: depth 2
    tree, _options = ext4gen.load(str(src))
    with mounted(image) as mnt:
        diffs = compare_tree(tree, mnt)  # hole-aware: reads only the data runs
        assert diffs == [], "\n".join(diffs[:20])
        for name, (size, runs) in SPARSE_CASES.items():
            st = os.stat(os.path.join(mnt, name))
            data_blocks = sum(-(-length // BLOCK) for _o, length in runs)
            tree_blocks = sum(minimal_levels(len(runs))[:-1])  # every level below the root is blocks
            assert (st.st_size, st.st_blocks * 512) == (size, (data_blocks + tree_blocks) * BLOCK), name
        with open(os.path.join(mnt, "max_size"), "rb") as f, open(src / "max_size", "rb") as h:
            f.seek(MAX_SIZE - BLOCK)
            h.seek(MAX_SIZE - BLOCK)
            assert f.read() == h.read() != bytes(BLOCK)  # the very last logical block


def test_alternating_duplicate_blocks_over_4gib_make_a_deep_minimal_tree(tmp_path: Path,
                                                                         ext4_image) -> None:
    """dedup="content": every other block repeats the first, so each block is its own extent."""
    n = 3000
    start = (1 << 32) - 1000 * BLOCK  # straddles the 4 GiB boundary
    rnd = random.Random(7)
    first = rnd.randbytes(BLOCK)
    host = tmp_path / "alternating.bin"
    with open(host, "wb") as f:
        f.truncate(5 * GiB)
        blocks = [first if i % 2 else (first if i == 0 else rnd.randbytes(BLOCK)) for i in range(n)]
        os.pwrite(f.fileno(), b"".join(blocks), start)
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    tree.add("/alt", ext4gen.Node("file", ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0),
                                  source=ext4gen.HostFileSource(host, detect_holes=True)))
    options = ext4gen.ImageOptions(dedup="content")
    assert ext4gen.plan(tree, options).plan.shared_blocks
    path = ext4_image((tree, options))
    rc, complaints = e2fsck(str(path))
    assert (rc, complaints) == (0, []), "\n".join(complaints)
    levels = extent_levels(path, "/alt")
    # every block is its own extent except blocks 1-2 (copy of block 0 at P0, then the next unique at P1)
    assert levels == minimal_levels(n - 1), levels
    assert len(levels) == 3, "over 1,360 extents need depth 2"
    with mounted(path) as mnt:
        diffs = compare_tree(tree, mnt)
        assert diffs == [], "\n".join(diffs[:20])


def _metadata_image(image: ext4gen.Image, out: Path, data_offsets: list[int]) -> None:
    """Write every metadata byte of ``image`` plus the data blocks at ``data_offsets`` only.

    e2fsck and the kernel never read file data they are not asked for, so this
    checks a 3 TiB file's image without producing 3 TiB.
    """
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, image.size)
        for start, end, kind in image.regions():
            if kind in (DATA, ZERO):
                continue
            pos = start
            while pos < end:
                step = min(end - pos, 16 << 20)
                chunk = image.read(pos, step)
                if chunk.count(0) != step:
                    os.pwrite(fd, chunk, pos)
                pos += step
        for at in data_offsets:
            os.pwrite(fd, image.read(at, BLOCK), at)
    finally:
        os.close(fd)


def _stamp(offset: int, length: int) -> bytes:
    return (offset.to_bytes(8, "little") * (length // 8 + 1))[:length]


@pytest.mark.slow
def test_3tib_generator_file_has_a_minimal_tree_and_48bit_block_count(tmp_path: Path) -> None:
    size = 3 << 40  # > 2^32 sectors: i_blocks needs its high bits (huge_file)
    calls: list[tuple[int, int]] = []

    def gen(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return _stamp(offset, length)

    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    tree.add("/weights.bin", ext4gen.Node("file", ext4gen.Meta(0o444, 0, 0, 0, 0, 0, 0),
                                          source=ext4gen.CallableSource(size, gen)))
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none"))
    samples = [0, 4 * GiB - BLOCK, 4 * GiB, 128 * GiB, 2 * (1 << 40) + 12345 * BLOCK, size - BLOCK]
    offsets = [image_offset(image, b"/weights.bin", s) for s in samples]
    assert None not in offsets
    path = tmp_path / "gen.ext4"
    _metadata_image(image, path, offsets)  # type: ignore[arg-type]
    assert sorted(calls) == sorted((s, BLOCK) for s in samples), "only the sampled blocks are generated"
    rc, complaints = e2fsck(str(path))
    assert (rc, complaints) == (0, []), "\n".join(complaints)
    n_extents = size // BLOCK // 32768  # EXT_INIT_MAX_LEN blocks per extent
    assert extent_levels(path, "/weights.bin") == minimal_levels(n_extents)
    with mounted(path) as mnt:
        st = os.stat(os.path.join(mnt, "weights.bin"))
        tree_blocks = sum(minimal_levels(n_extents)[:-1])
        assert (st.st_size, st.st_blocks) == (size, (size + tree_blocks * BLOCK) // 512)
        fd = os.open(os.path.join(mnt, "weights.bin"), os.O_RDONLY)
        try:
            for s in samples:
                assert os.pread(fd, BLOCK, s) == _stamp(s, BLOCK), s
        finally:
            os.close(fd)


def test_manifest_host_source_keeps_its_holes(tmp_path: Path, ext4_image) -> None:
    """A sparse host file named by ``source =`` keeps its holes, as a directory import does
    (SEEK_DATA/SEEK_HOLE), instead of allocating (dedup none) or reading (dedup content) them."""
    size = 8 * GiB
    runs = [(0, BLOCK), (5 * GiB, 3 * BLOCK), (size - 100, 100)]
    _sparse_file(tmp_path / "sparse.bin", size, runs, seed=11)
    manifest = tmp_path / "m.toml"
    manifest.write_text('[image]\ndedup = "none"\n["/sparse"]\nsource = "sparse.bin"\n')
    tree, options = ext4gen.load(str(manifest))
    image = ext4gen.plan(tree, options)
    data_blocks = image.block_counts()["data"]
    assert data_blocks == 5, f"{data_blocks} data blocks for 5 blocks of data: the holes were allocated"
    with mounted(ext4_image(manifest)) as mnt:
        assert os.stat(os.path.join(mnt, "sparse")).st_blocks * 512 == 5 * BLOCK  # 3 extents: in the inode
        diffs = compare_tree(tree, mnt)
        assert diffs == [], "\n".join(diffs)
