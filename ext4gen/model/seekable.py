"""Random access into compressed layers, without a decompressed copy anywhere.

gzip: indexed_gzip (zlib's zran) records a checkpoint — compressed position
plus the 32 KiB window — every ``GZIP_SPACING`` compressed bytes during the one
pass planning makes anyway.  zran inflates from a checkpoint on every call, so a
read decompresses the whole span(s) it falls in, in one call, and the layer keeps
the last few spans in memory (``PIECES_KEPT``): a lone read inflates one span,
sequential reads inflate each span once.  The index is exported to the cache keyed
by the blob digest; decompressed bytes never leave memory.

zstd: a decompressor's state cannot be saved, so restart points are frame
boundaries.  Multi-frame layers get one per frame; a single-frame layer (what
skopeo and containerd write) can only be decompressed from its start.  A forward
cursor makes sequential reads (the kernel's readahead, dedup hashing) cost one
pass, and the last few 2 MiB pieces stay in memory, but a read further back in a
single-frame layer re-decompresses from the start of the frame: the documented
limit (docs/OCI.md).
"""

from __future__ import annotations

import bisect
import io
import threading
from collections import OrderedDict
from typing import Any

from ..errors import SourceError
from .blobs import Blob, BlobReader

GZIP_SPACING = 2 << 20  # compressed bytes between checkpoints (32 KiB window each: ~1.6 % of the blob)
ZSTD_CHUNK = 64 << 10
ZSTD_PIECE = 2 << 20  # decompressed piece of a zstd layer kept in memory
PIECE_MAX = 8 << 20  # largest decompressed piece kept (a span of very compressible data is cut)
PIECES_KEPT = 8  # decompressed pieces kept per layer (16-64 MiB of memory at most; never disk)


class LayerStats:
    """What serving cost: compressed bytes read from the blob, bytes decompressed."""

    __slots__ = ("compressed_read", "decompressed", "restarts")

    def __init__(self) -> None:
        self.compressed_read = 0
        self.decompressed = 0
        self.restarts = 0


