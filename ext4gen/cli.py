"""The ``ext4gen`` command line.

Errors in the input are reported as one line, ``ext4gen: <where>: <what>``,
with exit code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import __version__, progress
from .errors import Ext4genError, ManifestError
from .inputs.arguments import add_generator_arguments, add_source_arguments, choices_from_args
from .remote import settings as remote_settings
from .serve.commands import COMMANDS as SERVE_COMMANDS

if TYPE_CHECKING:
    from .model.tree import Tree
    from .render.image import Image

# The planner, the renderer, e2fsck and the loop mount are imported by the commands that
# use them: ``ext4gen serve`` only parses its arguments and starts nbdkit (which plans),
# so every module it loads is time before the first answer.

EXIT_USAGE = 2


def load_image(args: argparse.Namespace, *, reads_data: bool = True) -> tuple[Image, Tree]:
    """Plan the SOURCE named by the command line into an Image; returns (image, tree).

    Commands that never read file data (inspect) leave generator modules unimported.
    """
    from .inputs.source import plan_source

    problem = source_problem(args.source, image_ok=False)
    if problem:
        raise ManifestError(args.source, problem)
    return plan_source(args.source, choices_from_args(args, reads_data=reads_data))


def source_problem(path: str, *, image_ok: bool) -> str | None:
    """Why ``path`` cannot be a SOURCE (None: it can), in the user's terms, before a
    loader misreads it (zeros are not "invalid TOML", /dev/null is not an empty manifest)."""
    import stat as stat_mod

    from .inputs.source import source_kind
    from .inputs.tar import is_tar

    if path == "-" or not source_kind(path).host_path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file or directory"
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    what = ("a manifest (.toml/.json), a directory, a tar archive or an ext4 image" if image_ok
            else "a manifest (.toml/.json), a directory or a tar archive")
    if stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISFIFO(st.st_mode):  # a FIFO: <(generate manifest)
        return None
    if is_image_file(path):
        return None if image_ok else "this is an ext4 image; give it to check or inspect, not here"
    if not stat_mod.S_ISREG(st.st_mode):
        kinds = {stat_mod.S_IFCHR: "a character device", stat_mod.S_IFSOCK: "a socket",
                 stat_mod.S_IFBLK: "a block device without an ext4 filesystem"}
        return f"is {kinds.get(stat_mod.S_IFMT(st.st_mode), 'special')}, not {what}"
    if is_tar(path):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if b"\0" in head:
        return f"binary data ({st.st_size} bytes), not {what}"
    return None


def is_image_file(path: str) -> bool:
    """Whether ``path`` holds an ext4 superblock magic where the primary superblock keeps it."""
    from .format.superblock import EXT4_SUPER_MAGIC, S_MAGIC, SUPERBLOCK_OFFSET

    try:
        with open(path, "rb") as f:
            f.seek(SUPERBLOCK_OFFSET + S_MAGIC.offset)
            return f.read(S_MAGIC.size) == S_MAGIC.pack(EXT4_SUPER_MAGIC)
    except OSError:
        return False


def _data_bytes(image: Image) -> int:
    return sum(n for _off, n, zero in image.extents(0, image.size) if not zero)


def cmd_build(args: argparse.Namespace) -> int:
    from .layout.planner import identity_map
    from .output import write_image

    t0 = time.perf_counter()
    image, _tree = load_image(args)
    t1 = time.perf_counter()
    with progress.phase(f"writing {args.output}", _data_bytes(image) if progress._enabled else None,
                        unit="B", scale=True) as tick:
        write_image(image, args.output, progress=tick)
    t2 = time.perf_counter()
    if args.write_map:
        try:
            with open(args.write_map, "w", encoding="utf-8") as f:
                f.write(identity_map(image.plan).to_json())
        except OSError as e:
            raise Ext4genError(f"{args.write_map}: cannot write the identity map: {e.strerror}") from None
    if not args.quiet:
        print(f"{args.output}: {image.size} bytes, planned in {t1 - t0:.3f} s, "
              f"written in {t2 - t1:.3f} s", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .verify import compare_tree, e2fsck, is_root, loop_mount

    tree = None
    problem = source_problem(args.source, image_ok=True)
    if problem:
        raise ManifestError(args.source, problem)
    if is_image_file(args.source):
        path = args.source
        tmp = None
    else:
        image, tree = load_image(args)
        tmp = path = _check_file(image, args.quiet)
    try:
        if tmp:
            with progress.phase("writing the image to check", _data_bytes(image), unit="B",
                                scale=True) as tick:
                image.write(tmp, progress=tick)
        rc, complaints = e2fsck(path)
        ok = rc == 0 and not complaints
        print(f"e2fsck -fn: exit {rc}" + ("" if ok else ", complaints:"))
        for line in complaints:
            print(f"  {line}")
        if not is_root():
            print("kernel mount: skipped (needs root)")
        else:
            with contextlib.ExitStack() as stack:
                try:
                    mnt = stack.enter_context(loop_mount(path))
                except subprocess.CalledProcessError as e:
                    print(f"kernel mount: FAILED (mount exit {e.returncode})")
                    return 1
                if tree is None:
                    count = sum(len(files) + len(dirs) for _r, dirs, files in os.walk(mnt))
                    print(f"kernel mount: ok ({count} entries)")
                else:
                    with progress.phase("comparing with the source") as tick:
                        diffs = compare_tree(tree, mnt, progress=tick)  # type: ignore[arg-type]
                    print(f"kernel mount: {'tree matches the source' if not diffs else 'DIFFERS:'}")
                    for d in diffs[:50]:
                        print(f"  {d}")
                    ok = ok and not diffs
        return 0 if ok else 1
    finally:
        if tmp:
            os.unlink(tmp)


def _check_file(image: Image, quiet: bool) -> str:
    """A temporary file for e2fsck and the loop mount, announced (size, where) before it is
    written, and refused when its file system has no room for the image's data."""
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix="ext4gen-check-", suffix=".img")
    os.close(fd)
    data = _data_bytes(image)
    free = shutil.disk_usage(os.path.dirname(tmp)).free
    if data > free:
        os.unlink(tmp)
        raise Ext4genError(f"check: the image needs {data >> 20} MiB in {os.path.dirname(tmp)}, which "
                           f"has {free >> 20} MiB free (set TMPDIR to a roomier directory)")
    if not quiet:
        print(f"check: writing the image to {tmp} ({data >> 20} MiB of data, {image.size >> 20} MiB "
              "apparent, holes not written; removed afterwards; TMPDIR chooses where)", file=sys.stderr)
    return tmp


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import describe_image_file, describe_plan, describe_source

    problem = source_problem(args.source, image_ok=True)
    if problem:
        raise ManifestError(args.source, problem)
    if is_image_file(args.source):
        print(describe_image_file(args.source))
    else:
        image, tree = load_image(args, reads_data=False)
        print(describe_plan(image))
        extra = describe_source(tree)
        if extra:
            print(extra)
    return 0


