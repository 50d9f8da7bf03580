#!/usr/bin/env python3
"""Describe a host directory for ext4gen until directory input exists (issue 4).

Two forms, so the benchmark can time both paths:

* :func:`tree_from_dir` builds an :class:`ext4gen.Tree` directly through the
  Python API (no JSON in the timed path);
* :func:`manifest_from_dir` returns the equivalent JSON manifest, with a
  ``source`` entry per regular file (``bench/tree_manifest.py DIR > m.json``).

Only what the benchmark trees contain is handled: directories, regular files
and symlinks.  mode/uid/gid/times come from ``lstat``.  Hard links are not
detected (gentree makes byte copies, not links).
"""

from __future__ import annotations

import json
import os
import stat
import sys

from ext4gen import HostFileSource, Meta, Node, Tree
from ext4gen.model.tree import DIR, FILE, SYMLINK


def _meta(st: os.stat_result) -> Meta:
    return Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                st.st_ctime_ns, st.st_mtime_ns)


def _walk(top: str):
    """Yield (image path, host path, lstat) for every entry below ``top``, parents first."""
    stack = [("", top)]
    while stack:
        rel, host = stack.pop()
        with os.scandir(host) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            img = f"{rel}/{e.name}"
            yield img, e.path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append((img, e.path))


def _source(host: str, st: os.stat_result, detect_holes: bool | None) -> HostFileSource:
    if detect_holes is None:
        return HostFileSource(host, st=st)
    try:
        return HostFileSource(host, st=st, detect_holes=detect_holes)
    except TypeError:  # a library without hole detection never looks for holes
        return HostFileSource(host, st=st)


def tree_from_dir(top: str, *, detect_holes: bool | None = None) -> Tree:
    """The host directory ``top`` as an ext4gen Tree whose files read the host lazily.

    ``detect_holes=False`` makes sparse host files count as full-size data,
    which is how the benchmark plans "10x the data" without storing it.
    """
    tree = Tree(_meta(os.lstat(top)))
    for img, host, st in _walk(top):
        m = st.st_mode
        if stat.S_ISDIR(m):
            tree.add(img, Node(DIR, _meta(st), key=img))
        elif stat.S_ISREG(m):
            tree.add(img, Node(FILE, _meta(st), key=img, source=_source(host, st, detect_holes)))
        elif stat.S_ISLNK(m):
            tree.add(img, Node(SYMLINK, _meta(st), key=img, target=os.fsencode(os.readlink(host))))
        else:
            raise SystemExit(f"{host}: unsupported file type for this benchmark helper")
    tree.resolve_links()
    return tree


def _ts(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def manifest_from_dir(top: str) -> dict:
    """The host directory ``top`` as a JSON-able ext4gen manifest."""
    top = os.path.abspath(top)
    st = os.lstat(top)
    doc: dict = {"/": {"type": "dir", "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid,
                       "gid": st.st_gid, "mtime": _ts(st.st_mtime_ns), "atime": _ts(st.st_atime_ns),
                       "ctime": _ts(st.st_ctime_ns)}}
    for img, host, st in _walk(top):
        e = {"mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "gid": st.st_gid,
             "mtime": _ts(st.st_mtime_ns), "atime": _ts(st.st_atime_ns), "ctime": _ts(st.st_ctime_ns)}
        m = st.st_mode
        if stat.S_ISDIR(m):
            e["type"] = "dir"
        elif stat.S_ISREG(m):
            e["type"] = "file"
            e["source"] = host
        elif stat.S_ISLNK(m):
            e["type"] = "symlink"
            e["target"] = os.readlink(host)
        else:
            raise SystemExit(f"{host}: unsupported file type for this benchmark helper")
        doc[img] = e
    return doc


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: tree_manifest.py DIR > manifest.json")
    json.dump(manifest_from_dir(sys.argv[1]), sys.stdout, indent=0)
    sys.stdout.write("\n")
