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
from collections.abc import Callable
from typing import NamedTuple

from ..errors import SourceError


class Source:
    """Base class: ``size`` bytes, readable at any offset.

    Sources use ``__slots__``: a tree holds one per file, and an instance dict
    would double what a million small files cost.
    """

    __slots__ = ()
    size: int = 0
    #: False for sources that must not be read at plan time (dynamic or remote content).
    #: Only plan-readable files are inlined: their bytes are taken when planning, so a
    #: source that fails later costs its own data blocks, never an inode-table block.
    plan_readable: bool = True
    #: Sources with equal non-None identities have equal content (dedup without reading).
    identity: object = None
    #: True when a saved plan may hold this source (ext4gen.saved_plan): its content is in
    #: the plan or in a host file whose pin the restart checks. False for everything that
    #: could change with no pin to show it (generators, callables, remote objects).
    restartable: bool = False

    def readinto(self, buf: memoryview, offset: int) -> None:
        """Fill ``buf`` completely with bytes ``[offset, offset+len(buf))``."""
        raise NotImplementedError

    def data_ranges(self) -> list[tuple[int, int]] | None:
        """Byte ranges that may hold data, or None when the whole file may.

        Everything outside them reads as zeros and is stored as holes.
        """
        return None

    def describe(self) -> str:
        return type(self).__name__

    @property
    def all_zero(self) -> bool:
        """True when the content is known to be zeros without reading it."""
        return False

    def host_file(self) -> HostFile | None:
        """The pinned host file this source's bytes come from, if any."""
        return None

    def host_range(self) -> tuple[HostFile, int] | None:
        """(file, offset in it of this source's byte 0) when the bytes are one plain range of a host file.

        Such bytes can be read without running any Python (the compiled read
        path opens the file itself); every other source says None and is read
        through :meth:`readinto`.
        """
        return None


_ZEROS = memoryview(bytes(1 << 20))


def zero_fill(buf: memoryview) -> None:
    """Zero ``buf`` in place without allocating."""
    n = len(buf)
    pos = 0
    while pos < n:
        step = min(n - pos, len(_ZEROS))
        buf[pos : pos + step] = _ZEROS[:step]
        pos += step


