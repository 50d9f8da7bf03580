"""Writing a built image to where ``build -o`` points: a file, a block device or a stream.

A regular file is written to a temporary file beside it and renamed over it
only once complete, so a failed build leaves the previous image intact.
Block devices, pipes and terminals cannot be truncated or renamed: the image is
streamed to them in order, zeros included (a device keeps its old bytes where
nothing is written).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import tempfile
from collections.abc import Callable

from .errors import Ext4genError
from .render.image import Image

CHUNK = 1 << 20
_BLKGETSIZE64 = 0x80081272


class OutputError(Ext4genError):
    """The image cannot be written where the user asked."""


Progress = Callable[[int], object] | None


def write_image(image: Image, path: str, progress: Progress = None) -> None:
    """Write ``image`` to ``path``; one-line :class:`OutputError` on failure.

    ``progress(n)`` is told every n bytes of the non-hole regions written."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write the image: {e.strerror}") from None
    try:
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: cannot write the image: it is a directory")
        if st is None or (stat.S_ISREG(st.st_mode) and not _is_magic_link(path)):
            _replace_file(image, os.path.realpath(path) if st is not None else path, progress)
        else:
            _stream(image, path, st, progress)
    except OSError as e:
        raise OutputError(f"{path}: cannot write the image: {e.strerror or e}") from None


def _is_magic_link(path: str) -> bool:
    """``/dev/stdout`` and ``/proc/self/fd/N`` name an open file, not a place to rename to."""
    real = os.path.realpath(path)
    return any(p.startswith(("/proc/", "/dev/")) for p in (os.path.abspath(path), real))


def _replace_file(image: Image, path: str, progress: Progress) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".part")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as an ordinary create would have made it
        _write_sparse(image, fd, progress)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        raise


def _write_sparse(image: Image, fd: int, progress: Progress) -> None:
    """Holes and all-zero chunks are left unwritten (they read as zeros after the truncate)."""
    os.ftruncate(fd, 0)
    os.ftruncate(fd, image.size)
    buf = bytearray(CHUNK)
    for start, length, zero in image.extents(0, image.size):
        if zero:
            continue
        pos = start
        while pos < start + length:
            n = min(CHUNK, start + length - pos)
            mv = memoryview(buf)[:n]
            image.readinto(mv, pos)
            if buf.count(0, 0, n) != n:
                _write_all(fd, mv, pos)
            pos += n
            if progress is not None:
                progress(n)


def _stream(image: Image, path: str, st: os.stat_result, progress: Progress) -> None:
    """Every byte, in order, to a device or a stream (no truncate, no seek needed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if stat.S_ISREG(st.st_mode):  # a file reached through /dev/stdout or /proc/self/fd
            _write_sparse(image, fd, progress)
            return
        if stat.S_ISBLK(st.st_mode):
            raw = fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8)
            capacity = struct.unpack("<Q", raw)[0]
            if capacity < image.size:
                raise OutputError(f"{path}: cannot write the image: the device holds {capacity} "
                                  f"bytes, the image is {image.size}")
        buf = bytearray(CHUNK)
        pos = 0
        while pos < image.size:
            n = min(CHUNK, image.size - pos)
            mv = memoryview(buf)[:n]
            image.readinto(mv, pos)
            _write_all(fd, mv, None)
            pos += n
            if progress is not None:
                progress(n)
        if stat.S_ISBLK(st.st_mode):
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, mv: memoryview, offset: int | None) -> None:
    done = 0
    while done < len(mv):
        if offset is None:
            n = os.write(fd, mv[done:])
        else:
            n = os.pwrite(fd, mv[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        done += n
