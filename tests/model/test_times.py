"""Timestamps: manifest parsing to exact nanoseconds and the kernel's 34-bit encoding.

The kernel-side proof (mounted read-back) is in test_features; here the
encoding is pinned against the rules of fs/ext4/ext4.h
(ext4_encode_extra_time / ext4_decode_extra_time) and known calendar dates.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext4gen.model import times

NS = 10**9
MIN_SEC = -(1 << 31)
MAX_SEC = (1 << 34) - (1 << 31) - 1


def kernel_decode(lo: int, extra: int) -> int:
    """ext4_decode_extra_time, written out independently of ext4gen.model.times."""
    sec = lo - (1 << 32) if lo & 0x80000000 else lo
    if extra & 3:
        sec += (extra & 3) << 32
    return sec * NS + (extra >> 2)


@pytest.mark.parametrize(("text", "ns"), [
    (0, 0),
    (1700000000, 1700000000 * NS),
    ("1700000000", 1700000000 * NS),
    ("1700000000.5", 1700000000 * NS + 500_000_000),
    ("1700000000.000000001", 1700000000 * NS + 1),
    ("-1.5", -1_500_000_000),
    ("-0.000000001", -1),
    (-2147483648, MIN_SEC * NS),
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.999999999Z", -1),
    ("2038-01-19T03:14:08Z", (1 << 31) * NS),
    ("2106-02-07T06:28:16Z", (1 << 32) * NS),
    ("2446-05-10T22:38:55.999999999Z", MAX_SEC * NS + 999_999_999),
    ("1901-12-13T20:45:52Z", MIN_SEC * NS),
    ("2024-02-29T12:00:00.25+02:00", int(dt.datetime(2024, 2, 29, 10, tzinfo=dt.UTC).timestamp())
     * NS + 250_000_000),
    ("2024-02-29T12:00:00", int(dt.datetime(2024, 2, 29, 12, tzinfo=dt.UTC).timestamp()) * NS),
])
def test_parse_time(text: object, ns: int) -> None:
    assert times.parse_time(text) == ns


@pytest.mark.parametrize("bad", [
    1.5, True, None, [], "", "yesterday", "1.0000000001", "2024-13-01T00:00:00Z",
    "2446-05-10T22:38:56Z", "1901-12-13T20:45:51.999999999Z", str(MAX_SEC + 1), MIN_SEC - 1,
    "2023-02-29T00:00:00Z", "12:00",
])
def test_parse_time_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        times.parse_time(bad)


def test_toml_datetime_values() -> None:
    """TOML offset date-times arrive as datetime objects; they are accepted as UTC instants."""
    import tomllib

    doc = tomllib.loads("t = 2000-01-01T00:00:00.123456Z\nu = 1999-12-31T19:00:00-05:00")
    assert times.parse_time(doc["t"]) == 946684800 * NS + 123_456_000
    assert times.parse_time(doc["u"]) == 946684800 * NS


@pytest.mark.parametrize(("sec", "lo", "epoch"), [
    (0, 0, 0),
    (-1, 0xFFFFFFFF, 0),
    (MIN_SEC, 0x80000000, 0),
    ((1 << 31) - 1, 0x7FFFFFFF, 0),
    (1 << 31, 0x80000000, 1),
    ((1 << 32) - 1, 0xFFFFFFFF, 1),
    (1 << 32, 0, 1),
    (MAX_SEC, 0x7FFFFFFF, 3),
])
def test_encode_known_values(sec: int, lo: int, epoch: int) -> None:
    got_lo, extra = times.encode(sec * NS + 123)
    assert got_lo == lo
    assert extra & 3 == epoch
    assert extra >> 2 == 123


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.integers(MIN_SEC * NS, MAX_SEC * NS + NS - 1))
def test_encode_roundtrips_through_kernel_decode(ns: int) -> None:
    lo, extra = times.encode(ns)
    assert 0 <= lo < 1 << 32 and 0 <= extra < 1 << 32
    assert kernel_decode(lo, extra) == ns
    assert times.decode(lo, extra) == ns
