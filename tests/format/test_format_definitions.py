"""format/: the derived packers agree with construct, and the layouts agree with the kernel.

construct's definitions (format/definitions.py) are the one statement of every
structure; the layouts in format/_layouts.py, and through them the fast packers,
named packers, single-field slots and checksum offsets, are all derived from
them.  The first half proves the layouts are what the definitions say now and the
derivations produce construct's bytes for random values; the second half holds
the definitions against offsets and sizes
written down from the kernel (``fs/ext4/ext4.h``, ``fs/ext4/namei.c``,
``fs/ext4/xattr.h``, ``fs/ext4/acl.h``, ``fs/ext4/ext4_extents.h``), not
computed by ext4gen.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from construct import Array, Bytes, Const, FormatField, Struct

from ext4gen.format import _layouts, definitions, directory, extents, inode, ondisk, superblock, xattr
from ext4gen.format.definitions import build, field_offsets, zero_fields
from ext4gen.format.packing import FastPacker, NamedPacker, field

MODULES = (superblock, inode, directory, extents, xattr)
DEFINITIONS: dict[str, Struct] = definitions.STRUCTURES
PACKERS = {f"{m.__name__.rsplit('.', 1)[1]}.{n}": v
           for m in MODULES for n, v in vars(m).items() if isinstance(v, FastPacker)}


def _random_value(sub: Any, rng: random.Random) -> Any:
    inner = sub.subcon
    if isinstance(inner, FormatField):
        return rng.getrandbits(8 * struct.calcsize(inner.fmtstr))
    if isinstance(inner, Array):
        return [rng.getrandbits(8 * struct.calcsize(inner.subcon.fmtstr)) for _ in range(inner.count)]
    assert isinstance(inner, Bytes), sub
    return rng.randbytes(inner.length)


def _random_fields(definition: Struct, rng: random.Random) -> dict[str, Any]:
    """A random value for every field construct builds from a value (not the constants)."""
    return {sub.name: _random_value(sub, rng) for sub in definition.subcons
            if not isinstance(sub.subcon, Const)}


def _packer_values(definition: Struct, values: dict[str, Any]) -> dict[str, Any]:
    """construct's values as the derived packer takes them: an array as its bytes."""
    out = dict(values)
    for sub in definition.subcons:
        if isinstance(sub.subcon, Array):
            out[sub.name] = sub.subcon.build(values[sub.name])
    return out


def test_the_layouts_file_is_what_the_definitions_say() -> None:
    assert _layouts.LAYOUTS == definitions.derive_layouts()
    assert definitions.LAYOUTS_FILE.read_text() == definitions.layouts_text(), \
        "format/_layouts.py is stale: run python -m ext4gen.format.definitions"


def test_every_packer_is_derived_from_a_definition() -> None:
    assert len(PACKERS) >= 16
    for name, packer in PACKERS.items():
        assert packer.definition in DEFINITIONS.values(), name
        assert packer.layout == definitions.layout_of(packer.definition), name
        assert packer.size == packer.definition.sizeof(), name
        assert packer.names == [s.name for s in packer.definition.subcons], name


@pytest.mark.parametrize("name", sorted(PACKERS))
def test_fast_packer_builds_what_construct_builds(name: str) -> None:
    packer = PACKERS[name]
    definition = packer.definition
    consts = {s.name: s.subcon.value for s in definition.subcons if isinstance(s.subcon, Const)}
    rng = random.Random(name)
    for _ in range(200):
        values = _random_fields(definition, rng)
        built = definition.build(values)
        given = _packer_values(definition, values)
        assert packer.pack(**given) == built
        every = {**given, **consts}
        assert packer.pack_tuple(*(every[n] for n in packer.names)) == built
        buf = bytearray(packer.size + 5)
        packer.pack_into(buf, 5, *(every[n] for n in packer.names))
        assert bytes(buf[5:]) == built
        assert packer.unpack(built) == every


