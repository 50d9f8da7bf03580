"""render/metadata: superblock, group descriptor and inodes read back field by field.

A small planned tree covers the awkward inode fields (32-bit uid/gid halves,
a size over 4 GiB, times past 2038 with nanoseconds, device numbers in both
encodings, a fast symlink, an inline file split between i_block and
system.data, extents, in-inode xattrs).  Blocks are read through
``Image.read`` at the offsets the descriptors give, parsed with construct, and
every checksum is recomputed with a bit-at-a-time CRC-32C written here.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

import ext4gen
from ext4gen.format.definitions import (
    ext4_extent_header,
    ext4_group_desc,
    ext4_inode,
    ext4_super_block,
    ext4_xattr_entry,
)
from ext4gen.format.inode import EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL
from ext4gen.format.xattr import EXT4_XATTR_MAGIC
from ext4gen.model import times
from ext4gen.render.metadata import MetadataGenerator

BLOCK = 4096
NS = 1_000_000_000
T_2100 = 4_102_444_800 * NS + 123_456_789  # 2100-01-01, past the 32-bit epoch
BIG = 5 << 30


def crc32c_le(crc: int, data: bytes) -> int:
    """The kernel's crc32c_le: reflected Castagnoli polynomial, no pre/post inversion."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def _meta(perm: int, uid: int = 0, gid: int = 0, t: int = 0) -> ext4gen.Meta:
    return ext4gen.Meta(perm, uid, gid, t, t, t, t)


@pytest.fixture(scope="module")
def image() -> ext4gen.Image:
    tree = ext4gen.Tree(_meta(0o755))
    tree.add("/owned", ext4gen.Node("file", _meta(0o640, 100_000, 70_000, T_2100),
                                    source=ext4gen.InlineSource(b"o" * 5000),
                                    xattrs={b"user.mime": b"text/plain"}))
    tree.add("/big", ext4gen.Node("file", _meta(0o644), source=ext4gen.ZeroSource(BIG)))
    tree.add("/small", ext4gen.Node("file", _meta(0o644), source=ext4gen.InlineSource(bytes(range(100)))))
    tree.add("/link", ext4gen.Node("symlink", _meta(0o777), target=b"small"))
    tree.add("/tty", ext4gen.Node("chardev", _meta(0o620), rdev=(4, 1)))
    tree.add("/wide", ext4gen.Node("blockdev", _meta(0o660), rdev=(300, 70000)))
    return ext4gen.plan(tree, ext4gen.ImageOptions(uuid=bytes(range(16)), label="render"))


def _sb(image: ext4gen.Image) -> Any:
    return ext4_super_block.parse(image.read(1024, 1024))


def _fs_seed(image: ext4gen.Image) -> int:
    return crc32c_le(0xFFFFFFFF, _sb(image).s_uuid)


def _inode_raw(image: ext4gen.Image, ino: int) -> bytes:
    sb = _sb(image)
    g, idx = divmod(ino - 1, sb.s_inodes_per_group)
    d = ext4_group_desc.parse(image.read(BLOCK + 64 * g, 64))
    table = (d.bg_inode_table_hi << 32) | d.bg_inode_table_lo
    return image.read(table * BLOCK + idx * sb.s_inode_size, sb.s_inode_size)


def _ino(image: ext4gen.Image, name: bytes) -> int:
    return next(ip.ino for path, ip in image.plan.paths() if path == b"/" + name)


def _checked_inode(image: ext4gen.Image, name: bytes) -> tuple[Any, bytes]:
    ino = _ino(image, name)
    raw = bytearray(_inode_raw(image, ino))
    inode = ext4_inode.parse(bytes(raw))
    want = (inode.i_checksum_hi << 16) | inode.l_i_checksum_lo
    raw[0x7C:0x7E] = raw[0x82:0x84] = b"\0\0"
    seed = crc32c_le(_fs_seed(image), struct.pack("<I", ino))
    seed = crc32c_le(seed, struct.pack("<I", inode.i_generation))
    assert crc32c_le(seed, bytes(raw)) == want, f"inode {ino} checksum"
    return inode, bytes(raw)


def test_superblock_fields_and_checksum(image: ext4gen.Image) -> None:
    raw = image.read(1024, 1024)
    sb = ext4_super_block.parse(raw)
    assert sb.s_checksum == crc32c_le(0xFFFFFFFF, raw[:0x3FC])
    assert (sb.s_log_block_size, sb.s_inode_size, sb.s_first_ino, sb.s_rev_level) == (2, 256, 11, 1)
    assert (sb.s_desc_size, sb.s_min_extra_isize, sb.s_want_extra_isize) == (64, 32, 32)
    assert sb.s_volume_name == b"render".ljust(16, b"\0") and sb.s_uuid == bytes(range(16))
    geo = image.plan.geometry
    assert sb.s_blocks_count_lo | sb.s_blocks_count_hi << 32 == geo.blocks_count
    assert sb.s_free_blocks_count_lo == geo.free_blocks and sb.s_inodes_count == geo.inodes_count
    assert sb.s_journal_inum == sb.s_last_orphan == sb.s_r_blocks_count_lo == 0
    assert image.read(0, 1024) == bytes(1024)


