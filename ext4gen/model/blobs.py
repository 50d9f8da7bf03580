"""Blobs of a container image: byte ranges of pinned host files, read and verified.

A blob is a file of an OCI layout directory, or a member of an (uncompressed)
``oci-archive``/``docker-archive`` tar.  Either way it is a range of one host file,
so nothing is ever copied out: layers are served from where they lie.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

from ..errors import ManifestError, SourceError
from .sources import HostFile

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    """``size`` bytes at ``offset`` in ``file``; ``digest`` is what they must hash to."""

    file: HostFile
    offset: int
    size: int
    digest: str  # "sha256:HEX"
    shown: str  # where it came from, for messages

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]

    def reader(self) -> BlobReader:
        return BlobReader(self)

    def read_all(self) -> bytes:
        with self.reader() as r:
            return r.read()

    def verify(self) -> None:
        """Hash the whole range; refuse a blob whose sha256 is not its name."""
        algo, _, want = self.digest.partition(":")
        if algo != "sha256":
            raise ManifestError(self.shown, f"unsupported digest algorithm {algo!r} (only sha256)")
        h = hashlib.sha256()
        with self.reader() as r:
            buf = bytearray(HASH_CHUNK)
            mv = memoryview(buf)
            while n := r.readinto(mv):
                h.update(mv[:n])
            r.check()  # the bytes hashed are the bytes pinned
        if h.hexdigest() != want:
            raise ManifestError(self.shown, f"digest mismatch: the blob hashes to sha256:{h.hexdigest()}, "
                                f"not {self.digest}")


def verify_bytes(data: bytes, digest: str, shown: str) -> None:
    algo, _, want = digest.partition(":")
    if algo != "sha256":
        raise ManifestError(shown, f"unsupported digest algorithm {algo!r} (only sha256)")
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ManifestError(shown, f"digest mismatch: the blob hashes to sha256:{got}, not {digest}")


class BlobReader(io.RawIOBase):
    """A seekable file object over one blob's range, on its own pinned descriptor.

    ``check()`` re-verifies the pin: serve-time readers call it after every read,
    so a blob rewritten or deleted under the server fails with SourceError (EIO).
    ``bytes_read`` counts what came from the host file (the laziness tests use it).
    """

    def __init__(self, blob: Blob) -> None:
        super().__init__()
        self.blob = blob
        self.fd = blob.file.open_pinned()
        self.pos = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == os.SEEK_SET:
            self.pos = offset
        elif whence == os.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = self.blob.size + offset
        return self.pos

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        want = max(0, min(len(b), self.blob.size - self.pos))
        if want == 0:
            return 0
        mv = memoryview(b).cast("B")
        try:
            n = os.preadv(self.fd, [mv[:want]], self.blob.offset + self.pos)
        except OSError as e:
            raise SourceError(f"{self.blob.file.path}: read failed: {e.strerror}") from e
        if n <= 0:
            raise SourceError(f"{self.blob.file.path}: source is shorter than planned")
        self.pos += n
        self.bytes_read += n
        return n

    def check(self) -> None:
        self.blob.file.check(os.fstat(self.fd))

    def close(self) -> None:
        if not self.closed and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()
