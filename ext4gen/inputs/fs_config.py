"""Android canned fs_config files: owner, mode and file capabilities by path.

The format is the one ``fs_config -C``, e2fsdroid ``-C`` and mkfs.erofs
``--fs-config-file`` read, one line per path::

    system/bin/logd 1036 1036 0550 capabilities=0x440000040

The path is relative to the partition's root with the mount point in front
(``system/…`` for an image mounted at /system; the root itself is the empty
path), uid and gid are decimal, the mode octal, and ``capabilities`` an
optional 64-bit mask that becomes a ``security.capability`` xattr in the
kernel's version 2 layout, effective bit set, as e2fsdroid writes it.
Paths the file does not list keep the source's metadata.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CAPABILITY_XATTR = b"security.capability"
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
_VFS_CAP_V2 = struct.Struct("<IIIII")  # magic_etc, then (permitted, inheritable) x 2


class FsConfigError(Exception):
    """A line of the fs_config file is not understood (message names the line)."""


@dataclass(frozen=True)
class FsConfigEntry:
    uid: int
    gid: int
    mode: int  # permission bits
    capabilities: int | None  # None: not given


def capability_xattr(mask: int) -> bytes:
    """struct vfs_cap_data, revision 2: ``mask`` permitted and effective, nothing inheritable."""
    return _VFS_CAP_V2.pack(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
                            mask & 0xFFFFFFFF, 0, mask >> 32, 0)


def parse_fs_config(text: str, name: str) -> dict[str, FsConfigEntry]:
    """Path (no leading or trailing '/') -> entry."""
    out: dict[str, FsConfigEntry] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        # `find -printf '%P …'` writes the root as an empty path: the line starts with its uid
        if line[:1].isspace() or (len(fields) == 3 and fields[0].isdigit()):
            fields = ["", *fields]
        where = f"{name}:{n}"
        if len(fields) not in (4, 5):
            raise FsConfigError(f"{where}: expected PATH UID GID MODE [capabilities=0x…]")
        path, uid, gid, mode = fields[:4]
        try:
            entry = FsConfigEntry(_number(uid, 10, "uid"), _number(gid, 10, "gid"),
                                  _number(mode, 8, "mode") & 0o7777,
                                  _capabilities(fields[4]) if len(fields) == 5 else None)
        except ValueError as e:
            raise FsConfigError(f"{where}: {e}") from None
        if not (0 <= entry.uid < (1 << 32) - 1 and 0 <= entry.gid < (1 << 32) - 1):
            raise FsConfigError(f"{where}: uid and gid must be 0 to 4294967294")
        key = path.strip("/")
        if key in out:
            raise FsConfigError(f"{where}: {path or '(root)'} is listed twice")
        out[key] = entry
    return out


def _number(text: str, base: int, what: str) -> int:
    try:
        return int(text, base)
    except ValueError:
        kind = "an octal" if base == 8 else "a decimal"
        raise ValueError(f"{what} {text!r} is not {kind} number") from None


def _capabilities(field: str) -> int:
    key, sep, value = field.partition("=")
    if key != "capabilities" or not sep:
        raise ValueError(f"expected capabilities=0x…, got {field!r}")
    try:
        mask = int(value, 0)
    except ValueError:
        raise ValueError(f"capabilities {value!r} is not a number (e.g. 0x1000000c0)") from None
    if not 0 <= mask < 1 << 64:
        raise ValueError(f"capabilities {value} is not a 64-bit mask")
    return mask


def load_fs_config(path: str) -> dict[str, FsConfigEntry]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FsConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise FsConfigError(f"{path} is not a text file") from None
    return parse_fs_config(text, path)
