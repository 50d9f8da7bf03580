"""Content dedup's read-ahead (ext4gen/layout/read_ahead.py, _hashread.c): small host files
read and hashed in C, in a thread, must give the planner exactly what reading them itself
gives: the same bytes, the same keys, the same errors, the same image; and it must never
hang the planner, whatever order the files are taken in.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest
import xxhash
from helpers.deadline import within

import ext4gen
from ext4gen import saved_plan
from ext4gen.errors import Ext4genError
from ext4gen.inputs.source import BuildChoices, plan_source_saved
from ext4gen.layout import read_ahead
from ext4gen.model import host_reads
from ext4gen.model.sources import HostFileSource

pytestmark = pytest.mark.skipif(not read_ahead.available(),
                                reason="ext4gen.layout._hashread is not built (no xxhash.h?)")

BLOCK = 4096


def _files(root: Path, sizes: list[int], seed: int = 1) -> list[HostFileSource]:
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, size in enumerate(sizes):
        p = root / f"f{i}"
        p.write_bytes(rnd.randbytes(size))
        out.append(HostFileSource(str(p)))
    return out


def test_bytes_and_keys_are_those_python_reads_and_hashes(tmp_path: Path) -> None:
    sizes = [1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17, read_ahead.MAX_FILE]
    sources = _files(tmp_path, sizes)
    ahead = read_ahead.ReadAhead(sources)
    try:
        for s, size in zip(sources, sizes, strict=True):
            got = ahead.take(s)
            assert got is not None
            data, keys = got
            raw = Path(s.path).read_bytes()
            padded = raw + bytes(-size % BLOCK)
            assert data == padded
            assert keys == b"".join(xxhash.xxh3_128_digest(padded[i : i + BLOCK])
                                    for i in range(0, len(padded), BLOCK))
        assert ahead.bytes_read == sum(sizes)
    finally:
        ahead.close()


def test_a_changed_or_vanished_file_comes_back_as_none(tmp_path: Path) -> None:
    sources = _files(tmp_path, [5000, 5000, 5000])
    (tmp_path / "f0").write_bytes(b"x" * 5000)  # same size, new mtime/ctime: the pin fails
    (tmp_path / "f1").unlink()
    ahead = read_ahead.ReadAhead(sources)
    try:
        assert ahead.take(sources[0]) is None
        assert ahead.take(sources[1]) is None
        assert ahead.take(sources[2]) is not None
    finally:
        ahead.close()


def test_files_taken_out_of_order_or_never_never_hang(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Passed-over results are dropped (their bytes freed), so a small look-ahead bound
    cannot leave the thread waiting for a take that never comes."""
    monkeypatch.setattr(read_ahead, "AHEAD_BYTES", 3 * BLOCK)
    monkeypatch.setattr(read_ahead, "BATCH_FILES", 2)
    sources = _files(tmp_path, [BLOCK] * 40)
    ahead = read_ahead.ReadAhead(sources)

    def takes() -> list[bool]:
        return [ahead.take(sources[30]) is not None,  # 0..29 never taken
                ahead.take(sources[5]) is None,  # behind: dropped, the planner reads it itself
                ahead.take(sources[39]) is not None,
                ahead.take(HostFileSource(sources[0].path)) is None]  # not a candidate

    assert within(10, takes) == [True] * 4
    within(10, ahead.close)
    stopped = read_ahead.ReadAhead(sources)  # closed while it waits for takes
    within(10, stopped.close)
    assert not stopped._thread.is_alive()


def _tree(root: Path) -> Path:
    rnd = random.Random(5)
    blocks = [rnd.randbytes(BLOCK) for _ in range(6)]
    for d in range(4):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(40):
            k = (d * 40 + i) % 13
            body = b"".join(blocks[(k + j) % 6] for j in range(k % 4)) + bytes(BLOCK * (k % 2))
            (root / f"d{d}" / f"f{i}").write_bytes(body + rnd.randbytes(k * 97))
    (root / "zeros").write_bytes(bytes(3 * BLOCK))
    (root / "big").write_bytes(rnd.randbytes(read_ahead.MAX_FILE + 1))  # read by the planner
    return root


def _image_digest(root: Path) -> str:
    tree, options = ext4gen.load(str(root), dedup="content")
    image = ext4gen.plan(tree, options)
    return hashlib.sha256(image.read(0, image.size)).hexdigest()


def test_the_image_is_the_one_planning_without_it_gives(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "tree")
    monkeypatch.setenv("EXT4GEN_NO_DIGEST_CACHE", "1")
    taken: list[int] = []
    real_take = read_ahead.ReadAhead.take

    def counting(self: read_ahead.ReadAhead, source: HostFileSource) -> tuple[bytes, bytes] | None:
        got = real_take(self, source)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(read_ahead.ReadAhead, "take", counting)
    with_it = _image_digest(root)
    assert sum(taken) > 100, "the read-ahead was not used"
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")
    taken.clear()
    assert _image_digest(root) == with_it
    assert taken == []


