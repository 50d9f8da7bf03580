"""Byte generation for every metadata block of a :class:`Plan`.

Nothing here decides layout; it renders what the planner decided.  Each method
produces one 4 KiB block (with its metadata_csum checksum) from the plan alone,
so blocks can be generated in any order, any number of times, identically.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from ..format.csum import crc32c_raw, fs_csum_seed, inode_csum_seed
from ..format.directory import DX_HASH_HALF_MD4
from ..format.extents import EXTENT_TAIL, EXTENT_TAIL_OFFSET
from ..format.features import (
    COMPAT_DIR_INDEX,
    COMPAT_EXT_ATTR,
    COMPAT_SPARSE_SUPER2,
    INCOMPAT_64BIT,
    INCOMPAT_EXTENTS,
    INCOMPAT_FILETYPE,
    INCOMPAT_FLEX_BG,
    INCOMPAT_INLINE_DATA,
    INCOMPAT_LARGEDIR,
    RO_COMPAT_DIR_NLINK,
    RO_COMPAT_EXTRA_ISIZE,
    RO_COMPAT_HUGE_FILE,
    RO_COMPAT_LARGE_FILE,
    RO_COMPAT_METADATA_CSUM,
    RO_COMPAT_READONLY,
    RO_COMPAT_SHARED_BLOCKS,
    RO_COMPAT_SPARSE_SUPER,
)
from ..format.inode import (
    EXT4_EXTENTS_FL,
    EXTRA_ISIZE,
    FIRST_INO,
    I_BLOCK_SIZE,
    I_BLOCKS_UNIT,
    I_CHECKSUM_HI,
    I_CHECKSUM_LO,
    INODE,
    INODE_SIZE,
    INODES_PER_BLOCK,
)
from ..format.superblock import (
    BG_CHECKSUM,
    BLOCK_SIZE,
    BLOCKS_PER_GROUP,
    DESC_SIZE,
    DESCS_PER_BLOCK,
    EXT2_FLAGS_UNSIGNED_HASH,
    EXT4_BG_BLOCK_UNINIT,
    EXT4_BG_INODE_UNINIT,
    EXT4_BG_INODE_ZEROED,
    EXT4_CRC32C_CHKSUM,
    EXT4_DEFM_ACL,
    EXT4_DEFM_XATTR_USER,
    EXT4_DYNAMIC_REV,
    EXT4_ERRORS_CONTINUE,
    EXT4_LABEL_MAX,
    EXT4_OS_LINUX,
    EXT4_VALID_FS,
    GROUP_DESC,
    LOG_BLOCK_SIZE,
    MAX_MNT_COUNT_NEVER,
    S_CHECKSUM,
    SUPERBLOCK,
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
)
from ..layout import dirents, inline
from ..layout.plan import InodePlan, Plan
from ..model import times, xattrs
from ..model.tree import BLOCKDEV, CHARDEV, DIR, SYMLINK

ZERO_BLOCK = bytes(BLOCK_SIZE)
_U32 = struct.Struct("<I")
_NO_I_BLOCK = bytes(I_BLOCK_SIZE)

COMPAT = COMPAT_EXT_ATTR | COMPAT_SPARSE_SUPER2 | COMPAT_DIR_INDEX
INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG
RO_COMPAT = (RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_HUGE_FILE
             | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE | RO_COMPAT_METADATA_CSUM
             | RO_COMPAT_READONLY)

#: Superblock fields that are the same in every image ext4gen writes; every field
#: named neither here nor in :meth:`MetadataGenerator.superblock` is zero.
SUPERBLOCK_CONSTANTS = {
    "s_first_data_block": 0,  # block 0 holds the superblock when blocks are over 1 KiB
    "s_log_block_size": LOG_BLOCK_SIZE,
    "s_log_cluster_size": LOG_BLOCK_SIZE,  # no bigalloc: a cluster is a block
    "s_blocks_per_group": BLOCKS_PER_GROUP,
    "s_clusters_per_group": BLOCKS_PER_GROUP,
    "s_max_mnt_count": MAX_MNT_COUNT_NEVER,
    "s_state": EXT4_VALID_FS,
    "s_errors": EXT4_ERRORS_CONTINUE,
    "s_creator_os": EXT4_OS_LINUX,
    "s_rev_level": EXT4_DYNAMIC_REV,
    "s_first_ino": FIRST_INO,
    "s_inode_size": INODE_SIZE,
    "s_feature_compat": COMPAT,
    "s_def_hash_version": DX_HASH_HALF_MD4,
    "s_desc_size": DESC_SIZE,
    "s_default_mount_opts": EXT4_DEFM_XATTR_USER | EXT4_DEFM_ACL,
    "s_min_extra_isize": EXTRA_ISIZE,
    "s_want_extra_isize": EXTRA_ISIZE,
    "s_flags": EXT2_FLAGS_UNSIGNED_HASH,
    "s_checksum_type": EXT4_CRC32C_CHKSUM,
}

# Every field an inode or group descriptor of ext4gen's sets (the rest are zero,
# the checksums filled in afterwards): named once here, by keyword at the call.
_INODE_FIELDS = INODE.fields(
    "i_mode", "i_uid", "i_size_lo", "i_atime", "i_ctime", "i_mtime", "i_gid", "i_links_count",
    "i_blocks_lo", "i_flags", "i_block", "i_generation", "i_file_acl_lo", "i_size_high",
    "l_i_blocks_high", "l_i_file_acl_high", "l_i_uid_high", "l_i_gid_high", "i_extra_isize",
    "i_ctime_extra", "i_mtime_extra", "i_atime_extra", "i_crtime", "i_crtime_extra")
_GROUP_DESC_FIELDS = GROUP_DESC.fields(
    "bg_block_bitmap_lo", "bg_inode_bitmap_lo", "bg_inode_table_lo", "bg_free_blocks_count_lo",
    "bg_free_inodes_count_lo", "bg_used_dirs_count_lo", "bg_flags", "bg_block_bitmap_csum_lo",
    "bg_inode_bitmap_csum_lo", "bg_itable_unused_lo", "bg_block_bitmap_hi", "bg_inode_bitmap_hi",
    "bg_inode_table_hi", "bg_free_blocks_count_hi", "bg_free_inodes_count_hi",
    "bg_used_dirs_count_hi", "bg_itable_unused_hi", "bg_block_bitmap_csum_hi",
    "bg_inode_bitmap_csum_hi")
_INODE_XATTRS = INODE.size  # in-inode xattrs follow i_projid


@lru_cache(maxsize=64)
def bitmap_block(ones: int, zeros: int) -> bytes:
    """A bitmap block: ``ones`` set bits, ``zeros`` clear bits, the rest set (padding)."""
    bits = bytearray(b"\xff" * BLOCK_SIZE)
    for i in range(ones, ones + zeros):
        bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
    return bytes(bits)


def encode_rdev(major: int, minor: int) -> bytes:
    """i_block for a device: the old 16-bit encoding in i_block[0] if it fits, else the new in i_block[1]."""
    if major < 256 and minor < 256:
        return _U32.pack((major << 8) | minor).ljust(I_BLOCK_SIZE, b"\0")
    new = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return (bytes(_U32.size) + _U32.pack(new & 0xFFFFFFFF)).ljust(I_BLOCK_SIZE, b"\0")


class MetadataGenerator:
    """Renders superblock, descriptors, bitmaps, inodes, directory and extent blocks."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.geo = plan.geometry
        self.fs_seed = fs_csum_seed(plan.uuid)
        self.ro_compat = RO_COMPAT | (RO_COMPAT_SHARED_BLOCKS if plan.shared_blocks else 0)
        self.used_inodes = sum(plan.used_inodes_per_group)

    # -- group accounting -------------------------------------------------
    def group_used_blocks(self, g: int) -> int:
        start, end = self.geo.group_block_range(g)
        return max(0, min(self.geo.used_blocks, end) - start)

    def group_flags(self, g: int) -> int:
        flags = EXT4_BG_INODE_ZEROED
        if self.plan.used_inodes_per_group[g] == 0:
            flags |= EXT4_BG_INODE_UNINIT
        if self.group_used_blocks(g) == 0 and g != self.geo.groups - 1:
            flags |= EXT4_BG_BLOCK_UNINIT
        return flags

    def block_bitmap(self, g: int) -> bytes:
        start, end = self.geo.group_block_range(g)
        used = self.group_used_blocks(g)
        return bitmap_block(used, end - start - used)

    def inode_bitmap(self, g: int) -> bytes:
        ipg = self.geo.inodes_per_group
        last = self.plan.last_used_index_per_group[g] + 1
        if self.plan.used_inodes_per_group[g] == last:  # contiguous from the group's start
            return bitmap_block(last, ipg - last)
        bits = bytearray(bitmap_block(0, ipg))
        inodes = self.plan.inodes
        first = g * ipg + 1
        for i in range(last):
            ino = first + i
            if ino < FIRST_INO or inodes[ino] is not None:
                bits[i >> 3] |= 1 << (i & 7)
        return bytes(bits)

    # -- superblock and descriptors ---------------------------------------
    def superblock(self) -> bytes:
        """Block 0: the boot area's zeros, then the superblock with its checksum."""
        plan, geo = self.plan, self.geo
        epoch = max(0, min(plan.options.epoch_ns // times.NS, (1 << 40) - 1))
        lo, hi = epoch & 0xFFFFFFFF, epoch >> 32
        raw = bytearray(SUPERBLOCK.pack(
            **SUPERBLOCK_CONSTANTS,
            s_inodes_count=geo.inodes_count,
            s_blocks_count_lo=geo.blocks_count & 0xFFFFFFFF,
            s_blocks_count_hi=geo.blocks_count >> 32,
            s_free_blocks_count_lo=geo.free_blocks & 0xFFFFFFFF,
            s_free_blocks_count_hi=geo.free_blocks >> 32,
            s_free_inodes_count=geo.inodes_count - self.used_inodes,
            s_inodes_per_group=geo.inodes_per_group,
            s_log_groups_per_flex=geo.log_groups_per_flex,
            s_wtime=lo, s_wtime_hi=hi, s_lastcheck=lo, s_lastcheck_hi=hi,
            s_mkfs_time=lo, s_mkfs_time_hi=hi,
            s_feature_incompat=(INCOMPAT | (INCOMPAT_LARGEDIR if plan.large_dir else 0)
                                | (INCOMPAT_INLINE_DATA if plan.options.inline_data else 0)),
            s_feature_ro_compat=self.ro_compat,
            s_uuid=plan.uuid,
            s_volume_name=plan.options.label.encode().ljust(EXT4_LABEL_MAX, b"\0"),
            s_hash_seed=plan.hash_seed,
        ))
        S_CHECKSUM.pack_into(raw, crc32c_raw(0xFFFFFFFF, raw[: S_CHECKSUM.offset]))
        block = bytearray(BLOCK_SIZE)
        block[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE] = raw
        return bytes(block)

    def group_desc(self, g: int) -> bytes:
        geo, plan = self.geo, self.plan
        ipg = geo.inodes_per_group
        flags = self.group_flags(g)
        start, end = geo.group_block_range(g)
        free_blocks = end - start - self.group_used_blocks(g)
        used_inodes = plan.used_inodes_per_group[g]
        itable_unused = ipg - (plan.last_used_index_per_group[g] + 1)
        bb = geo.block_bitmap_start + g
        ib = geo.inode_bitmap_start + g
        it = geo.inode_table_start + g * geo.itable_blocks_per_group
        bb_csum = 0 if flags & EXT4_BG_BLOCK_UNINIT else crc32c_raw(self.fs_seed, self.block_bitmap(g))
        ib_csum = 0 if flags & EXT4_BG_INODE_UNINIT else crc32c_raw(
            self.fs_seed, self.inode_bitmap(g)[: ipg // 8])
        free_inodes = ipg - used_inodes
        dirs = plan.used_dirs_per_group[g]
        raw = bytearray(DESC_SIZE)
        _GROUP_DESC_FIELDS.pack_into(
            raw, 0,
            bg_block_bitmap_lo=bb & 0xFFFFFFFF, bg_block_bitmap_hi=bb >> 32,
            bg_inode_bitmap_lo=ib & 0xFFFFFFFF, bg_inode_bitmap_hi=ib >> 32,
            bg_inode_table_lo=it & 0xFFFFFFFF, bg_inode_table_hi=it >> 32,
            bg_free_blocks_count_lo=free_blocks & 0xFFFF, bg_free_blocks_count_hi=free_blocks >> 16,
            bg_free_inodes_count_lo=free_inodes & 0xFFFF, bg_free_inodes_count_hi=free_inodes >> 16,
            bg_used_dirs_count_lo=dirs & 0xFFFF, bg_used_dirs_count_hi=dirs >> 16,
            bg_itable_unused_lo=itable_unused & 0xFFFF, bg_itable_unused_hi=itable_unused >> 16,
            bg_block_bitmap_csum_lo=bb_csum & 0xFFFF, bg_block_bitmap_csum_hi=bb_csum >> 16,
            bg_inode_bitmap_csum_lo=ib_csum & 0xFFFF, bg_inode_bitmap_csum_hi=ib_csum >> 16,
            bg_flags=flags)
        crc = crc32c_raw(self.fs_seed, _U32.pack(g))
        crc = crc32c_raw(crc, raw)  # bg_checksum is still zero here
        BG_CHECKSUM.pack_into(raw, crc & 0xFFFF)
        return bytes(raw)

    def gdt_block(self, index: int) -> bytes:
        first = index * DESCS_PER_BLOCK
        last = min(first + DESCS_PER_BLOCK, self.geo.groups)
        return b"".join(self.group_desc(g) for g in range(first, last)).ljust(BLOCK_SIZE, b"\0")

    # -- inodes -----------------------------------------------------------
    def inode_table_block(self, g: int, k: int) -> bytes:
        first = g * self.geo.inodes_per_group + k * INODES_PER_BLOCK + 1
        inodes = self.plan.inodes
        last_ino = self.plan.last_ino
        if first > last_ino:
            return ZERO_BLOCK
        out = bytearray(BLOCK_SIZE)
        for i in range(min(INODES_PER_BLOCK, last_ino - first + 1)):
            ip = inodes[first + i]
            if ip is not None:
                self.inode_into(out, i * INODE_SIZE, ip)
        return bytes(out)

    def inode(self, ip: InodePlan) -> bytes:
        """One inode's INODE_SIZE bytes."""
        raw = bytearray(INODE_SIZE)
        self.inode_into(raw, 0, ip)
        return bytes(raw)

    def inode_into(self, out: bytearray, offset: int, ip: InodePlan) -> None:
        """Write inode ``ip`` into zeroed ``out[offset : offset + INODE_SIZE]`` (the hot path)."""
        m = ip.meta
        ibody = ip.xattr_inode
        if ip.inline_size >= 0:
            content = self.inline_content(ip)
            i_block = content[:I_BLOCK_SIZE].ljust(I_BLOCK_SIZE, b"\0")
            ibody = [*ibody, inline.system_data(content[I_BLOCK_SIZE:])]
        elif ip.flags & EXT4_EXTENTS_FL:
            i_block = self.plan.extent_tree(ip).root_bytes()
        elif ip.kind == SYMLINK:
            i_block = ip.target.ljust(I_BLOCK_SIZE, b"\0")
        elif ip.kind in (CHARDEV, BLOCKDEV):
            i_block = encode_rdev(*ip.rdev)
        else:
            i_block = _NO_I_BLOCK
        atime, atime_x = times.encode(m.atime)
        ctime, ctime_x = times.encode(m.ctime)
        mtime, mtime_x = times.encode(m.mtime)
        crtime, crtime_x = times.encode(m.crtime)
        sectors = ip.blocks_4k * (BLOCK_SIZE // I_BLOCKS_UNIT)
        acl_block = self.geo.xattr_start + ip.xattr_block if ip.xattr_block >= 0 else 0
        size = ip.size
        _INODE_FIELDS.pack_into(
            out, offset,
            i_mode=ip.mode, i_links_count=ip.links, i_flags=ip.flags, i_block=i_block,
            i_generation=ip.generation, i_extra_isize=EXTRA_ISIZE,
            i_uid=m.uid & 0xFFFF, l_i_uid_high=m.uid >> 16,
            i_gid=m.gid & 0xFFFF, l_i_gid_high=m.gid >> 16,
            i_size_lo=size & 0xFFFFFFFF, i_size_high=size >> 32,
            i_blocks_lo=sectors & 0xFFFFFFFF, l_i_blocks_high=sectors >> 32,
            i_file_acl_lo=acl_block & 0xFFFFFFFF, l_i_file_acl_high=acl_block >> 32,
            i_atime=atime, i_atime_extra=atime_x, i_ctime=ctime, i_ctime_extra=ctime_x,
            i_mtime=mtime, i_mtime_extra=mtime_x, i_crtime=crtime, i_crtime_extra=crtime_x)
        if ibody:
            out[offset + _INODE_XATTRS : offset + INODE_SIZE] = xattrs.ibody_bytes(ibody)
        # both checksum halves are still zero, as the checksum requires
        seed = inode_csum_seed(self.fs_seed, ip.ino, ip.generation)
        csum = crc32c_raw(seed, memoryview(out)[offset : offset + INODE_SIZE])
        I_CHECKSUM_LO.pack_into(out, csum & 0xFFFF, offset)
        I_CHECKSUM_HI.pack_into(out, csum >> 16, offset)

    def inline_content(self, ip: InodePlan) -> bytes:
        """The bytes an inline inode stores: file content, or parent + packed entries."""
        if ip.kind == DIR:
            assert ip.entries is not None
            return inline.dir_content(ip.entries)
        snapshot = self.plan.inline_bytes.get(ip.ino)  # host files: read at plan time
        if snapshot is not None:
            return snapshot
        assert ip.source is not None
        buf = bytearray(ip.inline_size)
        ip.source.readinto(memoryview(buf), 0)
        return bytes(buf)

    # -- directory and extent-tree blocks ----------------------------------
    def dir_block(self, index: int) -> bytes:
        ip, k = self.plan.dir_block_owner[index]
        assert ip.entries is not None
        seed = inode_csum_seed(self.fs_seed, ip.ino, ip.generation)
        if ip.htree is not None:
            return ip.htree.block_bytes(k, ip.ino, ip.entries[1][1], seed)
        assert k == 0, "linear directories have one block"
        buf = dirents.block_bytes(ip.entries)
        dirents.set_checksum(buf, seed)
        return bytes(buf)

    def xattr_block(self, index: int) -> bytes:
        xb = self.plan.xattr_blocks[index]
        return xattrs.block_bytes(xb.entries, xb.refcount, self.geo.xattr_start + index, self.fs_seed)

    def tree_block(self, index: int) -> bytes:
        ip, k = self.plan.tree_block_owner[index]
        buf = bytearray(self.plan.extent_tree(ip).block_bytes(k))
        seed = inode_csum_seed(self.fs_seed, ip.ino, ip.generation)
        EXTENT_TAIL.pack_into(buf, EXTENT_TAIL_OFFSET, crc32c_raw(seed, memoryview(buf)[:EXTENT_TAIL_OFFSET]))
        return bytes(buf)
