"""Source read-ahead and metadata pre-rendering: what serving does before a client asks.

The compiled read path (``_fastread.c``) reads source files ahead of a client
that reads the image in order (a thread hints the kernel with
POSIX_FADV_WILLNEED), and ``Image.prerender_metadata`` fills its metadata cache
before the first mount.  Neither may change a byte: the reads here are checked
against the pure-Python path.  Page-cache residency comes from mincore(2)
(``helpers.pagecache``).
"""

from __future__ import annotations

import gc
import os
import signal
import time
from pathlib import Path

import pytest
from helpers.deadline import within
from helpers.pagecache import cached, evict

import ext4gen
from ext4gen.render import fastpath
from ext4gen.render.image import Image

BLOCK = 4096
META = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)
DIR = ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0)
FILE_SIZE = 64 * 1024
NFILES = 160  # 10 MiB of data: more than the 4 MiB window

pytestmark = pytest.mark.skipif(fastpath._fastread is None, reason="the compiled read path is not built")


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = []
    for i in range(NFILES):
        p = tmp_path / f"f{i:04d}"
        p.write_bytes(os.urandom(FILE_SIZE))
        out.append(p)
    return out


def planned(files: list[Path]) -> Image:
    tree = ext4gen.Tree(DIR)
    for p in files:
        tree.add(f"/{p.name}", ext4gen.Node("file", META, source=ext4gen.HostFileSource(str(p))))
    return ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none"))


def data_ranges(image: Image) -> list[tuple[int, int]]:
    return [(s, e) for s, e, k in image.regions() if k == "data"]


def file_at(image: Image, files: list[Path], offset: int) -> Path:
    """The source file whose data the image holds at ``offset`` (regions are one file each)."""
    by_name = {str(p): p for p in files}
    for region in image._regions:
        if region.start <= offset < region.end:
            return by_name[region.host.path]
    raise AssertionError(offset)


def settle(image: Image) -> dict:
    """The compiled path's counters once the read-ahead thread has stopped changing them."""
    last = None
    for _ in range(200):
        now = image._fast.stats()
        if now == last:
            return now
        last = now
        time.sleep(0.02)
    return last


