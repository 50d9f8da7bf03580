"""Host directory listings made ahead of the import, in C and on another thread.

The import's system calls (a listing, an lstat and a listxattr probe per entry)
are about half its time; ``_dirscan.Scanner`` makes them without the GIL, a
batch at a time, depth first in the walk's own order.  This module is kept
free of the planner's imports so that ``ext4gen serve``'s plugin can start a
listing (:func:`list_ahead`) before it loads them: the scan then runs on the
other core while the interpreter imports, instead of after.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque

from ..switches import pure_python_requested

try:
    from . import _dirscan  # type: ignore[attr-defined]
except ImportError:  # not built: the import lists every directory itself
    _dirscan = None

XATTRS_NONE, XATTRS_ASK = 0, 2  # _dirscan's probe: none, or let read_xattrs read (or fail)
STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime",
               "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize",
               "st_blocks", "st_rdev")


def dirscan_usable() -> bool:
    """The extension is built, not switched off, and fills os.stat_result as os.lstat does."""
    return _dirscan is not None and not pure_python_requested() and _dirscan_fills_stat_results()


@functools.cache
def _dirscan_fills_stat_results() -> bool:
    try:
        ours, theirs = _dirscan.lstat(b"/"), os.lstat(b"/")  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return False
    return all(getattr(ours, f) == getattr(theirs, f) for f in STAT_FIELDS)


class Listings:
    """Directory listings made ahead, on another thread, in the order ``hostdir._walk`` takes them.

    At most ``AHEAD`` entries ahead.  Whatever does not match what the walk asks
    next (an error, a directory replaced meanwhile) ends the look-ahead, and the
    walk lists from there on itself, as without it.
    """

    AHEAD = 32768  # entries listed and not yet taken (a stat_result each)
    BATCH = 2048  # entries per GIL release

    def __init__(self, top: bytes, one_file_system: bool) -> None:
        self.started_ns = time.time_ns()  # no lstat of this listing is older
        self._scanner = _dirscan.Scanner(top, one_file_system)  # type: ignore[union-attr]
        self._ready: deque[tuple] = deque()
        self._ahead = 0
        self._done = self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ext4gen-dirscan", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, top: bytes, one_file_system: bool) -> Listings | None:
        """The listing :func:`list_ahead` started for this walk, else a new one (None: not usable)."""
        early = _early.pop((top, one_file_system), None)
        if early is not None:
            return early
        if not dirscan_usable():
            return None
        try:
            return cls(top, one_file_system)
        except OSError:
            return None

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._ahead >= self.AHEAD and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                batch = self._scanner.next(self.BATCH)
                if not batch:
                    return
                with self._cond:
                    self._ready.extend(batch)
                    self._ahead += sum(len(b[2]) for b in batch if b[2] is not None)
                    self._cond.notify()
        except Exception:  # (MemoryError…) the walk lists by itself
            pass
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def take(self, path: bytes, expect: os.stat_result
             ) -> tuple[os.stat_result, list[bytes], list[os.stat_result], bytes] | None:
        """The listing of ``path`` (the directory ``expect`` describes), or None: list it yourself."""
        with self._cond:
            while not self._ready and not self._done:
                self._cond.wait()
            if not self._ready:
                return None
            got = self._ready.popleft()
            if got[2] is not None:
                self._ahead -= len(got[2])
                self._cond.notify()
        at, st, names, stats, flags = got
        if at != path or st is None or (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            self.close()  # the walk went elsewhere (or must report an error): no more guesses
            return None
        return st, names, stats, flags

    def close(self) -> None:
        with self._cond:
            self._closed = self._done = True
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()


# Listings started by list_ahead and not yet taken by an import, by (top, one_file_system).
_early: dict[tuple[bytes, bool], Listings] = {}


def list_ahead(top: bytes, one_file_system: bool) -> None:
    """Start listing ``top`` now for an import of it to come (``Listings.start`` takes it).

    The import still checks every listing against its own ``lstat`` of the
    directory, so one made a little earlier is used only if it still describes
    the same directory; the pins recorded from it count from ``started_ns``.
    """
    if (top, one_file_system) not in _early:
        listing = Listings.start(top, one_file_system)
        if listing is not None:
            _early[top, one_file_system] = listing


def close_unclaimed() -> None:
    """Stop the listings no import took (a saved plan was used, or planning failed first)."""
    while _early:
        _early.popitem()[1].close()
