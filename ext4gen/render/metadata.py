"""Byte generation for every metadata block of a :class:`Plan`.

Nothing here decides layout; it renders what the planner decided.  Each method
produces one 4 KiB block (with its metadata_csum checksum) from the plan alone,
so blocks can be generated in any order, any number of times, identically.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from ..format.csum import crc32c_raw, fs_csum_seed, inode_csum_seed
from ..format.ondisk import (
    BLOCK_SIZE,
    BLOCKS_PER_GROUP,
    COMPAT_DIR_INDEX,
    COMPAT_EXT_ATTR,
    COMPAT_SPARSE_SUPER2,
    DESC_SIZE,
    DESCS_PER_BLOCK,
    DX_HASH_HALF_MD4,
    EXT2_FLAGS_UNSIGNED_HASH,
    EXT4_BG_BLOCK_UNINIT,
    EXT4_BG_INODE_UNINIT,
    EXT4_BG_INODE_ZEROED,
    EXT4_CRC32C_CHKSUM,
    EXT4_DEFM_ACL,
    EXT4_DEFM_XATTR_USER,
    EXT4_ERRORS_CONTINUE,
    EXT4_EXTENTS_FL,
    EXT4_VALID_FS,
    EXTRA_ISIZE,
    FIRST_INO,
    GROUP_DESC,
    GROUP_DESC_CSUM_OFFSET,
    INCOMPAT_64BIT,
    INCOMPAT_EXTENTS,
    INCOMPAT_FILETYPE,
    INCOMPAT_FLEX_BG,
    INCOMPAT_INLINE_DATA,
    INCOMPAT_LARGEDIR,
    INODE,
    INODE_CSUM_HI_OFFSET,
    INODE_CSUM_LO_OFFSET,
    INODE_SIZE,
    INODES_PER_BLOCK,
    RO_COMPAT_DIR_NLINK,
    RO_COMPAT_EXTRA_ISIZE,
    RO_COMPAT_HUGE_FILE,
    RO_COMPAT_LARGE_FILE,
    RO_COMPAT_METADATA_CSUM,
    RO_COMPAT_READONLY,
    RO_COMPAT_SHARED_BLOCKS,
    RO_COMPAT_SPARSE_SUPER,
    SUPERBLOCK_CSUM_OFFSET,
    SUPERBLOCK_OFFSET,
    ext4_super_block,
)
from ..layout import dirents, inline
from ..layout.extents import EXTENT_TAIL_OFFSET
from ..layout.planner import InodePlan, Plan
from ..model import times, xattrs
from ..model.tree import BLOCKDEV, CHARDEV, DIR, SYMLINK

ZERO_BLOCK = bytes(BLOCK_SIZE)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

COMPAT = COMPAT_EXT_ATTR | COMPAT_SPARSE_SUPER2 | COMPAT_DIR_INDEX
INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG
RO_COMPAT = (RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_HUGE_FILE
             | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE | RO_COMPAT_METADATA_CSUM
             | RO_COMPAT_READONLY)


@lru_cache(maxsize=64)
def bitmap_block(ones: int, zeros: int) -> bytes:
    """A bitmap block: ``ones`` set bits, ``zeros`` clear bits, the rest set (padding)."""
    bits = bytearray(b"\xff" * BLOCK_SIZE)
    for i in range(ones, ones + zeros):
        bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
    return bytes(bits)


def encode_rdev(major: int, minor: int) -> bytes:
    """i_block for a device: old 16-bit encoding when it fits, else the new one in i_block[1]."""
    if major < 256 and minor < 256:
        return _U32.pack((major << 8) | minor).ljust(60, b"\0")
    new = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return (b"\0" * 4 + _U32.pack(new & 0xFFFFFFFF)).ljust(60, b"\0")


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
        plan, geo = self.plan, self.geo
        epoch = max(0, min(plan.options.epoch_ns // times.NS, (1 << 40) - 1))
        lo, hi = epoch & 0xFFFFFFFF, epoch >> 32
        sb = {
            "s_inodes_count": geo.inodes_count,
            "s_blocks_count_lo": geo.blocks_count & 0xFFFFFFFF,
            "s_r_blocks_count_lo": 0,
            "s_free_blocks_count_lo": geo.free_blocks & 0xFFFFFFFF,
            "s_free_inodes_count": geo.inodes_count - self.used_inodes,
            "s_first_data_block": 0,
            "s_log_block_size": 2,
            "s_log_cluster_size": 2,
            "s_blocks_per_group": BLOCKS_PER_GROUP,
            "s_clusters_per_group": BLOCKS_PER_GROUP,
            "s_inodes_per_group": geo.inodes_per_group,
            "s_mtime": 0,
            "s_wtime": lo,
            "s_mnt_count": 0,
            "s_max_mnt_count": 0xFFFF,
            "s_state": EXT4_VALID_FS,
            "s_errors": EXT4_ERRORS_CONTINUE,
            "s_minor_rev_level": 0,
            "s_lastcheck": lo,
            "s_checkinterval": 0,
            "s_creator_os": 0,
            "s_rev_level": 1,
            "s_def_resuid": 0,
            "s_def_resgid": 0,
            "s_first_ino": FIRST_INO,
            "s_inode_size": INODE_SIZE,
            "s_block_group_nr": 0,
            "s_feature_compat": COMPAT,
            "s_feature_incompat": (INCOMPAT | (INCOMPAT_LARGEDIR if plan.large_dir else 0)
                                   | (INCOMPAT_INLINE_DATA if plan.options.inline_data else 0)),
            "s_feature_ro_compat": self.ro_compat,
            "s_uuid": plan.uuid,
            "s_volume_name": plan.options.label.encode().ljust(16, b"\0"),
            "s_last_mounted": bytes(64),
            "s_algorithm_usage_bitmap": 0,
            "s_prealloc_blocks": 0,
            "s_prealloc_dir_blocks": 0,
            "s_reserved_gdt_blocks": 0,
            "s_journal_uuid": bytes(16),
            "s_journal_inum": 0,
            "s_journal_dev": 0,
            "s_last_orphan": 0,
            "s_hash_seed": plan.hash_seed,
            "s_def_hash_version": DX_HASH_HALF_MD4,
            "s_jnl_backup_type": 0,
            "s_desc_size": DESC_SIZE,
            "s_default_mount_opts": EXT4_DEFM_XATTR_USER | EXT4_DEFM_ACL,
            "s_first_meta_bg": 0,
            "s_mkfs_time": lo,
            "s_jnl_blocks": [0] * 17,
            "s_blocks_count_hi": geo.blocks_count >> 32,
            "s_r_blocks_count_hi": 0,
            "s_free_blocks_count_hi": geo.free_blocks >> 32,
            "s_min_extra_isize": EXTRA_ISIZE,
            "s_want_extra_isize": EXTRA_ISIZE,
            "s_flags": EXT2_FLAGS_UNSIGNED_HASH,
            "s_raid_stride": 0,
            "s_mmp_update_interval": 0,
            "s_mmp_block": 0,
            "s_raid_stripe_width": 0,
            "s_log_groups_per_flex": geo.log_groups_per_flex,
            "s_checksum_type": EXT4_CRC32C_CHKSUM,
            "s_encryption_level": 0,
            "s_reserved_pad": 0,
            "s_kbytes_written": 0,
            "s_snapshot_inum": 0,
            "s_snapshot_id": 0,
            "s_snapshot_r_blocks_count": 0,
            "s_snapshot_list": 0,
            "s_error_count": 0,
            "s_first_error_time": 0,
            "s_first_error_ino": 0,
            "s_first_error_block": 0,
            "s_first_error_func": bytes(32),
            "s_first_error_line": 0,
            "s_last_error_time": 0,
            "s_last_error_ino": 0,
            "s_last_error_line": 0,
            "s_last_error_block": 0,
            "s_last_error_func": bytes(32),
            "s_mount_opts": bytes(64),
            "s_usr_quota_inum": 0,
            "s_grp_quota_inum": 0,
            "s_overhead_clusters": 0,
            "s_backup_bgs": [0, 0],
            "s_encrypt_algos": bytes(4),
            "s_encrypt_pw_salt": bytes(16),
            "s_lpf_ino": 0,
            "s_prj_quota_inum": 0,
            "s_checksum_seed": 0,
            "s_wtime_hi": hi,
            "s_mtime_hi": 0,
            "s_mkfs_time_hi": hi,
            "s_lastcheck_hi": hi,
            "s_first_error_time_hi": 0,
            "s_last_error_time_hi": 0,
            "s_first_error_errcode": 0,
            "s_last_error_errcode": 0,
            "s_encoding": 0,
            "s_encoding_flags": 0,
            "s_orphan_file_inum": 0,
            "s_reserved": bytes(94 * 4),
            "s_checksum": 0,
        }
        raw = bytearray(ext4_super_block.build(sb))
        _U32.pack_into(raw, SUPERBLOCK_CSUM_OFFSET,
                       crc32c_raw(0xFFFFFFFF, raw[:SUPERBLOCK_CSUM_OFFSET]))
        block = bytearray(BLOCK_SIZE)
        block[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024] = raw
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
        raw = bytearray(GROUP_DESC.pack_tuple(
            bb & 0xFFFFFFFF, ib & 0xFFFFFFFF, it & 0xFFFFFFFF,
            free_blocks & 0xFFFF, free_inodes & 0xFFFF, dirs & 0xFFFF, flags,
            0, bb_csum & 0xFFFF, ib_csum & 0xFFFF, itable_unused & 0xFFFF, 0,
            bb >> 32, ib >> 32, it >> 32,
            free_blocks >> 16, free_inodes >> 16, dirs >> 16, itable_unused >> 16,
            0, bb_csum >> 16, ib_csum >> 16, 0))
        crc = crc32c_raw(self.fs_seed, _U32.pack(g))
        crc = crc32c_raw(crc, raw)  # bg_checksum is still zero here
        _U16.pack_into(raw, GROUP_DESC_CSUM_OFFSET, crc & 0xFFFF)
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
        for i in range(INODES_PER_BLOCK):
            ino = first + i
            if ino > last_ino:
                break
            ip = inodes[ino]
            if ip is not None:
                out[i * INODE_SIZE : (i + 1) * INODE_SIZE] = self.inode(ip)
        return bytes(out)

    def inode(self, ip: InodePlan) -> bytes:
        node = ip.node
        m = node.meta
        ibody = ip.xattr_inode
        if ip.inline_size >= 0:
            content = self.inline_content(ip)
            i_block = content[:60].ljust(60, b"\0")
            ibody = [*ibody, inline.system_data(content[60:])]
        elif ip.flags & EXT4_EXTENTS_FL:
            i_block = self.plan.extent_tree(ip).root_bytes()
        elif node.kind == SYMLINK:
            i_block = node.target.ljust(60, b"\0")
        elif node.kind in (CHARDEV, BLOCKDEV):
            i_block = encode_rdev(*node.rdev)
        else:
            i_block = bytes(60)
        atime, atime_x = times.encode(m.atime)
        ctime, ctime_x = times.encode(m.ctime)
        mtime, mtime_x = times.encode(m.mtime)
        crtime, crtime_x = times.encode(m.crtime)
        sectors = ip.blocks_4k * (BLOCK_SIZE // 512)
        acl_block = self.geo.xattr_start + ip.xattr_block if ip.xattr_block >= 0 else 0
        raw = bytearray(INODE_SIZE)
        INODE.pack_into(
            raw, 0,
            ip.mode, m.uid & 0xFFFF, ip.size & 0xFFFFFFFF, atime, ctime, mtime, 0,
            m.gid & 0xFFFF, ip.links, sectors & 0xFFFFFFFF, ip.flags, 0, i_block,
            ip.generation, acl_block & 0xFFFFFFFF, ip.size >> 32, 0,
            sectors >> 32, acl_block >> 32, m.uid >> 16, m.gid >> 16, 0, 0,
            EXTRA_ISIZE, 0, ctime_x, mtime_x, atime_x, crtime, crtime_x, 0, 0)
        if ibody:
            raw[INODE.size :] = xattrs.ibody_bytes(ibody)
        csum = crc32c_raw(inode_csum_seed(self.fs_seed, ip.ino, ip.generation), raw)
        _U16.pack_into(raw, INODE_CSUM_LO_OFFSET, csum & 0xFFFF)
        _U16.pack_into(raw, INODE_CSUM_HI_OFFSET, csum >> 16)
        return bytes(raw)

    def inline_content(self, ip: InodePlan) -> bytes:
        """The bytes an inline inode stores: file content, or parent + packed entries."""
        if ip.node.kind == DIR:
            assert ip.entries is not None
            return inline.dir_content(ip.entries)
        snapshot = self.plan.inline_bytes.get(ip.ino)  # host files: read at plan time
        if snapshot is not None:
            return snapshot
        assert ip.node.source is not None
        buf = bytearray(ip.inline_size)
        ip.node.source.readinto(memoryview(buf), 0)
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
        _U32.pack_into(buf, EXTENT_TAIL_OFFSET, crc32c_raw(seed, memoryview(buf)[:EXTENT_TAIL_OFFSET]))
        return bytes(buf)
