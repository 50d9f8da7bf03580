"""What loading and planning a SOURCE read from this host, so saved work can be checked cheaply.

A saved plan (:mod:`ext4gen.saved_plan`) may be reused only while everything it
was made from is unchanged.  Rather than trusting each loader to declare its
inputs, a recording watches them:

- every file the process opens and every directory it lists by name while
  recording (CPython's ``open``, ``os.scandir`` and ``os.listdir`` audit events:
  ``open()``, ``os.open``, ``tarfile``, ``pathlib`` …), pinned when the
  recording ends;
- every entry a host-directory walk lists, pinned by the ``lstat`` the walk
  itself took *before* reading it (a later change moves its ctime, so the saved
  pin no longer matches);
- files read by C libraries that Python cannot see (libselinux's file
  contexts, NSS's passwd and group files), which their callers note by name.

A pin is (device, inode, size, mtime, ctime); ctime cannot be set back, so a
change of content, owner, mode, xattrs or (for a directory) of its entries
always shows, and because every pin is checked against the start of the
recording, it does not matter whether a pin was taken before or after its
file was read: a pin whose timestamps are too close to the start (or later)
makes the recording incomplete, since a change made while it ran could share a
timestamp with the state that was read (the "racy" case git's index has: the
kernel stamps files from a clock that lags by a tick).  Descriptors opened
without a name in sight (``openat2`` beneath a source root) are noted by the
code that opens them.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

try:
    from . import _pincheck  # type: ignore[attr-defined]
except ImportError:  # built by setup.py when a compiler is there; the pure check is the same
    _pincheck = None

# Timestamps this close to the start of a recording (or later) could hide a change
# made while it ran: the kernel stamps files from a clock that lags by a tick.
RACY_NS = 100_000_000
# On a filesystem with whole-second timestamps (ext4 with 128-byte inodes, FAT …)
# a change within the same second leaves the stamp unchanged.
RACY_COARSE_NS = 2_000_000_000

# (mode, dev, ino, size, mtime, ctime); None = absent; mode None = not compared (a source's pin)
HostPin = tuple[int | None, int, int, int, int, int] | None


def pin_of(st: os.stat_result) -> HostPin:
    return (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def current_pin(path: str, follow: bool) -> HostPin:
    try:
        return pin_of(os.stat(path, follow_symlinks=follow))
    except OSError:
        return None


@dataclass
class HostReads:
    """The host state one load and plan depended on: (path, follow symlinks) → pin."""

    started_ns: int
    cwd: str
    pins: dict[tuple[str, bool], HostPin] = field(default_factory=dict)
    opened: set[str] = field(default_factory=set)
    # Directory listings, (directory path + "/", [(name, lstat)]), turned into pins only when
    # the record is used: a serve saves its plan after the first answer (100,000 pins for T2).
    listed: list[tuple[str, list[tuple[bytes, os.stat_result]]]] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # why the record cannot be trusted

    def racy(self, pin: HostPin) -> bool:
        """Whether a change during the recording could hide behind this pin.

        Only the ctime tells: every change (content, owner, mode, xattrs, entries)
        sets it to the kernel's clock, while the mtime may be any value (utime).
        """
        if pin is None:
            return False
        ctime = pin[5]
        coarse = ctime % 1_000_000_000 == 0
        return ctime >= self.started_ns - (RACY_COARSE_NS if coarse else RACY_NS)

    def expand_listings(self) -> None:
        """Pin each listed entry by its lstat from the listing; a path noted on its own keeps
        that pin (both were taken while recording, before anything of it was read)."""
        enc, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
        pins = self.pins
        for prefix, listed in self.listed:
            for name, est in listed:
                pins.setdefault((prefix + name.decode(enc, errors), False),
                                (est.st_mode, est.st_dev, est.st_ino, est.st_size, est.st_mtime_ns,
                                 est.st_ctime_ns))
        self.listed.clear()

    def finish(self, ignore: tuple[str, ...]) -> PinList | None:
        """Every dependency with its pin, or None when the record cannot vouch for the result.

        Opened files are pinned now (their content was read before this);
        ``ignore`` lists path prefixes that are not inputs (the cache, the code).
        """
        self.expand_listings()
        pins = self.pins
        for path in self.opened:
            if (path, True) in pins or (path + "/").startswith(ignore):
                continue
            listed = pins.get((path, False))
            if listed is not None and listed[0] is not None and stat.S_ISREG(listed[0]):
                continue  # a regular file's lstat is its stat
            pins[(path, True)] = current_pin(path, True)
        names: list[bytes] = []
        flags = bytearray()
        values = array("q")
        for (path, follow), pin in sorted(pins.items()):
            if self.racy(pin):
                self.incomplete.append(f"{path} changed while (or just before) it was read")
            names.append(os.fsencode(path))
            flags.append(int(follow) | (2 if pin is not None else 0))
            if pin is None:
                values.extend((0, 0, 0, 0, 0, 0))
            else:
                values.extend((-1 if pin[0] is None else pin[0], *pin[1:]))
        if self.incomplete:
            return None
        return PinList(b"".join(n + b"\0" for n in names), bytes(flags), values.tobytes())


@dataclass(frozen=True)
class PinList:
    """The host paths a result depends on, packed for a quick check (``_pincheck.c``):
    NUL-terminated names, a flag byte each (1: follow symlinks, 2: it existed), and six
    int64 per path (mode or -1 for "not compared", dev, ino, size, mtime, ctime)."""

    paths: bytes
    flags: bytes
    pins: bytes


def unchanged(deps: PinList) -> bool:
    """True when every dependency still has the pin it was recorded with."""
    if _pincheck is not None:
        return bool(_pincheck.first_changed(deps.paths, deps.flags, deps.pins) == -1)
    return first_changed_py(deps) == -1


def first_changed_py(deps: PinList) -> int:
    """The pure-Python twin of ``_pincheck.first_changed`` (no compiler, or a test of it)."""
    values = array("q")
    values.frombytes(deps.pins)
    names = deps.paths.split(b"\0")
    for i, flag in enumerate(deps.flags):
        try:
            st = os.stat(names[i], follow_symlinks=bool(flag & 1))
        except OSError:
            if flag & 2:
                return i
            continue
        mode, dev, ino, size, mtime, ctime = values[6 * i:6 * i + 6]
        if (not flag & 2 or st.st_ctime_ns != ctime or st.st_mtime_ns != mtime or st.st_size != size
                or st.st_ino != ino or st.st_dev != dev or (mode >= 0 and st.st_mode != mode)):
            return i
    return -1


_current: HostReads | None = None
_lock = threading.Lock()
_hooked = False


def _audit(event: str, args: tuple) -> None:
    rec = _current
    if rec is None or event not in _EVENTS:
        return
    path = args[0]
    if path is None or isinstance(path, int):
        return  # a descriptor: opened by a name recorded before (or noted by whoever opened it)
    if event == "open" and args[2] is not None and args[2] & os.O_ACCMODE == os.O_WRONLY:
        return  # written, not read (a log, the cache)
    try:
        name = os.fsdecode(path)
    except TypeError:
        rec.incomplete.append(f"a file was opened by an object of type {type(path).__name__}")
        return
    rec.opened.add(os.path.normpath(os.path.join(rec.cwd, name)))


_EVENTS = frozenset(("open", "os.scandir", "os.listdir"))


@contextmanager
def recording() -> Iterator[HostReads]:
    """Record what the enclosed load and plan read (one recording at a time per process)."""
    global _current, _hooked
    with _lock:
        if not _hooked:
            sys.addaudithook(_audit)
            _hooked = True
        if _current is not None:
            raise RuntimeError("host reads are already being recorded")
        rec = _current = HostReads(started_ns=time.time_ns(), cwd=os.getcwd())
    try:
        yield rec
    finally:
        _current = None


def note(path: str | bytes, st: os.stat_result | None = None, *, follow: bool = False) -> None:
    """A host path the result depends on; ``st`` is its stat taken before it was read."""
    rec = _current
    if rec is None:
        return
    name = os.path.normpath(os.path.join(rec.cwd, os.fsdecode(path)))
    rec.pins[(name, follow)] = pin_of(st) if st is not None else current_pin(name, follow)


def read_since(started_ns: int) -> None:
    """Part of what is being recorded was read before the recording began, from ``started_ns``
    (a listing made ahead): pins are then checked against that earlier start."""
    rec = _current
    if rec is not None and started_ns < rec.started_ns:
        rec.started_ns = started_ns


def note_listing(directory: bytes, st: os.stat_result, listed: list[tuple[bytes, os.stat_result]]) -> None:
    """A listed directory and each entry's lstat (a tree walk: one call per directory)."""
    rec = _current
    if rec is None:
        return
    top = os.path.normpath(os.path.join(rec.cwd, os.fsdecode(directory)))
    rec.pins[(top, False)] = pin_of(st)
    rec.listed.append((top.rstrip("/") + "/", listed))  # the entries' pins: see expand_listings


def active() -> bool:
    return _current is not None
