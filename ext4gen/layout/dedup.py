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
from ..model.sources import HostFileSource, Source
from . import read_ahead
from .digest_cache import DigestCache, Record, Relation, source_key
from .placer import Placer
from .read_ahead import ReadAhead

ZERO_BLOCK = bytes(BLOCK_SIZE)
READ_CHUNK = 1 << 20
COMPARE_AHEAD_MAX = 64  # blocks a candidate read may fetch ahead (256 KiB)
READ_AHEAD_FEED = 256  # files looked up in the digest cache per hand-over to the reader


def block_hash(block: bytes | memoryview) -> bytes:
    """The dedup key of a 4 KiB block (a module attribute so tests can force collisions)."""
    return xxhash.xxh3_128_digest(block)


_XXH3 = block_hash  # the keys _hashread computes too (read_ahead)


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
    digest_hits: int = 0  # host files placed from saved digests (no data read)
    digest_misses: int = 0  # host files read and hashed, their digests saved
    bytes_compared: int = 0  # bytes read to compare a saved block with a new candidate


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

    def add_blocks(self, logical: int, physical: int, count: int) -> None:
        """Exactly what ``count`` calls of ``add(…, 1)`` give: the open extent is filled first."""
        n = self._n
        if n and logical == self._l + n and physical == self._p + n:
            take = min(count, EXT_INIT_MAX_LEN - n)
            self._n = n + take
            logical, physical, count = logical + take, physical + take, count - take
        if count:
            self.add(logical, physical, count)

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
    digests: DigestCache | None = None  # opened on the first file that content dedup reads
    _digests_opened: bool = False
    _source_keys: dict[Source, str | None] = field(default_factory=dict)  # memo of source_key
    _looked_up: dict[Source, tuple[str | None, Record | None]] = field(default_factory=dict)
    _zero_key: bytes | None = None
    # Every file's block keys, in plan order, whether hashed now or taken from the digest
    # cache: the content the default UUID and hash seed derive from, the same either way.
    _content: Any = field(default_factory=xxhash.xxh3_128)
    on_read: Callable[[int], object] | None = None  # told the bytes read for hashing (progress)
    reader: ReadAhead | None = None  # small host files read in C, ahead of placing
    # The candidate blocks read last for a byte comparison: (first, end, bytes).  A copied
    # file compares block after block against consecutive blocks of one earlier run, so
    # reads grow (1, 4, 16, 64 blocks) while the requests follow each other.
    _window: tuple[int, int, bytes] | None = None
    _window_blocks: int = 1

    def content_digest(self) -> bytes:
        """A digest of the block keys of every file content dedup placed (none with mode "none")."""
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
        if len(spans) == 1 and spans[0][1] <= EXT_INIT_MAX_LEN:  # most files: what the builder gives
            first, n = spans[0]
            offset = first * BLOCK_SIZE
            start = self._new_run(source, offset, n, min(n * BLOCK_SIZE, source.size - offset))
            self.stats.data_blocks_referenced += n
            self.stats.unique_blocks += n
            return [(first, n, start)]
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

    def _lookup(self, source: Source) -> tuple[str | None, Record | None]:
        """The source's digest-cache key (None: nothing to save) and its saved record, if any;
        looked up once, by :meth:`start_read_ahead` or when the source is allocated."""
        found = self._looked_up.get(source)
        if found is not None:
            return found
        key = source_key(source)  # None for sources that are not host files
        if key is not None:
            self._open_digests()
            if self.digests is None:
                key = None
        record = self.digests.lookup(source, key) if key is not None else None  # type: ignore[union-attr]
        self._looked_up[source] = (key, record)
        return key, record

    def _allocate_content(self, source: Source, spans: list[tuple[int, int]]) -> list[Extent]:
        key, record = self._lookup(source)
        del self._looked_up[source]
        self._source_keys[source] = key
        if record is not None and len(record.keys) == 16 * sum(n for _f, n in spans):
            self.stats.digest_hits += 1
            placer = Placer(self, source, record)
            placer.place_saved(spans)
            if placer.changed:  # a verdict had to be made again: keep the new one
                self.digests.store(key, placer.record())  # type: ignore[union-attr, arg-type]
            self._content.update(placer.keys)
            return placer.builder.finish()
        placer = Placer(self, source, None)
        ahead = self.reader.take(source) if self.reader is not None else None  # type: ignore[arg-type]
        if ahead is not None:  # read and hashed in C; keys only when they are this plan's
            data, keys = ahead
            self.stats.bytes_hashed += source.size
            if self.on_read is not None:
                self.on_read(source.size)
            placer.place_read(0, memoryview(data), keys if self.hasher() is _XXH3 else None)
        else:
            self._hash_spans(placer, spans)
        if key is not None:
            self.stats.digest_misses += 1
            self.digests.store(key, placer.record())  # type: ignore[union-attr]
        self._content.update(placer.keys)
        return placer.builder.finish()

    def _open_digests(self) -> None:
        if not self._digests_opened:
            self._digests_opened = True
            self.digests = DigestCache.open()

    def _hash_spans(self, placer: Placer, spans: list[tuple[int, int]]) -> None:
        """Read the file's data spans chunk by chunk and place every block with its bytes at hand."""
        source = placer.source
        size = source.size
        buf = bytearray(min(READ_CHUNK, -(-size // BLOCK_SIZE) * BLOCK_SIZE))
        mv = memoryview(buf)
        read = source.readinto
        if size <= READ_CHUNK and len(spans) == 1 and isinstance(source, HostFileSource) \
                and source.segments is None:  # read in one go, once: no cached descriptor
            host, base = source.file, source.base_offset

            def read(view: memoryview, offset: int) -> None:
                host.read_parts([(view, base + offset, len(view))], once=True)
        for first, nspan in spans:
            placer.run = None
            offset = first * BLOCK_SIZE
            span_end = min(size, (first + nspan) * BLOCK_SIZE)
            while offset < span_end:
                n = min(len(buf), span_end - offset)
                read(mv[:n], offset)
                if n % BLOCK_SIZE:
                    pad = -n % BLOCK_SIZE
                    mv[n : n + pad] = ZERO_BLOCK[:pad]
                self.stats.bytes_hashed += n
                if self.on_read is not None:
                    self.on_read(n)
                placer.place_read(offset // BLOCK_SIZE, mv[: -(-n // BLOCK_SIZE) * BLOCK_SIZE])
                offset += n

    def relation(self, phys: int) -> Relation | None:
        """(source key, pin, offset) of the bytes of an allocated block, if they come from a host file."""
        run = self.runs[bisect.bisect_right(self._run_starts, phys) - 1]
        source = run.source
        key = self._source_keys.get(source, False)
        if key is False:
            key = self._source_keys[source] = source_key(source)
        if key is None:
            return None
        return key, source.pin, run.offset + (phys - run.block) * BLOCK_SIZE  # type: ignore[attr-defined, return-value]

    def zero_key(self) -> bytes:
        """The key of an all-zero block, through ``block_hash`` (which tests replace), once per plan."""
        if self._zero_key is None:
            self._zero_key = block_hash(ZERO_BLOCK)
        return self._zero_key

    @staticmethod
    def extent_builder() -> ExtentBuilder:
        return ExtentBuilder()

    @staticmethod
    def hasher() -> Callable[[bytes | memoryview], bytes]:
        """``block_hash`` looked up at call time, so a test's replacement is what the placer uses."""
        return block_hash

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
        w = self._window
        if w is not None and w[0] <= phys < w[1]:
            rel = (phys - w[0]) * BLOCK_SIZE
            return w[2][rel : rel + BLOCK_SIZE]
        grown = min(self._window_blocks * 4, COMPARE_AHEAD_MAX)
        self._window_blocks = grown if w is not None and phys == w[1] else 1
        run = self.runs[bisect.bisect_right(self._run_starts, phys) - 1]
        count = min(self._window_blocks, run.block + run.nblocks - phys)
        data = self.run_bytes(phys, count)
        self._window = (phys, phys + count, data)
        return data[:BLOCK_SIZE]

    def run_bytes(self, phys: int, count: int) -> bytes:
        """The content of allocated blocks ``phys``… (``count``, all of one run), read in one go."""
        run = self.runs[bisect.bisect_right(self._run_starts, phys) - 1]
        assert phys + count <= run.block + run.nblocks, (phys, count, run)
        rel = (phys - run.block) * BLOCK_SIZE
        n = max(0, min(count * BLOCK_SIZE, run.nbytes - rel))
        buf = bytearray(count * BLOCK_SIZE)
        run.source.readinto(memoryview(buf)[:n], run.offset + rel)
        return bytes(buf)

    def start_read_ahead(self, sources: list[Source]) -> None:
        """Read the small host files of ``sources`` (in the order they will be allocated) ahead,
        but none that saved digests already describe."""
        if not read_ahead.available():
            return
        wanted = []
        for source in sources:
            if (isinstance(source, HostFileSource) and source.segments is None
                    and 0 < source.size <= read_ahead.MAX_FILE and self._lookup(source)[1] is None):
                wanted.append(source)
                if len(wanted) == READ_AHEAD_FEED:  # the reader starts on them while we look up
                    self._feed(wanted)
                    wanted = []
        self._feed(wanted)
        if self.reader is not None:
            self.reader.end()

    def _feed(self, wanted: list[HostFileSource]) -> None:
        if not wanted:
            return
        if self.reader is None:
            self.reader = ReadAhead(wanted, complete=False)
        else:
            self.reader.extend(wanted)

    def stop_read_ahead(self) -> None:
        """Stop the reader (allocate_data does, whether allocation finished or failed)."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def finish(self) -> None:
        """Save what was learnt for the next plan, and drop the lookup tables."""
        if self.digests is not None:
            self.digests.save()
            self.digests = None
        self._by_hash = {}
        self._by_identity = {}
        self._source_keys = {}
        self._looked_up = {}
        self._window = None
