"""``ext4gen cache``: where saved work lives, how much of it there is, and how to drop it."""

from __future__ import annotations

import argparse

from . import cache


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_show(args: argparse.Namespace) -> int:
    root = cache.checked_root()
    limit = cache.cache_max()
    print(f"cache root: {root}")
    total = 0
    for area in cache.areas():
        found = cache.entries(area)
        nbytes = sum(e.nbytes for e in found)
        total += nbytes
        print(f"  {area:10} {len(found):8} {'entry  ' if len(found) == 1 else 'entries'} {_size(nbytes):>12}")
    print(f"total {_size(total)} of a {_size(limit)} bound (${cache.MAX_ENV}); "
          f"least recently used entries are evicted beyond it")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    cache.checked_root()
    if args.area and args.area not in cache.areas():
        print(f"cache area {args.area}: nothing to clear")
        return 0
    n, nbytes = cache.clear(args.area)
    print(f"removed {n} {'entry' if n == 1 else 'entries'} ({_size(nbytes)}) "
          f"from {cache.cache_root() / (args.area or '')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``cache`` command (``show``, the default, and ``clear [AREA]``)."""
    p = sub.add_parser("cache", help="show or clear saved work (decompressed tars, digests)")
    p.set_defaults(func=cmd_show)
    verbs = p.add_subparsers(dest="verb", metavar="show|clear")
    verbs.add_parser("show", help="root, entries and bytes per area, the size bound").set_defaults(
        func=cmd_show)
    c = verbs.add_parser("clear", help="remove the entries of AREA, or of every area")
    c.add_argument("area", nargs="?", metavar="AREA", help="tar, digests … (default: all)")
    c.set_defaults(func=cmd_clear)
