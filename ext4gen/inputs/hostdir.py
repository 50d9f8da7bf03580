"""Import a host directory tree: every file type, owners, modes, times, xattrs, hard links.

Symlinks are recorded as links and never followed, so nothing outside the
directory is read.  File contents stay on the host (pinned, read lazily);
sparse files are recognised with SEEK_DATA/SEEK_HOLE so holes stay holes.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable

from .. import progress
from ..errors import ManifestError
from ..model import host_reads, times
from ..model.sources import HostFileSource
from ..model.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    NO_XATTRS,
    SOCKET,
    SYMLINK,
    Meta,
    Node,
    Tree,
)
from ..model.xattrs import ACL_ACCESS, ACL_DEFAULT, XattrError, normalize_vfs_acl, split_name
from .listings import XATTRS_ASK, XATTRS_NONE, Listings

_KINDS = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFCHR: CHARDEV,
          stat.S_IFBLK: BLOCKDEV, stat.S_IFIFO: FIFO, stat.S_IFSOCK: SOCKET}


def meta_from_stat(st: os.stat_result) -> Meta:
    """Metadata of a host inode.  Python cannot read the birth time on Linux, so crtime = ctime."""
    return Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                st.st_ctime_ns, st.st_ctime_ns)


def read_xattrs(path: bytes, shown: str) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise ManifestError(shown, f"cannot list xattrs: {e.strerror}") from None
    out = {}
    for name in names:
        raw = os.fsencode(name)
        try:
            split_name(raw)
        except XattrError as e:
            raise ManifestError(shown, f"xattr {name}: {e}") from None
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            raise ManifestError(shown, f"cannot read xattr {name}: {e.strerror}") from None
        if raw in (ACL_ACCESS, ACL_DEFAULT):
            try:
                value = normalize_vfs_acl(value)
            except XattrError as e:
                raise ManifestError(shown, f"xattr {name}: {e}") from None
        out[raw] = value
    return out


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _lstat_or(path: bytes, st: os.stat_result) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError:
        return st


def _list_dir(path: bytes, expect: os.stat_result) -> list[tuple[bytes, os.stat_result]]:
    """(name, lstat) of the entries of ``path``, listed without moving its atime
    (which the image records, so a second build would differ).

    The directory must still be the one ``expect`` describes: a subdirectory
    swapped for a symlink (or another directory) while the tree is walked would
    otherwise import whatever the new name points to.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            raise OSError(errno.ESTALE, "directory was replaced while it was imported")
        names = sorted([n.encode(_FS_ENCODING, _FS_ERRORS) for n in os.listdir(fd)])
        listed = [(n, os.stat(n, dir_fd=fd, follow_symlinks=False)) for n in names]
        host_reads.note_listing(path, st, listed)  # pins taken before anything is read
        return listed
    finally:
        os.close(fd)