def test_the_superblock_packer_keeps_the_magic_and_refuses_to_set_it() -> None:
    raw = superblock.SUPERBLOCK.pack(s_inodes_count=7)
    assert raw[0x38:0x3A] == b"\x53\xef" and raw[:4] == (7).to_bytes(4, "little")
    assert raw == build(definitions.ext4_super_block, s_inodes_count=7)
    with pytest.raises(KeyError):
        superblock.SUPERBLOCK.pack(s_magic=0xEF53)
    with pytest.raises(TypeError):  # unnamed fields pack as pad bytes: the magic would be lost
        superblock.SUPERBLOCK.fields("s_inodes_count")


NAMED = sorted(n for n, p in PACKERS.items() if all(f[4] is None for f in p.layout))  # no constants


@pytest.mark.parametrize("name", NAMED)
def test_named_packer_sets_exactly_its_fields_and_zeroes_the_rest(name: str) -> None:
    packer = PACKERS[name]
    rng = random.Random(name + "named")
    for _ in range(100):
        chosen = [n for n in packer.names if rng.random() < 0.5] or packer.names[:1]
        rng.shuffle(chosen)  # the order the caller names them in does not matter
        named = packer.fields(*chosen)
        values = {n: v for n, v in _random_fields(packer.definition, rng).items() if n in chosen}
        expected = build(packer.definition, **values)
        assert named.pack(**values) == expected == packer.pack(**values)
        buf = bytearray(b"\xaa" * (packer.size + 3))  # pack_into zeroes the unnamed fields
        named.pack_into(buf, 3, **values)
        assert bytes(buf[3:]) == expected


def test_named_packer_refuses_missing_extra_and_unknown_names() -> None:
    named = inode.INODE.fields("i_mode", "i_links_count")
    buf = bytearray(inode.INODE.size)
    with pytest.raises(TypeError):
        named.pack_into(buf, 0, i_mode=1)  # i_links_count missing
    with pytest.raises(TypeError):
        named.pack_into(buf, 0, i_mode=1, i_links_count=1, i_uid=0)  # not in the set
    with pytest.raises(TypeError):
        named.pack_into(buf, 0, 1, 1)  # positional values are refused
    with pytest.raises(KeyError):
        inode.INODE.fields("i_mode", "i_link_count")
    with pytest.raises(KeyError):
        inode.INODE.fields("i_mode", "i_mode")
    assert isinstance(named, NamedPacker)


@pytest.mark.parametrize("name", ["ext4_super_block", "dx_root"])
def test_build_with_zero_defaults_matches_a_full_construct_build(name: str) -> None:
    definition = DEFINITIONS[name]
    values = zero_fields(definition)
    assert build(definition) == definition.build(values)
    assert len(build(definition)) == definition.sizeof()
    with pytest.raises(KeyError):
        build(definition, no_such_field=1)


def test_superblock_build_keeps_the_magic_and_sets_named_fields() -> None:
    raw = build(definitions.ext4_super_block, s_inodes_count=7, s_uuid=bytes(range(16)),
                s_jnl_blocks=list(range(17)))
    sb = definitions.ext4_super_block.parse(raw)
    assert sb.s_magic == superblock.EXT4_SUPER_MAGIC
    assert sb.s_inodes_count == 7 and sb.s_uuid == bytes(range(16))
    assert list(sb.s_jnl_blocks) == list(range(17))
    assert raw[0x38:0x3A] == b"\x53\xef"
    assert sb.s_blocks_count_lo == sb.s_checksum == 0


def test_fields_read_and_write_where_construct_puts_them() -> None:
    rng = random.Random(3)
    for name, definition in DEFINITIONS.items():
        offsets = field_offsets(definition)
        for sub in definition.subcons:
            inner = sub.subcon.subcon if isinstance(sub.subcon, Const) else sub.subcon
            if not isinstance(inner, FormatField):
                continue
            f = field(name, sub.name)
            assert f.offset == offsets[sub.name] and f.size == sub.sizeof()
            buf = bytearray(build(definition))  # zeros, and the superblock's magic
            value = rng.getrandbits(8 * f.size)
            f.pack_into(buf, value)
            if not isinstance(sub.subcon, Const):
                assert definition.parse(bytes(buf))[sub.name] == value
            assert f.unpack_from(buf) == value


