"""Data blocks and extent-tree blocks.

Files and long symlinks get data blocks (deduplicated, in inode order) unless
they are inline; then every inode with extents gets the index/leaf blocks its
extent tree needs beyond the four extents i_block holds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import progress
from ..errors import ManifestError, SourceError
from ..format.extents import EXTENTS_IN_INODE
from ..format.ondisk import EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL
from ..model.options import ImageOptions
from ..model.sources import HostFileSource, InlineSource, Source
from ..model.tree import DIR, FILE, MAX_FILE_SIZE, SYMLINK, Node, file_size_error
from .dedup import DataAllocator
from .extents import tree_levels
from .inline import MAX_INLINE_SIZE
from .plan import InodePlan
from .xattr_placement import xattrs_fit_beside

FAST_SYMLINK_MAX = 59  # targets shorter than i_block (60 bytes) live in the inode


def allocate_data(inodes: Sequence[InodePlan | None], nodes: Sequence[Node | None],
                  options: ImageOptions, allocator: DataAllocator) -> dict[int, bytes]:
    """Files and long symlinks: inline, or data blocks (deduplicated), in inode order.

    Returns the bytes of inline host files, read once here so that serving never
    touches their sources again (a changed tiny file cannot fail an inode-table block).
    """
    to_hash = 0
    if options.dedup == "content":
        to_hash = sum(ip.source.size for ip in inodes if ip is not None and ip.kind == FILE
                      and ip.source is not None and ip.source.plan_readable)
    with progress.phase("hashing", to_hash or None, unit="B", scale=True) as tick:
        allocator.on_read = tick
        try:
            if options.dedup == "content":
                allocator.start_read_ahead(_read_ahead_order(inodes, options))
            return _allocate_each(inodes, nodes, options, allocator)
        finally:
            allocator.on_read = None
            allocator.stop_read_ahead()


def _read_ahead_order(inodes: Sequence[InodePlan | None], options: ImageOptions) -> list[Source]:
    """The sources :func:`_allocate_each` will read for content dedup, in its order (a guess:
    one it skips, or inlines after all, is only read ahead in vain)."""
    inline_max = MAX_INLINE_SIZE if options.inline_data else 0
    return [ip.source for ip in inodes if ip is not None and ip.kind == FILE and ip.source is not None
            and ip.source.size > inline_max and ip.source.plan_readable and not ip.source.all_zero]


def _allocate_each(inodes: Sequence[InodePlan | None], nodes: Sequence[Node | None],
                   options: ImageOptions, allocator: DataAllocator) -> dict[int, bytes]:
    inline_bytes: dict[int, bytes] = {}
    for ip, node in zip(inodes, nodes, strict=True):
        if ip is None or node is None:
            continue
        if ip.kind == FILE:
            source = ip.source
            assert source is not None
            size = ip.size = source.size
            if not 0 <= size <= MAX_FILE_SIZE:  # file_size_error's test, inline: once per file
                raise ManifestError(node.key or "/", file_size_error(size) or "")
            # Dynamic content (generators) is never inlined: it must be produced on read,
            # and a failure must cost its own data blocks, not a block of 16 inodes.
            if (options.inline_data and 0 < ip.size <= MAX_INLINE_SIZE and source.plan_readable
                    and not source.all_zero and xattrs_fit_beside(node.xattrs, ip.size)):
                ip.inline_size = ip.size
                ip.flags |= EXT4_INLINE_DATA_FL
                if isinstance(source, HostFileSource):
                    inline_bytes[ip.ino] = read_at_plan_time(source, node.key)
            else:
                ip.extents = allocator.allocate(source)
        elif ip.kind == SYMLINK:
            ip.size = len(ip.target)
            if ip.size > FAST_SYMLINK_MAX:
                ip.extents = allocator.allocate(InlineSource(ip.target))
    allocator.finish()
    return inline_bytes


def read_at_plan_time(source: Source, key: str) -> bytes:
    """All bytes of a small pinned source, checked against its pin, for an inline inode."""
    buf = bytearray(source.size)
    direct = source.host_range()
    try:
        if direct is None:  # sparse or segmented: the general path
            source.readinto(memoryview(buf), 0)
            return bytes(buf)
        # One file read once: open, read, close, without taking a slot of the
        # serve-time descriptor cache for bytes that will never be read again.
        hf, base = direct
        fd = hf.open_pinned()
        try:
            got = 0
            while got < len(buf):
                n = os.preadv(fd, [memoryview(buf)[got:]], base + got)
                if n <= 0:
                    raise SourceError(f"{hf.path}: source is shorter than planned")
                got += n
            hf.check(os.fstat(fd))
        finally:
            os.close(fd)
    except (SourceError, OSError) as e:
        raise ManifestError(key or "/", f"cannot read source: {e}") from None
    return bytes(buf)


@dataclass
class TreeArea:
    """The extent-tree area: its size and, per block, (inode, tree block index)."""

    nblocks: int = 0
    owner: list[tuple[InodePlan, int]] = field(default_factory=list)


def place_extent_trees(inodes: Sequence[InodePlan | None]) -> TreeArea:
    """Mark extent-mapped inodes and give fragmented ones their tree blocks, in inode order.

    Also sets ``blocks_4k`` (data plus tree blocks) now that both are known.
    """
    area = TreeArea()
    for ip in inodes:
        if ip is None:
            continue
        extents = ip.extents
        # one extent or none: nearly every file of a big tree, without a generator each
        data = (extents[0][1] if len(extents) == 1 else sum(e[1] for e in extents)) if extents else 0
        if ip.inline_size < 0 and (ip.kind in (FILE, DIR) or extents):
            ip.flags |= EXT4_EXTENTS_FL
            n = sum(tree_levels(len(extents))) if len(extents) > EXTENTS_IN_INODE else 0
            if n:
                ip.tree_start = area.nblocks
                ip.n_tree_blocks = n
                area.owner.extend((ip, i) for i in range(n))
                area.nblocks += n
        ip.blocks_4k = data + ip.n_tree_blocks
    return area