def test_a_file_changed_before_planning_is_named_as_without_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "tree")
    monkeypatch.setenv("EXT4GEN_NO_DIGEST_CACHE", "1")
    messages = []
    for pure in ("", "1"):
        monkeypatch.setenv("EXT4GEN_PURE_PYTHON", pure)
        tree, options = ext4gen.load(str(root), dedup="content")
        victim = root / "d2" / "f7"
        victim.write_bytes(victim.read_bytes() + b"!")  # after the walk pinned it
        with pytest.raises(Ext4genError) as e:
            ext4gen.plan(tree, options)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "d2/f7" in messages[0] and "changed" in messages[0]


def test_files_read_in_c_are_dependencies_of_the_saved_plan(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest's host files are not pinned by a walk, and the read-ahead's opens are not
    seen by the recording's audit hook: they are pinned as the plan's sources, so changing
    one makes the next serve plan again."""
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"x{i}").write_bytes(os.urandom(9000))
    manifest = tmp_path / "m.toml"
    manifest.write_text("".join(f'["/x{i}"]\nsource = "{data / f"x{i}"}"\n' for i in range(3)))
    time.sleep(host_reads.RACY_NS / 1e9 + 0.05)
    choices = BuildChoices(dedup="content")
    _image, tree, save = plan_source_saved(str(manifest), choices)
    assert tree is not None and save is not None and save() is True
    key = saved_plan.key_for(str(manifest), choices)
    assert key is not None and saved_plan.load(key) is not None  # reused while nothing changed
    (data / "x1").write_bytes(os.urandom(9000))
    time.sleep(host_reads.RACY_NS / 1e9 + 0.05)
    assert saved_plan.load(key) is None, "a file read only by the read-ahead changed unnoticed"
    _image, tree, _save = plan_source_saved(str(manifest), choices)
    assert tree is not None


def test_a_failing_reader_leaves_the_files_to_the_planner(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _files(tmp_path, [BLOCK] * 3)

    def broken(paths: bytes, specs: bytes) -> list:
        raise MemoryError("no room")

    monkeypatch.setattr(read_ahead._hashread, "read_and_hash", broken)
    ahead = read_ahead.ReadAhead(sources)
    assert within(10, lambda: [ahead.take(s) for s in sources]) == [None] * 3
    ahead.close()
    assert isinstance(ahead.error, MemoryError)


def test_a_fifo_in_a_files_place_comes_back_at_once(tmp_path: Path) -> None:
    sources = _files(tmp_path, [BLOCK, BLOCK])
    (tmp_path / "f0").unlink()
    os.mkfifo(tmp_path / "f0")  # no writer: a blocking open would never return
    ahead = read_ahead.ReadAhead(sources)
    assert within(10, lambda: [ahead.take(s) is None for s in sources]) == [True, False]
    ahead.close()


def test_sources_handed_over_in_parts_are_read_in_order(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner hands the reader its files while it still looks others up; the reader
    reads what it has, waits for more, and stops at end() (or close(), if end never comes)."""
    monkeypatch.setattr(read_ahead, "BATCH_FILES", 3)
    sources = _files(tmp_path, [BLOCK + i for i in range(10)])
    ahead = read_ahead.ReadAhead(sources[:4], complete=False)
    try:
        first = within(10, lambda: ahead.take(sources[0]))
        assert first is not None and first[0][:BLOCK] == Path(sources[0].path).read_bytes()[:BLOCK]
        ahead.extend(sources[4:7])
        ahead.extend(sources[7:])
        ahead.end()
        got = within(10, lambda: [ahead.take(s) for s in sources[1:]])
        for s, r in zip(sources[1:], got, strict=True):
            assert r is not None and r[0].rstrip(b"\0") == Path(s.path).read_bytes().rstrip(b"\0")
        within(10, ahead._thread.join)  # ended: the thread stops once all are read
    finally:
        ahead.close()
    waiting = read_ahead.ReadAhead(sources[:2], complete=False)  # never ended
    assert within(10, lambda: waiting.take(sources[1])) is not None
    within(10, waiting.close)
    assert not waiting._thread.is_alive()


def test_a_reader_far_ahead_is_woken_once_per_half_of_its_look_ahead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not once per file taken: each wake-up takes the GIL from the planner."""
    monkeypatch.setattr(read_ahead, "AHEAD_BYTES", 16 * BLOCK)
    monkeypatch.setattr(read_ahead, "BATCH_FILES", 4)
    waits = []

    class Counted(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread().name == "ext4gen-read-ahead":
                waits.append(1)
            return super().wait(timeout)

    monkeypatch.setattr(read_ahead.threading, "Condition", Counted)
    sources = _files(tmp_path, [BLOCK] * 160)
    ahead = read_ahead.ReadAhead(sources)
    try:
        for s in sources:
            time.sleep(0.0005)  # the reader gets (and stays) ahead
            assert ahead.take(s) is not None
    finally:
        ahead.close()
    assert len(waits) < len(sources) / 4, len(waits)
