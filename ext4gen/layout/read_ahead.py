"""Content dedup reads small host files ahead of the planner, in a thread without the GIL.

A first plan with content dedup must read and hash every block of every file.
For a tree of many small files that is mostly system calls, five per file,
each a trip through the interpreter on the planner's own thread.  Here a
thread hands batches of files to ``_hashread.read_and_hash`` (C), which opens,
checks, reads and hashes them with the GIL released, while the planner places
the blocks of files already read: on two cores the reading is then off the
planner's path.  Nothing is decided here: the planner takes each file's bytes
and keys in its own order and places them exactly as if it had read them.

Only whole, non-sparse host files up to :data:`MAX_FILE` are read ahead, and
only those without valid saved digests (a re-plan reads nothing it has
digests for).  A file the C reader cannot read as pinned comes back as None,
and the planner reads it itself, which names the error.  The recording of
host reads (``ext4gen.model.host_reads``) does not see these opens, and need
not: every file read here is a source of the plan, and a saved plan depends on
the pins of all its sources (``ext4gen.saved_plan``).
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Sequence

from ..model.sources import HostFileSource
from ..switches import pure_python_requested

try:
    from . import _hashread  # type: ignore[attr-defined]
except ImportError:  # built by setup.py when a compiler and xxhash.h are there
    _hashread = None

MAX_FILE = 256 << 10  # larger files: the planner reads them a chunk at a time
BATCH_FILES = 2048  # per call of the C reader (one GIL release)
BATCH_BYTES = 4 << 20
AHEAD_BYTES = 16 << 20  # read and not yet taken: the thread waits beyond it


def available() -> bool:
    return _hashread is not None and not pure_python_requested()


class ReadAhead:
    """Reads ``sources`` in order, ahead of :meth:`take`; :meth:`close` stops it.

    With ``complete=False`` more sources follow (:meth:`extend`) until :meth:`end`:
    the planner looks every candidate up in the digest cache first (a quarter of a
    second for T2's 100,000 files), and the thread reads the first ones meanwhile.
    """

    def __init__(self, sources: Sequence[HostFileSource], complete: bool = True) -> None:
        self._sources: list[HostFileSource] = []
        self._index: dict[HostFileSource, int] = {}
        self._complete = complete  # no source will be added
        self._results: dict[int, tuple[bytes, bytes] | None] = {}
        self._ready = 0  # sources [0, _ready) are read (or given up)
        self._finished = False  # the thread is gone: what it did not read, the planner reads
        self._held = 0  # bytes read and not yet taken or dropped
        self._taken = 0  # sources before it are taken or dropped
        self._stop = False
        self._waiting = False  # the thread waits for takes to free bytes
        self.bytes_read = 0
        self.error: Exception | None = None  # what stopped the thread early, if anything
        self._cond = threading.Condition()
        self.extend(sources)
        self._thread = threading.Thread(target=self._run, name="ext4gen-read-ahead", daemon=True)
        self._thread.start()

    def extend(self, sources: Sequence[HostFileSource]) -> None:
        """More sources to read, after those given so far."""
        with self._cond:
            for s in sources:
                self._index.setdefault(s, len(self._sources))
                self._sources.append(s)
            self._cond.notify_all()

    def end(self) -> None:
        """No more sources: the thread stops once it has read those it has."""
        with self._cond:
            self._complete = True
            self._cond.notify_all()

    def _run(self) -> None:
        sources = self._sources  # (extend appends to it)
        i = 0
        try:
            while True:
                with self._cond:
                    if self._held > AHEAD_BYTES:  # far enough ahead: on once half is taken
                        while not self._stop and self._held > AHEAD_BYTES // 2:
                            self._waiting = True  # take() notifies only then: a wake-up (and
                            self._cond.wait()  # the GIL) per file taken would slow the planner
                            self._waiting = False
                    while not self._stop and i == len(sources) and not self._complete:
                        self._cond.wait()  # for extend() or end()
                    if self._stop or i == len(sources):
                        return
                    n = len(sources)
                j, total = i, 0
                while j < n and j - i < BATCH_FILES and total < BATCH_BYTES:
                    total += sources[j].size
                    j += 1
                got = self._read(sources[i:j])
                with self._cond:
                    for k, r in enumerate(got, i):
                        if k >= self._taken:  # else the planner has passed it: never taken
                            self._results[k] = r
                            self._held += len(r[0]) if r is not None else 0
                    self._ready = j
                    self._cond.notify_all()
                i = j
        except Exception as e:  # never the plan's error: the planner reads the rest itself
            self.error = e
        finally:
            with self._cond:
                self._finished = True  # whatever is missing, the planner reads itself
                self._cond.notify_all()

    def _read(self, batch: list[HostFileSource]) -> list[tuple[bytes, bytes] | None]:
        names = [os.fsencode(s.path) for s in batch]
        specs = array("q")
        for s in batch:
            pin = s.file.pin
            specs.extend((s.base_offset, s.size, pin.st_dev, pin.st_ino, pin.st_size,
                          pin.st_mtime_ns, pin.st_ctime_ns))
        got = _hashread.read_and_hash(b"\0".join(names) + b"\0", specs.tobytes())
        self.bytes_read += sum(s.size for s, r in zip(batch, got, strict=True) if r is not None)
        return got

    def take(self, source: HostFileSource) -> tuple[bytes, bytes] | None:
        """(data zero-padded to whole blocks, 16-byte block keys) of ``source``, or None when
        it was not read ahead (not a candidate, taken out of order, or unreadable)."""
        k = self._index.get(source)
        if k is None:
            return None
        with self._cond:
            if k < self._taken:  # passed over before: dropped
                return None
            if k > self._taken:
                self._drop_before(k)
            while self._ready <= k and not self._finished:
                self._cond.wait()
            r = self._results.pop(k, None)
            self._held -= len(r[0]) if r is not None else 0
            self._taken = k + 1
            if self._waiting and self._held <= AHEAD_BYTES // 2:
                self._cond.notify()
            return r

    def _drop_before(self, k: int) -> None:
        """Free what the planner went past without taking (files it placed otherwise): it never
        comes back for them, and held bytes would otherwise stop the thread for good."""
        for skipped in range(self._taken, k):
            r = self._results.pop(skipped, None)
            self._held -= len(r[0]) if r is not None else 0
        self._taken = k
        if self._waiting and self._held <= AHEAD_BYTES // 2:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._results.clear()
            self._held = 0
            self._cond.notify_all()
        self._thread.join()