def test_group_descriptor_and_bitmap_checksums(image: ext4gen.Image) -> None:
    seed = _fs_seed(image)
    sb = _sb(image)
    for g in range(image.plan.geometry.groups):
        raw = bytearray(image.read(BLOCK + 64 * g, 64))
        d = ext4_group_desc.parse(bytes(raw))
        raw[0x1E:0x20] = b"\0\0"
        assert d.bg_checksum == crc32c_le(seed, struct.pack("<I", g) + bytes(raw)) & 0xFFFF
        bb = (d.bg_block_bitmap_hi << 32 | d.bg_block_bitmap_lo) * BLOCK
        ib = (d.bg_inode_bitmap_hi << 32 | d.bg_inode_bitmap_lo) * BLOCK
        assert (d.bg_block_bitmap_csum_lo | d.bg_block_bitmap_csum_hi << 16
                == crc32c_le(seed, image.read(bb, BLOCK)))
        assert (d.bg_inode_bitmap_csum_lo | d.bg_inode_bitmap_csum_hi << 16
                == crc32c_le(seed, image.read(ib, sb.s_inodes_per_group // 8)))
        assert d.bg_exclude_bitmap_lo == d.bg_exclude_bitmap_hi == d.bg_reserved == 0


def test_inode_with_high_ids_future_times_extents_and_xattrs(image: ext4gen.Image) -> None:
    inode, raw = _checked_inode(image, b"owned")
    assert inode.i_mode == 0o100640 and inode.i_links_count == 1
    assert inode.i_uid | inode.l_i_uid_high << 16 == 100_000
    assert inode.i_gid | inode.l_i_gid_high << 16 == 70_000
    assert inode.i_size_lo == 5000 and inode.i_size_high == 0
    assert inode.i_blocks_lo == 2 * 8  # two 4 KiB blocks in 512-byte sectors
    assert inode.i_extra_isize == 32 and inode.i_flags & EXT4_EXTENTS_FL
    for name in ("atime", "ctime", "mtime", "crtime"):
        assert times.decode(inode[f"i_{name}"], inode[f"i_{name}_extra"]) == T_2100, name
    header = ext4_extent_header.parse(inode.i_block[:12])
    assert (header.eh_magic, header.eh_entries, header.eh_max, header.eh_depth) == (0xF30A, 1, 4, 0)
    assert struct.unpack_from("<I", raw, 160)[0] == EXT4_XATTR_MAGIC
    entry = ext4_xattr_entry.parse(raw[164:180])
    assert (entry.e_name_index, raw[180 : 180 + entry.e_name_len]) == (1, b"mime")
    assert raw[164 + entry.e_value_offs : 164 + entry.e_value_offs + entry.e_value_size] == b"text/plain"


def test_size_over_4gib_uses_i_size_high(image: ext4gen.Image) -> None:
    inode, _ = _checked_inode(image, b"big")
    assert inode.i_size_lo | inode.i_size_high << 32 == BIG and inode.i_size_high == 1


def test_inline_file_splits_between_i_block_and_system_data(image: ext4gen.Image) -> None:
    inode, raw = _checked_inode(image, b"small")
    assert inode.i_flags & EXT4_INLINE_DATA_FL and inode.i_size_lo == 100
    assert inode.i_block == bytes(range(60))
    entry = ext4_xattr_entry.parse(raw[164:180])
    assert (entry.e_name_index, raw[180:184], entry.e_value_size) == (7, b"data", 40)
    assert raw[164 + entry.e_value_offs : 164 + entry.e_value_offs + 40] == bytes(range(60, 100))


def test_fast_symlink_and_device_numbers(image: ext4gen.Image) -> None:
    link, _ = _checked_inode(image, b"link")
    assert link.i_mode == 0o120777 and link.i_block == b"small".ljust(60, b"\0") and link.i_flags == 0
    tty, _ = _checked_inode(image, b"tty")
    assert tty.i_mode == 0o20620 and struct.unpack_from("<II", tty.i_block) == ((4 << 8) | 1, 0)
    wide, _ = _checked_inode(image, b"wide")
    new = (70000 & 0xFF) | (300 << 8) | ((70000 & ~0xFF) << 12)  # new_encode_dev
    assert struct.unpack_from("<II", wide.i_block) == (0, new & 0xFFFFFFFF)


def test_inode_table_block_is_the_inodes_side_by_side(image: ext4gen.Image) -> None:
    gen = MetadataGenerator(image.plan)
    block = gen.inode_table_block(0, 0)
    for i in range(16):
        ip = image.plan.inodes[1 + i] if 1 + i <= image.plan.last_ino else None
        want = gen.inode(ip) if ip is not None else bytes(256)
        assert block[256 * i : 256 * (i + 1)] == want, 1 + i
