"""Prefetch hints: the chunks of named files fetched in the background once serving starts.

A boot reads a few percent of its root, mostly the same files every time (the
kernel's init, the shell, libc): listing them (``[image] prefetch`` or
``--prefetch FILE``) moves their fetches ahead of the guest's first reads.
Paths that are not remote files are ignored; paths that do not exist are
reported once.
"""

from __future__ import annotations

import sys

from ..model.remote import RemoteSource
from ..model.tree import Tree, split_path
from . import settings

_pending: list[RemoteSource] = []


def collect(tree: Tree, paths: list[str], origin: str) -> int:
    """Remember the remote sources behind ``paths`` (plus ``--prefetch``); returns how many."""
    n = 0
    for path in [*paths, *settings.env_prefetch()]:
        try:
            node = tree.lookup(split_path(path, path))
        except Exception:
            node = None
        if node is None:
            print(f"ext4gen: {origin}: prefetch: {path} is not in the image", file=sys.stderr,
                  flush=True)
            continue
        if isinstance(node.source, RemoteSource):
            _pending.append(node.source)
            n += 1
    return n


def start() -> None:
    """Queue every collected file's missing chunks on the fetch threads (returns at once)."""
    while _pending:
        _pending.pop(0).prefetch()
