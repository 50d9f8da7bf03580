"""The chunk cache and RemoteSource reads, against an in-process origin that counts requests.

The origin here is the project's own ``Origin`` interface backed by bytes (the
real HTTP/S3 clients are exercised against nginx and moto in tests/serve and
tests/e2e); what is tested is the cache: one fetch per chunk however many
readers, the disk bound, verification, read-ahead, exact bytes for any range.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext4gen.errors import SourceError
from ext4gen.model.remote import RemoteSource
from ext4gen.remote import chunks as chunk_mod
from ext4gen.remote.origins import ObjectInfo, Origin
from ext4gen.remote.settings import RemoteSettings

CS = 64 << 10


class BytesOrigin(Origin):
    def __init__(self, data: bytes, delay: float = 0.0) -> None:
        super().__init__()
        self.pin = ObjectInfo(len(data), etag=hashlib.sha256(data).hexdigest())  # as a HEAD gives
        self.data = data
        self.delay = delay
        self.name = "mem://object"
        self.gets: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def get(self, start: int, end: int, timeout: float) -> bytes:
        with self.lock:
            self.gets.append((start, end))
        time.sleep(self.delay)
        return self.data[start:end]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the user's cache, even for a store created by a late background thread."""
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "user-cache"))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> chunk_mod.ChunkStore:
    s = chunk_mod.ChunkStore(tmp_path / "chunks", 1 << 30)
    monkeypatch.setattr(chunk_mod, "_store", s)
    return s


def source(data: bytes, origin: Origin | None = None, *, digests: bool = False,
           sha: bool = False) -> RemoteSource:
    origin = origin or BytesOrigin(data)
    chunk_digests = ([hashlib.sha256(data[i : i + CS]).digest() for i in range(0, len(data), CS)]
                     if digests else None)
    return RemoteSource(origin, len(data), RemoteSettings(timeout=2.0, chunk_size=CS),
                        chunk_size=CS, chunk_digests=chunk_digests,
                        sha256=hashlib.sha256(data).digest() if sha else None)


