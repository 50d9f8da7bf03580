"""Generators for the boot-disk example: file content made by Python when the guest reads it.

The manifests name these as ``generator = "bootgen:lines"``; ext4gen calls
``lines(offset, length, **args)`` for exactly the bytes a client reads, never
at plan time.  A generator **must be deterministic**: the kernel may read a
block twice (page cache eviction, readahead, a second NBD connection), and
every read is answered anew, so the same range must always give the same
bytes.  That is also what lets the boot test predict the guest's checksum.
"""

from __future__ import annotations

import hashlib

LINE = 64  # bytes per line: 12 digits, a space, 50 hex digits, a newline


def line(seed: str, i: int) -> bytes:
    digest = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:50]
    return f"{i:012d} {digest}\n".encode()


def lines(offset: int, length: int, *, seed: str = "ext4gen") -> bytes:
    """Fixed-width text: line ``i`` depends only on (seed, i), so any range is cheap to make."""
    if length <= 0:
        return b""
    first, last = offset // LINE, (offset + length - 1) // LINE
    out = b"".join(line(seed, i) for i in range(first, last + 1))
    start = offset - first * LINE
    return out[start : start + length]


def expected(size: int, *, seed: str = "ext4gen") -> bytes:
    """The whole file, as a reader of every byte sees it (what the test hashes)."""
    return lines(0, size, seed=seed)