# -- against the kernel's headers ------------------------------------------------

# struct ext4_super_block: the offsets its /*xx*/ comments give, and s_checksum at the end
SUPERBLOCK_OFFSETS = {
    "s_inodes_count": 0x00, "s_free_inodes_count": 0x10, "s_blocks_per_group": 0x20,
    "s_wtime": 0x30, "s_magic": 0x38, "s_lastcheck": 0x40, "s_def_resuid": 0x50,
    "s_feature_incompat": 0x60, "s_uuid": 0x68, "s_volume_name": 0x78, "s_last_mounted": 0x88,
    "s_algorithm_usage_bitmap": 0xC8, "s_journal_uuid": 0xD0, "s_journal_inum": 0xE0,
    "s_default_mount_opts": 0x100, "s_blocks_count_hi": 0x150, "s_checksum": 0x3FC,
}
# struct ext4_group_desc, ext4_inode, ext4_dir_entry_tail, ext4_extent_*, ext4_xattr_*,
# and namei.c's dx_root: field by field as the kernel lays them out
GROUP_DESC_OFFSETS = {
    "bg_block_bitmap_lo": 0x00, "bg_inode_table_lo": 0x08, "bg_flags": 0x12,
    "bg_exclude_bitmap_lo": 0x14, "bg_block_bitmap_csum_lo": 0x18, "bg_itable_unused_lo": 0x1C,
    "bg_checksum": 0x1E, "bg_block_bitmap_hi": 0x20, "bg_itable_unused_hi": 0x32,
    "bg_block_bitmap_csum_hi": 0x38, "bg_inode_bitmap_csum_hi": 0x3A, "bg_reserved": 0x3C,
}
INODE_OFFSETS = {
    "i_mode": 0x00, "i_size_lo": 0x04, "i_links_count": 0x1A, "i_flags": 0x20, "i_block": 0x28,
    "i_generation": 0x64, "i_file_acl_lo": 0x68, "i_size_high": 0x6C, "l_i_blocks_high": 0x74,
    "l_i_uid_high": 0x78, "l_i_checksum_lo": 0x7C, "i_extra_isize": 0x80, "i_checksum_hi": 0x82,
    "i_ctime_extra": 0x84, "i_crtime": 0x90, "i_version_hi": 0x98, "i_projid": 0x9C,
}
SIZES = {  # sizeof(struct ...)
    "ext4_super_block": 1024, "ext4_group_desc": 64,
    "ext4_inode": 160,  # up to i_projid: 128 + i_extra_isize 32
    "ext4_dir_entry_2": 8,  # without name[]
    "ext4_dir_entry_tail": 12, "dx_root_info": 8,
    "dx_root": 32,  # without entries[]
    "dx_node": 8, "dx_countlimit": 4, "dx_entry": 8,
    "dx_tail": 8, "ext4_extent_header": 12, "ext4_extent": 12,
    "ext4_extent_idx": 12, "ext4_extent_tail": 4,
    "ext4_xattr_header": 32, "ext4_xattr_ibody_header": 4,
    "ext4_xattr_entry": 16,  # without e_name[]
    "posix_acl_xattr_header": 4, "posix_acl_xattr_entry": 8,
    "ext4_acl_header": 4, "ext4_acl_entry": 8, "ext4_acl_entry_short": 4,
}


