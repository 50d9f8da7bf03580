"""The ``ext4gen`` command line.

Errors in the input are reported as one line, ``ext4gen: <where>: <what>``,
with exit code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from . import __version__
from .errors import Ext4genError, ManifestError
from .inspect import describe_image_file, describe_plan
from .layout.planner import identity_map
from .model.identity import IdentityMap
from .model.options import DEDUP_MODES
from .render.image import Image
from .verify import compare_tree, e2fsck, is_root, loop_mount

EXIT_USAGE = 2
SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def load_image(args: argparse.Namespace) -> tuple[Image, object]:
    """Plan the SOURCE named by the command line into an Image; returns (image, tree)."""
    from . import load, plan

    base_map = IdentityMap.load(args.base_map) if getattr(args, "base_map", None) else None
    tree, options = load(args.source, source_root=getattr(args, "source_root", None),
                         dedup=getattr(args, "dedup", None), base_map=base_map,
                         inline_data=False if getattr(args, "no_inline_data", False) else None)
    try:
        return plan(tree, options), tree
    except ManifestError as e:  # found while planning: say which SOURCE it came from
        if e.origin is not None:
            raise
        raise ManifestError(e.key, e.message, origin=args.source) from None


def is_image_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(1080)
            return f.read(2) == b"\x53\xef"
    except OSError:
        return False


def cmd_build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    image, _tree = load_image(args)
    t1 = time.perf_counter()
    image.write(args.output)
    t2 = time.perf_counter()
    if args.write_map:
        with open(args.write_map, "w", encoding="utf-8") as f:
            f.write(identity_map(image.plan).to_json())
    if not args.quiet:
        print(f"{args.output}: {image.size} bytes, planned in {t1 - t0:.3f} s, "
              f"written in {t2 - t1:.3f} s", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    tree = None
    if is_image_file(args.source):
        path = args.source
        tmp = None
    else:
        image, tree = load_image(args)
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix="ext4gen-check-", suffix=".img")
        os.close(fd)
        path = tmp
    try:
        if tmp:
            image.write(tmp)
        rc, complaints = e2fsck(path)
        ok = rc == 0 and not complaints
        print(f"e2fsck -fn: exit {rc}" + ("" if ok else ", complaints:"))
        for line in complaints:
            print(f"  {line}")
        if not is_root():
            print("kernel mount: skipped (needs root)")
        else:
            with loop_mount(path) as mnt:
                if tree is None:
                    count = sum(len(files) + len(dirs) for _r, dirs, files in os.walk(mnt))
                    print(f"kernel mount: ok ({count} entries)")
                else:
                    diffs = compare_tree(tree, mnt)  # type: ignore[arg-type]
                    print(f"kernel mount: {'tree matches the source' if not diffs else 'DIFFERS:'}")
                    for d in diffs[:50]:
                        print(f"  {d}")
                    ok = ok and not diffs
        return 0 if ok else 1
    finally:
        if tmp:
            os.unlink(tmp)


def cmd_inspect(args: argparse.Namespace) -> int:
    if is_image_file(args.source):
        print(describe_image_file(args.source))
    else:
        image, _tree = load_image(args)
        print(describe_plan(image))
    return 0


def add_source_arguments(sp: argparse.ArgumentParser, what: str = "SOURCE") -> None:
    """The SOURCE argument and the options that shape the planned image (shared with serve)."""
    sp.add_argument("source", metavar=what, help="a manifest (.toml/.json, or - for stdin), a host "
                    "directory or a tar archive" + (", or an ext4 image file" if what != "SOURCE" else ""))
    sp.add_argument("--dedup", choices=DEDUP_MODES, help="override the manifest's image.dedup")
    sp.add_argument("--no-inline-data", action="store_true",
                    help="store every file and directory in blocks (no inline_data feature)")
    sp.add_argument("--base-map", metavar="FILE", help="keep the inode numbers and generations "
                    "recorded by an earlier `build --write-map`")
    sp.add_argument("--source-root", metavar="DIR", help="refuse host paths outside DIR (and "
                    "generators); a manifest on stdin defaults to the current directory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ext4gen",
        description="Synthesize a read-only ext4 filesystem on the fly from a manifest, a host "
        "directory or a tar archive: build it, check it, inspect it, or serve it over NBD.",
    )
    p.add_argument("--version", action="version", version=f"ext4gen {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def source_args(sp: argparse.ArgumentParser, what: str = "SOURCE") -> None:
        add_source_arguments(sp, what)

    b = sub.add_parser("build", help="write the image to a sparse file")
    source_args(b)
    b.add_argument("-o", "--output", required=True, metavar="IMAGE")
    b.add_argument("--write-map", metavar="FILE",
                   help="write the identity map (path -> inode, generation) for a later --base-map")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=cmd_build)

    c = sub.add_parser("check", help="e2fsck -fn, then (as root) a read-only mount compared "
                       "with the source")
    source_args(c, "SOURCE|IMAGE")
    c.set_defaults(func=cmd_check)

    i = sub.add_parser("inspect", help="geometry, features, blocks by kind, dedup savings")
    source_args(i, "SOURCE|IMAGE")
    i.set_defaults(func=cmd_inspect)

    # serve/mount/umount live in serve.commands, which itself uses this module's helpers
    from .serve import commands

    for _name, register in commands.COMMANDS:
        register(sub)
    from . import cache_cli

    cache_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Ext4genError as e:
        print(f"ext4gen: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
