"""ext4's half_md4 directory hash (DX_HASH_HALF_MD4, unsigned-char variant).

The image sets EXT2_FLAGS_UNSIGNED_HASH, so names are read as unsigned bytes on
every architecture.  This is on the planning hot path for large directories,
hence the unrolled rounds and local variables.
"""

from __future__ import annotations

import struct

DEFAULT_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_M = 0xFFFFFFFF
_K2 = 0o13240474631
_K3 = 0o15666365641
EXT4_HTREE_EOF_32BIT = 0x7FFFFFFF


def seed_words(hash_seed: bytes) -> tuple[int, int, int, int]:
    words = struct.unpack("<4I", hash_seed)
    return DEFAULT_SEED if not any(words) else words  # type: ignore[return-value]


_WORDS = [struct.Struct(f">{n}I") for n in range(9)]


def _str2hashbuf(msg: bytes, length: int) -> list[int]:
    """8 words from up to 32 bytes, padded with the (remaining) length as the kernel does.

    The kernel shifts each byte into a word that starts as the pad; after four
    bytes the pad has been shifted out, so full groups are big-endian words and
    only a trailing partial group keeps pad bits.
    """
    pad = (length | (length << 8)) & _M
    pad |= (pad << 16) & _M
    n = min(length, 32)
    full, rest = divmod(n, 4)
    words = list(_WORDS[full].unpack_from(msg))
    if rest:
        tail = int.from_bytes(msg[full * 4 : n], "big")
        words.append(((pad << (8 * rest)) | tail) & _M)
    words.extend([pad] * (8 - len(words)))
    return words


def half_md4(name: bytes, seed: tuple[int, int, int, int]) -> tuple[int, int]:
    """(major hash, minor hash) of a directory entry name."""
    a0, b0, c0, d0 = seed
    length = len(name)
    pos = 0
    while True:
        x0, x1, x2, x3, x4, x5, x6, x7 = _str2hashbuf(name[pos:], length - pos)
        a, b, c, d = a0, b0, c0, d0
        # Round 1: F(x,y,z) = z ^ (x & (y ^ z))
        a = (a + (d ^ (b & (c ^ d))) + x0) & _M; a = ((a << 3) | (a >> 29)) & _M
        d = (d + (c ^ (a & (b ^ c))) + x1) & _M; d = ((d << 7) | (d >> 25)) & _M
        c = (c + (b ^ (d & (a ^ b))) + x2) & _M; c = ((c << 11) | (c >> 21)) & _M
        b = (b + (a ^ (c & (d ^ a))) + x3) & _M; b = ((b << 19) | (b >> 13)) & _M
        a = (a + (d ^ (b & (c ^ d))) + x4) & _M; a = ((a << 3) | (a >> 29)) & _M
        d = (d + (c ^ (a & (b ^ c))) + x5) & _M; d = ((d << 7) | (d >> 25)) & _M
        c = (c + (b ^ (d & (a ^ b))) + x6) & _M; c = ((c << 11) | (c >> 21)) & _M
        b = (b + (a ^ (c & (d ^ a))) + x7) & _M; b = ((b << 19) | (b >> 13)) & _M
        # Round 2: G(x,y,z) = (x & y) + ((x ^ y) & z)
        a = (a + ((b & c) + ((b ^ c) & d)) + x1 + _K2) & _M; a = ((a << 3) | (a >> 29)) & _M
        d = (d + ((a & b) + ((a ^ b) & c)) + x3 + _K2) & _M; d = ((d << 5) | (d >> 27)) & _M
        c = (c + ((d & a) + ((d ^ a) & b)) + x5 + _K2) & _M; c = ((c << 9) | (c >> 23)) & _M
        b = (b + ((c & d) + ((c ^ d) & a)) + x7 + _K2) & _M; b = ((b << 13) | (b >> 19)) & _M
        a = (a + ((b & c) + ((b ^ c) & d)) + x0 + _K2) & _M; a = ((a << 3) | (a >> 29)) & _M
        d = (d + ((a & b) + ((a ^ b) & c)) + x2 + _K2) & _M; d = ((d << 5) | (d >> 27)) & _M
        c = (c + ((d & a) + ((d ^ a) & b)) + x4 + _K2) & _M; c = ((c << 9) | (c >> 23)) & _M
        b = (b + ((c & d) + ((c ^ d) & a)) + x6 + _K2) & _M; b = ((b << 13) | (b >> 19)) & _M
        # Round 3: H(x,y,z) = x ^ y ^ z
        a = (a + (b ^ c ^ d) + x3 + _K3) & _M; a = ((a << 3) | (a >> 29)) & _M
        d = (d + (a ^ b ^ c) + x7 + _K3) & _M; d = ((d << 9) | (d >> 23)) & _M
        c = (c + (d ^ a ^ b) + x2 + _K3) & _M; c = ((c << 11) | (c >> 21)) & _M
        b = (b + (c ^ d ^ a) + x6 + _K3) & _M; b = ((b << 15) | (b >> 17)) & _M
        a = (a + (b ^ c ^ d) + x1 + _K3) & _M; a = ((a << 3) | (a >> 29)) & _M
        d = (d + (a ^ b ^ c) + x5 + _K3) & _M; d = ((d << 9) | (d >> 23)) & _M
        c = (c + (d ^ a ^ b) + x0 + _K3) & _M; c = ((c << 11) | (c >> 21)) & _M
        b = (b + (c ^ d ^ a) + x4 + _K3) & _M; b = ((b << 15) | (b >> 17)) & _M
        a0 = (a0 + a) & _M
        b0 = (b0 + b) & _M
        c0 = (c0 + c) & _M
        d0 = (d0 + d) & _M
        pos += 32
        if pos >= length:
            break
    major = b0 & ~1
    if major == EXT4_HTREE_EOF_32BIT << 1:
        major = (EXT4_HTREE_EOF_32BIT - 1) << 1
    return major, c0
