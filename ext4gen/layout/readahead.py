"""Read the next files' data in a thread while the planner places the current file's blocks.

Content dedup is sequential by nature (which block is the first of its kind
decides the layout), but reading is not: ``os.preadv`` releases the GIL, so a
worker can copy upcoming files from the page cache (or wait on the disk) while
the main thread hashes and places blocks.  Hashing stays on the main thread:
xxh3 does release the GIL, but only for large buffers; a 4 KiB block costs
0.45 µs, about the price of taking the GIL back, so a hashing pool would mostly
trade the GIL.  Measured in docs/PERFORMANCE.md ("Content dedup and saved digests").

Files the digest cache already knows are skipped (a restart reads nothing),
and so are large files (read chunk by chunk as before, bounding memory).

Off by default, ``EXT4GEN_PLAN_THREADS=1`` turns it on: on the 2-core build
machine, shared with other work, the first plan took 25 % (T1) and 32 % (T2)
more CPU with the worker than without, in every round (docs/PERFORMANCE.md).  Every read
the worker makes releases and retakes the GIL several times (descriptor cache,
fstat pin checks, preadv), and each retake waits for the main thread's
switch interval, so the two threads convoy instead of overlapping.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from ..format.ondisk import BLOCK_SIZE
from ..model.sources import Source

THREADS_ENV = "EXT4GEN_PLAN_THREADS"
MAX_FILE = 4 << 20  # larger files are read in chunks by the planner itself
WINDOW_FILES = 64
WINDOW_BYTES = 32 << 20


def read_spans(source: Source, spans: list[tuple[int, int]]) -> bytearray:
    """The blocks of ``spans`` one after the other, each span zero-padded to whole blocks."""
    buf = bytearray(sum(n for _f, n in spans) * BLOCK_SIZE)
    mv = memoryview(buf)
    pos = 0
    for first, nspan in spans:
        offset = first * BLOCK_SIZE
        n = min(source.size, (first + nspan) * BLOCK_SIZE) - offset
        source.readinto(mv[pos : pos + n], offset)
        pos += nspan * BLOCK_SIZE
    return buf


class ReadAhead:
    """A sliding window of files being read ahead, in the order the planner will ask for them."""

    def __init__(self, items: Iterable[tuple[Source, list[tuple[int, int]]]],
                 wanted: Callable[[Source], bool]) -> None:
        self._items = iter(items)
        self._wanted = wanted
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ext4gen-readahead")
        self._pending: dict[Source, Future[bytearray]] = {}
        self._order: deque[tuple[Source, int]] = deque()
        self._bytes = 0
        self._fill()

    @staticmethod
    def enabled() -> bool:
        return os.environ.get(THREADS_ENV, "0") != "0"  # off: measured slower, see the docstring

    def _fill(self) -> None:
        while len(self._order) < WINDOW_FILES and self._bytes < WINDOW_BYTES:
            item = next(self._items, None)
            if item is None:
                return
            source, spans = item
            nbytes = sum(n for _f, n in spans) * BLOCK_SIZE
            if nbytes > MAX_FILE or not nbytes or not self._wanted(source):
                continue
            self._pending[source] = self._pool.submit(read_spans, source, spans)
            self._order.append((source, nbytes))
            self._bytes += nbytes

    def take(self, source: Source) -> bytearray | None:
        """The data of ``source`` if it was read ahead (its read error, if any, is raised here).

        Files ahead of it in the window were skipped by the planner (stored
        inline, all zeros): their reads are dropped.
        """
        future = self._pending.pop(source, None)
        if future is not None:
            while self._order:
                queued, nbytes = self._order.popleft()
                self._bytes -= nbytes
                if queued is source:
                    break
                skipped = self._pending.pop(queued, None)
                if skipped is not None:
                    skipped.cancel()
        self._fill()
        return None if future is None else future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()
        self._order.clear()
