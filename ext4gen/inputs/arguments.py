"""The command line's form of the choices that shape an image, shared by every command.

``build``, ``check``, ``inspect``, ``serve`` and ``mount`` take the same SOURCE
argument and the same image options; this module registers them on a parser and
turns a parsed command line into :class:`~ext4gen.inputs.source.BuildChoices`, so a
flag means the same thing to every command (and, through serve, to the plugin).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ..errors import ManifestError
from ..model.options import DEDUP_MODES, TIMES_MODES, ImageFlags, SourceOptions, check_label, uuid_value
from ..remote import settings as remote_settings
from .choices import BuildChoices
from .image_keys import check_mount_point
from .ownership import check_id_map, parse_id_range, parse_owner, parse_root_owner


def add_source_arguments(sp: argparse.ArgumentParser, what: str = "SOURCE", *, stdin: bool = True) -> None:
    """The SOURCE argument and the options that shape the planned image (shared with serve)."""
    sp.add_argument("source", metavar=what, help="a manifest (.toml/.json" + (", or - for stdin"
                    if stdin else "") + "), a host directory, a tar archive or a container image "
                    "(oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE)"
                    + (", or an ext4 image file" if what != "SOURCE" else ""))
    sp.add_argument("-q", "--quiet", action="store_true",
                    help="no progress bars (they are only drawn on a terminal) and no summary line")
    sp.add_argument("--dedup", choices=DEDUP_MODES, help="override the manifest's image.dedup")
    sp.add_argument("--no-inline-data", action="store_true",
                    help="store every file and directory in blocks (no inline_data feature)")
    sp.add_argument("--base-map", metavar="FILE", help="keep the inode numbers and generations "
                    "recorded by an earlier `build --write-map`")
    sp.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform "
                    "container image SOURCE (oci:, oci-archive:); default: this host's")
    sp.add_argument("--source-root", metavar="DIR", help="refuse host paths outside DIR (and "
                    "generators); a manifest on stdin defaults to the current directory")
    remote_settings.add_arguments(sp)
    add_image_arguments(sp)


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type`` that reports a ValueError's message as the reason."""
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def add_image_arguments(sp: argparse.ArgumentParser) -> None:
    """Image and tree options, the same for every SOURCE kind and command (each also a
    manifest [image] key, which the flag overrides); see docs/manifest.md."""
    g = sp.add_argument_group("image options (override the manifest's [image] keys)")
    g.add_argument("--label", type=_typed(check_label), help="volume label (at most 16 bytes)")
    g.add_argument("--uuid", metavar="UUID|random", type=_typed(_uuid_text),
                   help="filesystem UUID (default: derived from the content, so reproducible)")
    g.add_argument("--hash-seed", metavar="UUID|random", type=_typed(_uuid_text),
                   help="directory hash seed (default: derived from the content)")
    g.add_argument("--times", choices=TIMES_MODES, help="inode times: keep them, clamp them to "
                   "$SOURCE_DATE_EPOCH, or set all to it (default: clamp imported host files "
                   "and tar members when SOURCE_DATE_EPOCH is set, else keep)")
    g.add_argument("--root-owner", metavar="UID:GID[:MODE]", type=_typed(parse_root_owner),
                   help="owner (and octal mode) of the root directory, as mke2fs -E root_owner")
    who = g.add_mutually_exclusive_group()
    who.add_argument("--all-root", action="store_const", const=(0, 0), dest="squash_owner",
                     help="every inode owned by 0:0")
    who.add_argument("--squash-owner", metavar="UID:GID", type=_typed(parse_owner),
                     help="every inode owned by UID:GID")
    for which in ("uid", "gid"):
        g.add_argument(f"--{which}-map", action="append", metavar="CONTAINER:HOST:COUNT",
                       type=_typed(parse_id_range),
                       help=f"source {which}s HOST..HOST+COUNT-1 become CONTAINER.. in the image, "
                       f"like a line of /proc/PID/{which}_map; others become 65534 (repeatable)")
    g.add_argument("--one-file-system", action="store_const", const=True,
                   help="host directories: do not descend into other filesystems (mount "
                   "points stay as empty directories)")
    g.add_argument("--file-contexts", metavar="FILE", type=os.path.abspath,
                   help="label every inode (security.selinux) from an SELinux file_contexts "
                   "file, matched by libselinux")
    g.add_argument("--fs-config", metavar="FILE", type=os.path.abspath,
                   help="Android fs_config: PATH UID GID MODE [capabilities=0x...] per line")
    g.add_argument("--mount-point", metavar="DIR", type=_typed(check_mount_point),
                   help="where the image will be mounted: the prefix of the paths looked up in "
                   "--file-contexts and --fs-config (default /)")


def _uuid_text(text: str) -> str:
    uuid_value(text)  # refuse what is not a UUID now; "random" is drawn when loading
    return text


def image_flags(args: argparse.Namespace) -> ImageFlags:
    """The image options of a parsed command line (absent attributes: not given)."""
    def get(name: str) -> Any:
        return getattr(args, name, None)

    maps = {k: tuple(get(k)) if get(k) else None for k in ("uid_map", "gid_map")}
    for k, ranges in maps.items():
        if ranges:
            try:
                check_id_map(ranges)
            except ValueError as e:
                raise ManifestError(f"--{k.replace('_', '-')}", str(e)) from None
    return ImageFlags(
        label=get("label"), uuid=get("uuid"), hash_seed=get("hash_seed"),
        source=SourceOptions(times=get("times"), root_owner=get("root_owner"),
                             squash_owner=get("squash_owner"), one_file_system=get("one_file_system"),
                             file_contexts=get("file_contexts"), fs_config=get("fs_config"),
                             mount_point=get("mount_point"), **maps))


def add_generator_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--generator-path", metavar="DIR", action="append",
                    help="also look for a manifest's generator modules in DIR (repeatable); "
                    "by default only modules beside the manifest may be named")


def choices_from_args(args: argparse.Namespace, *, reads_data: bool = True) -> BuildChoices:
    """The choices of a parsed command line (absent attributes: not given).

    Commands that never read file data (inspect) leave generator modules unimported.
    """
    return BuildChoices(dedup=getattr(args, "dedup", None),
                        inline_data=False if getattr(args, "no_inline_data", False) else None,
                        base_map=getattr(args, "base_map", None),
                        source_root=getattr(args, "source_root", None),
                        flags=image_flags(args),
                        generator_path=tuple(os.path.abspath(d) for d in
                                             getattr(args, "generator_path", None) or ()),
                        load_generators=reads_data)