def _source_args(sp: argparse.ArgumentParser, what: str = "SOURCE") -> None:
    add_source_arguments(sp, what)
    add_generator_arguments(sp)


def _register_build(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="write the image to a sparse file")
    _source_args(b)
    b.add_argument("-o", "--output", required=True, metavar="IMAGE",
                   help="the image file to write (sparse: holes are not written)")
    b.add_argument("--write-map", metavar="FILE",
                   help="write the identity map (path -> inode, generation) for a later --base-map")
    b.set_defaults(func=cmd_build)


def _register_check(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="e2fsck -fn, then (as root) a read-only mount compared "
                       "with the source")
    add_source_arguments(c, "SOURCE|IMAGE")
    c.set_defaults(func=cmd_check)


def _register_inspect(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inspect", help="geometry, features, blocks by kind, dedup savings")
    add_source_arguments(i, "SOURCE|IMAGE")
    i.set_defaults(func=cmd_inspect)


def _register_publish(sub: argparse._SubParsersAction) -> None:
    from .publish_cli import register

    register(sub)


def _register_cache(sub: argparse._SubParsersAction) -> None:
    from .cache_cli import register

    register(sub)


# In the order ``--help`` lists them.
COMMANDS: list[tuple[str, Callable[[argparse._SubParsersAction], None]]] = [
    ("build", _register_build), ("check", _register_check), ("inspect", _register_inspect),
    *SERVE_COMMANDS, ("publish", _register_publish), ("cache", _register_cache),
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with a known ``command``, the parser of that command only.

    Building every command's arguments costs more than parsing one of them, and
    ``ext4gen serve`` counts the milliseconds to its first answer; ``--help``, a
    misspelt command and errors before the command get the whole parser.
    """
    p = argparse.ArgumentParser(
        prog="ext4gen",
        description="Synthesize a read-only ext4 filesystem on the fly from a manifest, a host "
        "directory, a tar archive or a container image (file contents may also come from "
        "HTTP or S3): build it, check it, inspect it, or serve it over NBD.",
    )
    p.add_argument("--version", action="version", version=f"ext4gen {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    known = dict(COMMANDS)
    for _name, register in [(command, known[command])] if command in known else COMMANDS:
        register(sub)
    return p


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """An error message exactly as one printable line: names from manifests, archives and
    directories may hold newlines, control characters or lone surrogates."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    progress.enable(progress.wanted(bool(getattr(args, "quiet", False))))
    if getattr(args, "platform", None):  # read by inputs/oci.py here and in nbdkit's planning
        from .inputs.oci_names import PLATFORM_ENV

        os.environ[PLATFORM_ENV] = args.platform
    try:
        remote_settings.apply_arguments(args)
        return int(args.func(args) or 0)
    except Ext4genError as e:
        print(f"ext4gen: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
