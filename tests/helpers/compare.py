"""Two directory trees compared entry by entry through the kernel (lstat, getxattr, read).

Deliberately independent of ``ext4gen.verify``: it compares two *directory
trees* (a host directory, a mkfs.ext4 -d mount, an ext4gen mount), so a bug
shared by the planner and its own verifier cannot hide.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

FIELDS = ("type", "mode", "uid", "gid", "size", "nlink", "atime", "mtime", "ctime", "rdev",
          "xattrs", "target", "bytes", "holes", "links")


def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) data runs by SEEK_DATA/SEEK_HOLE; a 200 GiB sparse file costs its data only."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
        pos = end
    return out


def _union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(a + b):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return {"<listxattr failed>": str(e).encode()}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def _compare_bytes(pa: str, pb: str, size: int, check_holes: bool) -> list[str]:
    out = []
    with open(pa, "rb", buffering=0) as fa, open(pb, "rb", buffering=0) as fb:
        runs = []
        for f in (fa, fb):
            try:
                runs.append(data_segments(f.fileno(), size))
            except OSError as e:  # read it all: the bytes must still agree
                out.append(f"holes: SEEK_DATA/SEEK_HOLE failed on {f.name}: {e.strerror}")
                runs.append([(0, size)] if size else [])
        sa, sb = runs
        if check_holes and sa != sb:
            out.append(f"holes: data runs {sa[:4]}... vs {sb[:4]}...")
        if not check_holes:
            out = []
        for start, end in _union(sa, sb):  # outside both, both read as zeros
            pos = start
            while pos < end:
                n = min(1 << 20, end - pos)
                ba, bb = os.pread(fa.fileno(), n, pos), os.pread(fb.fileno(), n, pos)
                if ba != bb:
                    i = next((i for i in range(min(len(ba), len(bb))) if ba[i] != bb[i]),
                             min(len(ba), len(bb)))
                    return [*out, f"bytes: differ at offset {pos + i}"]
                pos += n
    return out


def compare_dirs(a: str | os.PathLike[str], b: str | os.PathLike[str], *,
                 skip: Callable[[str], bool] = lambda rel: False,
                 ignore: Callable[[str, str], bool] = lambda rel, field: False,
                 time_unit: int = 1, limit: int = 60) -> tuple[list[str], int]:
    """Differences between the trees at ``a`` and ``b`` (through lstat/getxattr/read), and
    how many entries were compared.

    ``skip(rel)`` leaves an entry (and its subtree) out entirely; ``ignore(rel,
    field)`` waives one field of one entry (documented exceptions); times are
    compared in units of ``time_unit`` ns (floored, as time_t is).  Hard links
    are compared as structure: two names share an inode in ``a`` iff they do in ``b``.
    """
    a, b = os.fspath(a), os.fspath(b)
    diffs: list[str] = []
    first_name_a: dict[int, str] = {}
    first_name_b: dict[int, str] = {}
    count = 0
    stack = [""]
    while stack and len(diffs) < limit:
        rel = stack.pop()
        pa, pb = os.path.join(a, rel), os.path.join(b, rel)
        shown = "/" + rel
        count += 1
        try:
            sa, sb = os.lstat(pa), os.lstat(pb)
        except OSError as e:
            diffs.append(f"{shown}: {e}")
            continue

        def check(field: str, va: object, vb: object, rel: str = rel, shown: str = shown) -> None:
            if va != vb and not ignore(rel, field):
                diffs.append(f"{shown}: {field} {va!r} != {vb!r}")

        ta, tb = stat.S_IFMT(sa.st_mode), stat.S_IFMT(sb.st_mode)
        if ta != tb:
            diffs.append(f"{shown}: type {ta:o} != {tb:o}")
            continue
        check("mode", stat.S_IMODE(sa.st_mode), stat.S_IMODE(sb.st_mode))
        check("uid", sa.st_uid, sb.st_uid)
        check("gid", sa.st_gid, sb.st_gid)
        check("nlink", sa.st_nlink, sb.st_nlink)
        check("atime", sa.st_atime_ns // time_unit, sb.st_atime_ns // time_unit)
        check("mtime", sa.st_mtime_ns // time_unit, sb.st_mtime_ns // time_unit)
        check("ctime", sa.st_ctime_ns // time_unit, sb.st_ctime_ns // time_unit)
        if not stat.S_ISDIR(sa.st_mode) or not ignore(rel, "size"):
            check("size", sa.st_size, sb.st_size)
        check("xattrs", _xattrs(pa), _xattrs(pb))
        if not stat.S_ISDIR(sa.st_mode) and sa.st_nlink > 1:
            fa = first_name_a.setdefault(sa.st_ino, shown)
            fb = first_name_b.setdefault(sb.st_ino, shown)
            check("links", f"same inode as {fa}", f"same inode as {fb}")
        if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
            check("rdev", (os.major(sa.st_rdev), os.minor(sa.st_rdev)),
                  (os.major(sb.st_rdev), os.minor(sb.st_rdev)))
        elif stat.S_ISLNK(sa.st_mode):
            check("target", os.readlink(pa), os.readlink(pb))
        elif stat.S_ISREG(sa.st_mode) and sa.st_size == sb.st_size:
            for d in _compare_bytes(pa, pb, sa.st_size, not ignore(rel, "holes")):
                field = d.split(":", 1)[0]
                if not ignore(rel, field):
                    diffs.append(f"{shown}: {d}")
        elif stat.S_ISDIR(sa.st_mode):
            na = {n for n in os.listdir(pa) if not skip(os.path.join(rel, n))}
            nb = {n for n in os.listdir(pb) if not skip(os.path.join(rel, n))}
            if na != nb:
                diffs.append(f"{shown}: only in a {sorted(na - nb)[:5]}, only in b {sorted(nb - na)[:5]}")
            stack.extend(os.path.join(rel, n) for n in sorted(na & nb, reverse=True))
    return diffs, count

