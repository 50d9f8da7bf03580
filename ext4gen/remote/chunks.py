"""The chunk cache: remote bytes fetched once per chunk, verified, kept on disk, bounded.

Every remote read is cut into chunks (1 MiB by default).  A chunk is looked up,
in order, in a small in-memory LRU (the kernel reads a chunk in 128 KiB pieces),
in the on-disk cache under ``ext4gen.cache.cache_area("chunks")``, and only then
fetched.  Concurrent readers of one missing chunk wait for a single fetch.
Reading chunk N right after chunk N-1 of the same object starts background
fetches of the next ones (read-ahead).

Chunks with a declared SHA-256 are stored under that digest, so identical
content shares one entry across files, exports, processes and hosts that share
the cache; they are verified when fetched and again when loaded from disk.  A
mismatch is a :class:`SourceError` (EIO) and the bytes are never stored.
Chunks without a digest are keyed by the object's URL and pin (ETag, size).

The disk cache is bounded (``EXT4GEN_CHUNK_CACHE_SIZE``, default 4 GiB): the
least recently used entries go first.  Writes are atomic (temp file + rename),
so two servers sharing a cache never see half a chunk.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..errors import SourceError
from . import settings

MEMORY_CHUNKS = 32  # recently used chunks kept in memory (32 MiB at the default size)
READ_AHEAD = 2  # chunks fetched ahead of a sequential reader
FETCH_THREADS = 4


class Stats:
    __slots__ = ("disk_hits", "fetched_bytes", "fetches", "memory_hits", "verify_failures")

    def __init__(self) -> None:
        self.fetches = self.fetched_bytes = self.memory_hits = self.disk_hits = 0
        self.verify_failures = 0


class ChunkStore:
    """One per process (:func:`store`): shared by every remote source of every export."""

    def __init__(self, root: Path | None, limit: int) -> None:
        self.root = root
        self.limit = limit
        self.stats = Stats()
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._inflight: dict[str, Future[bytes]] = {}
        self._disk: OrderedDict[str, int] = OrderedDict()  # key -> size, LRU first
        self._disk_bytes = 0
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="ext4gen-fetch")
        self._reported: set[str] = set()
        if root is not None:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._scan()

    # -- disk index ----------------------------------------------------------------

    def _scan(self) -> None:
        """Index what earlier runs left, oldest use first (mtime is bumped on every use)."""
        assert self.root is not None
        found = []
        for sub in self.root.iterdir() if self.root.is_dir() else ():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if entry.name.endswith(".tmp"):
                    continue
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_mtime_ns, f"{sub.name}/{entry.name}", st.st_size))
        for _mtime, key, size in sorted(found):
            self._disk[key] = size
            self._disk_bytes += size
        self._evict()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key

    def _load(self, key: str) -> bytes | None:
        if self.root is None or key not in self._disk:
            return None
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)  # the LRU order survives a restart
        except OSError:
            with self._lock:
                self._forget(key)
            return None
        with self._lock:
            if key in self._disk:
                self._disk.move_to_end(key)
        return data

    def _save(self, key: str, data: bytes) -> None:
        if self.root is None or self.limit < len(data):
            return
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:  # a full disk costs the cache, not the read
            self._report(f"chunk cache: cannot save {key}: {e.strerror}")
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        with self._lock:
            self._forget(key)
            self._disk[key] = len(data)
            self._disk_bytes += len(data)
            self._evict()

    def _forget(self, key: str) -> None:
        size = self._disk.pop(key, None)
        if size is not None:
            self._disk_bytes -= size

    def _evict(self) -> None:
        while self._disk_bytes > self.limit and self._disk:
            key, size = self._disk.popitem(last=False)
            self._disk_bytes -= size
            try:
                os.unlink(self._path(key))
            except OSError:
                pass

    # -- lookups -----------------------------------------------------------------

    def get(self, key: str, fetch: Callable[[], bytes], verify: Callable[[bytes], bool] | None,
            *, label: str = "", background: bool = False, persist: bool = True) -> bytes:
        """The chunk ``key``: from memory, from disk (re-verified) or from ``fetch()`` once."""
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                self.stats.memory_hits += 1
                return data
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = self._inflight[key] = Future()
        assert fut is not None
        if not owner:
            if background:
                return b""
            return fut.result()
        try:
            data = self._load(key)
            if data is not None and verify is not None and not verify(data):
                data = None  # damaged on disk: fetch again
            if data is not None:
                self.stats.disk_hits += 1
            else:
                data = fetch()
                self.stats.fetches += 1
                self.stats.fetched_bytes += len(data)
                if verify is not None and not verify(data):
                    self.stats.verify_failures += 1
                    raise SourceError(f"{label or key}: fetched bytes do not match the declared SHA-256")
                if persist:
                    self._save(key, data)
            with self._lock:
                self._memory[key] = data
                while len(self._memory) > MEMORY_CHUNKS:
                    self._memory.popitem(last=False)
            fut.set_result(data)
            return data
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody else should warn
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def cached(self, key: str) -> bool:
        with self._lock:
            return key in self._memory or key in self._disk

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in the background (read-ahead, prefetch); its failures are only logged."""
        def run() -> None:
            try:
                fn()
            except SourceError as e:
                self._report(f"background fetch failed: {e}")
            except Exception as e:  # never let a background fetch kill its worker silently
                self._report(f"background fetch failed: {e!r}")

        try:
            self._pool.submit(run)
        except RuntimeError:  # interpreter shutting down
            pass

    def _report(self, message: str) -> None:
        with self._lock:
            if message in self._reported or len(self._reported) > 1000:
                return
            self._reported.add(message)
        print(f"ext4gen: {message}", file=sys.stderr, flush=True)

    def report_once(self, message: str) -> None:
        self._report(message)


_store: ChunkStore | None = None
_store_lock = threading.Lock()


def store() -> ChunkStore:
    """The process's chunk store, created at first use (so a build with no remote files makes none)."""
    global _store
    with _store_lock:
        if _store is None:
            from ..cache import CacheError, cache_area

            try:
                root: Path | None = cache_area("chunks")
            except CacheError as e:
                print(f"ext4gen: chunk cache disabled: {e}", file=sys.stderr, flush=True)
                root = None
            _store = ChunkStore(root, settings.cache_size())
        return _store


def summary() -> str | None:
    """One line of fetch statistics, or None when nothing remote was read."""
    s = _store
    if s is None:
        return None
    st = s.stats
    return (f"remote chunks: {st.fetches} fetched ({st.fetched_bytes} bytes), {st.memory_hits} "
            f"memory hits, {st.disk_hits} disk hits, {st.verify_failures} failed verification; "
            f"cache {s._disk_bytes} bytes in {s.root}")


def shutdown() -> None:
    """Stop background fetches and retry loops: the server is going away."""
    from .origins import STOPPING

    STOPPING.set()
    if _store is not None:
        _store._pool.shutdown(wait=False, cancel_futures=True)


def sha256_ok(digest: bytes) -> Callable[[bytes], bool]:
    return lambda data: hashlib.sha256(data).digest() == digest


def deadline(timeout: float) -> float:
    return time.monotonic() + timeout
