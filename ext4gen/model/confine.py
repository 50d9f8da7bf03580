"""Open host files beneath a source root, and pin what was opened, not what a name meant.

``--source-root`` promises that an untrusted manifest reads nothing outside a
directory.  Checking a resolved name and opening it later loses a race against
anyone who can swap a path component for a symlink in between; so the file is
opened with ``openat2(RESOLVE_BENEATH)`` relative to the root (the kernel
refuses any step out of it, symlinks and ``..`` included), and the pin (device,
inode, size, times) is taken from that descriptor.  Every later open by name
(plan-time hashing, serve-time reads) is checked against the pin, so a name
swapped afterwards fails with EIO instead of serving another file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from . import host_reads
from .sources import HostFileSource, data_segments

_SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall table merge)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dir_fd), os.fsencode(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _walk_nofollow(dir_fd: int, path: str, flags: int) -> int:
    """Fallback without openat2: one component at a time, never following a symlink."""
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts:
        raise OSError(errno.EXDEV, "path leaves the source root", path)
    fd = os.dup(dir_fd)
    try:
        for name in parts[:-1]:
            nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def open_beneath(root: str, rel: str) -> int:
    """A read descriptor for ``rel`` inside ``root``; OSError(EXDEV) if it would leave it."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _open_under(root_fd, rel)
    finally:
        os.close(root_fd)
    if host_reads.active():  # openat2 is a raw syscall: no audit event tells the recording
        host_reads.note(os.path.join(root, rel), os.fstat(fd), follow=True)
    return fd


def _open_under(root_fd: int, rel: str) -> int:
    # O_NONBLOCK: a FIFO named here must not block the open (callers check the file type)
    base = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    for flags in (base | os.O_NOATIME, base):
        try:
            return _openat2(root_fd, rel, flags)
        except PermissionError:
            continue  # O_NOATIME needs ownership; retry without it
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            return _walk_nofollow(root_fd, rel, flags & ~os.O_NOATIME)
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), rel)


def identity_beneath(root: str, path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of what ``path`` (absolute, under ``root``) names, opened beneath ``root``.

    Directory and archive imports open their top by name; comparing what they
    opened with this identity refuses a path swapped after this check.
    """
    fd = open_beneath(root, os.path.relpath(path, root))
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def pinned_source(root: str, path: str) -> HostFileSource:
    """The host file at ``path`` (absolute, under ``root``) as opened beneath ``root``, pinned.

    Raises OSError: EXDEV when the path leaves the root, IsADirectoryError for
    anything but a regular file, or whatever open(2) reported.
    """
    rel = os.path.relpath(path, root)
    fd = open_beneath(root, rel)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
        segments = data_segments(fd, st.st_size) if st.st_blocks * 512 < st.st_size else None
    finally:
        os.close(fd)
    return HostFileSource(path, st=st, segments=segments, detect_holes=False)
