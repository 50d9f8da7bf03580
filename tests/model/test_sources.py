"""The host-file descriptor cache: bounded, least-recently-used, never closing a descriptor in use."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from helpers.deadline import within

import ext4gen
from ext4gen.errors import SourceError
from ext4gen.model.sources import HostFile, HostFileSource, _FdCache


@pytest.fixture
def small_cache(monkeypatch: pytest.MonkeyPatch) -> _FdCache:
    cache = _FdCache(limit=4)
    monkeypatch.setattr("ext4gen.model.sources.FD_CACHE", cache)
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


def test_a_request_over_several_runs_of_one_file_reads_them_as_one_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tar members are adjacent runs of one host file: one descriptor, one pin check, exact tails."""
    archive = tmp_path / "t.tar"
    sizes = (5000, 4096, 10)
    with tarfile.open(archive, "w") as tf:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"f{i}")
            info.size = size
            tf.addfile(info, io.BytesIO(bytes([65 + i]) * size))
    tree, options = ext4gen.load(str(archive), dedup="none", inline_data=False)
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")  # the batching of the Python path (C: test_readpath_*)
    image = ext4gen.plan(tree, options)
    batches: list[int] = []
    real = HostFile.read_parts

    def counting(self: HostFile, parts: list[tuple[memoryview, int, int]], **kw: bool) -> None:
        batches.append(len(parts))
        real(self, parts, **kw)

    monkeypatch.setattr(HostFile, "read_parts", counting)
    runs, data_start = image.plan.runs, image.plan.geometry.data_start
    assert [r.nbytes for r in runs] == list(sizes)
    start = (data_start + runs[0].block) * 4096
    end = (data_start + runs[-1].block + runs[-1].nblocks) * 4096
    expected = b"A" * 5000 + bytes(3192) + b"B" * 4096 + b"C" * 10 + bytes(4086)
    assert image.read(start, end - start) == expected
    assert batches == [3]
    assert image.read(start + 4000, 5000) == expected[4000:9000]  # a request starting mid-run
    os.utime(archive, ns=(1, 1))  # the archive changed: the whole request fails, no stale bytes
    with pytest.raises(SourceError, match="changed"):
        image.read(start, end - start)


def test_a_read_once_leaves_no_descriptor_open_or_cached(tmp_path: Path, small_cache: _FdCache):
    """Plan-time hashing reads each small file once, with a descriptor it closes at once: a
    good read, a changed file (refused) and a vanished one all leave the table as it was."""
    src = _files(tmp_path, 3)
    before = _open_fds()
    buf = bytearray(100)
    src[0].file.read_parts([(memoryview(buf), 0, 100)], once=True)
    assert bytes(buf) == bytes([0]) * 100
    (tmp_path / "f1").write_bytes(b"changed")
    with pytest.raises(SourceError, match="changed since"):
        src[1].file.read_parts([(memoryview(buf), 0, 100)], once=True)
    (tmp_path / "f2").unlink()
    with pytest.raises(SourceError, match="cannot open"):
        src[2].file.read_parts([(memoryview(buf), 0, 100)], once=True)
    assert _open_fds() == before
    assert len(small_cache._fds) == 0


def test_a_source_swapped_for_a_fifo_fails_instead_of_blocking(tmp_path: Path, small_cache: _FdCache):
    src = _files(tmp_path, 1)[0]
    (tmp_path / "f0").unlink()
    os.mkfifo(tmp_path / "f0")
    with pytest.raises(SourceError, match="changed since"):
        within(10, lambda: src.readinto(memoryview(bytearray(100)), 0), "opening a FIFO-swapped source")


def test_a_listed_file_is_the_source_the_general_constructor_makes(tmp_path: Path) -> None:
    """``HostFileSource.listed`` (the walk's fast way) builds every slot as ``__init__`` does:
    empty, small, block-sized and large files, and a sparse one (which takes the general way
    and finds its holes)."""
    sizes = {"empty": 0, "small": 10, "block": 4096, "large": 300_000}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    with open(tmp_path / "sparse", "wb") as f:
        f.write(b"x" * 5000)
        f.seek(1 << 20)
        f.write(b"y")

    def slots(obj: object) -> dict[str, object]:
        return {n: getattr(obj, n) for c in type(obj).__mro__
                for n in getattr(c, "__slots__", ()) if n != "__weakref__"}

    for name in [*sizes, "sparse"]:
        path = str(tmp_path / name)
        st = os.lstat(path)
        fast, general = HostFileSource.listed(path, st), HostFileSource(path, st=st)
        assert slots(fast.file) == slots(general.file), name
        assert {k: v for k, v in slots(fast).items() if k != "file"} == \
            {k: v for k, v in slots(general).items() if k != "file"}, name
        assert type(fast.pin) is type(general.pin)
    assert HostFileSource.listed(path, os.lstat(path)).segments is not None  # the sparse file
