"""metadata_csum checksums: the kernel's raw crc32c, built on the crc32c package.

The kernel's ``ext4_chksum(seed, data)`` is CRC32C without the pre- and
post-inversion that the standard (and the ``crc32c`` package) apply, so
``raw(seed, data) == ~std(data, ~seed)``.  Every metadata checksum in ext4 is a
chain of raw updates seeded from the filesystem UUID.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import struct
import sys
from collections.abc import Callable


def _load_crc32c() -> Callable[..., int]:
    """The crc32c package's C function, loaded without the package's ``__init__``: that
    calls ``importlib.metadata.version()``, which scans every installed distribution
    and costs each process 10-35 ms of a serve's start, for a version string unused here."""
    loaded = sys.modules.get("crc32c._crc32c")
    if loaded is None:
        spec = importlib.util.find_spec("crc32c")
        folders = list(spec.submodule_search_locations or ()) if spec else []
        for folder in folders:
            found = importlib.machinery.FileFinder(
                folder, (importlib.machinery.ExtensionFileLoader,
                         importlib.machinery.EXTENSION_SUFFIXES)).find_spec("crc32c._crc32c")
            if found is not None and found.loader is not None:
                loaded = importlib.util.module_from_spec(found)
                found.loader.exec_module(loaded)
                break
        else:  # an unusual install (zipped, another layout): the ordinary import
            from crc32c import crc32c as std

            return std
    return loaded.crc32c


_std = _load_crc32c()

_MASK = 0xFFFFFFFF
_INO_GEN = struct.Struct("<II")


def crc32c_raw(seed: int, data: bytes | bytearray | memoryview) -> int:
    """Kernel-style crc32c update (no inversions)."""
    return ~_std(data, value=~seed & _MASK) & _MASK


def fs_csum_seed(uuid: bytes) -> int:
    """s_csum_seed: the seed every other checksum starts from."""
    return crc32c_raw(_MASK, uuid)


def inode_csum_seed(fs_seed: int, ino: int, generation: int) -> int:
    """Per-inode seed used for the inode itself, its extent blocks and dir blocks.

    The kernel chains two updates (inode number, then i_generation); one update
    over both little-endian words gives the same value in half the calls.
    """
    return crc32c_raw(fs_seed, _INO_GEN.pack(ino, generation))