class CompressedLayer:
    """The decompressed bytes of one layer blob, readable at any offset (thread-safe)."""

    def __init__(self, blob: Blob, compression: str) -> None:
        self.blob = blob
        self.compression = compression
        self.size = 0  # uncompressed; set by the scan or the cached index
        self.stats = LayerStats()
        self._lock = threading.Lock()
        self._reader: BlobReader | None = None
        self._pieces: OrderedDict[int, memoryview] = OrderedDict()  # piece start -> bytes (LRU)

    def pread(self, buf: memoryview, offset: int) -> None:
        """Fill ``buf`` with uncompressed bytes from ``offset``; SourceError if the blob changed."""
        with self._lock:
            try:
                if self._reader is None:
                    self._reader = self.blob.reader()
                    self._open(self._reader)
                before = self._reader.bytes_read
                self._read(buf, offset)
                self.stats.compressed_read += self._reader.bytes_read - before
                self._reader.check()
            except SourceError:
                self._drop()
                raise
            except Exception as e:  # zlib, zran and zstd errors alike: this request fails, not the server
                self._drop()
                raise SourceError(f"{self.blob.file.path}: cannot decompress layer "
                                  f"{self.blob.digest}: {e}") from e

    def _drop(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._pieces.clear()  # the blob may have changed: keep nothing read from it

    def _open(self, reader: BlobReader) -> None:
        raise NotImplementedError

    def _read(self, buf: memoryview, offset: int) -> None:
        """Copy from the decompressed pieces that cover the range (each inflated once, then kept)."""
        end = offset + len(buf)
        pos = offset
        while pos < end:
            pstart, piece = self._piece(pos)
            n = min(end, pstart + len(piece)) - pos
            if n <= 0:
                raise SourceError(f"{self.blob.file.path}: layer {self.blob.digest} is shorter than planned")
            buf[pos - offset : pos - offset + n] = piece[pos - pstart : pos - pstart + n]
            pos += n

    def _piece(self, offset: int) -> tuple[int, memoryview]:
        """The decompressed piece holding ``offset``, from memory or decompressed now (LRU)."""
        start, end = self._piece_bounds(offset)
        hit = self._pieces.get(start)
        if hit is not None:
            self._pieces.move_to_end(start)
            return start, hit
        piece = self._decompress(start, end)
        self._pieces[start] = piece
        while len(self._pieces) > PIECES_KEPT:
            self._pieces.popitem(last=False)
        return start, piece

    def _piece_bounds(self, offset: int) -> tuple[int, int]:
        raise NotImplementedError

    def _decompress(self, start: int, end: int) -> memoryview:
        raise NotImplementedError

    def scan_file(self, reader: BlobReader) -> tuple[io.RawIOBase | Any, str]:
        """A file object over the uncompressed tar for planning's one pass, and its tarfile mode."""
        raise NotImplementedError

    def finish_scan(self, f: Any) -> None:
        """After the members were read: run to the end (the size, the last checkpoints)."""
        raise NotImplementedError

    def index_state(self) -> dict[str, Any]:
        """What the cache keeps besides the members (JSON-able)."""
        return {"size": self.size}

    def load_state(self, state: dict[str, Any], index_bytes: bytes | None) -> None:
        self.size = int(state["size"])

    def index_bytes(self) -> bytes | None:
        return None


class GzipLayer(CompressedLayer):
    def __init__(self, blob: Blob) -> None:
        super().__init__(blob, "gzip")
        self._index: bytes | None = None
        self._points: list[int] = []  # uncompressed offsets of the checkpoints
        self._cpoints: list[int] = []  # their compressed offsets
        self._gz: Any = None

    def scan_file(self, reader: BlobReader) -> tuple[Any, str]:
        import indexed_gzip

        gz = indexed_gzip.IndexedGzipFile(fileobj=reader, spacing=GZIP_SPACING, buffer_size=256 << 10)
        return gz, "r:"

    def finish_scan(self, f: Any) -> None:
        f.build_full_index()  # to the end of the stream: the index then covers every offset
        self.size = f.seek(0, io.SEEK_END)
        bio = io.BytesIO()
        f.export_index(fileobj=bio)
        self._index = bio.getvalue()
        points = list(f.seek_points())
        self._points = [u for u, _c in points]
        self._cpoints = [c for _u, c in points]

    def index_state(self) -> dict[str, Any]:
        return {"size": self.size, "points": self._points, "cpoints": self._cpoints}

    def load_state(self, state: dict[str, Any], index_bytes: bytes | None) -> None:
        super().load_state(state, index_bytes)
        if index_bytes is None:
            raise ValueError("gzip layer without its index")
        self._index = index_bytes
        self._points = [int(p) for p in state["points"]]
        self._cpoints = [int(p) for p in state["cpoints"]]

    def index_bytes(self) -> bytes | None:
        return self._index

    @property
    def span_count(self) -> int:
        return len(self._points)

    def span_of(self, offset: int) -> tuple[int, int]:
        """[start, end) of the index span holding uncompressed ``offset``."""
        i = bisect.bisect_right(self._points, offset) - 1
        start = self._points[i] if i >= 0 else 0
        end = self._points[i + 1] if i + 1 < len(self._points) else self.size
        return start, end

    def compressed_span_of(self, offset: int) -> tuple[int, int]:
        """[start, end) in the blob of the index span holding uncompressed ``offset``."""
        i = max(bisect.bisect_right(self._points, offset) - 1, 0)
        end = self._cpoints[i + 1] if i + 1 < len(self._cpoints) else self.blob.size
        return self._cpoints[i], end

    def _open(self, reader: BlobReader) -> None:
        import indexed_gzip

        assert self._index is not None
        gz = indexed_gzip._IndexedGzipFile(fileobj=reader, spacing=GZIP_SPACING, auto_build=False,
                                           readbuf_size=64 << 10)
        gz.import_index(fileobj=io.BytesIO(self._index))
        self._gz = gz

    def _drop(self) -> None:
        self._gz = None
        super()._drop()

    def _piece_bounds(self, offset: int) -> tuple[int, int]:
        """The whole index span holding ``offset`` (or PIECE_MAX of it).

        zran inflates from the checkpoint on every call, however small, so a piece is
        read in one call from its span's start: sequential reads inflate each span
        once, a lone read at most one span.
        """
        start, end = self.span_of(offset)
        if end - start > PIECE_MAX:  # a very compressible span: bounded pieces of it
            start += (offset - start) // PIECE_MAX * PIECE_MAX
            end = min(end, start + PIECE_MAX)
        return start, end

    def _decompress(self, start: int, end: int) -> memoryview:
        self.stats.restarts += 1
        self._gz.seek(start)
        data = bytearray(end - start)
        mv = memoryview(data)
        got = 0
        while got < len(data):
            n = self._gz.readinto(mv[got:])
            if not n:
                break
            got += n
        self.stats.decompressed += (start - self.span_of(start)[0]) + got
        return mv[:got]


class ZstdLayer(CompressedLayer):
    def __init__(self, blob: Blob) -> None:
        super().__init__(blob, "zstd")
        self.frames: list[tuple[int, int]] = [(0, 0)]  # (compressed, uncompressed) frame starts
        self._cursor: Any = None
        self._upos = 0

    def scan_file(self, reader: BlobReader) -> tuple[Any, str]:
        return _ZstdScan(reader, self), "r|"

    def finish_scan(self, f: Any) -> None:
        while f.read(1 << 20):
            pass
        self.size = f.upos

    def index_state(self) -> dict[str, Any]:
        return {"size": self.size, "frames": self.frames}

    def load_state(self, state: dict[str, Any], index_bytes: bytes | None) -> None:
        super().load_state(state, index_bytes)
        self.frames = [(int(c), int(u)) for c, u in state["frames"]]

    def _open(self, reader: BlobReader) -> None:
        self._cursor = None

    def _drop(self) -> None:
        self._cursor = None
        super()._drop()

    def _piece_bounds(self, offset: int) -> tuple[int, int]:
        """ZSTD_PIECE-aligned pieces (frames give no other boundaries worth having)."""
        start = offset // ZSTD_PIECE * ZSTD_PIECE
        return start, min(self.size, start + ZSTD_PIECE)

    def _decompress(self, start: int, end: int) -> memoryview:
        """Move the cursor to ``start`` (restarting at the frame start if it is past it) and read."""
        import zstandard

        assert self._reader is not None
        i = bisect.bisect_right([u for _c, u in self.frames], start) - 1
        comp, ustart = self.frames[max(i, 0)]
        if self._cursor is None or not (ustart <= self._upos <= start):
            self.stats.restarts += 1
            self._reader.seek(comp)
            self._cursor = zstandard.ZstdDecompressor().stream_reader(
                self._reader, read_size=ZSTD_CHUNK, read_across_frames=True, closefd=False)
            self._upos = ustart
        data = bytearray(end - start)
        mv = memoryview(data)
        skip = start - self._upos
        while skip:  # decompressed and dropped: the price of a single frame
            n = self._cursor.readinto(mv[: min(skip, len(mv))])
            if not n:
                break
            skip -= n
            self._upos += n
            self.stats.decompressed += n
        got = 0
        while got < len(data):
            n = self._cursor.readinto(mv[got:])
            if not n:
                break
            got += n
        self._upos += got
        self.stats.decompressed += got
        return mv[:got]


class _ZstdScan(io.RawIOBase):
    """Forward-only decompression for the planning pass; records where each frame starts."""

    def __init__(self, reader: BlobReader, layer: ZstdLayer) -> None:
        import zstandard

        super().__init__()
        self._zstd = zstandard
        self.reader = reader
        self.layer = layer
        self.dobj = zstandard.ZstdDecompressor().decompressobj()
        self.fed = 0  # compressed bytes given to the decompressors
        self.upos = 0
        self.pending = memoryview(b"")
        layer.frames = [(0, 0)]

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self.pending:
            chunk = self.reader.read(ZSTD_CHUNK)
            if not chunk:
                return 0
            self.fed += len(chunk)
            out = b""
            while chunk:
                out += self.dobj.decompress(chunk)
                chunk = b""
                if self.dobj.eof:
                    rest = self.dobj.unused_data
                    frame_start = self.fed - len(rest)
                    produced = self.upos + len(self.pending) + len(out)
                    if rest or frame_start < self.reader.blob.size:
                        self.layer.frames.append((frame_start, produced))
                    self.dobj = self._zstd.ZstdDecompressor().decompressobj()
                    chunk = rest
            self.pending = memoryview(out)
        n = min(len(b), len(self.pending))
        b[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        self.upos += n
        return n
