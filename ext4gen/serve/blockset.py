"""Which blocks of an export clients have read: the plugin's "distinct blocks read" figure.

The point of a lazily generated disk is that a client reads little of it (a
booting VM touches a few MiB of a large root), and this is how that is
measured.  The set is a sparse bitmap: one bit per 4 KiB block, in chunks of
32768 blocks (a 4 KiB bytearray for 128 MiB of image) allocated on first
touch.  Marking a read is O(1) for the small random reads of a serving hot
path, and an image nobody reads costs nothing, whatever its size.
:class:`BlockSet` is not thread-safe; :class:`ReadBlocks` wraps it for the
read path without making readers wait.
"""

from __future__ import annotations

import threading
from collections import deque

CHUNK_SHIFT = 15
CHUNK = 1 << CHUNK_SHIFT  # blocks per chunk
_FULL = b"\xff" * (CHUNK // 8)


class BlockSet:
    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: dict[int, bytearray] = {}

    def add(self, first: int, end: int) -> None:
        """Add blocks ``first`` … ``end - 1``."""
        while first < end:
            index = first >> CHUNK_SHIFT
            base = index << CHUNK_SHIFT
            stop = min(end, base + CHUNK)
            bits = self.chunks.get(index)
            if bits is None:
                bits = self.chunks[index] = bytearray(CHUNK // 8)
            lo, hi = first - base, stop - base
            if hi - lo < 16:
                for b in range(lo, hi):
                    bits[b >> 3] |= 1 << (b & 7)
            else:  # whole bytes by slice, the partial bytes at either end bit by bit
                lo_byte, hi_byte = (lo + 7) >> 3, hi >> 3
                for b in range(lo, lo_byte << 3):
                    bits[b >> 3] |= 1 << (b & 7)
                bits[lo_byte:hi_byte] = _FULL[: hi_byte - lo_byte]
                for b in range(hi_byte << 3, hi):
                    bits[b >> 3] |= 1 << (b & 7)
            first = stop

    def add_bytes(self, offset: int, length: int, block: int = 4096) -> None:
        """Add every block that bytes ``offset`` … ``offset + length - 1`` fall in."""
        if length > 0:
            self.add(offset // block, -(-(offset + length) // block))

    def __len__(self) -> int:
        return sum(int.from_bytes(bits, "little").bit_count() for bits in self.chunks.values())

    def __contains__(self, block: int) -> bool:
        bits = self.chunks.get(block >> CHUNK_SHIFT)
        b = block & (CHUNK - 1)
        return bits is not None and bool(bits[b >> 3] & (1 << (b & 7)))


class ReadBlocks:
    """A :class:`BlockSet` fed without a lock on the read path: thread-safe and lazy.

    A read appends ``(offset, length)`` to a deque (atomic under the GIL); the
    bitmap absorbs the queue when someone asks for the count, or every few
    thousand reads by whichever reader first gets the (never waited for) lock.
    The compiled read path keeps its own bitmap; this is for the pure-Python one.
    """

    __slots__ = ("_lock", "_pending", "blocks")
    FOLD_AT = 4096

    def __init__(self) -> None:
        self.blocks = BlockSet()
        self._pending: deque[tuple[int, int]] = deque()
        self._lock = threading.Lock()

    def note(self, offset: int, length: int) -> None:
        self._pending.append((offset, length))
        if len(self._pending) >= self.FOLD_AT and self._lock.acquire(blocking=False):
            try:
                self._fold()
            finally:
                self._lock.release()

    def _fold(self) -> None:
        pending, add = self._pending, self.blocks.add_bytes
        while pending:
            try:
                offset, length = pending.popleft()
            except IndexError:
                break
            add(offset, length)

    def __len__(self) -> int:
        with self._lock:
            self._fold()
            return len(self.blocks)