KERNEL_OFFSETS = {
    "ext4_super_block": SUPERBLOCK_OFFSETS,
    "ext4_group_desc": GROUP_DESC_OFFSETS,
    "ext4_inode": INODE_OFFSETS,
    "ext4_dir_entry_tail": {"det_rec_len": 4, "det_reserved_ft": 7, "det_checksum": 8},
    "dx_root": {"dot": 0x00, "dot_name": 0x08, "dotdot": 0x0C, "dotdot_name": 0x14,
                          "info": 0x18},
    "dx_root_info": {"hash_version": 4, "info_length": 5, "indirect_levels": 6},
    "ext4_extent": {"ee_len": 4, "ee_start_hi": 6, "ee_start_lo": 8},
    "ext4_extent_idx": {"ei_leaf_lo": 4, "ei_leaf_hi": 8},
    "ext4_xattr_header": {"h_refcount": 4, "h_hash": 12, "h_checksum": 16, "h_reserved": 20},
    "ext4_xattr_entry": {"e_name_index": 1, "e_value_offs": 2, "e_value_inum": 4,
                               "e_value_size": 8, "e_hash": 12},
}


@pytest.mark.parametrize("name", sorted(KERNEL_OFFSETS))
def test_field_offsets_match_the_kernel(name: str) -> None:
    offsets = field_offsets(DEFINITIONS[name])
    for fname, want in KERNEL_OFFSETS[name].items():
        assert offsets[fname] == want, f"{fname} at {offsets[fname]:#x}, the kernel has {want:#x}"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_structure_sizes_match_the_kernel(name: str) -> None:
    assert DEFINITIONS[name].sizeof() == SIZES[name]


def test_every_definition_has_a_kernel_size_here() -> None:
    assert set(DEFINITIONS) == set(SIZES)


def test_checksum_and_magic_positions_are_the_kernels() -> None:
    assert superblock.S_MAGIC.offset == 0x38
    assert superblock.S_MAGIC.pack(superblock.EXT4_SUPER_MAGIC) == b"\x53\xef"
    assert superblock.SUPERBLOCK_CSUM_OFFSET == superblock.S_CHECKSUM.offset == 0x3FC
    assert superblock.GROUP_DESC_CSUM_OFFSET == superblock.BG_CHECKSUM.offset == 0x1E
    assert superblock.BG_CHECKSUM.size == 2
    assert (inode.INODE_CSUM_LO_OFFSET, inode.INODE_CSUM_HI_OFFSET) == (0x7C, 0x82)
    assert inode.I_CHECKSUM_LO.size == inode.I_CHECKSUM_HI.size == 2
    assert directory.DET_CHECKSUM.offset == 8 and directory.DIR_TAIL_SIZE == 12
    assert xattr.XATTR_BLOCK_CSUM_OFFSET == xattr.H_CHECKSUM.offset == 16
    assert extents.EXTENT_TAIL_OFFSET == 4096 - 4


def test_derived_geometry_constants() -> None:
    assert superblock.LOG_BLOCK_SIZE == 2  # 1024 << 2 == 4096
    assert superblock.DESC_SIZE == 64 and superblock.DESCS_PER_BLOCK == 64
    assert inode.I_BLOCK_SIZE == 60 == 4 * inode.EXT4_N_BLOCKS
    assert inode.EXTRA_ISIZE == 32 and inode.INODE_XATTR_SPACE == 96
    assert inode.INODES_PER_BLOCK == 16
    assert (extents.EXTENTS_IN_INODE, extents.EXTENTS_PER_BLOCK) == (4, 340)
    assert (directory.DX_ROOT_LIMIT, directory.DX_NODE_LIMIT) == (507, 510)
    assert (directory.DX_ROOT_ENTRIES_OFFSET, directory.DX_NODE_ENTRIES_OFFSET) == (0x20, 8)
    assert [directory.dir_rec_len(n) for n in (1, 2, 4, 5, 255)] == [12, 12, 12, 16, 264]


def test_ondisk_reexports_every_family() -> None:
    for module in MODULES:
        for name in module.__all__:
            assert getattr(ondisk, name) is getattr(module, name), name