def test_a_sequential_reader_gets_the_next_files_read_ahead(files: list[Path]) -> None:
    image = planned(files)
    pure = Image(image.plan, compiled=False)
    assert image.read_ahead(4 << 20)
    data = data_ranges(image)
    start, end = data[0][0], data[-1][1]
    middle = start + (end - start) // 2
    evict(files)
    assert not any(cached(p, 0) for p in files)
    step = 128 * 1024
    got = b"".join(image.read(off, min(step, middle - off)) for off in range(start, middle, step))
    after = middle + 2 * FILE_SIZE  # files just past the reader: asked for, and so cached
    deadline = time.monotonic() + 10
    while not cached(file_at(image, files, after), 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cached(file_at(image, files, after), 0)
    assert cached(file_at(image, files, after), FILE_SIZE - 1)
    stats = settle(image)
    assert stats["readahead_windows"] > 0 and stats["readahead_bytes"] > 0, stats
    # never beyond the window: the last file is further than 4 MiB past the reader
    assert end - middle > (4 << 20) + FILE_SIZE
    assert not cached(file_at(image, files, end - 1), 0)
    assert image.stats.bytes_read_ahead == stats["readahead_bytes"]
    assert got == pure.read(start, middle - start)


def test_cached_sources_are_not_hinted_again(files: list[Path]) -> None:
    image = planned(files)
    image.read_ahead(4 << 20)
    start, end = data_ranges(image)[0][0], data_ranges(image)[-1][1]
    for p in files:
        p.read_bytes()  # all cached
    for off in range(start, end, 128 * 1024):
        image.read(off, min(128 * 1024, end - off))
    stats = settle(image)
    assert stats["readahead_windows"] > 0 and stats["readahead_bytes"] == 0, stats
    assert stats["readahead_around"] == 0 and stats["cold_reads"] == 0, stats


@pytest.mark.parametrize("copies", ["pread", "mapped"])
def test_a_warm_stream_goes_quiet_until_a_request_misses_the_cache(
        files: list[Path], copies: str, request: pytest.FixtureRequest) -> None:
    """Once a window found every source cached, the stream queues no more windows (no
    cachestat calls, no thread wake-ups on warm serving); the first request whose data is
    not cached (RWF_NOWAIT said so) starts reading ahead again from where the reader is.
    ``mapped``: sources are mapped at their second use, and a request copies from the mapping
    what mincore says is cached; what is not must still be read by pread, and miss."""
    if copies == "mapped":
        request.getfixturevalue("long_used_at_once")
    image = planned(files)
    pure = Image(image.plan, compiled=False)
    image.read_ahead(4 << 20)
    start, end = data_ranges(image)[0][0], data_ranges(image)[-1][1]
    middle = start + (end - start) // 2
    step = 128 * 1024
    for p in files:
        p.read_bytes()  # all cached
    if copies == "mapped":
        image.read(start, end - start)  # opens every source: each is mapped at its next use
    offsets = iter(range(start, end, step))
    got = [image.read(next(offsets), step) for _ in range(3)]
    first = settle(image)  # the third request queued a window, and it found all cached
    assert first["readahead_windows"] == 1 and first["readahead_quiet"] == 1, first
    assert first["readahead_bytes"] == 0
    while (off := next(offsets)) < middle - step:
        got.append(image.read(off, step))
    assert settle(image)["readahead_windows"] == 1  # 4 MiB more, and no window
    # RWF_NOWAIT starts the read of an evicted page and returns it when the read completes
    # within the call (this VM's disk, a file on the host, sometimes does, ten times in a
    # row too): that is no miss, and rightly no window.  So evict again and read the same
    # bytes again (a stream's reader may re-read) until a request misses.  A mapped copy
    # asks mincore first: its misses are certain.
    got.append(image.read(off, step))
    attempts = 0
    while attempts < 40:
        attempts += 1
        evict([p for p in files if p != file_at(image, files, off)])
        last = image.read(off + step, step)
        if settle(image)["readahead_windows"] > 1:
            break
    got.append(last)
    ahead = file_at(image, files, off + 4 * step)
    deadline = time.monotonic() + 10
    while not cached(ahead, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cached(ahead, 0)
    again = settle(image)
    assert again["readahead_windows"] > 1 and again["readahead_bytes"] > 0, again
    assert b"".join(got) == pure.read(start, off + 2 * step - start)
    assert (image.stats.mapped_reads > 0) == (copies == "mapped")
    assert copies == "pread" or attempts == 1  # mincore saw the miss: no luck needed


@pytest.mark.parametrize("order", ["forward jumps", "backward"])
def test_jumps_start_no_read_ahead(files: list[Path], order: str) -> None:
    """Requests a megabyte apart (forward or backward) are no stream: nothing is read ahead."""
    image = planned(files)
    image.read_ahead(4 << 20)
    start, end = data_ranges(image)[0][0], data_ranges(image)[-1][1]
    offsets = list(range(start, end - BLOCK, 1 << 20))
    if order == "backward":
        offsets.reverse()
    evict(files)
    for off in offsets * 3:
        image.read(off, BLOCK)
    stats = settle(image)
    assert stats["readahead_windows"] == 0 and stats["readahead_bytes"] == 0, stats
    assert stats["readahead_around"] == 0, stats


def test_a_stream_through_windows_read_around_does_not_go_quiet(files: list[Path]) -> None:
    """A sequential reader that starts cold has its window read around, so the stream's own
    windows then find their sources cached: cached by the read-around, not by a client.  The
    stream must not go quiet on that (it would then wait for a miss it may never see: a disk
    that answers within RWF_NOWAIT's call shows none), and its read-ahead goes on past the
    read-around window."""
    image = planned(files)
    window = 4 << 20
    assert image.read_ahead(window)
    start = data_ranges(image)[0][0]
    evict(files)
    step = 128 * 1024
    for off in range(start, start + (2 << 20), step):
        image.read(off, step)
    stats = settle(image)
    assert stats["readahead_around"] >= 1 and stats["readahead_quiet"] == 0, stats


@pytest.mark.parametrize("copies", ["pread", "mapped"])
def test_a_file_read_cold_gets_the_files_of_its_window_read_around(
        files: list[Path], copies: str, request: pytest.FixtureRequest) -> None:
    """A reader walking a directory takes its files in hash order, which jumps about their
    data: no stream forms.  A request of a whole file (not a small random read) that misses
    the page cache has the sources of its aligned window (the read-ahead window) asked for,
    and only those, once: a second miss in the window lately asks for nothing more.
    ``mapped``: the miss is seen by mincore before any read (the sources are mapped)."""
    if copies == "mapped":
        request.getfixturevalue("long_used_at_once")
    image = planned(files)
    pure = Image(image.plan, compiled=False)
    window = 4 << 20
    assert image.read_ahead(window)
    data = data_ranges(image)
    if copies == "mapped":  # opens every source: each is mapped at its next use (cold then:
        image.read(data[0][0], data[-1][1] - data[0][0])  # no page is mapped, all evictable)
        assert settle(image)["readahead_around"] == 0
    lo = -(-data[0][0] // window) * window  # the first whole window
    inside = [(s, e) for s, e in data if lo <= s and e <= lo + window]
    after = [(s, e) for s, e in data if s >= lo + window]
    assert len(inside) > 8 and after
    picked = inside[len(inside) // 2]
    others = [file_at(image, files, s) for s, _ in inside if s != picked[0]]
    attempts = 0
    while attempts < 40:  # a disk that answers within RWF_NOWAIT's call is no miss: again
        attempts += 1
        evict(files)
        got = image.read(picked[0], picked[1] - picked[0])
        if settle(image)["readahead_around"]:
            break
    deadline = time.monotonic() + 10
    while not all(cached(p, 0) for p in others) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(cached(p, 0) and cached(p, FILE_SIZE - 1) for p in others)
    assert not any(cached(file_at(image, files, s), 0) for s, _ in after)
    stats = settle(image)
    assert stats["readahead_around"] == 1 and stats["cold_reads"] >= 1, stats
    assert got == pure.read(picked[0], picked[1] - picked[0])
    evict(others)  # the same window again, lately: nothing more is asked for
    second = inside[1]
    assert image.read(second[0], second[1] - second[0]) == pure.read(second[0], second[1] - second[0])
    assert settle(image)["readahead_around"] == 1
    assert not any(cached(p, 0) for p in others if p != file_at(image, files, second[0]))
    assert copies == "pread" or attempts == 1  # mincore saw the miss: no luck needed


def test_read_ahead_is_off_until_asked_for_and_zero_stops_it(files: list[Path]) -> None:
    image = planned(files)
    start, end = data_ranges(image)[0][0], data_ranges(image)[-1][1]

    def sweep() -> dict:
        for off in range(start, end, 128 * 1024):
            image.read(off, min(128 * 1024, end - off))
        return settle(image)

    assert sweep()["readahead_windows"] == 0
    image.read_ahead(4 << 20)
    windows = sweep()["readahead_windows"]
    assert windows > 0
    image.read_ahead(0)
    assert sweep()["readahead_windows"] == windows
    assert not Image(image.plan, compiled=False).read_ahead()  # the pure path has none


def test_a_forked_child_reads_ahead_with_its_own_thread(files: list[Path]) -> None:
    """The thread stays in the parent at a fork (nbdkit forks into the background): the
    child starts its own, and its image is freed without waiting for the parent's."""
    image = planned(files)
    pure = Image(image.plan, compiled=False)
    image.read_ahead(4 << 20)
    start, end = data_ranges(image)[0][0], data_ranges(image)[-1][1]
    for off in range(start, start + (1 << 20), 128 * 1024):
        image.read(off, 128 * 1024)
    before = settle(image)["readahead_windows"]
    assert before > 0
    expect = pure.read(start, end - start)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            got = b"".join(image.read(off, min(128 * 1024, end - off))
                           for off in range(start, end, 128 * 1024))
            grew = settle(image)["readahead_windows"] > before
            code = 0 if got == expect and grew else 3
            del image
            gc.collect()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # a lock held across the fork: the child hangs
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish in 60 s")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0

    def free() -> None:
        nonlocal image
        del image
        gc.collect()  # joins the parent's thread

    within(30, free, "freeing the parent's image")


def test_prerendered_metadata_is_served_without_python(tmp_path: Path) -> None:
    tree = ext4gen.Tree(DIR)
    for d in range(30):
        for f in range(40):
            source = ext4gen.InlineSource(b"x" * (f * 97))
            tree.add(f"/d{d:02d}/f{f:02d}", ext4gen.Node("file", META, source=source))
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none"))
    pure = Image(image.plan, compiled=False)
    metas = [(s, e) for s, e, k in image.regions() if k == "metadata"]
    total = sum(e - s for s, e in metas) // BLOCK
    assert image.prerender_metadata() == total
    assert image.stats.metadata_blocks_generated == total
    for s, e in metas:
        assert image.read(s, e - s) == pure.read(s, e - s)
    stats = image._fast.stats()
    assert stats["cache_misses"] == 0 and stats["cache_hits"] == total, stats
    assert image.stats.metadata_blocks_generated == total  # nothing rendered on a read
    assert Image(image.plan, compiled=False).prerender_metadata() == 0


def test_prerendering_skips_blocks_a_client_read_already() -> None:
    """A client may read metadata while pre-rendering runs (it yields the GIL between
    blocks): those blocks are rendered once, so 'generated' and the cache hits the shutdown
    line derives from it stay exact."""
    tree = ext4gen.Tree(DIR)
    for f in range(40):
        tree.add(f"/f{f:02d}", ext4gen.Node("file", META, source=ext4gen.InlineSource(b"z" * 3000)))
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none"))
    metas = [(s, e) for s, e, k in image.regions() if k == "metadata"]
    total = sum(e - s for s, e in metas) // BLOCK
    first = metas[0][0]
    image.read(first, 2 * BLOCK)  # a client got there first
    assert image.stats.metadata_blocks_generated == 2
    assert image._fast.has_block(first // BLOCK) and not image._fast.has_block(metas[-1][0] // BLOCK)
    assert image.prerender_metadata() == total - 2
    assert image.stats.metadata_blocks_generated == total
    image.read(first, BLOCK)
    assert image.stats.metadata_cache_hits == 1


def test_prerendering_stops_at_its_limit_and_leaves_bitmaps_last(tmp_path: Path) -> None:
    tree = ext4gen.Tree(DIR)
    for f in range(50):
        tree.add(f"/f{f:02d}", ext4gen.Node("file", META, source=ext4gen.InlineSource(b"y" * 5000)))
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none"))
    geo = image.plan.geometry
    bitmap_blocks = {geo.block_bitmap_start + g for g in range(geo.groups)} | \
        {geo.inode_bitmap_start + g for g in range(geo.groups)}
    metas = [(s // BLOCK, e // BLOCK) for s, e, k in image.regions() if k == "metadata"]
    blocks = [b for s, e in metas for b in range(s, e)]
    others = [b for b in blocks if b not in bitmap_blocks]
    bitmaps = [b for b in blocks if b in bitmap_blocks]
    assert bitmaps and others
    assert image.prerender_metadata(limit=len(others)) == len(others)
    for b in others:
        image.read(b * BLOCK, BLOCK)
    assert image._fast.stats()["cache_misses"] == 0
    image.read(bitmaps[0] * BLOCK, BLOCK)
    assert image._fast.stats()["cache_misses"] == 1


def test_the_residency_probe_sees_reads_and_evictions(tmp_path: Path) -> None:
    """The probe these tests rely on: without it, 'not read ahead' could not fail."""
    p = tmp_path / "probe"
    p.write_bytes(b"z" * FILE_SIZE)
    evict([p])
    assert not cached(p, 0) and not cached(p, FILE_SIZE - 1)
    with open(p, "rb") as f:
        f.read(BLOCK)
    assert cached(p, 0)
    evict([p])
    assert not cached(p, 0)