def import_directory(tree: Tree, host_dir: str, target: str = "/", *, key: str = "",
                     one_file_system: bool = False, expect: tuple[int, int] | None = None) -> None:
    """Add the contents of ``host_dir`` under ``target`` in ``tree``.

    With ``one_file_system``, a directory on another filesystem (a mount point:
    its st_dev differs from ``host_dir``'s) is added empty, as ``cp -x`` and
    ``rsync -x`` leave it, so ``/dev/pts`` or a ``/proc`` mounted inside the
    tree are not walked into.
    """
    key = key or host_dir
    top = os.fsencode(host_dir)
    try:
        st = os.lstat(top)
    except OSError as e:
        raise ManifestError(key, f"cannot read directory {host_dir}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ManifestError(key, f"{host_dir} is not a directory")
    if expect is not None and (st.st_dev, st.st_ino) != expect:
        raise ManifestError(key, f"{host_dir} changed while it was being imported (no longer the "
                            "directory found beneath the source root)")
    st_top = st
    links: dict[tuple[int, int], Node] = {}
    top_node = tree.add(target, Node(DIR, meta_from_stat(st), key=key,
                                     xattrs=read_xattrs(top, host_dir) or NO_XATTRS, imported=True))
    stack = [(top, top_node, st)]
    listings = Listings.start(top, one_file_system)
    if listings is not None:
        host_reads.read_since(listings.started_ns)  # it may have been started ahead (list_ahead)
    try:
        with progress.phase(f"importing {host_dir}") as tick:
            _walk(tree, stack, links, one_file_system, st_top, tick, listings)
    finally:
        if listings is not None:
            listings.close()


# The common case of times.range_error, checked inline: from 1901 to the first time e2fsck suspects.
_TIMES_OK = range(times.MIN_TIME_NS, times.E2FSCK_SUSPECT_NS.start)


def _walk(tree: Tree, stack: list[tuple[bytes, Node, os.stat_result]],
          links: dict[tuple[int, int], Node], one_file_system: bool, st_top: os.stat_result,
          tick: Callable[[int], object], listings: Listings | None = None) -> None:
    """Depth-first over ``stack``: every entry becomes a node (hard links share one).

    Per entry this is the import's hot loop (100,000 entries for T2): names are
    decoded once per directory prefix, and nodes go straight into their parent.
    """
    times_ok = _TIMES_OK
    while stack:
        host, parent, dir_st = stack.pop()
        ahead = listings.take(host, dir_st) if listings is not None else None
        if ahead is not None:
            listed_st, names, stats, flags = ahead
            entries = list(zip(names, stats, strict=True))
            host_reads.note_listing(host, listed_st, entries)
        else:
            try:
                entries = _list_dir(host, dir_st)
            except OSError as e:
                raise ManifestError(os.fsdecode(host), f"cannot list directory: {e.strerror}") from None
            flags = bytes([XATTRS_ASK]) * len(entries)
        tick(len(entries))
        prefix = host + b"/"
        shown_prefix = prefix.decode(_FS_ENCODING, _FS_ERRORS)  # '/' never ends a multibyte sequence
        for (name, st), xflag in zip(entries, flags, strict=True):
            path = prefix + name
            shown = shown_prefix + name.decode(_FS_ENCODING, _FS_ERRORS)
            kind = _KINDS[stat.S_IFMT(st.st_mode)]
            if kind != DIR and st.st_nlink > 1:
                known = links.get((st.st_dev, st.st_ino))
                if known is not None:
                    tree.add_child(parent, name, known, shown)
                    continue
            meta = meta_from_stat(st)
            if meta.atime not in times_ok or meta.mtime not in times_ok or meta.ctime not in times_ok:
                for ns in (meta.atime, meta.mtime, meta.ctime):
                    problem = times.range_error(ns)
                    if problem:
                        raise ManifestError(shown, problem)
            xattrs = NO_XATTRS if xflag == XATTRS_NONE else read_xattrs(path, shown) or NO_XATTRS
            node = Node(kind, meta, key=shown, xattrs=xattrs, imported=True)
            if kind == FILE:
                try:
                    node.source = HostFileSource.listed(shown, st)
                except OSError as e:
                    raise ManifestError(shown, f"cannot read: {e.strerror}") from None
            elif kind == SYMLINK:
                try:
                    node.target = os.readlink(path)
                except OSError as e:  # replaced or removed since it was listed
                    raise ManifestError(shown, f"cannot read symlink: {e.strerror}") from None
            elif kind in (CHARDEV, BLOCKDEV):
                node.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if kind == SYMLINK:
                # readlink(2) moves a link's atime (no O_NOATIME for it): record the link as
                # reading left it, so the next build (within relatime's day) sees the same.
                node.meta = meta_from_stat(_lstat_or(path, st))
            tree.add_child(parent, name, node, shown)
            if kind != DIR and st.st_nlink > 1:
                links[(st.st_dev, st.st_ino)] = node
            if kind == DIR and not (one_file_system and st.st_dev != st_top.st_dev):
                stack.append((path, node, st))
