"""The host-file descriptor cache: bounded, least-recently-used, never closing a descriptor in use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ext4gen.errors import SourceError
from ext4gen.sources import HostFileSource, _FdCache


@pytest.fixture
def small_cache(monkeypatch: pytest.MonkeyPatch) -> _FdCache:
    cache = _FdCache(limit=4)
    monkeypatch.setattr("ext4gen.sources.FD_CACHE", cache)
    yield cache
    cache.close_all()


def _files(tmp_path: Path, n: int) -> list[HostFileSource]:
    out = []
    for i in range(n):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 100)
        out.append(HostFileSource(str(p)))
    return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_cache_stays_within_its_limit_and_reads_stay_right(tmp_path: Path, small_cache: _FdCache):
    sources = _files(tmp_path, 12)
    before = _open_fds()
    for _round in range(3):
        for i, src in enumerate(sources):
            buf = bytearray(10)
            src.readinto(memoryview(buf), 5)
            assert buf == bytes([i]) * 10
            assert len(small_cache._fds) <= small_cache.limit
    assert _open_fds() - before <= small_cache.limit


def test_least_recently_used_is_closed_first(tmp_path: Path, small_cache: _FdCache):
    a, b, c, d, e = _files(tmp_path, 5)
    for src in (a, b, c, d):
        src.readinto(memoryview(bytearray(1)), 0)
    a.readinto(memoryview(bytearray(1)), 0)  # a is now the most recent; b the least
    e.readinto(memoryview(bytearray(1)), 0)
    assert b.file not in small_cache._fds
    assert a.file in small_cache._fds and e.file in small_cache._fds


def test_a_descriptor_in_use_is_never_closed(tmp_path: Path, small_cache: _FdCache):
    sources = _files(tmp_path, 8)
    held = sources[0].file
    fd = small_cache.acquire(held)  # as a reader blocked in preadv would hold it
    for src in sources[1:]:
        src.readinto(memoryview(bytearray(1)), 0)
    assert small_cache._fds[held][0] == fd
    assert os.pread(fd, 3, 0) == b"\0\0\0"  # still the same open file
    small_cache.release(held)


def test_a_changed_source_is_refused_and_its_descriptor_dropped(tmp_path: Path, small_cache: _FdCache):
    (src,) = _files(tmp_path, 1)
    src.readinto(memoryview(bytearray(4)), 0)
    Path(src.path).write_bytes(b"new content!" * 10)
    with pytest.raises(SourceError, match="changed"):
        src.readinto(memoryview(bytearray(4)), 0)
    assert src.file not in small_cache._fds
