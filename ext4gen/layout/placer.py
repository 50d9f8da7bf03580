"""Placing the blocks of one file for content dedup: hole, shared with an earlier block, or new.

Split from :mod:`.dedup` (the allocator and its tables): the placer holds the
per-file state and the two ways a file's blocks arrive, with their bytes (first
run) or from a saved digest record (restart), which must give the same decisions.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from ..format.ondisk import BLOCK_SIZE
from ..model.sources import Source
from .digest_cache import Record, Relation

if TYPE_CHECKING:
    from .dedup import DataAllocator, ExtentBuilder, Run

ZERO_BLOCK = bytes(BLOCK_SIZE)


class Placer:
    """Places the blocks of one file, from its bytes (first run) or from a saved record.

    The decisions are the same either way, so the image does not depend on the
    cache: an all-zero block becomes a hole, a block equal (by bytes) to an
    earlier one shares it, any other block is new.  With a record, "by bytes"
    is the recorded verdict when the candidate is the very block it names;
    otherwise both blocks are read and compared, and the record is updated.
    """

    __slots__ = ("alloc", "builder", "changed", "equal", "keys", "ordinal", "run", "source", "zero_key",
                 "zeros")

    def __init__(self, alloc: DataAllocator, source: Source, record: Record | None) -> None:
        self.alloc = alloc
        self.source = source
        self.builder: ExtentBuilder = alloc.extent_builder()
        self.run: Run | None = None  # the run new blocks of this file extend
        self.ordinal = 0
        self.keys = bytearray() if record is None else record.keys
        self.zeros: set[int] | frozenset[int] = set() if record is None else record.zeros
        self.equal: dict[int, Relation] = {} if record is None else record.equal
        self.changed = False
        self.zero_key = alloc.zero_key()

    def record(self) -> Record:
        return Record(tuple(self.source.pin), bytes(self.keys), frozenset(self.zeros), self.equal)  # type: ignore[attr-defined]

    def place_read(self, logical: int, chunk: memoryview, hashed: bytes | None = None) -> None:
        """:meth:`place` for the blocks of ``chunk`` (whole, zero-padded blocks), read on a first run.

        When no block of it is zeros or has a key already seen, and none repeats,
        each would be a new block extending the same run: the chunk is then
        allocated at once, as :meth:`place_saved` does on a restart.  ``hashed``:
        the blocks' keys, 16 bytes each, when they were computed with the chunk.
        """
        views = None  # the blocks as views: only to hash them or to place them one by one
        if hashed is None:
            hash_block = self.alloc.hasher()
            views = [chunk[pos : pos + BLOCK_SIZE] for pos in range(0, len(chunk), BLOCK_SIZE)]
            keys = [hash_block(v) for v in views]
        else:
            keys = [hashed[i : i + 16] for i in range(0, len(hashed), 16)]
        if self.zero_key not in keys and self._new_stretch(logical, self.ordinal, len(keys), keys):
            self.keys += b"".join(keys)  # type: ignore[operator]
            self.ordinal += len(keys)
            return
        if views is None:
            views = [chunk[pos : pos + BLOCK_SIZE] for pos in range(0, len(chunk), BLOCK_SIZE)]
        i = 0
        while i < len(keys):
            k = self._share_read(logical + i, chunk, keys, i) if keys[i] != self.zero_key else 0
            if k:
                i += k
                continue
            self.place(logical + i, views[i], keys[i])
            i += 1

    def _share_read(self, logical: int, chunk: memoryview, keys: list[bytes], i: int) -> int:
        """Share blocks ``i``… of a chunk whose keys lead, one for one, to consecutive blocks
        of one earlier run, and whose bytes equal those blocks' bytes, read in one go.

        That is what a copied file looks like on a first run.  Returns how many
        blocks were placed (0: not such a stretch; place them one by one).  For
        each block it decides what :meth:`place` would: the key's only candidate,
        confirmed by bytes, with the same verdict recorded.
        """
        alloc = self.alloc
        by_hash = alloc._by_hash
        p0 = by_hash.get(keys[i])
        if type(p0) is not int:
            return 0
        run = alloc.runs[bisect.bisect_right(alloc._run_starts, p0) - 1]
        limit = min(len(keys) - i, run.block + run.nblocks - p0)
        zero_key = self.zero_key
        k = 1
        while k < limit and keys[i + k] != zero_key and by_hash.get(keys[i + k]) == p0 + k:
            k += 1
        if k < 2 or alloc.run_bytes(p0, k) != chunk[i * BLOCK_SIZE : (i + k) * BLOCK_SIZE].tobytes():
            return 0
        o = self.ordinal
        rel0 = alloc.relation(p0)
        equal = self.equal
        for j in range(k):
            rel = None if rel0 is None else (rel0[0], rel0[1], rel0[2] + j * BLOCK_SIZE)
            if equal.get(o + j) != rel:
                self.changed = True
                if rel is None:
                    equal.pop(o + j, None)
                else:
                    equal[o + j] = rel
        self.keys += b"".join(keys[i : i + k])  # type: ignore[operator]
        self.ordinal = o + k
        self._shared(logical, p0, k)
        return k

    def _shared(self, logical: int, phys: int, k: int) -> None:
        """Blocks ``logical``… share ``k`` earlier blocks from ``phys`` on: counted and mapped."""
        stats = self.alloc.stats
        stats.data_blocks_referenced += k
        stats.shared_references += k
        self.alloc.shared = True
        self.builder.add_blocks(logical, phys, k)

    def place(self, logical: int, block: memoryview | None, key: bytes | None = None) -> None:
        """Place one block; ``block`` is its 4 KiB (zero-padded) content, or None from a record.

        ``key``: the block's key when the caller has already hashed ``block``.
        """
        alloc, stats, ordinal = self.alloc, self.alloc.stats, self.ordinal
        self.ordinal += 1
        if block is None:
            key = bytes(self.keys[16 * ordinal : 16 * ordinal + 16])
            if ordinal in self.zeros:
                stats.zero_blocks += 1
                self.run = None
                return
        else:
            if key is None:
                key = alloc.hasher()(block)
            self.keys += key  # type: ignore[operator]
            # Compared as bytes: comparing memoryviews goes item by item (30 times slower).
            if key == self.zero_key and block.tobytes() == ZERO_BLOCK:
                self.zeros.add(ordinal)  # type: ignore[union-attr]
                stats.zero_blocks += 1
                self.run = None
                return
        stats.data_blocks_referenced += 1
        phys = self._find_equal(key, block, logical, ordinal) if key in alloc._by_hash else None
        if phys is not None:
            stats.shared_references += 1
            alloc.shared = True
            self.builder.add(logical, phys)
            return
        offset = logical * BLOCK_SIZE
        nbytes = min(BLOCK_SIZE, self.source.size - offset)
        run = self.run
        if (run is not None and run.block + run.nblocks == alloc.next_block
                and run.offset + run.nblocks * BLOCK_SIZE == offset):
            run.nblocks += 1
            run.nbytes += nbytes
            phys = alloc.next_block
            alloc.next_block += 1
        else:
            phys = alloc._new_run(self.source, offset, 1, nbytes)
            self.run = alloc.runs[-1]
        stats.unique_blocks += 1
        alloc._remember(key, phys)
        self.builder.add(logical, phys)

    def place_saved(self, spans: list[tuple[int, int]]) -> None:
        """:meth:`place` for every block of a saved record; this is the whole of a restart.

        Blocks without a zero mark or a verdict are placed a stretch at a time:
        when none of their keys is known yet and none repeats, each would be a
        new block extending the same run, so the stretch is allocated at once
        (set operations instead of a Python step per block).  Anything else
        goes block by block through :meth:`place`, so the decisions, and the
        image, are the same as a first run's (a test compares them).
        """
        special = sorted(set(self.zeros) | self.equal.keys()) if self.zeros or self.equal else []
        ordinal = 0
        for first, nspan in spans:
            self.run = None
            logical, end = first, first + nspan
            while logical < end:
                o = ordinal + logical - first
                if special:
                    nxt = bisect.bisect_left(special, o)
                    stop = min(end, first + (special[nxt] - ordinal) if nxt < len(special) else end)
                else:
                    stop = end
                if stop == logical:  # a zero or a verdict
                    n = self._share_saved(logical, o, end)
                    if not n:
                        self.ordinal = o
                        self.place(logical, None)
                        n = 1
                    logical += n
                elif self._new_stretch(logical, o, stop - logical):
                    logical = stop
                else:  # a key seen before among them: the general way
                    for i in range(logical, stop):
                        self.ordinal = ordinal + i - first
                        self.place(i, None)
                    logical = stop
            ordinal += nspan
        self.ordinal = ordinal

    def _new_stretch(self, logical: int, o: int, n: int, ks: list[bytes] | None = None) -> bool:
        """Allocate ``n`` blocks as new ones if none has a key already seen (else False).

        ``ks``: their keys, else taken from the saved record's at ordinal ``o``.
        """
        alloc = self.alloc
        by_hash = alloc._by_hash
        if ks is None:
            keys = self.keys
            ks = [keys[16 * i : 16 * i + 16] for i in range(o, o + n)]
        if n == 1:
            if ks[0] in by_hash:
                return False
        elif len(set(ks)) != n or not by_hash.keys().isdisjoint(ks):
            return False
        offset = logical * BLOCK_SIZE
        nbytes = min(n * BLOCK_SIZE, self.source.size - offset)
        phys = alloc.next_block
        run = self.run
        if (run is not None and run.block + run.nblocks == phys
                and run.offset + run.nblocks * BLOCK_SIZE == offset):
            run.nblocks += n
            run.nbytes += nbytes
            alloc.next_block += n
        else:
            alloc._new_run(self.source, offset, n, nbytes)
            self.run = alloc.runs[-1]
        stats = alloc.stats
        stats.data_blocks_referenced += n
        stats.unique_blocks += n
        if n == 1:
            by_hash[ks[0]] = phys
        else:
            by_hash.update(zip(ks, range(phys, phys + n), strict=True))
        self.builder.add_blocks(logical, phys, n)
        return True

    def _share_saved(self, logical: int, o: int, end: int) -> int:
        """Share a stretch of blocks whose verdicts name consecutive blocks of one earlier run.

        That is what a duplicate file looks like on a restart.  Returns how many
        blocks were placed (0: not such a stretch, place them one by one).  The
        stretch is taken only when every block's key leads to exactly the block
        its verdict names, which is what :meth:`_find_equal` would accept.
        """
        equal = self.equal
        first = equal.get(o)
        if first is None:
            return 0
        k = 1
        while logical + k < end and o + k in equal:
            k += 1
        alloc = self.alloc
        keys = self.keys
        hits = [alloc._by_hash.get(keys[16 * i : 16 * i + 16]) for i in range(o, o + k)]
        p0 = hits[0]
        if type(p0) is not int or alloc.relation(p0) != first:
            return 0
        run = alloc.runs[bisect.bisect_right(alloc._run_starts, p0) - 1]
        k = min(k, run.block + run.nblocks - p0)  # the same run: offsets follow the blocks
        name, pin, off = first
        want = [(name, pin, off + i * BLOCK_SIZE) for i in range(k)]
        if hits[:k] != list(range(p0, p0 + k)) or [equal[o + i] for i in range(k)] != want:
            return 0
        self._shared(logical, p0, k)
        return k

    def _find_equal(self, key: bytes, block: memoryview | None, logical: int, ordinal: int) -> int | None:
        """An earlier block with the same bytes, by a saved verdict on that very block or by reading."""
        alloc = self.alloc
        hit = alloc._by_hash.get(key)
        if hit is None:
            return None
        verdict = self.equal.get(ordinal) if block is None else None
        # Compared as bytes: comparing memoryviews goes item by item (30 times slower).
        data = None if block is None else block.tobytes()
        for phys in (hit,) if isinstance(hit, int) else hit:
            if verdict is not None and alloc.relation(phys) == verdict:
                return phys
            if data is None:  # a saved record without a verdict for this candidate: read
                data = _read_block(self.source, logical)
                alloc.stats.bytes_compared += BLOCK_SIZE
            if alloc.block_bytes(phys) == data:
                rel = alloc.relation(phys)
                if self.equal.get(ordinal) != rel:
                    self.changed = True
                    if rel is None:
                        self.equal.pop(ordinal, None)
                    else:
                        self.equal[ordinal] = rel
                return phys
        alloc.stats.collisions += 1
        if self.equal.pop(ordinal, None) is not None:
            self.changed = True
        return None


def _read_block(source: Source, logical: int) -> bytes:
    """Block ``logical`` of ``source``, zero-padded to 4 KiB."""
    offset = logical * BLOCK_SIZE
    buf = bytearray(BLOCK_SIZE)
    n = max(0, min(BLOCK_SIZE, source.size - offset))
    source.readinto(memoryview(buf)[:n], offset)
    return bytes(buf)
