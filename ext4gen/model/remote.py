"""Regular-file content fetched from an HTTP(S) server or an S3-compatible store.

A :class:`RemoteSource` is never read at plan time (``plan_readable`` is
False): its size comes from the manifest or one HEAD request, and its
declared digests give it an ``identity``, so content dedup merges identical
remote files without fetching them.  At serve time reads go through the shared
chunk cache (:mod:`ext4gen.remote.chunks`), which fetches, verifies and keeps
whole chunks.

Integrity, strongest first: per-chunk SHA-256 (``chunks``) verifies every chunk
as it arrives; a whole-file ``sha256`` alone can only be checked on the whole
file, so the first read of such a file fetches all of it (fine for the small
files it is meant for; ``ext4gen publish`` declares chunk digests for larger
ones); without digests the object is pinned by its ETag/Last-Modified/size.
"""

from __future__ import annotations

import hashlib

from ..errors import SourceError
from ..remote import chunks as chunk_mod
from ..remote.origins import Origin, fetch_range
from ..remote.settings import RemoteSettings
from .sources import Source


class RemoteSource(Source):
    """``size`` bytes of one remote object, read in chunks of ``chunk_size``."""

    __slots__ = ("_last", "chunk_digests", "chunk_size", "holes", "identity", "origin", "settings",
                 "sha256", "size")
    plan_readable = False

    def __init__(self, origin: Origin, size: int, settings: RemoteSettings, *,
                 sha256: bytes | None = None, chunk_size: int | None = None,
                 chunk_digests: list[bytes] | None = None,
                 holes: list[tuple[int, int]] | None = None) -> None:
        self.origin = origin
        self.size = size
        self.settings = settings
        self.sha256 = sha256
        self.chunk_size = chunk_size or settings.chunk_size
        self.chunk_digests = chunk_digests
        self._last = -2  # the chunk read last, for read-ahead
        self.holes = holes or None  # declared zero ranges: never fetched, stored as holes
        if sha256 is not None:
            self.identity = ("sha256", sha256)
        elif chunk_digests is not None:
            self.identity = ("sha256-chunks", self.chunk_size, tuple(chunk_digests))
        else:
            self.identity = None

    def data_ranges(self) -> list[tuple[int, int]] | None:
        if self.holes is None:
            return None
        out, pos = [], 0
        for start, end in self.holes:
            if start > pos:
                out.append((pos, start))
            pos = end
        if pos < self.size:
            out.append((pos, self.size))
        return out

    @property
    def all_zero(self) -> bool:
        return self.holes is not None and self.data_ranges() == []

    def describe(self) -> str:
        return f"{self.origin.name} ({self.size} bytes)"

    @property
    def nchunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def _whole_only(self) -> bool:
        """Only a whole-file digest: a chunk is trusted only once the whole file matched."""
        return self.chunk_digests is None and self.sha256 is not None and self.nchunks > 1

    def chunk_key(self, index: int) -> str:
        if self.chunk_digests is not None:
            hexd = self.chunk_digests[index].hex()
            return f"{hexd[:2]}/{hexd}"
        if self.sha256 is not None and self.nchunks == 1:
            hexd = self.sha256.hex()
            return f"{hexd[:2]}/{hexd}"
        if self.sha256 is not None:
            ident = f"w|{self.sha256.hex()}|{self.chunk_size}|{index}"
        else:
            pin = self.origin.pin
            ident = f"u|{self.origin.name}|{pin and (pin.etag, pin.last_modified)}|{self.size}|" \
                    f"{self.chunk_size}|{index}"
        hexd = hashlib.sha256(ident.encode()).hexdigest()
        return f"{hexd[:2]}/{hexd}.{ident[0]}"

    def _verifier(self, index: int):  # type: ignore[no-untyped-def]
        if self.chunk_digests is not None:
            return chunk_mod.sha256_ok(self.chunk_digests[index])
        if self.sha256 is not None and self.nchunks == 1:
            return chunk_mod.sha256_ok(self.sha256)
        return None

    def _range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size)

    def persistent(self) -> bool:
        """May chunks go to the disk cache?  Not for an object nothing identifies.

        Without digests, a chunk's key is the URL and the pin; a server that sends
        neither ETag nor Last-Modified gives no way to tell, after a restart, a cached
        chunk of the old object from one of a replaced object of the same size.
        """
        if self.chunk_digests is not None or self.sha256 is not None:
            return True
        pin = self.origin.pin
        return pin is not None and bool(pin.etag or pin.last_modified)

    def chunk(self, index: int, *, background: bool = False,
              store: chunk_mod.ChunkStore | None = None) -> bytes:
        store = store or chunk_mod.store()
        if self._whole_only():
            self._fetch_whole(store)
        start, end = self._range(index)

        def fetch() -> bytes:
            return fetch_range(self.origin, start, end, chunk_mod.deadline(self.settings.timeout))

        try:
            return store.get(self.chunk_key(index), fetch, self._verifier(index),
                             label=f"{self.origin.name} chunk {index}", background=background,
                             persist=self.persistent())
        except SourceError as e:
            if "SHA-256" in str(e):
                store.report_once(f"integrity: {e}")
            raise

    def _fetch_whole(self, store: chunk_mod.ChunkStore) -> None:
        """Fetch and check every chunk of a file with only a whole-file digest, once."""
        keys = [self.chunk_key(i) for i in range(self.nchunks)]
        if all(store.cached(k) for k in keys):
            return
        deadline = chunk_mod.deadline(self.settings.timeout)
        parts = [fetch_range(self.origin, *self._range(i), deadline) for i in range(self.nchunks)]
        h = hashlib.sha256()
        for p in parts:
            h.update(p)
        if h.digest() != self.sha256:
            store.report_once(f"integrity: {self.origin.name}: fetched bytes do not match the "
                              f"declared SHA-256")
            raise SourceError(f"{self.origin.name}: fetched bytes do not match the declared SHA-256")
        for key, data in zip(keys, parts, strict=True):
            store.get(key, lambda d=data: d, None, persist=True)

    def readinto(self, buf: memoryview, offset: int) -> None:
        n = len(buf)
        store = chunk_mod.store()
        if offset < 0 or offset + n > self.size:
            raise SourceError(f"{self.origin.name}: read past the planned size")
        pos = 0
        cs = self.chunk_size
        while pos < n:
            index = (offset + pos) // cs
            data = self.chunk(index, store=store)
            within = offset + pos - index * cs
            step = min(n - pos, len(data) - within)
            if step <= 0:
                raise SourceError(f"{self.origin.name}: chunk {index} is shorter than planned")
            buf[pos : pos + step] = memoryview(data)[within : within + step]
            pos += step
            self._read_ahead(index, store)

    def _read_ahead(self, index: int, store: chunk_mod.ChunkStore) -> None:
        """After two consecutive chunks, fetch the next ones in the background."""
        last, self._last = self._last, index
        if last != index - 1:
            return
        for nxt in range(index + 1, min(self.nchunks, index + 1 + chunk_mod.READ_AHEAD)):
            if not store.cached(self.chunk_key(nxt)):
                store.submit(lambda i=nxt: self.chunk(i, background=True, store=store))

    def prefetch(self) -> None:
        """Fetch every chunk not cached yet (the boot set), in the background."""
        store = chunk_mod.store()
        for i in range(self.nchunks):
            if not store.cached(self.chunk_key(i)):
                store.submit(lambda i=i: self.chunk(i, background=True, store=store))