def read(src: RemoteSource, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    src.readinto(memoryview(buf), offset)
    return bytes(buf)


def test_concurrent_readers_of_one_chunk_fetch_it_once(store):
    data = os.urandom(3 * CS)
    origin = BytesOrigin(data, delay=0.3)
    src = source(data, origin)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(read(src, CS + 100, 5000)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data[CS + 100 : CS + 5100]] * 8
    assert origin.gets == [(CS, 2 * CS)]


def test_disk_cache_is_bounded_lru(tmp_path, monkeypatch):
    monkeypatch.setattr(chunk_mod, "MEMORY_CHUNKS", 0)
    monkeypatch.setattr(chunk_mod, "READ_AHEAD", 0)
    s = chunk_mod.ChunkStore(tmp_path / "chunks", 3 * CS)
    monkeypatch.setattr(chunk_mod, "_store", s)
    data = os.urandom(5 * CS)
    origin = BytesOrigin(data)
    src = source(data, origin)
    for i in (0, 1, 2, 0, 3, 4):  # 0 is used again before 3 and 4 arrive: 1 and 2 are the oldest
        assert read(src, i * CS, 10) == data[i * CS : i * CS + 10]
    on_disk = sum(f.stat().st_size for f in (tmp_path / "chunks").rglob("*") if f.is_file())
    assert on_disk <= 3 * CS
    fetched = len(origin.gets)
    assert read(src, 0, 10) == data[:10] and len(origin.gets) == fetched  # kept
    assert read(src, 1 * CS, 10) == data[CS : CS + 10] and len(origin.gets) == fetched + 1  # evicted
    # a new store over the same directory finds what is there (a restarted server)
    s2 = chunk_mod.ChunkStore(tmp_path / "chunks", 3 * CS)
    assert s2._disk_bytes == on_disk


def test_damaged_cache_entry_is_refetched(store, tmp_path, monkeypatch):
    monkeypatch.setattr(chunk_mod, "MEMORY_CHUNKS", 0)
    data = os.urandom(2 * CS)
    origin = BytesOrigin(data)
    src = source(data, origin, digests=True)
    assert read(src, 0, CS) == data[:CS]
    path = tmp_path / "chunks" / src.chunk_key(0)
    path.write_bytes(b"\0" * CS)  # bit rot on disk
    assert read(src, 0, CS) == data[:CS]
    assert origin.gets == [(0, CS), (0, CS)]


def test_wrong_bytes_from_origin_are_never_served(store):
    data = os.urandom(2 * CS)
    origin = BytesOrigin(b"\1" + data[1:])  # the origin now holds other bytes
    src = source(data, origin, digests=True)
    with pytest.raises(SourceError, match="SHA-256"):
        read(src, 0, 10)
    assert read(src, CS, 10) == data[CS : CS + 10]  # the other chunk is intact
    with pytest.raises(SourceError, match="SHA-256"):
        read(src, 0, 10)
    assert store.stats.verify_failures == 2


def test_whole_file_digest_checks_the_whole_file(store):
    data = os.urandom(3 * CS)
    good = source(data, sha=True)
    assert read(good, CS, 10) == data[CS : CS + 10]
    other = os.urandom(3 * CS)
    bad = source(other, BytesOrigin(other[:-1] + bytes([other[-1] ^ 1])), sha=True)
    with pytest.raises(SourceError, match="SHA-256"):
        read(bad, 0, 10)  # the first chunk is right, but is not trusted before the whole file
    assert not any(store.cached(bad.chunk_key(i)) for i in range(3))


def test_sequential_reads_trigger_read_ahead(store):
    data = os.urandom(6 * CS)
    origin = BytesOrigin(data)
    src = source(data, origin)
    read(src, 0, CS)
    read(src, CS, CS)
    deadline = time.monotonic() + 5
    while len(origin.gets) < 2 + chunk_mod.READ_AHEAD and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(origin.gets)[: 2 + chunk_mod.READ_AHEAD] == [
        (i * CS, (i + 1) * CS) for i in range(2 + chunk_mod.READ_AHEAD)]
    n = len(origin.gets)
    assert read(src, 2 * CS, CS) == data[2 * CS : 3 * CS]
    assert len(origin.gets) <= n + 1  # chunk 2 came from read-ahead (chunk 4 may be queued now)


def test_unreachable_origin_fails_within_the_timeout(store):
    class Down(Origin):
        name = "mem://down"

        def get(self, start: int, end: int, timeout: float) -> bytes:
            from ext4gen.remote.origins import TransientError

            raise TransientError("connection refused")

    src = RemoteSource(Down(), 100, RemoteSettings(timeout=0.5, chunk_size=CS))
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="not fetched in time"):
        read(src, 0, 10)
    assert 0.4 < time.monotonic() - t0 < 2.0


DATA = os.urandom(5 * CS + 1234)


def test_chunks_of_an_unidentified_object_stay_in_memory(store):
    data = os.urandom(2 * CS)
    origin = BytesOrigin(data)
    origin.pin = ObjectInfo(len(data))  # a server without ETag and Last-Modified
    src = source(data, origin)
    assert read(src, 0, 2 * CS) == data
    assert store._disk_bytes == 0  # a restart could not tell them from a replaced object's


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # one store on purpose
@given(st.lists(st.tuples(st.integers(0, len(DATA) - 1), st.integers(1, 3 * CS)), max_size=8),
       st.booleans(), st.integers(0, 2))
def test_any_reads_give_the_origin_bytes(store, reads, digests, variant):
    # one store for all examples (as in a server): later examples meet earlier chunks
    src = source(DATA, BytesOrigin(DATA, delay=0.001 * variant), digests=digests)
    for offset, n in reads:
        n = min(n, len(DATA) - offset)
        assert read(src, offset, n) == DATA[offset : offset + n]
