"""The virtual disk: a sorted region map over a :class:`Plan`.

Like nbdkit's floppy plugin, the disk is a sorted list of byte regions, each
filled on demand: metadata blocks are rendered by :class:`MetadataGenerator`
(through a small LRU cache), file data is copied from its source straight into
the caller's buffer, and everything else is zeros.  The image is immutable, so
one instance can be shared by any number of threads and connections.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from ..errors import SourceError
from ..format.ondisk import BLOCK_SIZE, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT
from ..layout.dedup import Run
from ..layout.planner import Plan
from ..model.sources import HostFile, HostFileSource
from ..model.sources import zero_fill as _zero_fill
from .metadata import MetadataGenerator

META, DATA, ZERO = "metadata", "data", "zero"
META_CACHE_BLOCKS = 2048


@dataclass
class ReadStats:
    """Counters of what reads cost; updated without locks (approximate under threads)."""

    requests: int = 0
    bytes_metadata: int = 0
    bytes_data: int = 0
    bytes_zero: int = 0
    metadata_blocks_generated: int = 0
    metadata_block_lookups: int = 0
    source_errors: int = 0

    @property
    def metadata_cache_hits(self) -> int:
        return max(0, self.metadata_block_lookups - self.metadata_blocks_generated)


class Image:
    """A read-only ext4 image whose bytes are produced only when read."""

    def __init__(self, plan: Plan, *, cache_blocks: int = META_CACHE_BLOCKS) -> None:
        self.plan = plan
        self.meta = MetadataGenerator(plan)
        geo = plan.geometry
        self.size = geo.blocks_count * BLOCK_SIZE
        self.stats = ReadStats()
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._kinds: list[str] = []
        self._fills: list[Callable[[memoryview, int], None]] = []
        # Data regions: how many bytes come from the source (zeros after); for those read
        # straight from a host file, the file and the file offset of the first byte.
        self._hostfiles: list[HostFile | None] = []
        self._file_offsets: list[int] = []
        self._data_lens: list[int] = []
        self._build_regions()
        self._block = lru_cache(maxsize=cache_blocks)(self._render_block)

    # -- region map ---------------------------------------------------------
    def _add(self, start: int, end: int, kind: str, fill: Callable[[memoryview, int], None],
             hostfile: HostFile | None = None, file_offset: int = 0, data_len: int = 0) -> None:
        if end <= start:
            return
        if self._ends and self._ends[-1] != start:
            raise AssertionError(f"region gap at {self._ends[-1]}..{start}")
        if kind == ZERO and self._kinds and self._kinds[-1] == ZERO:
            self._ends[-1] = end
            return
        self._starts.append(start)
        self._ends.append(end)
        self._kinds.append(kind)
        self._fills.append(fill)
        self._hostfiles.append(hostfile)
        self._file_offsets.append(file_offset)
        self._data_lens.append(data_len)

    def _add_meta(self, first_block: int, nblocks: int, render: Callable[[int], bytes]) -> None:
        """Blocks ``first_block..+nblocks`` rendered by ``render(index)``."""
        self._renderers.append((first_block, render))
        start = first_block * BLOCK_SIZE

        def fill(mv: memoryview, rel: int) -> None:
            self._fill_meta(mv, start + rel)

        self._add(start, (first_block + nblocks) * BLOCK_SIZE, META, fill)

    def _add_zero(self, first_block: int, nblocks: int) -> None:
        self._add(first_block * BLOCK_SIZE, (first_block + nblocks) * BLOCK_SIZE, ZERO,
                  lambda mv, rel: _zero_fill(mv))

    def _build_regions(self) -> None:
        plan, geo, meta = self.plan, self.plan.geometry, self.meta
        self._renderers: list[tuple[int, Callable[[int], bytes]]] = []
        self._add_meta(0, 1, lambda i: meta.superblock())
        self._add_meta(1, geo.gdt_blocks, meta.gdt_block)
        for g in range(geo.groups):
            if meta.group_flags(g) & EXT4_BG_BLOCK_UNINIT:
                self._add_zero(geo.block_bitmap_start + g, 1)
            else:
                self._add_meta(geo.block_bitmap_start + g, 1, lambda i, g=g: meta.block_bitmap(g))
        live = [not meta.group_flags(g) & EXT4_BG_INODE_UNINIT for g in range(geo.groups)]
        for g in range(geo.groups):
            if live[g]:
                self._add_meta(geo.inode_bitmap_start + g, 1, lambda i, g=g: meta.inode_bitmap(g))
            else:
                self._add_zero(geo.inode_bitmap_start + g, 1)
        itb = geo.itable_blocks_per_group
        used_itb = [0] * geo.groups
        for g in range(geo.groups):
            if live[g]:
                used = plan.last_used_index_per_group[g] + 1
                used_itb[g] = -(-used * 256 // BLOCK_SIZE)
        for g in range(geo.groups):
            first = geo.inode_table_start + g * itb
            n = used_itb[g]
            self._add_meta(first, n, lambda k, g=g: meta.inode_table_block(g, k))
            self._add_zero(first + n, itb - n)
        self._add_meta(geo.dir_start, geo.tree_start - geo.dir_start, meta.dir_block)
        self._add_meta(geo.tree_start, geo.xattr_start - geo.tree_start, meta.tree_block)
        self._add_meta(geo.xattr_start, geo.data_start - geo.xattr_start, meta.xattr_block)
        for run in plan.runs:
            # one region per run, the zeros after the source's last byte included: fewer
            # regions per request, and a run's blocks are allocated data either way
            start = (geo.data_start + run.block) * BLOCK_SIZE
            direct = run.source.direct() if isinstance(run.source, HostFileSource) else None
            hostfile, file_offset = direct or (None, 0)
            self._add(start, start + run.nblocks * BLOCK_SIZE, DATA, self._data_filler(run),
                      hostfile, file_offset + run.offset, run.nbytes)
        self._add_zero(geo.used_blocks, geo.blocks_count - geo.used_blocks)
        assert self._ends[-1] == self.size, (self._ends[-1], self.size)
        self._renderer_starts = [b for b, _r in self._renderers]

    @staticmethod
    def _data_filler(run: Run) -> Callable[[memoryview, int], None]:
        readinto = run.source.readinto
        base = run.offset
        nbytes = run.nbytes

        def fill(mv: memoryview, rel: int) -> None:
            n = min(len(mv), nbytes - rel)
            if n > 0:
                readinto(mv[:n], base + rel)
            if n < len(mv):
                _zero_fill(mv[max(n, 0) :])

        return fill

    def _render_block(self, block: int) -> bytes:
        i = bisect.bisect_right(self._renderer_starts, block) - 1
        first, render = self._renderers[i]
        self.stats.metadata_blocks_generated += 1
        return render(block - first)

    def _fill_meta(self, mv: memoryview, offset: int) -> None:
        pos = 0
        n = len(mv)
        while pos < n:
            block, within = divmod(offset + pos, BLOCK_SIZE)
            step = min(n - pos, BLOCK_SIZE - within)
            self.stats.metadata_block_lookups += 1
            mv[pos : pos + step] = memoryview(self._block(block))[within : within + step]
            pos += step

    # -- public API -----------------------------------------------------------
    def readinto(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill ``buf`` with the image bytes at ``offset``; raises SourceError on bad sources."""
        mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        end = offset + len(mv)
        if offset < 0 or end > self.size:
            raise ValueError(f"read {offset}+{len(mv)} outside the image (size {self.size})")
        self.stats.requests += 1
        i = bisect.bisect_right(self._starts, offset) - 1
        try:
            self._fill(mv, offset, end, i)
        except SourceError:
            self.stats.source_errors += 1
            raise

    def _fill(self, mv: memoryview, offset: int, end: int, i: int) -> None:
        """Fill ``mv`` (image bytes ``offset..end``) region by region, starting at region ``i``."""
        starts, ends, kinds, fills = self._starts, self._ends, self._kinds, self._fills
        hostfiles = self._hostfiles
        stats = self.stats
        pos = offset
        while pos < end:
            hostfile = hostfiles[i]
            if hostfile is not None:  # this and following regions of the same file: one batch
                first = pos
                parts = []
                while True:
                    stop = min(end, ends[i])
                    rel = pos - starts[i]
                    parts.append((mv[pos - offset : stop - offset], self._file_offsets[i] + rel,
                                  self._data_lens[i] - rel))
                    pos = stop
                    i += 1
                    if pos >= end or hostfiles[i] is not hostfile:
                        break
                hostfile.read_parts(parts)
                stats.bytes_data += pos - first
                continue
            stop = min(end, ends[i])
            kind = kinds[i]
            fills[i](mv[pos - offset : stop - offset], pos - starts[i])
            if kind == DATA:
                stats.bytes_data += stop - pos
            elif kind == ZERO:
                stats.bytes_zero += stop - pos
            else:
                stats.bytes_metadata += stop - pos
            pos = stop
            i += 1

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(buf, offset)
        return bytes(buf)

    def regions(self) -> Iterator[tuple[int, int, str]]:
        """(start, end, kind) of every region, in order."""
        yield from zip(self._starts, self._ends, self._kinds, strict=True)

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, is_zero) covering ``[offset, offset+length)``, merged.

        The zeros after a data run's last source byte count as zero, as do
        zero regions: holes are reported exactly where the image reads as zeros.
        """
        end = min(offset + length, self.size)
        i = bisect.bisect_right(self._starts, offset) - 1
        cur_start, cur_zero = offset, None
        pos = offset
        while pos < end:
            region_end = self._ends[i]
            if self._kinds[i] == DATA:
                pieces = ((self._starts[i] + self._data_lens[i], False), (region_end, True))
            else:
                pieces = ((region_end, self._kinds[i] == ZERO),)
            for piece_end, zero in pieces:
                if piece_end <= pos:
                    continue
                if cur_zero is None:
                    cur_zero = zero
                elif zero != cur_zero:
                    yield cur_start, pos - cur_start, cur_zero
                    cur_start, cur_zero = pos, zero
                pos = min(end, piece_end)
                if pos >= end:
                    break
            i += 1
        if cur_zero is not None:
            yield cur_start, pos - cur_start, cur_zero

    def write(self, path: str | os.PathLike[str], chunk: int = 1 << 20,
              progress: Callable[[int], object] | None = None) -> None:
        """Write a sparse image file: zero regions and all-zero chunks are not written.

        ``progress(n)`` is told every n bytes of the non-hole regions done."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, self.size)
            buf = bytearray(chunk)
            for start, length, zero in self.extents(0, self.size):
                if zero:
                    continue
                pos = start
                while pos < start + length:
                    n = min(chunk, start + length - pos)
                    mv = memoryview(buf)[:n]
                    self.readinto(mv, pos)
                    if buf.count(0, 0, n) != n:
                        os.pwrite(fd, mv, pos)
                    pos += n
                    if progress is not None:
                        progress(n)
        finally:
            os.close(fd)

    def block_counts(self) -> dict[str, int]:
        """Blocks by kind, for `ext4gen inspect` and the tests."""
        geo = self.plan.geometry
        return {
            "superblock+gdt": 1 + geo.gdt_blocks,
            "bitmaps": 2 * geo.groups,
            "inode_tables": geo.groups * geo.itable_blocks_per_group,
            "directories": geo.tree_start - geo.dir_start,
            "extent_tree": geo.xattr_start - geo.tree_start,
            "xattr": geo.data_start - geo.xattr_start,
            "data": geo.used_blocks - geo.data_start,
            "free": geo.free_blocks,
        }
