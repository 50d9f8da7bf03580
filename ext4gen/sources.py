"""Where a regular file's bytes come from, and the promise that they do not change.

A source is consulted twice: optionally at plan time (dedup hashing) and at
serve time, when a client reads a block.  Host files are *pinned* when they are
planned: every serve-time read re-checks the pin after copying, so a source that
was rewritten, truncated or deleted yields :class:`SourceError` (EIO to the
client) instead of stale or wrong bytes.
"""

from __future__ import annotations

import os
import stat as stat_mod
import threading
from collections import OrderedDict
from typing import NamedTuple

from .errors import SourceError


class Source:
    """Base class: ``size`` bytes, readable at any offset."""

    size: int = 0

    def readinto(self, buf: memoryview, offset: int) -> None:
        """Fill ``buf`` completely with bytes ``[offset, offset+len(buf))``."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    @property
    def all_zero(self) -> bool:
        """True when the content is known to be zeros without reading it."""
        return False


class ZeroSource(Source):
    """A file declared only by ``size``: stored as one hole."""

    def __init__(self, size: int) -> None:
        self.size = size

    def readinto(self, buf: memoryview, offset: int) -> None:
        buf[:] = bytes(len(buf))

    @property
    def all_zero(self) -> bool:
        return True

    def describe(self) -> str:
        return f"zeros({self.size})"


class InlineSource(Source):
    """Bytes held in memory (manifest ``text``/``base64``, symlink targets)."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.size = len(self.data)

    def readinto(self, buf: memoryview, offset: int) -> None:
        n = len(buf)
        buf[:] = self.data[offset : offset + n]

    def describe(self) -> str:
        return f"inline({self.size} bytes)"


class Pin(NamedTuple):
    """What must still be true of a host file for its bytes to be served."""

    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Pin:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _FdCache:
    """A bounded set of open host-file descriptors shared by all sources.

    Trees hold more files than the fd limit allows open, so descriptors are
    recycled.  A descriptor in use by a reader (which may have released the GIL
    inside preadv) is never closed under it: users hold a reference count.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._fds: OrderedDict[HostFileSource, list[int]] = OrderedDict()  # src -> [fd, users]

    def acquire(self, src: HostFileSource) -> int:
        with self._lock:
            entry = self._fds.get(src)
            if entry is not None:
                self._fds.move_to_end(src)
                entry[1] += 1
                return entry[0]
        fd = src.open_pinned()
        with self._lock:
            entry = self._fds.get(src)
            if entry is not None:  # another thread opened it meanwhile
                os.close(fd)
                entry[1] += 1
                return entry[0]
            self._fds[src] = [fd, 1]
            self._evict()
            return fd

    def release(self, src: HostFileSource) -> None:
        with self._lock:
            entry = self._fds.get(src)
            if entry is not None:
                entry[1] -= 1
            self._evict()

    def drop(self, src: HostFileSource) -> None:
        """Forget a descriptor whose file no longer matches its pin."""
        with self._lock:
            entry = self._fds.get(src)
            if entry is not None and entry[1] == 0:
                del self._fds[src]
                os.close(entry[0])

    def _evict(self) -> None:
        if len(self._fds) <= self.limit:
            return
        for key in list(self._fds):
            if len(self._fds) <= self.limit:
                break
            fd, users = self._fds[key]
            if users == 0:
                del self._fds[key]
                os.close(fd)

    def close_all(self) -> None:
        with self._lock:
            for fd, _users in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _fd_limit() -> int:
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        soft = 1024
    return max(16, min(1024, soft // 4))


FD_CACHE = _FdCache(_fd_limit())


class HostFileSource(Source):
    """A regular file on the host, read lazily and pinned at plan time."""

    def __init__(self, path: str | os.PathLike[str], *, base_offset: int = 0,
                 size: int | None = None, st: os.stat_result | None = None) -> None:
        self.path = os.fspath(path)
        if st is None:
            st = os.stat(self.path)
        if not stat_mod.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{self.path} is not a regular file")
        self.pin = Pin.of(st)
        self.base_offset = base_offset
        self.size = st.st_size - base_offset if size is None else size

    def describe(self) -> str:
        return self.path

    def open_pinned(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(f"{self.path}: cannot open source: {e.strerror}") from e
        try:
            self._check(os.fstat(fd))
        except SourceError:
            os.close(fd)
            raise
        return fd

    def _check(self, st: os.stat_result) -> None:
        if Pin.of(st) != self.pin:
            raise SourceError(f"{self.path}: source changed since the image was planned")
        if st.st_nlink == 0:
            raise SourceError(f"{self.path}: source was deleted since the image was planned")

    def readinto(self, buf: memoryview, offset: int) -> None:
        fd = FD_CACHE.acquire(self)
        try:
            want = len(buf)
            got = os.preadv(fd, [buf], self.base_offset + offset)
            while got < want:
                n = os.preadv(fd, [buf[got:]], self.base_offset + offset + got)
                if n <= 0:
                    raise SourceError(f"{self.path}: source is shorter than planned")
                got += n
            self._check(os.fstat(fd))
        except SourceError:
            FD_CACHE.release(self)
            FD_CACHE.drop(self)
            raise
        except OSError as e:
            FD_CACHE.release(self)
            raise SourceError(f"{self.path}: read failed: {e.strerror}") from e
        else:
            FD_CACHE.release(self)
