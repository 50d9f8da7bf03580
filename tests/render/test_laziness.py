"""Laziness: metadata never touches file data, and a read touches only what it covers.

This is what makes serving a terabyte tree cheap: the kernel's first reads
(superblock, descriptors, bitmaps, inode tables, directories) must not pull
file contents, and a data read must cost exactly its own bytes.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from helpers.readers import process_rchar

import ext4gen
from ext4gen.format.ondisk import BLOCK_SIZE
from ext4gen.layout.inline import MAX_INLINE_SIZE

META = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)


class CountingSource(ext4gen.Source):
    """Deterministic bytes (or zeros) that count every readinto call and byte."""

    def __init__(self, size: int, seed: int = 0, zeros: bool = False) -> None:
        self.size = size
        self.zeros = zeros
        self.data = b"" if zeros else random.Random(seed).randbytes(size)
        self.calls = 0
        self.bytes = 0

    def readinto(self, buf: memoryview, offset: int) -> None:
        self.calls += 1
        self.bytes += len(buf)
        assert 0 <= offset and offset + len(buf) <= self.size, "read outside the source"
        buf[:] = bytes(len(buf)) if self.zeros else self.data[offset : offset + len(buf)]

    def reset(self) -> None:
        self.calls = self.bytes = 0


def _tree(sources: dict[str, ext4gen.Source]) -> ext4gen.Tree:
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    for path, src in sources.items():
        tree.add(path, ext4gen.Node("file", META, source=src))
    return tree


def _sources() -> dict[str, CountingSource]:
    sizes = [1, 4095, 4096, 4097, 3 * BLOCK_SIZE, 10 * BLOCK_SIZE + 5, 100, 0, 7 * BLOCK_SIZE]
    out = {f"/d{i % 3}/f{i}": CountingSource(size, seed=i) for i, size in enumerate(sizes)}
    # duplicate files: with dedup "content" the second is served from the first's blocks
    out["/dup/a"] = CountingSource(3 * BLOCK_SIZE + 9, seed=42)
    out["/dup/b"] = CountingSource(3 * BLOCK_SIZE + 9, seed=42)
    return out


def _touched(sources: dict[str, CountingSource]) -> dict[str, int]:
    return {p: s.bytes for p, s in sources.items() if s.calls}


def _metadata_ranges(image: ext4gen.Image) -> list[tuple[int, int]]:
    geo = image.plan.geometry
    return [
        (1024, 1024),  # superblock
        (BLOCK_SIZE, geo.gdt_blocks * BLOCK_SIZE),  # group descriptors
        (geo.block_bitmap_start * BLOCK_SIZE, geo.groups * BLOCK_SIZE),
        (geo.inode_bitmap_start * BLOCK_SIZE, geo.groups * BLOCK_SIZE),
        (geo.inode_table_start * BLOCK_SIZE, geo.groups * geo.itable_blocks_per_group * BLOCK_SIZE),
    ]


@pytest.mark.parametrize("inline_data", [False, True])
@pytest.mark.parametrize("dedup", ["none", "content"])
def test_metadata_reads_touch_no_file_data(dedup: str, inline_data: bool) -> None:
    """With inline_data, a file of at most MAX_INLINE_SIZE bytes *is* inode content: only
    those may be read for the inode tables, and only for their own size."""
    sources = _sources()
    image = ext4gen.plan(_tree(sources), ext4gen.ImageOptions(dedup=dedup, inline_data=inline_data))
    if dedup == "none":
        assert _touched(sources) == {}, "planning with dedup='none' must not read file data"
    inline = {p: s.size for p, s in sources.items() if inline_data and 0 < s.size <= MAX_INLINE_SIZE}
    for s in sources.values():
        s.reset()
    for i, (offset, length) in enumerate(_metadata_ranges(image)):
        image.read(offset, length)
        touched = _touched(sources)
        if i < 4:  # superblock, descriptors, bitmaps
            assert touched == {}, f"metadata read at {offset} touched file data"
        else:  # inode tables
            assert set(touched) <= set(inline), touched
            assert all(touched[p] == inline[p] for p in touched), touched  # once, exactly
    # every region that is not file data, read block by block
    for start, end, kind in image.regions():
        if kind != "data":
            for pos in range(start, end, BLOCK_SIZE):
                image.read(pos, min(BLOCK_SIZE, end - pos))
    assert set(_touched(sources)) <= set(inline)
    assert image.stats.bytes_data == 0


def _expected_reads(image: ext4gen.Image, offset: int, length: int) -> dict[int, int]:
    """Bytes each source must deliver for a read, from the plan's data runs."""
    data_start = image.plan.geometry.data_start * BLOCK_SIZE
    want: dict[int, int] = {}
    for run in image.plan.runs:
        lo = data_start + run.block * BLOCK_SIZE
        hi = lo + run.nbytes
        overlap = min(hi, offset + length) - max(lo, offset)
        if overlap > 0:
            want[id(run.source)] = want.get(id(run.source), 0) + overlap
    return want


