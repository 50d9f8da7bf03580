"""Content dedup's byte comparisons: a block is shared only with one of equal bytes.

A hash hit is confirmed by comparing the bytes of the candidate block, which
the allocator reads again from the candidate's source, several blocks at once
while a copied file compares against consecutive blocks of one earlier run.
These trees are built from a few distinct blocks (copies, shifted copies,
repeats, zeros, partial tails), and with ``collide`` the dedup key is reduced
to one byte so that unequal blocks share keys.  Every logical block of every
file is then read back from the image through its extents: it must hold the
file's bytes, whatever was shared.  And the chunk at a time placement (a
stretch of new blocks, or of blocks shared with consecutive earlier ones, at
once) must decide exactly what placing block by block decides.
"""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

import ext4gen
import ext4gen.layout.dedup
from ext4gen.format.ondisk import BLOCK_SIZE
from ext4gen.layout.placer import Placer

META = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)


def _alphabet_block(i: int) -> bytes:
    """Block 0 is zeros; the others differ, and odd/even ones share their first byte."""
    if i == 0:
        return bytes(BLOCK_SIZE)
    return bytes([1 + i % 2]) + bytes([i]) * (BLOCK_SIZE - 1)


def _coarse_key(block: bytes | memoryview) -> bytes:
    return bytes(block[:1]) * 16


files_strategy = st.lists(
    st.tuples(st.lists(st.integers(0, 6), max_size=70), st.integers(0, BLOCK_SIZE - 1)),
    min_size=1, max_size=6)


def _contents(spec: list[tuple[list[int], int]]) -> list[bytes]:
    out: list[bytes] = []
    for blocks, tail in spec:
        out.append(b"".join(_alphabet_block(i) for i in blocks) + bytes([7]) * tail)
    # copies of the first file, whole and shifted by one block: long runs of equal blocks
    out.append(out[0])
    out.append(_alphabet_block(5) + out[0])
    return out


def _one_by_one(self: Placer, logical: int, chunk: memoryview) -> None:
    """The reference: every block of the chunk through Placer.place."""
    for pos in range(0, len(chunk), BLOCK_SIZE):
        self.place(logical + pos // BLOCK_SIZE, chunk[pos : pos + BLOCK_SIZE])


def _plan(contents: list[bytes], collide: bool, reference: bool = False) -> ext4gen.Image:
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    for n, data in enumerate(contents):
        tree.add(f"/f{n}", ext4gen.Node("file", META, source=ext4gen.InlineSource(data)))
    with (mock.patch.object(ext4gen.layout.dedup, "block_hash",
                            _coarse_key if collide else ext4gen.layout.dedup.block_hash),
          mock.patch.object(Placer, "place_read", _one_by_one if reference else Placer.place_read)):
        return ext4gen.plan(tree, ext4gen.ImageOptions(dedup="content", inline_data=False))


@settings(max_examples=60, deadline=None)
@given(spec=files_strategy, collide=st.booleans())
def test_every_shared_block_holds_the_bytes_of_each_file_using_it(spec: list[tuple[list[int], int]],
                                                                   collide: bool) -> None:
    contents = _contents(spec)
    image = _plan(contents, collide)
    plan = image.plan
    data_start = plan.geometry.data_start
    seen = 0
    for ip in plan.inodes:
        if ip is None or ip.kind != "file":
            continue
        data = ip.source.data  # an InlineSource: the file's own bytes
        mapped: dict[int, int] = {}
        for logical, length, phys in ip.extents:
            for k in range(length):
                mapped[logical + k] = data_start + phys + k
        for logical in range(-(-len(data) // BLOCK_SIZE)):
            want = data[logical * BLOCK_SIZE : (logical + 1) * BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")
            if logical not in mapped:
                assert want == bytes(BLOCK_SIZE), (ip.ino, logical)  # a hole reads as zeros
                continue
            assert image.read(mapped[logical] * BLOCK_SIZE, BLOCK_SIZE) == want, (ip.ino, logical)
        seen += 1
    assert seen == len(contents)
    stats = plan.dedup_stats
    if not collide:
        assert stats.collisions == 0
    one_by_one = _plan(contents, collide, reference=True).plan
    assert [ip and ip.extents for ip in plan.inodes] == [ip and ip.extents for ip in one_by_one.inodes]
    assert [(r.block, r.nblocks, r.offset, r.nbytes) for r in plan.runs] == \
        [(r.block, r.nblocks, r.offset, r.nbytes) for r in one_by_one.runs]
    assert plan.dedup_stats == one_by_one.dedup_stats
    assert plan.uuid == one_by_one.uuid  # the content digest: every key, in the same order
