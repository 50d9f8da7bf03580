"""Independent readers of what was built: the superblock bytes, dumpe2fs, debugfs, the kernel.

If ext4gen's parser agreed with its own writer, a shared misunderstanding
would go unnoticed; these read through construct definitions checked against
ext4.h, e2fsprogs' tools, or the kernel's ioctls.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

from ext4gen.format.definitions import ext4_super_block
from ext4gen.render.image import Image

BLOCK = 4096
FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long): the inode's i_generation


def superblock(image: Image | str | os.PathLike[str]) -> Any:
    """The parsed superblock of an Image or an image file."""
    if isinstance(image, Image):
        raw = image.read(1024, 1024)
    else:
        with open(image, "rb") as f:
            f.seek(1024)
            raw = f.read(1024)
    return ext4_super_block.parse(raw)


def dumpe2fs(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[str]]:
    """dumpe2fs's header as a dict, plus its per-group lines (an independent reader)."""
    proc = subprocess.run(["dumpe2fs", str(path)], capture_output=True, text=True, check=True,
                          env=dict(os.environ, TZ="UTC"))
    header: dict[str, str] = {}
    lines = proc.stdout.splitlines()
    groups_at = len(lines)
    for i, line in enumerate(lines):
        if line.startswith("Group 0:"):
            groups_at = i
            break
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    return header, lines[groups_at:]


def debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True,
                          errors="replace", check=True)
    return proc.stdout


def generation(path: str | os.PathLike[str]) -> int:
    """i_generation as the kernel reports it (FS_IOC_GETVERSION), the NFS file-handle half."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, FS_IOC_GETVERSION, b"\0" * 8)
    finally:
        os.close(fd)
    return struct.unpack("<Q", buf)[0] & 0xFFFFFFFF


# -- where a file's bytes live in a planned image ------------------------------------


def image_offset(image: object, path: bytes, file_offset: int) -> int | None:
    """The image byte offset holding byte ``file_offset`` of ``path``, or None in a hole.

    Taken from the plan's extents (what the inode will say), so a test can read
    one data block through ``Image.read`` and see which sources that touches.
    """
    plan = image.plan  # type: ignore[attr-defined]
    for p, ip in plan.paths():
        if p == path:
            lblock, within = divmod(file_offset, BLOCK)
            for logical, count, physical in plan.physical_extents(ip):
                if logical <= lblock < logical + count:
                    return (physical + lblock - logical) * BLOCK + within
            return None
    raise KeyError(path)


def process_rchar() -> int:
    """Bytes this process has read through read-like syscalls (/proc/self/io)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")
