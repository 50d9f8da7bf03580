"""metadata_csum checksums: the kernel's raw crc32c, built on the crc32c package.

The kernel's ``ext4_chksum(seed, data)`` is CRC32C without the pre- and
post-inversion that the standard (and the ``crc32c`` package) apply, so
``raw(seed, data) == ~std(data, ~seed)``.  Every metadata checksum in ext4 is a
chain of raw updates seeded from the filesystem UUID.
"""

from __future__ import annotations

import struct

from crc32c import crc32c as _std

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
