"""On-disk definitions: the fast packers agree with construct, layouts match ext4.h, and
our checksum helpers reproduce what mkfs.ext4 wrote.

FastPacker trades construct's build for struct.pack on hot paths; this file is
what makes that trade safe.  Offsets and checksums are checked against values
that do not come from ext4gen: the kernel's ext4.h and a real mkfs.ext4 image.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from construct import Bytes, Const, FormatField, Renamed, Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from ext4gen.format import definitions, ondisk
from ext4gen.format.csum import crc32c_raw, fs_csum_seed, inode_csum_seed
from ext4gen.format.definitions import layout_of
from ext4gen.format.ondisk import FastPacker

STRUCTS = definitions.STRUCTURES
PACKERS = {name: obj for name, obj in vars(ondisk).items() if isinstance(obj, FastPacker)}


def _fast_packable(s: Struct) -> bool:
    """Packable flat, of numbers and bytes only (the superblock, with its constant and
    arrays, has its own test in test_format_definitions.py)."""
    if any(isinstance(sub.subcon, Const) or not isinstance(sub.subcon, FormatField | Bytes)
           for sub in s.subcons):
        return False
    try:
        FastPacker("probe", layout_of(s))
    except TypeError:
        return False
    return True


FAST_STRUCTS = {n: s for n, s in STRUCTS.items() if _fast_packable(s)}


def _field_strategy(sub: Renamed) -> st.SearchStrategy[Any]:
    inner = sub.subcon
    if isinstance(inner, FormatField):
        bits = 8 * struct.calcsize(inner.fmtstr)
        return st.integers(0, (1 << bits) - 1)
    assert isinstance(inner, Bytes)
    return st.binary(min_size=inner.length, max_size=inner.length)


def _values(s: Struct) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({sub.name: _field_strategy(sub) for sub in s.subcons})


def _offsets(s: Struct) -> dict[str, int]:
    out, pos = {}, 0
    for sub in s.subcons:
        out[sub.name] = pos
        pos += sub.sizeof()
    return out


def test_every_module_packer_is_derived_from_a_construct_struct() -> None:
    assert PACKERS, "ondisk defines no FastPacker"
    for name, packer in PACKERS.items():
        twins = [s for s in STRUCTS.values() if [c.name for c in s.subcons] == packer.names]
        assert twins, f"{name}: no construct Struct with the same fields"
        assert any(FastPacker("twin", layout_of(s)).struct.format == packer.struct.format
                   for s in twins), name
        assert all(s.sizeof() == packer.size for s in twins), name


@pytest.mark.parametrize("name", sorted(FAST_STRUCTS))
@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_fast_packer_matches_construct_build(name: str, data: st.DataObject) -> None:
    definition = FAST_STRUCTS[name]
    packer = FastPacker(name, layout_of(definition))
    values = data.draw(_values(definition))
    built = definition.build(values)
    assert packer.pack(**values) == built
    assert packer.pack_tuple(*(values[n] for n in packer.names)) == built
    buf = bytearray(packer.size + 7)
    packer.pack_into(buf, 7, *(values[n] for n in packer.names))
    assert bytes(buf[7:]) == built
    assert packer.unpack(built) == values
    parsed = definition.parse(built)
    assert {k: parsed[k] for k in packer.names} == values


def test_fast_packer_defaults_and_unknown_fields() -> None:
    assert ondisk.EXTENT.pack() == bytes(12)
    assert ondisk.EXTENT.pack(ee_len=3) == definitions.ext4_extent.build(
        {"ee_block": 0, "ee_len": 3, "ee_start_hi": 0, "ee_start_lo": 0})
    with pytest.raises(KeyError):
        ondisk.EXTENT.pack(ee_length=3)


def test_structure_sizes_match_the_kernel() -> None:
    assert definitions.ext4_super_block.sizeof() == 1024
    assert definitions.ext4_group_desc.sizeof() == 64 == ondisk.DESC_SIZE
    assert definitions.ext4_inode.sizeof() == 128 + 32  # up to i_projid with i_extra_isize 32
    for s in (definitions.ext4_extent_header, definitions.ext4_extent, definitions.ext4_extent_idx):
        assert s.sizeof() == 12
    assert definitions.ext4_dir_entry_2.sizeof() == 8
    assert definitions.ext4_dir_entry_tail.sizeof() == 12
    assert ondisk.EXTENTS_PER_BLOCK == 340
    assert ondisk.INODES_PER_BLOCK == 16


# Offsets from the kernel's fs/ext4/ext4.h (comments there give them in hex).
KERNEL_OFFSETS = {
    "ext4_super_block": {
        "s_magic": 0x38, "s_rev_level": 0x4C, "s_first_ino": 0x54, "s_feature_compat": 0x5C,
        "s_feature_ro_compat": 0x64, "s_uuid": 0x68, "s_volume_name": 0x78, "s_hash_seed": 0xEC,
        "s_desc_size": 0xFE, "s_mkfs_time": 0x108, "s_blocks_count_hi": 0x150,
        "s_min_extra_isize": 0x15C, "s_flags": 0x160, "s_log_groups_per_flex": 0x174,
        "s_checksum_type": 0x175, "s_kbytes_written": 0x178, "s_backup_bgs": 0x24C,
        "s_lpf_ino": 0x268, "s_checksum_seed": 0x270, "s_wtime_hi": 0x274, "s_encoding": 0x27C,
        "s_checksum": 0x3FC,
    },
    "ext4_group_desc": {
        "bg_inode_table_lo": 0x08, "bg_flags": 0x12, "bg_block_bitmap_csum_lo": 0x18,
        "bg_itable_unused_lo": 0x1C, "bg_checksum": 0x1E, "bg_block_bitmap_hi": 0x20,
        "bg_inode_table_hi": 0x28, "bg_block_bitmap_csum_hi": 0x38, "bg_reserved": 0x3C,
    },
    "ext4_inode": {
        "i_links_count": 0x1A, "i_flags": 0x20, "i_block": 0x28, "i_generation": 0x64,
        "i_size_high": 0x6C, "l_i_blocks_high": 0x74, "l_i_uid_high": 0x78,
        "l_i_checksum_lo": 0x7C, "i_extra_isize": 0x80, "i_checksum_hi": 0x82,
        "i_ctime_extra": 0x84, "i_crtime": 0x90, "i_version_hi": 0x98, "i_projid": 0x9C,
    },
}


@pytest.mark.parametrize("struct_name", sorted(KERNEL_OFFSETS))
def test_field_offsets_match_ext4_h(struct_name: str) -> None:
    offsets = _offsets(STRUCTS[struct_name])
    for field, want in KERNEL_OFFSETS[struct_name].items():
        assert offsets[field] == want, f"{struct_name}.{field} at {offsets[field]:#x}, want {want:#x}"


def test_checksum_offset_constants() -> None:
    assert ondisk.SUPERBLOCK_CSUM_OFFSET == _offsets(definitions.ext4_super_block)["s_checksum"]
    assert ondisk.GROUP_DESC_CSUM_OFFSET == _offsets(definitions.ext4_group_desc)["bg_checksum"]
    assert ondisk.INODE_CSUM_LO_OFFSET == _offsets(definitions.ext4_inode)["l_i_checksum_lo"]
    assert ondisk.INODE_CSUM_HI_OFFSET == _offsets(definitions.ext4_inode)["i_checksum_hi"]


def test_crc32c_raw_known_vector() -> None:
    # CRC-32C("123456789") = 0xE3069283 with the standard inversions; raw drops them.
    assert crc32c_raw(0xFFFFFFFF, b"123456789") ^ 0xFFFFFFFF == 0xE3069283
    assert crc32c_raw(0, b"") == 0
    # chaining: one update over a+b equals two updates
    assert crc32c_raw(crc32c_raw(7, b"abc"), b"def") == crc32c_raw(7, b"abcdef")


# -- against a real mkfs.ext4 image ----------------------------------------


@pytest.fixture(scope="module")
def mkfs_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("mkfs")
    src = root / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"data" * 3000)
    (src / "small").write_text("x\n")
    img = root / "mkfs.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-I", "256", "-N", "64",
                    "-O", "metadata_csum,64bit,^metadata_csum_seed", "-d", str(src), str(img), "8M"],
                   check=True, capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                         "E2FSPROGS_FAKE_TIME": "1700000000"})
    return Path(img).read_bytes()


def _sb(image: bytes) -> Any:
    return definitions.ext4_super_block.parse(image[1024:2048])


def _desc(image: bytes, g: int) -> bytes:
    return image[4096 + 64 * g : 4096 + 64 * (g + 1)]


def _inode(image: bytes, ino: int) -> bytes:
    sb = _sb(image)
    g, idx = divmod(ino - 1, sb.s_inodes_per_group)
    d = definitions.ext4_group_desc.parse(_desc(image, g))
    table = (d.bg_inode_table_hi << 32) | d.bg_inode_table_lo
    off = table * 4096 + idx * sb.s_inode_size
    return image[off : off + sb.s_inode_size]


def test_mkfs_superblock_checksum(mkfs_image: bytes) -> None:
    sb = _sb(mkfs_image)
    assert sb.s_feature_ro_compat & ondisk.RO_COMPAT_METADATA_CSUM
    raw = mkfs_image[1024:2048]
    assert crc32c_raw(0xFFFFFFFF, raw[: ondisk.SUPERBLOCK_CSUM_OFFSET]) == sb.s_checksum


def test_mkfs_group_descriptor_and_bitmap_checksums(mkfs_image: bytes) -> None:
    sb = _sb(mkfs_image)
    seed = fs_csum_seed(sb.s_uuid)
    groups = -(-sb.s_blocks_count_lo // sb.s_blocks_per_group)
    for g in range(groups):
        raw = bytearray(_desc(mkfs_image, g))
        d = definitions.ext4_group_desc.parse(bytes(raw))
        raw[ondisk.GROUP_DESC_CSUM_OFFSET : ondisk.GROUP_DESC_CSUM_OFFSET + 2] = b"\0\0"
        crc = crc32c_raw(crc32c_raw(seed, struct.pack("<I", g)), raw)
        assert crc & 0xFFFF == d.bg_checksum, g
        if not d.bg_flags & ondisk.EXT4_BG_BLOCK_UNINIT:
            bb = ((d.bg_block_bitmap_hi << 32) | d.bg_block_bitmap_lo) * 4096
            want = (d.bg_block_bitmap_csum_hi << 16) | d.bg_block_bitmap_csum_lo
            assert crc32c_raw(seed, mkfs_image[bb : bb + sb.s_blocks_per_group // 8]) == want
        if not d.bg_flags & ondisk.EXT4_BG_INODE_UNINIT:
            ib = ((d.bg_inode_bitmap_hi << 32) | d.bg_inode_bitmap_lo) * 4096
            want = (d.bg_inode_bitmap_csum_hi << 16) | d.bg_inode_bitmap_csum_lo
            assert crc32c_raw(seed, mkfs_image[ib : ib + sb.s_inodes_per_group // 8]) == want


@pytest.mark.parametrize("ino", [2, 11, 12, 13, 14])
def test_mkfs_inode_checksums(mkfs_image: bytes, ino: int) -> None:
    sb = _sb(mkfs_image)
    raw = bytearray(_inode(mkfs_image, ino))
    inode = definitions.ext4_inode.parse(bytes(raw))
    assert inode.i_mode != 0, f"mkfs image has no inode {ino}"
    want = (inode.i_checksum_hi << 16) | inode.l_i_checksum_lo
    for off in (ondisk.INODE_CSUM_LO_OFFSET, ondisk.INODE_CSUM_HI_OFFSET):
        raw[off : off + 2] = b"\0\0"
    seed = inode_csum_seed(fs_csum_seed(sb.s_uuid), ino, inode.i_generation)
    assert crc32c_raw(seed, raw) == want


def test_mkfs_root_directory_block_checksum(mkfs_image: bytes) -> None:
    sb = _sb(mkfs_image)
    inode = definitions.ext4_inode.parse(_inode(mkfs_image, 2))
    header = definitions.ext4_extent_header.parse(inode.i_block[:12])
    assert header.eh_magic == ondisk.EXT4_EXT_MAGIC and header.eh_depth == 0
    ext = definitions.ext4_extent.parse(inode.i_block[12:24])
    block = (ext.ee_start_hi << 32) | ext.ee_start_lo
    data = mkfs_image[block * 4096 : (block + 1) * 4096]
    tail = definitions.ext4_dir_entry_tail.parse(data[-12:])
    assert tail.det_rec_len == 12 and tail.det_reserved_ft == ondisk.EXT4_FT_DIR_CSUM
    seed = inode_csum_seed(fs_csum_seed(sb.s_uuid), 2, inode.i_generation)
    assert crc32c_raw(seed, data[:-12]) == tail.det_checksum