@pytest.mark.parametrize("dedup", ["none", "content"])
def test_a_read_touches_only_the_sources_it_covers(dedup: str) -> None:
    sources = _sources()
    # blocks only: inline files would make inode-table reads legitimately touch data
    image = ext4gen.plan(_tree(sources), ext4gen.ImageOptions(dedup=dedup, inline_data=False))
    by_id = {id(s): s for s in sources.values()}
    if dedup == "content":  # the duplicate is served from the first copy's blocks
        assert all(run.source is not sources["/dup/b"] for run in image.plan.runs)
    data_regions = [(s, e) for s, e, kind in image.regions() if kind == "data"]
    assert len(data_regions) >= 5
    lo = data_regions[0][0] - 2 * BLOCK_SIZE
    hi = image.size
    rnd = random.Random(1234)
    windows = [(s, e - s) for s, e in data_regions]  # exactly one region each
    windows += [(s + 1, 1) for s, _e in data_regions]  # a single byte inside
    windows += [(e, BLOCK_SIZE) for _s, e in data_regions if e + BLOCK_SIZE <= hi]  # after each
    for _ in range(300):
        start = rnd.randrange(lo, hi)
        windows.append((start, rnd.randrange(1, min(4 * BLOCK_SIZE, hi - start) + 1)))
    for offset, length in windows:
        for s in sources.values():
            s.reset()
        image.read(offset, length)
        want = _expected_reads(image, offset, length)
        got = {id(s): s.bytes for s in sources.values() if s.calls}
        assert got == want, (offset, length)
        assert all(by_id[k].calls >= 1 for k in want)


def test_partial_last_block_padding_reads_nothing() -> None:
    src = CountingSource(BLOCK_SIZE + 10, seed=5)
    image = ext4gen.plan(_tree({"/f": src}), ext4gen.ImageOptions(dedup="none", inline_data=False))
    (run,) = image.plan.runs
    pad_start = (image.plan.geometry.data_start + run.block) * BLOCK_SIZE + run.nbytes
    src.reset()
    assert image.read(pad_start, BLOCK_SIZE - 10) == bytes(BLOCK_SIZE - 10)
    assert src.calls == 0
    assert image.read(pad_start - 10, 10) == src.data[-10:]
    assert src.bytes == 10


TB = 1 << 40


def test_terabyte_of_data_plans_and_serves_superblock_without_reading_it() -> None:
    """1 TB of file data (no holes declared) with dedup none: nothing is read up front."""
    src = CountingSource(TB, zeros=True)
    t0 = time.perf_counter()
    image = ext4gen.plan(_tree({"/huge": src}), ext4gen.ImageOptions(dedup="none"))
    planning = time.perf_counter() - t0
    assert image.size > TB
    t1 = time.perf_counter()
    sb = image.read(1024, 1024)
    reading = time.perf_counter() - t1
    assert sb[0x38:0x3A] == b"\x53\xef"
    assert src.calls == 0 and src.bytes == 0
    assert planning < 10, f"planning 1 TB took {planning:.1f} s"
    assert reading <= planning + 0.05, (reading, planning)
    for offset, length in _metadata_ranges(image)[1:3]:
        image.read(offset, min(length, 64 * BLOCK_SIZE))
    assert src.calls == 0


def test_terabyte_manifest_of_size_and_host_file_reads_almost_nothing(tmp_path: Path) -> None:
    """Through the manifest: ``size`` files and a 1 TB (sparse) host file, dedup none.

    /proc/self/io counts every byte this process read, whatever path it took.
    """
    host = tmp_path / "tb.bin"
    with open(host, "wb") as f:
        f.truncate(TB)
        f.write(b"first bytes")
    manifest = tmp_path / "tb.toml"
    manifest.write_text(
        '[image]\ndedup = "none"\n'
        '["/host/tb"]\nsource = "tb.bin"\n'
        + "".join(f'["/sized/{i}"]\nsize = {TB // 4}\n' for i in range(4))
    )
    before = process_rchar()
    t0 = time.perf_counter()
    image = ext4gen.plan(*ext4gen.load(str(manifest)))
    planning = time.perf_counter() - t0
    sb = image.read(0, 2 * BLOCK_SIZE)
    read = process_rchar() - before
    assert sb[1024 + 0x38 : 1024 + 0x3A] == b"\x53\xef"
    assert read < 16 << 20, f"planning + superblock read {read} bytes"
    assert planning < 10
    assert os.path.getsize(host) == TB