def open_noatime(path: str) -> int:
    """Open for reading without moving the file's atime where allowed (owner or root).

    Building from a host tree must not change that tree: the atimes end up in the
    image, so a second build would otherwise differ from the first.  ``O_NONBLOCK``:
    a source swapped for a FIFO would otherwise block the open (and a serving thread)
    for good; this way its pin check fails at once.  Reads of regular files ignore it.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


class ZeroSource(Source):
    """A file declared only by ``size``: stored as one hole."""

    __slots__ = ("size",)
    restartable = True

    def __init__(self, size: int) -> None:
        self.size = size

    def readinto(self, buf: memoryview, offset: int) -> None:
        zero_fill(buf)

    @property
    def all_zero(self) -> bool:
        return True

    def data_ranges(self) -> list[tuple[int, int]]:
        return []

    def describe(self) -> str:
        return f"zeros({self.size})"


class InlineSource(Source):
    """Bytes held in memory (manifest ``text``/``base64``, symlink targets)."""

    __slots__ = ("data", "size")
    restartable = True

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.size = len(self.data)

    def readinto(self, buf: memoryview, offset: int) -> None:
        # a view, not a slice: no copy (and no per-file view kept: trees hold millions)
        buf[:] = memoryview(self.data)[offset : offset + len(buf)]

    def describe(self) -> str:
        return f"inline({self.size} bytes)"


class CallableSource(Source):
    """Dynamic content: ``fn(offset, length) -> bytes`` runs only when a client reads.

    The size is declared up front; the function must be deterministic (the same
    bytes for the same range every time), since the kernel may read a block more
    than once.  It is never called at plan time; ``identity`` lets equal
    generators share blocks.
    """

    __slots__ = ("fn", "identity", "name", "size")
    plan_readable = False

    def __init__(self, size: int, fn: Callable[[int, int], bytes], *, identity: object = None,
                 name: str = "") -> None:
        self.size = size
        self.fn = fn
        self.identity = identity
        self.name = name or getattr(fn, "__qualname__", "callable")

    def readinto(self, buf: memoryview, offset: int) -> None:
        n = len(buf)
        try:
            data = self.fn(offset, n)
        except Exception as e:  # a generator bug must cost one request, not the server
            raise SourceError(f"generator {self.name} failed at offset {offset}: {e!r}") from e
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != n:
            got = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else type(data).__name__
            raise SourceError(f"generator {self.name} returned {got} bytes for a {n}-byte read "
                              f"at offset {offset}")
        buf[:] = data

    def describe(self) -> str:
        return f"generator({self.name}, {self.size} bytes, identity={self.identity!r})"


class Pin(NamedTuple):
    """What must still be true of a host file for its bytes to be served.

    ctime is included because a rewrite can put the mtime back (``touch -r``,
    ``rsync --inplace -t``) but cannot set the ctime; any metadata change of the
    source (chmod, a new hard link) therefore also retires it, which errs on the
    safe side.
    """

    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Pin:
        return tuple.__new__(cls, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


class HostFile:
    """One pinned host file; several sources (tar members) may read from it."""

    __slots__ = ("__weakref__", "path", "pin", "sparse")

    def __init__(self, path: str, st: os.stat_result | None = None) -> None:
        self.path = path
        if st is None:
            st = os.stat(path)
        if not stat_mod.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        self.pin = Pin.of(st)
        self.sparse = st.st_blocks * 512 < st.st_size  # worth asking SEEK_DATA for its holes

    def open_pinned(self) -> int:
        try:
            fd = open_noatime(self.path)
        except OSError as e:
            raise SourceError(f"{self.path}: cannot open source: {e.strerror}") from e
        try:
            self.check(os.fstat(fd))
        except SourceError:
            os.close(fd)
            raise
        return fd

    def check(self, st: os.stat_result) -> None:
        pin = self.pin  # field by field: this runs after every read
        if (st.st_mtime_ns != pin.st_mtime_ns or st.st_size != pin.st_size
                or st.st_ctime_ns != pin.st_ctime_ns or st.st_ino != pin.st_ino
                or st.st_dev != pin.st_dev):
            raise SourceError(f"{self.path}: source changed since the image was planned")
        if st.st_nlink == 0:
            raise SourceError(f"{self.path}: source was deleted since the image was planned")

    def readinto(self, buf: memoryview, offset: int) -> None:
        """pread exactly ``len(buf)`` bytes, then re-check the pin (no stale bytes)."""
        self.read_parts([(buf, offset, len(buf))])

    def read_parts(self, parts: list[tuple[memoryview, int, int]], *, once: bool = False) -> None:
        """Fill each ``(buf, offset, ndata)``: ``ndata`` bytes from ``offset``, then zeros.

        One request often spans several runs of the same file (blocks between
        them deduplicated elsewhere, or tar members): they share one descriptor
        lookup and one pin check, made after the last read.  ``once``: with a
        descriptor of its own, closed at once, for a file read exactly once
        (hashed while planning), where the shared cache would only churn.
        """
        fd = self.open_pinned() if once else FD_CACHE.acquire(self)
        broken = True
        try:
            for buf, offset, ndata in parts:
                want = min(len(buf), ndata)
                got = os.preadv(fd, [buf[:want]], offset) if want > 0 else 0
                while got < want:
                    n = os.preadv(fd, [buf[got:want]], offset + got)
                    if n <= 0:
                        raise SourceError(f"{self.path}: source is shorter than planned")
                    got += n
                if want < len(buf):
                    zero_fill(buf[max(want, 0) :])
            self.check(os.fstat(fd))
            broken = False
        except OSError as e:
            raise SourceError(f"{self.path}: read failed: {e.strerror}") from e
        finally:
            if once:
                os.close(fd)
            else:
                FD_CACHE.release(self, broken=broken)


class _FdCache:
    """A bounded set of open host-file descriptors shared by all sources.

    Trees hold more files than the fd limit allows open, so descriptors are
    recycled.  A descriptor in use by a reader (which may have released the GIL
    inside preadv) is never closed under it: users hold a reference count.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._fds: OrderedDict[HostFile, list[int]] = OrderedDict()  # file -> [fd, users]

    def acquire(self, hf: HostFile) -> int:
        with self._lock:
            entry = self._fds.get(hf)
            if entry is not None:
                self._fds.move_to_end(hf)
                entry[1] += 1
                return entry[0]
        fd = hf.open_pinned()
        with self._lock:
            entry = self._fds.get(hf)
            if entry is not None:  # another thread opened it meanwhile
                os.close(fd)
                entry[1] += 1
                return entry[0]
            self._fds[hf] = [fd, 1]
            self._evict()
            return fd

    def release(self, hf: HostFile, *, broken: bool = False) -> None:
        """Return a descriptor; a broken one (pin failed) is closed once unused."""
        with self._lock:
            entry = self._fds.get(hf)
            if entry is None:
                return
            entry[1] -= 1
            if broken and entry[1] == 0:
                del self._fds[hf]
                os.close(entry[0])

    def _evict(self) -> None:
        """Close least recently used idle descriptors until within the limit.

        Walks from the LRU end only as far as needed: this runs on every new open.
        """
        excess = len(self._fds) - self.limit
        if excess <= 0:
            return
        victims = []
        for key, (_fd, users) in self._fds.items():
            if users == 0:
                victims.append(key)
                if len(victims) == excess:
                    break
        for key in victims:
            os.close(self._fds.pop(key)[0])

    def close_all(self) -> None:
        with self._lock:
            for fd, _users in self._fds.values():
                os.close(fd)
            self._fds.clear()


