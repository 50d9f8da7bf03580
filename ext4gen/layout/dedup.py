"""Data-block allocation, with optional content deduplication.

Blocks are numbered relative to the start of the data area; the planner adds
the base once the metadata size is known.  Each allocated block remembers where
its bytes come from as a *run* (consecutive blocks read from one source at
consecutive offsets), which is what the image serves from.

With ``dedup="content"`` every block is hashed with xxh3-128.  A hash hit is
only trusted after comparing the bytes with the block already stored, because
xxh3 is not collision-resistant against crafted input.  All-zero blocks become
holes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ..format.ondisk import BLOCK_SIZE, EXT_INIT_MAX_LEN
from ..model.sources import Source

ZERO_BLOCK = bytes(BLOCK_SIZE)
READ_CHUNK = 1 << 20


def block_hash(block: bytes | memoryview) -> bytes:
    """The dedup key of a 4 KiB block (a module attribute so tests can force collisions)."""
    return xxhash.xxh3_128_digest(block)


@dataclass(slots=True)
class Run:
    """``nblocks`` data blocks starting at relative block ``block``, read from ``source``."""

    block: int
    nblocks: int
    source: Source
    offset: int  # byte offset in the source of the run's first block
    nbytes: int  # bytes that come from the source; the rest of the last block is zeros


Extent = tuple[int, int, int]  # (logical block, length, relative physical block)


@dataclass
class DedupStats:
    data_blocks_referenced: int = 0  # non-hole blocks over all files
    unique_blocks: int = 0
    zero_blocks: int = 0  # all-zero blocks turned into holes after reading them
    shared_references: int = 0  # references that reuse an existing block
    collisions: int = 0  # hash hits whose bytes differed
    bytes_hashed: int = 0


class ExtentBuilder:
    """Merges (logical, physical) block pairs into maximal extents."""

    __slots__ = ("_l", "_n", "_p", "extents")

    def __init__(self) -> None:
        self.extents: list[Extent] = []
        self._l = self._p = self._n = 0

    def add(self, logical: int, physical: int, count: int = 1) -> None:
        n = self._n
        if n and logical == self._l + n and physical == self._p + n and n + count <= EXT_INIT_MAX_LEN:
            self._n = n + count
            return
        while count > 0:
            if self._n:
                self.extents.append((self._l, self._n, self._p))
            step = min(count, EXT_INIT_MAX_LEN)
            self._l, self._p, self._n = logical, physical, step
            logical += step
            physical += step
            count -= step

    def finish(self) -> list[Extent]:
        if self._n:
            self.extents.append((self._l, self._n, self._p))
            self._n = 0
        return self.extents


def block_spans(ranges: list[tuple[int, int]] | None, size: int) -> list[tuple[int, int]]:
    """(first block, count) of the blocks that may hold data, merged and in order."""
    nblocks = -(-size // BLOCK_SIZE)
    if ranges is None:
        return [(0, nblocks)] if nblocks else []
    spans: list[tuple[int, int]] = []
    for start, end in ranges:
        if end <= start:
            continue
        first, last = start // BLOCK_SIZE, min(nblocks, -(-end // BLOCK_SIZE))
        if spans and first <= spans[-1][0] + spans[-1][1]:
            f0, n0 = spans[-1]
            spans[-1] = (f0, max(n0, last - f0))
        elif last > first:
            spans.append((first, last - first))
    return spans


@dataclass
class DataAllocator:
    mode: str = "content"
    next_block: int = 0
    runs: list[Run] = field(default_factory=list)
    stats: DedupStats = field(default_factory=DedupStats)
    shared: bool = False  # some physical block is referenced more than once
    _run_starts: list[int] = field(default_factory=list)
    _by_hash: dict[bytes, int | list[int]] = field(default_factory=dict)
    _by_identity: dict[tuple[object, int], list[Extent]] = field(default_factory=dict)
    _content: Any = field(default_factory=xxhash.xxh3_128)  # every byte read, in order
    on_read: Callable[[int], object] | None = None  # told the bytes read for hashing (progress)

    def content_digest(self) -> bytes:
        """A digest of all the source bytes read while allocating (none with mode "none")."""
        return self._content.digest()

    def allocate(self, source: Source) -> list[Extent]:
        """Give every non-hole block of ``source`` a physical block; return its extents."""
        if source.size == 0 or source.all_zero:
            return []
        spans = block_spans(source.data_ranges(), source.size)
        if not source.plan_readable:
            return self._allocate_by_identity(source, spans)
        if self.mode == "none":
            return self._allocate_plain(source, spans)
        return self._allocate_content(source, spans)

    def _allocate_by_identity(self, source: Source, spans: list[tuple[int, int]]) -> list[Extent]:
        """Dynamic content is never read at plan time: equal declared identities share blocks."""
        key = (source.identity, source.size)
        if source.identity is not None and key in self._by_identity:
            extents = self._by_identity[key]
            n = sum(e[1] for e in extents)
            self.stats.data_blocks_referenced += n
            self.stats.shared_references += n
            self.shared = self.shared or n > 0
            return list(extents)
        extents = self._allocate_plain(source, spans)
        if source.identity is not None:
            self._by_identity[key] = extents
        return extents

    def _allocate_plain(self, source: Source, spans: list[tuple[int, int]]) -> list[Extent]:
        builder = ExtentBuilder()
        for first, n in spans:
            offset = first * BLOCK_SIZE
            start = self._new_run(source, offset, n, min(n * BLOCK_SIZE, source.size - offset))
            self.stats.data_blocks_referenced += n
            self.stats.unique_blocks += n
            builder.add(first, start, n)
        return builder.finish()

    def _new_run(self, source: Source, offset: int, nblocks: int, nbytes: int) -> int:
        start = self.next_block
        self.runs.append(Run(start, nblocks, source, offset, nbytes))
        self._run_starts.append(start)
        self.next_block += nblocks
        return start

    def _allocate_content(self, source: Source, spans: list[tuple[int, int]]) -> list[Extent]:
        size = source.size
        stats = self.stats
        zero_key = block_hash(ZERO_BLOCK)
        builder = ExtentBuilder()
        buf = bytearray(min(READ_CHUNK, -(-size // BLOCK_SIZE) * BLOCK_SIZE))
        mv = memoryview(buf)
        for first, nspan in spans:
            run: Run | None = None  # the run new blocks of this file extend
            offset = first * BLOCK_SIZE
            span_end = min(size, (first + nspan) * BLOCK_SIZE)
            while offset < span_end:
                n = min(len(buf), span_end - offset)
                source.readinto(mv[:n], offset)
                self._content.update(mv[:n])
                if self.on_read is not None:
                    self.on_read(n)
                if n % BLOCK_SIZE:
                    pad = -n % BLOCK_SIZE
                    mv[n : n + pad] = ZERO_BLOCK[:pad]
                stats.bytes_hashed += n
                for pos in range(0, n, BLOCK_SIZE):
                    block = mv[pos : pos + BLOCK_SIZE]
                    logical = (offset + pos) // BLOCK_SIZE
                    key = block_hash(block)
                    if key == zero_key and block == ZERO_BLOCK:
                        stats.zero_blocks += 1
                        run = None
                        continue
                    stats.data_blocks_referenced += 1
                    phys = self._find_equal(key, block)
                    if phys is not None:
                        stats.shared_references += 1
                        self.shared = True
                        builder.add(logical, phys)
                        continue
                    nbytes = min(BLOCK_SIZE, size - offset - pos)
                    if (run is not None and run.block + run.nblocks == self.next_block
                            and run.offset + run.nblocks * BLOCK_SIZE == offset + pos):
                        run.nblocks += 1
                        run.nbytes += nbytes
                        phys = self.next_block
                        self.next_block += 1
                    else:
                        phys = self._new_run(source, offset + pos, 1, nbytes)
                        run = self.runs[-1]
                    stats.unique_blocks += 1
                    self._remember(key, phys)
                    builder.add(logical, phys)
                offset += n
        return builder.finish()

    def _find_equal(self, key: bytes, block: memoryview) -> int | None:
        hit = self._by_hash.get(key)
        if hit is None:
            return None
        for phys in (hit,) if isinstance(hit, int) else hit:
            if self.block_bytes(phys) == block:
                return phys
        self.stats.collisions += 1
        return None

    def _remember(self, key: bytes, phys: int) -> None:
        hit = self._by_hash.get(key)
        if hit is None:
            self._by_hash[key] = phys
        elif isinstance(hit, int):
            self._by_hash[key] = [hit, phys]
        else:
            hit.append(phys)

    def block_bytes(self, phys: int) -> bytes:
        """The 4 KiB content of an allocated (relative) block, re-read from its source."""
        run = self.runs[bisect.bisect_right(self._run_starts, phys) - 1]
        rel = (phys - run.block) * BLOCK_SIZE
        n = max(0, min(BLOCK_SIZE, run.nbytes - rel))
        buf = bytearray(BLOCK_SIZE)
        run.source.readinto(memoryview(buf)[:n], run.offset + rel)
        return bytes(buf)

    def finish(self) -> None:
        """Drop the lookup tables: they are only needed while allocating."""
        self._by_hash = {}
        self._by_identity = {}
