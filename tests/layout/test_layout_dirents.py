"""layout/dirents: rec_len rounding, block splitting, leaf bytes and the checksum tail.

Blocks are read back with construct's ``ext4_dir_entry_2``/``ext4_dir_entry_tail``
and the tail's checksum is recomputed with a bit-at-a-time CRC-32C written
here, so neither ext4gen's packer nor its crc32c wrapper checks itself.
"""

from __future__ import annotations

import itertools
import random

import pytest

from ext4gen.format.definitions import ext4_dir_entry_2, ext4_dir_entry_tail
from ext4gen.format.directory import EXT4_FT_DIR_CSUM, FT_DIR, FT_REG_FILE, FT_SYMLINK
from ext4gen.layout import dirents

BLOCK = 4096


def crc32c_le(crc: int, data: bytes) -> int:
    """The kernel's crc32c_le: reflected Castagnoli polynomial, no pre/post inversion."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def read_entries(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(name, inode, file_type, rec_len) of each entry in ``buf[start:end]``, by rec_len chain."""
    out, pos = [], start
    while pos < end:
        h = ext4_dir_entry_2.parse(buf[pos : pos + 8])
        assert h.rec_len >= 8 and h.rec_len % 4 == 0 and pos + h.rec_len <= end, (pos, h)
        out.append((bytes(buf[pos + 8 : pos + 8 + h.name_len]), h.inode, h.file_type, h.rec_len))
        pos += h.rec_len
    assert pos == end
    return out


@pytest.mark.parametrize(("name_len", "want"), [(1, 12), (2, 12), (3, 12), (4, 12), (5, 16),
                                                 (8, 16), (9, 20), (255, 264)])
def test_rec_len_is_header_plus_name_rounded_to_four(name_len: int, want: int) -> None:
    assert dirents.rec_len(name_len) == want


def _entries(n: int, rng: random.Random) -> list[dirents.DirEntry]:
    names = sorted({bytes(rng.choice(b"abcdefgh") for _ in range(rng.randint(1, 40))) for _ in range(n)})
    return [(name, 100 + i, rng.choice((FT_REG_FILE, FT_DIR, FT_SYMLINK))) for i, name in enumerate(names)]


def test_split_blocks_fills_each_block_but_the_tail() -> None:
    entries = _entries(800, random.Random(1))
    starts = dirents.split_blocks(entries)
    assert starts[0] == 0 and len(starts) > 2
    bounds = [*starts, len(entries)]
    for a, b in itertools.pairwise(bounds):
        used = sum(dirents.rec_len(len(e[0])) for e in entries[a:b])
        assert used <= BLOCK - 12
        if b < len(entries):  # the next entry would not have fitted
            assert used + dirents.rec_len(len(entries[b][0])) > BLOCK - 12


def test_fits_one_block_is_whether_the_split_makes_one_block() -> None:
    rng = random.Random(2)
    for n in (0, 1, 50, 100, 150, 200, 300):
        for _ in range(20):
            entries = _entries(n, rng)
            assert dirents.fits_one_block(entries) == (len(dirents.split_blocks(entries)) == 1)
    exact = [(b"x" * 4076, 5, FT_REG_FILE)]  # rec_len 4084: the whole block but its tail
    assert dirents.fits_one_block(exact) and not dirents.fits_one_block([*exact, (b"y", 6, FT_DIR)])


def test_leaf_block_reads_back_and_its_tail_checksum_is_the_kernels() -> None:
    entries = _entries(60, random.Random(2))
    buf = dirents.block_bytes(entries)
    assert len(buf) == BLOCK
    got = read_entries(bytes(buf), 0, BLOCK - 12)
    assert [(n, i, ft) for n, i, ft, _ in got] == entries
    assert [r for *_, r in got[:-1]] == [dirents.rec_len(len(e[0])) for e in entries[:-1]]
    assert got[-1][3] >= dirents.rec_len(len(entries[-1][0]))  # the last reaches the tail
    tail = ext4_dir_entry_tail.parse(bytes(buf[-12:]))
    assert (tail.det_reserved_zero1, tail.det_rec_len, tail.det_reserved_zero2) == (0, 12, 0)
    assert tail.det_reserved_ft == EXT4_FT_DIR_CSUM and tail.det_checksum == 0
    seed = 0x1234ABCD
    dirents.set_checksum(buf, seed)
    tail = ext4_dir_entry_tail.parse(bytes(buf[-12:]))
    assert tail.det_checksum == crc32c_le(seed, bytes(buf[: BLOCK - 12]))


def test_pack_entries_makes_an_empty_area_one_empty_entry() -> None:
    buf = bytearray(64)
    dirents.pack_entries(buf, 8, 64, [])
    assert read_entries(bytes(buf), 8, 64) == [(b"", 0, 0, 56)]
    buf = bytearray(16)
    dirents.pack_entries(buf, 16, 16, [])  # nothing to cover: nothing written
    assert buf == bytearray(16)


def test_pack_entries_stretches_the_last_entry_to_the_end_of_its_area() -> None:
    buf = bytearray(100)
    dirents.pack_entries(buf, 4, 100, [(b"a", 12, FT_REG_FILE), (b"bcdef", 13, FT_DIR)])
    assert read_entries(bytes(buf), 4, 100) == [(b"a", 12, FT_REG_FILE, 12), (b"bcdef", 13, FT_DIR, 84)]