def fd_soft_limit() -> int:
    """The process's soft descriptor limit (1024 when it cannot be read)."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return 1024
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


FD_LIMIT_WANTED = 65536  # the soft descriptor limit serving asks for (capped by the hard one)


def serving_fd_limit(want: int = FD_LIMIT_WANTED) -> int:
    """The soft descriptor limit :func:`raise_fd_limit` will reach in a process with these
    limits (the CLI asks, to size nbdkit's client limit before nbdkit exists)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return 1024
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(soft, target)


def raise_fd_limit(want: int = FD_LIMIT_WANTED) -> int:
    """Raise the soft descriptor limit toward the hard one (at most ``want``); return it.

    Called once when serving starts, never as a side effect of an import: trees
    of many files otherwise reopen sources on most reads (Debian's soft limit
    is 1024; the hard limit is usually far higher).
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = serving_fd_limit(want)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass
    return fd_soft_limit()


def source_fd_budget(soft: int | None = None) -> int:
    """How many descriptors cached source files may hold: half the soft limit.

    The other half is for client connections and the server itself, by design:
    a cache that filled the table (as it once did, all but 512) left a client
    flood nothing to accept with, and nbdkit spun on EMFILE.  ``ext4gen serve``
    also caps connections (nbdkit's limit filter) within that other half.
    """
    return max(16, (fd_soft_limit() if soft is None else soft) // 2)


FD_CACHE = _FdCache(source_fd_budget())


class HostFileSource(Source):
    """A byte range of a pinned host file (a whole file, or a member inside a tar).

    ``segments`` describes sparse content: (file offset, length, offset in the
    host file) runs; bytes outside them are zeros.
    """

    __slots__ = ("base_offset", "file", "path", "segments", "size")

    def __init__(self, path: str | os.PathLike[str] | HostFile, *, base_offset: int = 0,
                 size: int | None = None, st: os.stat_result | None = None,
                 segments: list[tuple[int, int, int]] | None = None,
                 detect_holes: bool = True) -> None:
        self.file = path if isinstance(path, HostFile) else HostFile(os.fspath(path), st)
        self.path = self.file.path
        self.base_offset = base_offset
        self.size = self.file.pin.st_size - base_offset if size is None else size
        self.segments = segments
        whole_file = base_offset == 0 and self.size == self.file.pin.st_size
        if detect_holes and segments is None and whole_file and self.file.sparse and self.size:
            self.segments = _seek_data_segments(self.path, self.size)

    restartable = True

    @classmethod
    def listed(cls, path: str, st: os.stat_result) -> HostFileSource:
        """``HostFileSource(path, st=st)`` for a regular file a directory listing found by
        ``lstat`` (``st``), in half the time: a walk makes one per file (100,000 for T2).
        A file with fewer blocks than bytes (holes to find) takes the general way."""
        if st.st_blocks * 512 < st.st_size or not stat_mod.S_ISREG(st.st_mode):
            return cls(path, st=st)
        f = HostFile.__new__(HostFile)
        f.path, f.sparse = path, False
        f.pin = tuple.__new__(Pin, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        self = cls.__new__(cls)
        self.file, self.path, self.base_offset, self.size, self.segments = f, path, 0, st.st_size, None
        return self

    @property
    def pin(self) -> Pin:
        return self.file.pin

    def host_file(self) -> HostFile:
        return self.file

    def host_range(self) -> tuple[HostFile, int] | None:
        return None if self.segments is not None else (self.file, self.base_offset)

    def describe(self) -> str:
        if self.base_offset or self.segments is not None:
            return f"{self.path}@{self.base_offset}+{self.size}"
        return self.path

    def data_ranges(self) -> list[tuple[int, int]] | None:
        return segment_ranges(self.segments)

    def readinto(self, buf: memoryview, offset: int) -> None:
        if self.segments is None:
            self.file.readinto(buf, self.base_offset + offset)
        else:
            read_segments(buf, offset, self.segments, self.file.readinto)


def segment_ranges(segments: list[tuple[int, int, int]] | None) -> list[tuple[int, int]] | None:
    """The (start, end) data ranges of a sparse source's (offset, length, where) segments."""
    if segments is None:
        return None
    return [(start, start + length) for start, length, _src in segments]


def read_segments(buf: memoryview, offset: int, segments: list[tuple[int, int, int]],
                  read: Callable[[memoryview, int], None]) -> None:
    """Bytes ``[offset, offset+len(buf))`` of a sparse source: each segment's part through
    ``read(view, where)`` (a host file, a container layer …), zeros between them."""
    end = offset + len(buf)
    pos = offset
    for start, length, src in segments:
        seg_end = start + length
        if seg_end <= pos:
            continue
        if start >= end:
            break
        if start > pos:
            zero_fill(buf[pos - offset : start - offset])
            pos = start
        stop = min(end, seg_end)
        read(buf[pos - offset : stop - offset], src + (pos - start))
        pos = stop
    if pos < end:
        zero_fill(buf[pos - offset :])


def data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of every data run of the open file ``fd`` below ``size``, by
    SEEK_DATA/SEEK_HOLE (the one walk of a sparse file's layout: sources, confined
    opens and the kernel read-back all use it).  OSError if the file system says no."""
    runs: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break  # ENXIO: only a hole remains
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end <= start:
            break
        runs.append((start, end))
        pos = end
    return runs


def data_segments(fd: int, size: int) -> list[tuple[int, int, int]] | None:
    """(offset, length, offset) data runs of ``fd`` as a sparse source's segments; None when
    the file is one dense run (or its layout cannot be read: then it is read whole)."""
    try:
        runs = data_runs(fd, size)
    except OSError:
        return None
    if not size or runs == [(0, size)]:
        return None
    return [(start, end - start, start) for start, end in runs]


def _seek_data_segments(path: str, size: int) -> list[tuple[int, int, int]] | None:
    try:
        fd = open_noatime(path)
    except OSError:
        return None
    try:
        return data_segments(fd, size)
    finally:
        os.close(fd)
