"""The host page cache in tests: drop a file's pages, ask whether one is cached.

Neither needs root: ``POSIX_FADV_DONTNEED`` drops a file's clean pages (after
an ``fsync``), and ``mincore(2)`` of a private mapping tells residency without
reading, where even ``preadv2(RWF_NOWAIT)`` starts read-ahead on a miss.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


def evict(paths: Iterable[Path]) -> None:
    """Drop the files' pages from the page cache (written back first)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached(path: Path, offset: int) -> bool:
    """Whether the page holding ``offset`` of ``path`` is in the page cache; starts no I/O."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        page = offset // mmap.PAGESIZE * mmap.PAGESIZE
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m)) + page
        vec = (ctypes.c_ubyte * 1)()
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(1), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return bool(vec[0] & 1)
