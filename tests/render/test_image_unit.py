"""render/image.py's Image on its own: its region map, reads across regions, zeros, extents.

The expected bytes come from outside the Image: file contents from the
sources the test wrote, positions from the Plan's extents, group flags from
the descriptors parsed with the on-disk definitions, and the image read one
block at a time (every block lies inside one region) as the reference for
reads that cross region boundaries.
"""

from __future__ import annotations

import itertools
import random

import pytest

import ext4gen
from ext4gen.format.definitions import ext4_group_desc
from ext4gen.format.ondisk import BLOCK_SIZE, BLOCKS_PER_GROUP, DESC_SIZE, EXT4_BG_INODE_UNINIT
from ext4gen.model.options import ImageOptions
from ext4gen.render.image import DATA, META, ZERO, Image

EXT4_SUPER_MAGIC = 0xEF53


def _meta(perm: int = 0o644) -> ext4gen.Meta:
    return ext4gen.Meta(perm, 0, 0, 0, 0, 0, 0)


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class Pattern(ext4gen.Source):
    """Unique non-zero blocks without storing them: block ``b`` is ``b`` repeated."""

    def __init__(self, size: int) -> None:
        self.size = size

    def readinto(self, buf: memoryview, offset: int) -> None:
        first = offset // BLOCK_SIZE
        last = -(-(offset + len(buf)) // BLOCK_SIZE)
        data = b"".join((b + 1).to_bytes(8, "little") * (BLOCK_SIZE // 8) for b in range(first, last))
        skip = offset - first * BLOCK_SIZE
        buf[:] = data[skip : skip + len(buf)]


CONTENTS = {  # what each file holds; host files but /b/text
    "/a/first": _rand(1, BLOCK_SIZE),
    # its second block is /a/first's: under dedup the rest is two runs of one host file
    "/a/split": _rand(2, BLOCK_SIZE) + _rand(1, BLOCK_SIZE) + _rand(3, 2 * BLOCK_SIZE + 123),
    "/b/odd": _rand(4, 5000),
    "/b/text": b"inline bytes that are not inline data\n" * 200,
}


@pytest.fixture(scope="module")
def contents() -> dict[str, bytes]:
    return CONTENTS


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    base = tmp_path_factory.mktemp("image-unit")
    tree = ext4gen.Tree(_meta(0o755))
    for i, (path, data) in enumerate(CONTENTS.items()):
        if path == "/b/text":
            source: ext4gen.Source = ext4gen.InlineSource(data)
        else:
            (base / f"f{i}").write_bytes(data)
            source = ext4gen.HostFileSource(str(base / f"f{i}"))
        tree.add(path, ext4gen.Node("file", _meta(), source=source))
    tree.add("/sparse", ext4gen.Node("file", _meta(), source=ext4gen.ZeroSource(10 * BLOCK_SIZE)))
    return ext4gen.plan(tree, ImageOptions(inline_data=False, dedup="content"))


@pytest.fixture(scope="module")
def by_block(image: Image) -> bytes:
    """The image read one block per request: the reference for reads that span regions."""
    return b"".join(image.read(b * BLOCK_SIZE, BLOCK_SIZE) for b in range(image.size // BLOCK_SIZE))


def _file_offsets(image: Image, path: bytes) -> list[tuple[int, int]]:
    """(image byte offset, file byte offset) of each data block of ``path``, from the Plan."""
    plan = image.plan
    ip = dict(plan.paths())[path]
    return [((p + i) * BLOCK_SIZE, (logical + i) * BLOCK_SIZE)
            for logical, n, p in plan.physical_extents(ip) for i in range(n)]


# -- the region map -------------------------------------------------------------------


def test_regions_tile_the_image_in_block_units(image: Image) -> None:
    regions = list(image.regions())
    assert regions[0][0] == 0 and regions[-1][1] == image.size
    assert image.size == image.plan.geometry.blocks_count * BLOCK_SIZE
    for (_s0, e0, k0), (s1, _e1, k1) in itertools.pairwise(regions):
        assert e0 == s1, "regions must be contiguous"
        assert not (k0 == ZERO and k1 == ZERO), "adjacent zero regions are merged"
    for start, end, kind in regions:
        assert start < end and start % BLOCK_SIZE == 0 and end % BLOCK_SIZE == 0
        assert kind in (META, DATA, ZERO)
    geo = image.plan.geometry
    data = [(s, e) for s, e, k in regions if k == DATA]
    assert data[0][0] == geo.data_start * BLOCK_SIZE and data[-1][1] == geo.used_blocks * BLOCK_SIZE
    assert len(data) == len(image.plan.runs)
    assert all(k == META for s, _e, k in regions if s < geo.inode_bitmap_start * BLOCK_SIZE)


def test_region_lookup_serves_each_kind_from_its_own_place(image: Image, contents: dict[str, bytes]) -> None:
    assert int.from_bytes(image.read(1024 + 0x38, 2), "little") == EXT4_SUPER_MAGIC
    for start, end, kind in image.regions():
        if kind == ZERO:
            assert image.read(start, end - start) == bytes(end - start), (start, end)
    for path, data in contents.items():
        for image_at, file_at in _file_offsets(image, path.encode()):
            block = data[file_at : file_at + BLOCK_SIZE]
            # the last block of a file: its bytes, then zeros to the end of the block
            assert image.read(image_at, BLOCK_SIZE) == block + bytes(BLOCK_SIZE - len(block)), path


def test_the_split_host_file_is_two_runs_in_a_row(image: Image) -> None:
    """The case the batched host-file read exists for: adjacent runs of one file."""
    offsets = _file_offsets(image, b"/a/split")
    first_blocks = [o for o, _f in _file_offsets(image, b"/a/first")]
    assert offsets[1][0] == first_blocks[0], "the shared block is /a/first's"
    assert offsets[2][0] == offsets[0][0] + BLOCK_SIZE, "the runs around it are adjacent"
    data_starts = {start for start, _e, kind in image.regions() if kind == DATA}
    assert offsets[2][0] in data_starts, "a region boundary lies between the two runs"


# -- reads ----------------------------------------------------------------------------


def test_reads_across_region_boundaries_equal_the_blocks_read_one_by_one(image: Image,
                                                                          by_block: bytes) -> None:
    assert image.read(0, image.size) == by_block
    boundaries = [start for start, _e, _k in image.regions()][1:]
    for b in boundaries:
        for before, after in ((1, 1), (100, 5000), (BLOCK_SIZE + 7, 2 * BLOCK_SIZE + 1), (4097, 0)):
            lo, hi = max(0, b - before), min(image.size, b + after)
            assert image.read(lo, hi - lo) == by_block[lo:hi], (b, before, after)
    rng = random.Random(5)
    for _ in range(300):
        lo = rng.randrange(image.size)
        n = rng.randint(0, min(image.size - lo, 6 * BLOCK_SIZE))
        assert image.read(lo, n) == by_block[lo : lo + n], (lo, n)


def test_readinto_fills_a_slice_of_a_larger_buffer(image: Image, by_block: bytes) -> None:
    buf = bytearray(b"\xaa" * (3 * BLOCK_SIZE))
    at = image.plan.geometry.data_start * BLOCK_SIZE - 100
    image.readinto(memoryview(buf)[10 : 10 + 2 * BLOCK_SIZE], at)
    assert buf[:10] == b"\xaa" * 10 and buf[10 + 2 * BLOCK_SIZE :] == b"\xaa" * (BLOCK_SIZE - 10)
    assert bytes(buf[10 : 10 + 2 * BLOCK_SIZE]) == by_block[at : at + 2 * BLOCK_SIZE]


def test_reads_outside_the_image_are_refused(image: Image) -> None:
    assert image.read(image.size - 1, 1) == image.read(image.size - 1, 1)  # the last byte is fine
    for offset, length in ((-1, 1), (image.size, 1), (image.size - 1, 2), (image.size + 1, 0)):
        with pytest.raises(ValueError):
            image.read(offset, length)


def test_stats_count_every_byte_once_by_kind(contents: dict[str, bytes]) -> None:
    tree = ext4gen.Tree(_meta(0o755))
    tree.add("/f", ext4gen.Node("file", _meta(), source=ext4gen.InlineSource(_rand(9, 3 * BLOCK_SIZE))))
    image = ext4gen.plan(tree, ImageOptions(inline_data=False))
    image.read(0, image.size)
    s = image.stats
    assert s.requests == 1
    assert s.bytes_metadata + s.bytes_data + s.bytes_zero == image.size
    assert s.bytes_data == 3 * BLOCK_SIZE


# -- zeros: holes and UNINIT groups --------------------------------------------------------


def test_holes_are_not_stored_and_read_as_zeros(image: Image) -> None:
    ip = dict(image.plan.paths())[b"/sparse"]
    assert ip.size == 10 * BLOCK_SIZE and not ip.extents  # all hole: no block at all


def test_an_inode_uninit_group_reads_as_zeros() -> None:
    tree = ext4gen.Tree(_meta(0o755))
    tree.add("/big", ext4gen.Node("file", _meta(), source=Pattern((BLOCKS_PER_GROUP + 50) * BLOCK_SIZE)))
    image = ext4gen.plan(tree, ImageOptions(dedup="none"))
    geo = image.plan.geometry
    assert geo.groups == 2
    flags = [ext4_group_desc.parse(image.read(BLOCK_SIZE + g * DESC_SIZE, DESC_SIZE)).bg_flags
             for g in range(geo.groups)]
    assert not flags[0] & EXT4_BG_INODE_UNINIT
    assert flags[1] & EXT4_BG_INODE_UNINIT, "group 1 holds no inode"
    zero_blocks = [geo.inode_bitmap_start + 1]
    itable1 = geo.inode_table_start + geo.itable_blocks_per_group
    zero_blocks += range(itable1, itable1 + geo.itable_blocks_per_group)
    kinds = {}
    for start, end, kind in image.regions():
        for b in range(start // BLOCK_SIZE, end // BLOCK_SIZE):
            if b in zero_blocks:
                kinds[b] = kind
    assert kinds == dict.fromkeys(zero_blocks, ZERO)
    for b in zero_blocks:
        assert image.read(b * BLOCK_SIZE, BLOCK_SIZE) == bytes(BLOCK_SIZE)
        assert list(image.extents(b * BLOCK_SIZE, BLOCK_SIZE)) == [(b * BLOCK_SIZE, BLOCK_SIZE, True)]
    # group 0's bitmap is rendered: inodes 1..11 and /big in use
    ib0 = image.read(geo.inode_bitmap_start * BLOCK_SIZE, 2)
    assert int.from_bytes(ib0, "little") == (1 << 12) - 1


# -- extents ---------------------------------------------------------------------------


def test_extents_tile_the_image_and_zeros_are_exactly_zeros(image: Image, by_block: bytes,
                                                            contents: dict[str, bytes]) -> None:
    ext = list(image.extents(0, image.size))
    assert ext[0][0] == 0 and sum(n for _o, n, _z in ext) == image.size
    for (o0, n0, z0), (o1, _n1, z1) in itertools.pairwise(ext):
        assert o0 + n0 == o1 and z0 != z1, "extents are contiguous and merged"
    for o, n, zero in ext:
        if zero:
            assert by_block[o : o + n] == bytes(n), (o, n)
    assert not ext[0][2], "the superblock is data"

    def is_zero_at(offset: int) -> bool:
        return next(z for o, n, z in ext if o <= offset < o + n)

    odd = _file_offsets(image, b"/b/odd")
    last_block = odd[-1][0]
    tail = 5000 - BLOCK_SIZE  # bytes of /b/odd in its last block
    assert not is_zero_at(last_block + tail - 1)
    assert is_zero_at(last_block + tail), "the padding after a file's last byte is reported as zeros"


def test_extents_of_a_range_are_clipped_to_it(image: Image) -> None:
    whole = list(image.extents(0, image.size))
    for offset, length in ((1, 10), (BLOCK_SIZE - 3, 3 * BLOCK_SIZE), (image.size - 100, 1 << 30)):
        part = list(image.extents(offset, length))
        end = min(offset + length, image.size)
        assert part[0][0] == offset and sum(n for _o, n, _z in part) == end - offset
        for o, n, z in part:
            assert all(wz == z for wo, wn, wz in whole if wo < o + n and o < wo + wn), (o, n)


def test_a_dropped_image_is_freed_without_the_cycle_collector() -> None:
    """Planning freezes the collector (gcpause): an Image in a reference cycle would never
    be freed, and with the compiled path each one holds a 32 MiB metadata cache."""
    import gc
    import weakref

    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    tree.add("/f", ext4gen.Node("file", ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0),
                                source=ext4gen.InlineSource(b"x" * 10000)))
    image = ext4gen.plan(tree, ext4gen.ImageOptions())
    image.read(0, image.size)  # every metadata block rendered into the caches
    ref = weakref.ref(image)
    was = gc.isenabled()
    gc.disable()
    try:
        del image
        assert ref() is None, "the Image is kept alive by a reference cycle"
    finally:
        if was:
            gc.enable()
