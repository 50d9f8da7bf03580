"""Timestamps as integer nanoseconds since the epoch, and their ext4 encoding.

Integers avoid float rounding: a manifest's ``"1700000000.123456789"`` must
read back from the kernel with exactly those nanoseconds.
"""

from __future__ import annotations

import datetime as _dt
import re

NS = 1_000_000_000
# ext4 with 256-byte inodes stores 32 bits of seconds plus 2 epoch bits.
MIN_TIME_NS = -(1 << 31) * NS
MAX_TIME_NS = ((1 << 34) - (1 << 31)) * NS - 1

# e2fsck reads a time whose epoch bits are 3 and whose low 32 bits look negative as a
# pre-1970 time misencoded by old kernels ("Timestamp(s) on inode N beyond 2310-04-04 are
# likely pre-1970"): seconds [3 * 2^32 - 2^31, 3 * 2^32), 2310-04-04 .. 2378-04-22.
E2FSCK_SUSPECT_NS = range(((3 << 32) - (1 << 31)) * NS, (3 << 32) * NS)

_DECIMAL = re.compile(r"^(-?)(\d+)(?:\.(\d{1,9}))?$")


def parse_time(value: object) -> int:
    """Accept int seconds, ``"SEC[.NNNNNNNNN]"`` or an RFC 3339 string; return ns.

    Floats are refused: they cannot carry nanoseconds exactly.
    """
    if isinstance(value, bool):
        raise ValueError("expected a time, got a boolean")
    if isinstance(value, int):
        ns = value * NS
    elif isinstance(value, _dt.datetime):
        ns = _datetime_ns(value)
    elif isinstance(value, str):
        m = _DECIMAL.match(value.strip())
        if m:
            sign, sec, frac = m.groups()
            ns = int(sec) * NS + int((frac or "").ljust(9, "0"))
            if sign:
                ns = -ns
        else:
            ns = _parse_rfc3339(value)
    else:
        raise ValueError(f"expected seconds or an RFC 3339 string, got {type(value).__name__}")
    problem = range_error(ns)
    if problem:
        raise ValueError(problem)
    return ns


def range_error(ns: int) -> str | None:
    """Why ext4 (as e2fsck checks it) cannot hold this time, or None when it can."""
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        return "time outside ext4's range (1901-12-13 .. 2446-05-10)"
    if ns in E2FSCK_SUSPECT_NS:
        return ("times from 2310-04-04 to 2378-04-22 are refused: e2fsck takes them for "
                "pre-1970 times misencoded by old kernels")
    return None


def _parse_rfc3339(text: str) -> int:
    m = re.match(r"^(.*?T\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not m:
        raise ValueError(f"cannot parse time {text!r}")
    base, frac, tz = m.groups()
    try:
        dt = _dt.datetime.fromisoformat(base + (("+00:00" if tz == "Z" else tz) if tz else "+00:00"))
    except ValueError as e:
        raise ValueError(f"cannot parse time {text!r}") from e
    return _datetime_ns(dt) + int((frac or "").ljust(9, "0"))


def _datetime_ns(dt: _dt.datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.UTC)
    delta = dt - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def encode(ns: int) -> tuple[int, int]:
    """(i_xtime, i_xtime_extra) as the kernel's ext4_encode_extra_time writes them."""
    sec, nsec = divmod(ns, NS)
    lo = sec & 0xFFFFFFFF
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    epoch = ((sec - signed_lo) >> 32) & 3
    return lo, epoch | (nsec << 2)


def decode(lo: int, extra: int) -> int:
    sec = lo - (1 << 32) if lo & 0x80000000 else lo
    sec += (extra & 3) << 32
    return sec * NS + (extra >> 2)
