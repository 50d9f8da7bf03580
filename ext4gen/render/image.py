"""The virtual disk: a sorted region map over a :class:`Plan`.

Like nbdkit's floppy plugin, the disk is a sorted list of byte regions, each a
record that fills itself on demand: metadata blocks are rendered by
:class:`MetadataGenerator` (through a small LRU cache), file data is copied
from its source straight into the caller's buffer, and everything else is
zeros.  A read is one bisect and one ``fill`` call per region it covers.  The
image is immutable, so one instance can be shared by any number of threads and
connections.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from ..errors import SourceError
from ..format.ondisk import BLOCK_SIZE, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT
from ..layout.dedup import Run
from ..layout.planner import Plan
from ..model.sources import HostFile
from ..model.sources import zero_fill as _zero_fill
from . import fastpath
from .metadata import MetadataGenerator

META, DATA, ZERO = "metadata", "data", "zero"
META_CACHE_BLOCKS = 2048


@dataclass
class ReadStats:
    """Counters of what reads cost: plain ints under the GIL (approximate under threads)."""

    requests: int = 0
    bytes_metadata: int = 0
    bytes_data: int = 0
    bytes_zero: int = 0
    metadata_blocks_generated: int = 0
    metadata_blocks_prerendered: int = 0  # of those, rendered before any read asked for them
    metadata_block_lookups: int = 0
    source_errors: int = 0
    bytes_read_ahead: int = 0  # source bytes hinted ahead of sequential readers (compiled path)
    cold_reads: int = 0  # requests whose source bytes were not cached yet (compiled, read-ahead on)
    leased_reads: int = 0  # source reads a lease vouched for, with no fstat (compiled path)
    mapped_reads: int = 0  # source reads copied from a mapping, not by pread (compiled)

    @property
    def metadata_cache_hits(self) -> int:
        """Block lookups of reads that found the block rendered already (by an earlier read
        or by pre-rendering, whose blocks no read had looked up)."""
        on_lookup = self.metadata_blocks_generated - self.metadata_blocks_prerendered
        return max(0, self.metadata_block_lookups - on_lookup)


# -- regions: records that know how to fill themselves -------------------------------------

class Region:
    """Image bytes ``start..end`` of one kind; ``fill`` writes ``mv`` from ``rel`` bytes in."""

    __slots__ = ("end", "start")
    kind = ""

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end

    def fill(self, image: Image, mv: memoryview, rel: int) -> None:
        raise NotImplementedError


class ZeroRegion(Region):
    __slots__ = ()
    kind = ZERO

    def fill(self, image: Image, mv: memoryview, rel: int) -> None:
        _zero_fill(mv)
        image._stats.bytes_zero += len(mv)


class MetaRegion(Region):
    """Blocks ``first_block``… rendered by ``render(index within the region)``."""

    __slots__ = ("first_block", "render")
    kind = META

    def __init__(self, first_block: int, nblocks: int, render: Callable[[int], bytes]) -> None:
        super().__init__(first_block * BLOCK_SIZE, (first_block + nblocks) * BLOCK_SIZE)
        self.first_block = first_block
        self.render = render

    def fill(self, image: Image, mv: memoryview, rel: int) -> None:
        pos, n = 0, len(mv)
        offset = self.start + rel
        stats = image._stats
        fast = image._fast
        while pos < n:
            block, within = divmod(offset + pos, BLOCK_SIZE)
            step = min(n - pos, BLOCK_SIZE - within)
            stats.metadata_block_lookups += 1
            data = image._block(block, self)
            if fast is not None:  # (again) for the compiled path, which may have evicted it
                fast.put_block(block, data)
            mv[pos : pos + step] = memoryview(data)[within : within + step]
            pos += step
        stats.bytes_metadata += n


class DataRegion(Region):
    """One data run: ``nbytes`` from ``source`` at ``source_offset``, zeros to the block end.

    ``host``/``file_offset``: where those bytes lie in one host file when they
    are a plain range of it (read without Python by the compiled path, and in
    batches by the pure one).
    """

    __slots__ = ("file_offset", "host", "nbytes", "source", "source_offset")
    kind = DATA

    def __init__(self, start: int, end: int, run: Run) -> None:
        self.start, self.end = start, end  # Region.__init__, once per run
        self.source, self.source_offset, self.nbytes = run.source, run.offset, run.nbytes
        host = run.source.host_range()
        self.host: HostFile | None = host[0] if host else None
        self.file_offset = host[1] + run.offset if host else 0

    def fill(self, image: Image, mv: memoryview, rel: int) -> None:
        n = min(len(mv), self.nbytes - rel)
        if n > 0:
            self.source.readinto(mv[:n], self.source_offset + rel)
        if n < len(mv):
            _zero_fill(mv[max(n, 0) :])
        image._stats.bytes_data += len(mv)


class Image:
    """A read-only ext4 image whose bytes are produced only when read.

    Reads go through the compiled path (:mod:`ext4gen.render.fastpath`) when it
    is built and not disabled with ``EXT4GEN_PURE_PYTHON=1``; it serves zero,
    host-file and cached metadata bytes and leaves the rest to the same region
    records the pure-Python path uses, so both give the same bytes.
    """

    def __init__(self, plan: Plan, *, cache_blocks: int = META_CACHE_BLOCKS,
                 compiled: bool | None = None) -> None:
        self.plan = plan
        self.meta = MetadataGenerator(plan)
        geo = plan.geometry
        self.size = geo.blocks_count * BLOCK_SIZE
        self._stats = ReadStats()
        self._regions: list[Region] = []
        self._build_regions()
        self._starts = [r.start for r in self._regions]
        self._block = lru_cache(maxsize=cache_blocks)(_block_renderer(self._stats))
        self._fast = fastpath.table_for(self._regions, self.size) if compiled is not False else None
        if compiled and self._fast is None:
            raise RuntimeError(f"the compiled read path is not available: {fastpath.unavailable()}")

    @property
    def compiled(self) -> bool:
        """True when reads use the compiled path."""
        return self._fast is not None

    # -- region map ---------------------------------------------------------
    def _add(self, region: Region) -> None:
        if region.end <= region.start:
            return
        last = self._regions[-1] if self._regions else None
        if last is not None and last.end != region.start:
            raise AssertionError(f"region gap at {last.end}..{region.start}")
        if isinstance(region, ZeroRegion) and isinstance(last, ZeroRegion):
            last.end = region.end
            return
        self._regions.append(region)

    def _add_meta(self, first_block: int, nblocks: int, render: Callable[[int], bytes]) -> None:
        if nblocks > 0:
            self._add(MetaRegion(first_block, nblocks, render))

    def _add_zero(self, first_block: int, nblocks: int) -> None:
        self._add(ZeroRegion(first_block * BLOCK_SIZE, (first_block + nblocks) * BLOCK_SIZE))

    def _build_regions(self) -> None:
        plan, geo, meta = self.plan, self.plan.geometry, self.meta
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
        for g in range(geo.groups):
            first = geo.inode_table_start + g * itb
            n = -(-(plan.last_used_index_per_group[g] + 1) * 256 // BLOCK_SIZE) if live[g] else 0
            self._add_meta(first, n, lambda k, g=g: meta.inode_table_block(g, k))
            self._add_zero(first + n, itb - n)
        self._add_meta(geo.dir_start, geo.tree_start - geo.dir_start, meta.dir_block)
        self._add_meta(geo.tree_start, geo.xattr_start - geo.tree_start, meta.tree_block)
        self._add_meta(geo.xattr_start, geo.data_start - geo.xattr_start, meta.xattr_block)
        regions = self._regions
        end = regions[-1].end
        data_start = geo.data_start * BLOCK_SIZE
        for run in plan.runs:  # one per file or less: _add's checks, inlined
            # one region per run, the zeros after the source's last byte included: fewer
            # regions per request, and a run's blocks are allocated data either way
            if run.nblocks > 0:
                start = data_start + run.block * BLOCK_SIZE
                if start != end:
                    raise AssertionError(f"region gap at {end}..{start}")
                end = start + run.nblocks * BLOCK_SIZE
                regions.append(DataRegion(start, end, run))
        self._add_zero(geo.used_blocks, geo.blocks_count - geo.used_blocks)
        assert self._regions[-1].end == self.size, (self._regions[-1].end, self.size)

    # -- public API -----------------------------------------------------------
    def readinto(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill ``buf`` with the image bytes at ``offset``; raises SourceError on bad sources."""
        mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        end = offset + len(mv)
        if offset < 0 or end > self.size:
            raise ValueError(f"read {offset}+{len(mv)} outside the image (size {self.size})")
        fast = self._fast
        if fast is not None:
            left = fast.read(mv, offset)  # the whole request without the GIL, or most of it
            if left is not None:
                self.complete(mv, offset, left)
            return
        self._stats.requests += 1
        try:
            self._fill(mv, offset, end)
        except SourceError:
            self._stats.source_errors += 1
            raise

    @property
    def fast_read(self) -> Callable[[memoryview, int], object] | None:
        """The compiled path's ``read(buf, offset)`` (None on the pure-Python path).

        For the nbdkit plugin's hot path: None back means the request is done;
        anything else goes to :meth:`complete`.  Everyone else calls readinto.
        """
        return None if self._fast is None else self._fast.read

    def read_ahead(self, nbytes: int = fastpath.READAHEAD_BYTES) -> bool:
        """Read source files ahead of sequential readers, up to ``nbytes`` of image ahead
        (0: stop); a thread does it, started by the first sequential read, so call this
        in the process that serves (after nbdkit's fork).  False on the pure-Python path."""
        return fastpath.read_ahead(self._fast, nbytes)

    def use_leases(self) -> str:
        """Check the sources still read a second after they were opened by a kernel lease
        and an inotify watch instead of an fstat per read ('' when on, else why not; see
        ``fastpath.use_leases``).  Call it in the process that serves."""
        return fastpath.use_leases(self._fast)

    def publish(self, export_name: str) -> bool:
        """Hand the compiled path's table to ext4gen's nbdkit filter for ``export_name``
        (False: the pure-Python path, or no such filter in this process)."""
        return fastpath.publish(export_name, self._fast)

    def complete(self, mv: memoryview, offset: int, left: object) -> None:
        """Finish a request the compiled path left work in: ``left`` is a failure reason
        (raised as SourceError) or the image ranges for the region records to fill."""
        if isinstance(left, str):
            raise SourceError(left)
        try:
            for lo, hi in left:  # type: ignore[attr-defined]
                self._fill(mv[lo - offset : hi - offset], lo, hi)
        except SourceError:
            self._stats.source_errors += 1
            raise
        self._fast.mark(offset, len(mv))

    def _fill(self, mv: memoryview, offset: int, end: int) -> None:
        """Fill ``mv`` (image bytes ``offset..end``) region by region: one call per region,
        except that consecutive runs of one host file are read as one batch."""
        regions = self._regions
        i = bisect.bisect_right(self._starts, offset) - 1
        pos = offset
        while pos < end:
            region = regions[i]
            host = getattr(region, "host", None)
            if host is not None:  # this and following regions of the same file: one batch
                first, parts = pos, []
                while True:
                    stop = min(end, region.end)
                    rel = pos - region.start
                    parts.append((mv[pos - offset : stop - offset], region.file_offset + rel,
                                  region.nbytes - rel))
                    pos = stop
                    i += 1
                    if pos >= end or getattr(regions[i], "host", None) is not host:
                        break
                    region = regions[i]
                host.read_parts(parts)
                self._stats.bytes_data += pos - first
                continue
            stop = min(end, region.end)
            region.fill(self, mv[pos - offset : stop - offset], pos - region.start)
            pos = stop
            i += 1

    @property
    def stats(self) -> ReadStats:
        """What reads have cost so far, both paths together (a snapshot)."""
        s = ReadStats(**vars(self._stats))
        if self._fast is not None:
            c = self._fast.stats()
            s.requests += c["requests"]
            s.bytes_metadata += c["bytes_metadata"]
            s.bytes_data += c["bytes_data"]
            s.bytes_zero += c["bytes_zero"]
            s.metadata_block_lookups += c["cache_hits"]
            s.source_errors += c["source_errors"]
            s.bytes_read_ahead += c["readahead_bytes"]
            s.cold_reads += c["cold_reads"]
            s.leased_reads += c["leased_reads"]
            s.mapped_reads += c["mapped_reads"]
        return s

    def prerender_metadata(self, limit: int = fastpath.CACHE_BLOCKS // 2) -> int:
        """Render metadata into the compiled path's cache before clients ask for it.

        A mount's first reads (superblock, descriptors, then directories and inode
        tables, a block group at a time) would otherwise each wait for Python to
        render their blocks one by one; rendered here, in a thread while the
        server is idle, the C read path answers them.  Block and inode bitmaps
        come last (a read-only mount seldom reads them).  At most ``limit`` blocks,
        so the cache keeps room for blocks clients read later; 0 on the
        pure-Python path.  Returns how many blocks were rendered.

        It yields the GIL after every block: a client's first requests (nbdkit calls
        Python a dozen times for one handshake) would otherwise wait for CPython's
        5 ms switch interval each, and the first answer came 30-80 ms later.
        """
        fast = self._fast
        if fast is None:
            return 0
        geo = self.plan.geometry
        groups = geo.groups

        def is_bitmap(r: MetaRegion) -> bool:
            b = r.first_block
            return (geo.block_bitmap_start <= b < geo.block_bitmap_start + groups
                    or geo.inode_bitmap_start <= b < geo.inode_bitmap_start + groups)

        metas = sorted((r for r in self._regions if type(r) is MetaRegion), key=is_bitmap)
        stats = self._stats
        done = 0
        for r in metas:
            for k in range((r.end - r.start) // BLOCK_SIZE):
                if done >= limit:
                    return done
                block = r.first_block + k
                if not fast.has_block(block):  # a client's read may have rendered it already
                    # not through self._block: its LRU would hold a second copy of each block
                    fast.put_block(block, r.render(k))  # plan data only: no source read
                    stats.metadata_blocks_generated += 1
                    stats.metadata_blocks_prerendered += 1
                    done += 1
                time.sleep(0)  # hand the GIL to a waiting request between blocks (see above)
        return done

    def distinct_blocks_read(self) -> int | None:
        """Distinct 4 KiB blocks that successful reads covered, as the compiled path counts
        them for free; None on the pure-Python path (whose caller counts, if it wants to)."""
        return None if self._fast is None else self._fast.stats()["distinct_blocks"]

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(buf, offset)
        return bytes(buf)

    def regions(self) -> Iterator[tuple[int, int, str]]:
        """(start, end, kind) of every region, in order."""
        for r in self._regions:
            yield r.start, r.end, r.kind

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
            region = self._regions[i]
            if isinstance(region, DataRegion):
                pieces = ((region.start + region.nbytes, False), (region.end, True))
            else:
                pieces = ((region.end, isinstance(region, ZeroRegion)),)
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

    def write(self, path: str | os.PathLike[str],
              progress: Callable[[int], object] | None = None) -> None:
        """Write the image to ``path``: a sparse file (holes and all-zero chunks not written,
        renamed into place when complete), a block device or a stream; see ext4gen.output.

        ``progress(n)`` is told every n bytes of the non-hole regions done."""
        from ..output import write_image

        write_image(self, os.fspath(path), progress)

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


def _block_renderer(stats: ReadStats) -> Callable[[int, MetaRegion], bytes]:
    """Render one metadata block (the LRU in front of it is keyed by block and region).

    A function of the counters, not a bound method of the Image: an LRU holding
    the Image would make a reference cycle, and planning freezes the collector
    (gcpause), so every image planned in a long-lived process would leak (with
    the compiled path's metadata cache, 32 MiB each).
    """
    def render(block: int, region: MetaRegion) -> bytes:
        stats.metadata_blocks_generated += 1
        return region.render(block - region.first_block)

    return render
