"""ext4's half_md4 directory hash (DX_HASH_HALF_MD4, unsigned-char variant).

The image sets EXT2_FLAGS_UNSIGNED_HASH, so names are read as unsigned bytes on
every architecture.  Hashing is the largest planning cost of big directories
(a scalar pure-Python MD4 round costs ~6 µs per name), so every name of a
directory is hashed at once: each 32-bit word of every name sits in its own
64-bit lane of one Python integer, and each MD4 step is a handful of
big-integer operations over all lanes.  The 32 spare bits of a lane absorb the
carries of the additions and the bits a rotation shifts out, and the lane mask
clears them, so lanes never disturb each other.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence

from ..switches import pure_python_requested

try:
    from . import _dirhash  # type: ignore[attr-defined]
except ImportError:  # not built: the lanes below hash in Python
    _dirhash = None

DEFAULT_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_K2 = 0o13240474631
_K3 = 0o15666365641
EXT4_HTREE_EOF_32BIT = 0x7FFFFFFF
BATCH = 4096  # names per pass: keeps the lane integers (32 KiB) cache-sized

_NATIVE = sys.byteorder
_SWAP_TO_BIG = _NATIVE == "little"


def seed_words(hash_seed: bytes) -> tuple[int, int, int, int]:
    words = struct.unpack("<4I", hash_seed)
    return DEFAULT_SEED if not any(words) else words  # type: ignore[return-value]


def _hashbuf(msg: bytes, length: int) -> bytes:
    """The 32 bytes (8 big-endian words) str2hashbuf makes of ``msg`` with ``length`` left.

    The kernel shifts each byte into a word that starts as the pad (the length
    in every byte); full groups of four are plain big-endian words, a trailing
    partial group keeps pad bytes above its bytes, and pad words fill the rest.
    """
    if length >= 32:
        return msg[:32]
    pad = bytes((length & 0xFF,))
    full = length & ~3
    rest = length - full
    if rest:
        return msg[:full] + pad * (4 - rest) + msg[full:length] + pad * (28 - full)
    return msg[:length] + pad * (32 - length)


def _lanes(words: array) -> int:
    """One integer holding each 32-bit value of ``words`` in its own 64-bit lane."""
    return int.from_bytes(array("Q", words).tobytes(), _NATIVE)


def _unlanes(value: int, n: int) -> array:
    out = array("Q")
    out.frombytes(value.to_bytes(8 * n, _NATIVE))
    return out


def _transform(state: list[int], x: list[int], m: int, k2: int, k3: int) -> None:
    """One half_md4 transform of every lane, in place on ``state``."""
    a0, b0, c0, d0 = state
    x0, x1, x2, x3, x4, x5, x6, x7 = x
    a, b, c, d = a0, b0, c0, d0
    # Round 1: F(x,y,z) = z ^ (x & (y ^ z))
    a = (a + (d ^ (b & (c ^ d))) + x0) & m; a = ((a << 3) | (a >> 29)) & m
    d = (d + (c ^ (a & (b ^ c))) + x1) & m; d = ((d << 7) | (d >> 25)) & m
    c = (c + (b ^ (d & (a ^ b))) + x2) & m; c = ((c << 11) | (c >> 21)) & m
    b = (b + (a ^ (c & (d ^ a))) + x3) & m; b = ((b << 19) | (b >> 13)) & m
    a = (a + (d ^ (b & (c ^ d))) + x4) & m; a = ((a << 3) | (a >> 29)) & m
    d = (d + (c ^ (a & (b ^ c))) + x5) & m; d = ((d << 7) | (d >> 25)) & m
    c = (c + (b ^ (d & (a ^ b))) + x6) & m; c = ((c << 11) | (c >> 21)) & m
    b = (b + (a ^ (c & (d ^ a))) + x7) & m; b = ((b << 19) | (b >> 13)) & m
    # Round 2: G(x,y,z) = (x & y) + ((x ^ y) & z)
    a = (a + ((b & c) + ((b ^ c) & d)) + x1 + k2) & m; a = ((a << 3) | (a >> 29)) & m
    d = (d + ((a & b) + ((a ^ b) & c)) + x3 + k2) & m; d = ((d << 5) | (d >> 27)) & m
    c = (c + ((d & a) + ((d ^ a) & b)) + x5 + k2) & m; c = ((c << 9) | (c >> 23)) & m
    b = (b + ((c & d) + ((c ^ d) & a)) + x7 + k2) & m; b = ((b << 13) | (b >> 19)) & m
    a = (a + ((b & c) + ((b ^ c) & d)) + x0 + k2) & m; a = ((a << 3) | (a >> 29)) & m
    d = (d + ((a & b) + ((a ^ b) & c)) + x2 + k2) & m; d = ((d << 5) | (d >> 27)) & m
    c = (c + ((d & a) + ((d ^ a) & b)) + x4 + k2) & m; c = ((c << 9) | (c >> 23)) & m
    b = (b + ((c & d) + ((c ^ d) & a)) + x6 + k2) & m; b = ((b << 13) | (b >> 19)) & m
    # Round 3: H(x,y,z) = x ^ y ^ z
    a = (a + (b ^ c ^ d) + x3 + k3) & m; a = ((a << 3) | (a >> 29)) & m
    d = (d + (a ^ b ^ c) + x7 + k3) & m; d = ((d << 9) | (d >> 23)) & m
    c = (c + (d ^ a ^ b) + x2 + k3) & m; c = ((c << 11) | (c >> 21)) & m
    b = (b + (c ^ d ^ a) + x6 + k3) & m; b = ((b << 15) | (b >> 17)) & m
    a = (a + (b ^ c ^ d) + x1 + k3) & m; a = ((a << 3) | (a >> 29)) & m
    d = (d + (a ^ b ^ c) + x5 + k3) & m; d = ((d << 9) | (d >> 23)) & m
    c = (c + (d ^ a ^ b) + x0 + k3) & m; c = ((c << 11) | (c >> 21)) & m
    b = (b + (c ^ d ^ a) + x4 + k3) & m; b = ((b << 15) | (b >> 17)) & m
    state[0] = (a0 + a) & m
    state[1] = (b0 + b) & m
    state[2] = (c0 + c) & m
    state[3] = (d0 + d) & m


def _hash_batch(names: Sequence[bytes], seed: tuple[int, int, int, int]) -> tuple[array, array]:
    """(b0, c0) of every name after all its 32-byte chunks, as lane-ordered arrays."""
    n = len(names)
    ones = _lanes(array("I", [1]) * n)
    m = 0xFFFFFFFF * ones
    state = [s * ones for s in seed]
    lengths = [len(name) for name in names]
    for pos in range(0, max(lengths), 32):
        # Names already done keep their state: a finished lane takes back its old value.
        done = [length <= pos for length in lengths]
        words = array("I", b"".join([_hashbuf(name[pos:], length - pos) if length > pos else bytes(32)
                                     for name, length in zip(names, lengths, strict=True)]))
        if _SWAP_TO_BIG:
            words.byteswap()
        x = [_lanes(words[k::8]) for k in range(8)]
        before = list(state)
        _transform(state, x, m, _K2 * ones, _K3 * ones)
        if any(done):
            keep = _lanes(array("I", [0xFFFFFFFF if d else 0 for d in done]))
            state = [(new & ~keep) | (old & keep) for new, old in zip(state, before, strict=True)]
    return _unlanes(state[1], n), _unlanes(state[2], n)


def half_md4_many(names: Sequence[bytes], seed: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """(major hash, minor hash) of every name, in order (compiled when ``_dirhash`` is built)."""
    if _dirhash is not None and not pure_python_requested():
        return _dirhash.half_md4_many(names, seed)  # type: ignore[no-any-return]
    return half_md4_many_py(names, seed)


def half_md4_many_py(names: Sequence[bytes], seed: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """:func:`half_md4_many` in Python: the definition the compiled one is tested against."""
    out: list[tuple[int, int]] = []
    eof = EXT4_HTREE_EOF_32BIT << 1
    for start in range(0, len(names), BATCH):
        majors, minors = _hash_batch(names[start : start + BATCH], seed)
        for major, minor in zip(majors, minors, strict=True):
            major &= ~1
            out.append(((EXT4_HTREE_EOF_32BIT - 1) << 1 if major == eof else major, minor))
    return out


def half_md4(name: bytes, seed: tuple[int, int, int, int]) -> tuple[int, int]:
    """(major hash, minor hash) of one directory entry name."""
    return half_md4_many([name], seed)[0]
