"""The compiled read path gives exactly the bytes of the pure-Python one, errors included.

Two :class:`ext4gen.Image` objects over one plan, one reading through
``ext4gen/render/_fastread.c`` and one in pure Python, answer the same
hypothesis-generated trees and random requests: whole-image reads, requests
straddling every kind of region boundary, and random (offset, length) pairs.
The trees hold every region kind: metadata of all sorts, host files (dense,
sparse with holes, tar members), inline files, generator files, zero-only
files, duplicates shared by content dedup, and the free tail.  Then a source
changes under the plan: every request either fails with SourceError in both
or returns the same bytes in both (never the new bytes).
"""

from __future__ import annotations

import io
import os
import random
import tarfile
import tempfile
from pathlib import Path

import pytest
from helpers.deadline import within
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ext4gen
from ext4gen.errors import SourceError
from ext4gen.render import fastpath
from ext4gen.render.image import Image

BLOCK = 4096
META = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)
DIR = ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0)


def pattern(offset: int, length: int, seed: int = 0) -> bytes:
    return bytes(((i * 2654435761) >> 13 ^ seed) & 0xFF for i in range(offset, offset + length))


def test_the_extension_is_built() -> None:
    """CI builds it (scripts/setup.sh installs gcc and python3-dev): its absence is a failure here."""
    assert fastpath._fastread is not None, fastpath.unavailable()


pytestmark = pytest.mark.usefixtures("long_used_at_once")


def pair(image: Image) -> tuple[Image, Image]:
    """The compiled image reads sources ahead and leases them, as serving does: hints change
    no byte, and a lease must catch every change the per-read fstat catches."""
    compiled = Image(image.plan, compiled=True)
    compiled.read_ahead(1 << 20)
    assert compiled.use_leases() == ""
    return compiled, Image(image.plan, compiled=False)


def outcome(image: Image, offset: int, length: int) -> bytes | str:
    try:
        return image.read(offset, length)
    except SourceError as e:
        return f"SourceError: {e}"


def requests(image: Image, rng: random.Random, count: int) -> list[tuple[int, int]]:
    """Random requests, half of them straddling a region boundary."""
    bounds = [s for s, _e, _k in image.regions()][1:]
    out = []
    for i in range(count):
        n = rng.choice([1, 17, 512, 4095, 4096, 4097, 8192, 12345, 65536, 200_000])
        n = min(n, image.size)
        if i % 2 and bounds:
            b = rng.choice(bounds)
            off = max(0, min(image.size - n, b - rng.randint(0, n)))
        else:
            off = rng.randrange(0, image.size - n + 1)
        out.append((off, n))
    return out


def assert_identical(compiled: Image, pure: Image, rng: random.Random, count: int = 300) -> None:
    assert compiled.compiled and not pure.compiled
    for off, n in requests(compiled, rng, count):
        a, b = outcome(compiled, off, n), outcome(pure, off, n)
        assert a == b, (off, n, a if isinstance(a, str) else len(a), b if isinstance(b, str) else len(b))


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, object]]:
    """(path, kind, parameter) entries; host files are written by the test."""
    entries: list[tuple[str, str, object]] = []
    for i in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["host", "host", "sparse", "inline", "generator", "zeros", "dup"]))
        if kind in ("host", "inline"):
            size = draw(st.sampled_from([0, 1, 60, 128, 129, 4095, 4096, 4097]) | st.integers(0, 70_000))
        elif kind == "sparse":
            size = draw(st.integers(3, 40)) * BLOCK + draw(st.integers(0, BLOCK - 1))
        elif kind == "generator":
            size = draw(st.sampled_from([0, 100, 5000]) | st.integers(0, 50_000))
        elif kind == "zeros":
            size = draw(st.integers(0, 1 << 22))
        else:
            size = 0
        entries.append((f"/d{i % 3}/f{i}", kind, size))
    for j in range(draw(st.sampled_from([0, 0, 150]))):  # a multi-block directory
        entries.append((f"/many/entry-{j:04d}", "inline", j % 7))
    return entries


def build_tree(entries: list[tuple[str, str, object]], work: Path, rng: random.Random) -> ext4gen.Tree:
    tree = ext4gen.Tree(DIR)
    hosts: list[ext4gen.Source] = []
    for n, (path, kind, size) in enumerate(entries):
        assert isinstance(size, int)
        host = work / f"h{n}"
        if kind == "host":
            host.write_bytes(rng.randbytes(size))
            src: ext4gen.Source = ext4gen.HostFileSource(str(host))
            hosts.append(src)
        elif kind == "sparse":  # data, a hole, data: SEEK_DATA segments (served by Python)
            with open(host, "wb") as f:
                f.write(rng.randbytes(BLOCK + 10))
                f.seek(size - 100)
                f.write(rng.randbytes(100))
            src = ext4gen.HostFileSource(str(host))
        elif kind == "inline":
            src = ext4gen.InlineSource(rng.randbytes(size))
        elif kind == "generator":
            seed = rng.randrange(256)
            src = ext4gen.CallableSource(size, lambda o, k, s=seed: pattern(o, k, s),
                                         identity=("p", seed, size))
        elif kind == "zeros":
            src = ext4gen.ZeroSource(size)
        else:  # a byte copy of an earlier host file: shares its blocks under content dedup
            if not hosts:
                continue
            twin = Path(hosts[rng.randrange(len(hosts))].path)
            host.write_bytes(twin.read_bytes())
            src = ext4gen.HostFileSource(str(host))
        tree.add(path, ext4gen.Node("file", META, source=src))
    tree.add("/link", ext4gen.Node("symlink", ext4gen.Meta(0o777, 0, 0, 0, 0, 0, 0),
                                   source=ext4gen.InlineSource(b"d0/f0")))
    return tree


@pytest.mark.skipif(fastpath._fastread is None, reason="covered by test_the_extension_is_built")
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(entries=trees(), dedup=st.sampled_from(["content", "none"]), inline=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_compiled_and_pure_python_reads_are_identical(entries, dedup: str, inline: bool, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        tree = build_tree(entries, work, rng)
        image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup=dedup, inline_data=inline))
        compiled, pure = pair(image)
        whole = pure.read(0, image.size)
        assert compiled.read(0, image.size) == whole
        assert_identical(compiled, pure, rng)
        # every region alone, and in 4 KiB steps (metadata: rendered by Python, then from C's cache)
        for start, end, _kind in pure.regions():
            assert compiled.read(start, end - start) == whole[start:end]
        # a source changes under the plan: fresh images (no cache yet), the same outcome per request
        victims = sorted(work.iterdir())
        if victims:
            victim = victims[rng.randrange(len(victims))]
            victim.write_bytes(victim.read_bytes()[::-1] + b"!")
            compiled, pure = pair(image)
            assert_identical(compiled, pure, rng, count=120)
            for off, n in requests(compiled, rng, 60):
                got = outcome(compiled, off, n)
                assert isinstance(got, str) or got == whole[off : off + n]  # never the new bytes


def test_tar_members_and_a_changed_archive(tmp_path: Path) -> None:
    """Members are runs of one host file at offsets: coalesced reads, then EIO in both paths."""
    archive = tmp_path / "t.tar"
    rng = random.Random(7)
    with tarfile.open(archive, "w") as tf:
        for i, size in enumerate([5000, 4096, 10, 0, 100_000, 300, 8191]):
            info = tarfile.TarInfo(f"m{i}")
            info.size = size
            tf.addfile(info, io.BytesIO(rng.randbytes(size)))
    for inline in (False, True):
        tree, options = ext4gen.load(str(archive), dedup="none", inline_data=inline)
        compiled, pure = pair(ext4gen.plan(tree, options))
        whole = pure.read(0, pure.size)
        assert compiled.read(0, compiled.size) == whole
        assert_identical(compiled, pure, rng)
    image = ext4gen.plan(tree, options)  # planned (inline members read) before the change
    os.utime(archive, ns=(1, 1))
    compiled, pure = pair(image)
    data = [(s, e) for s, e, k in pure.regions() if k == "data"]
    for s, e in data:
        a, b = outcome(compiled, s, e - s), outcome(pure, s, e - s)
        assert a == b and isinstance(a, str) and "changed" in a, (a, b)


def test_deleted_and_vanished_sources_fail_alike(tmp_path: Path) -> None:
    files = {}
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i + 1]) * 50_000)
        files[f"/f{i}"] = ext4gen.HostFileSource(str(p))
    tree = ext4gen.Tree(DIR)
    for path, src in files.items():
        tree.add(path, ext4gen.Node("file", META, source=src))
    compiled, pure = pair(ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")))
    whole = pure.read(0, pure.size)
    assert compiled.read(0, compiled.size) == whole  # descriptors now cached by both
    assert compiled.read(0, compiled.size) == whole  # used again: now leased (_leases.c)
    assert compiled.stats.leased_reads >= 3
    (tmp_path / "f0").unlink()  # deleted while its descriptor is open (nlink 0, a new ctime)
    os.rename(tmp_path / "f2", tmp_path / "moved")  # renamed (a new ctime): the pin says no
    (tmp_path / "f2").write_bytes(bytes([3]) * 50_000)  # the same bytes by name, another inode
    data = [(s, e) for s, e, k in pure.regions() if k == "data"]
    outcomes = [(outcome(compiled, s, e - s), outcome(pure, s, e - s)) for s, e in data]
    assert [a == b for a, b in outcomes] == [True] * len(data)
    errors = sorted(a for a, _b in outcomes if isinstance(a, str))
    assert len(errors) == 2 and "f0: source" in errors[0] and "f2: source" in errors[1], errors
    for s, e in data:  # a fresh pair opens by name: f2 is now another file
        c2, p2 = pair(compiled)
        assert outcome(c2, s, e - s) == outcome(p2, s, e - s)


def test_statistics_agree_and_count_distinct_blocks(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(random.Random(1).randbytes(300_000))
    tree = ext4gen.Tree(DIR)
    tree.add("/f", ext4gen.Node("file", META, source=ext4gen.HostFileSource(str(p))))
    tree.add("/g", ext4gen.Node("file", META, source=ext4gen.CallableSource(9000, pattern)))
    compiled, pure = pair(ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")))
    rng = random.Random(3)
    reqs = requests(pure, rng, 500)
    for off, n in reqs:
        compiled.read(off, n)
        pure.read(off, n)
    a, b = compiled.stats, pure.stats
    assert (a.requests, a.bytes_data, a.bytes_zero, a.bytes_metadata) == \
        (b.requests, b.bytes_data, b.bytes_zero, b.bytes_metadata)
    blocks = {blk for off, n in reqs for blk in range(off // BLOCK, (off + n - 1) // BLOCK + 1)}
    assert compiled.distinct_blocks_read() == len(blocks)


def test_pure_python_is_selected_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = ext4gen.Tree(DIR)
    tree.add("/a", ext4gen.Node("file", META, source=ext4gen.InlineSource(b"x" * 5000)))
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")
    assert not ext4gen.plan(tree).compiled
    assert "EXT4GEN_PURE_PYTHON" in fastpath.unavailable()
    monkeypatch.delenv("EXT4GEN_PURE_PYTHON")
    assert ext4gen.plan(tree).compiled == (fastpath._fastread is not None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["meta", "zero", "py"]),
                          st.sampled_from([1, 2, 3, 7, 300, 1 << 18, 1 << 28])), min_size=1, max_size=40),
       st.randoms(use_true_random=False))
def test_region_lookup_finds_every_region_of_a_synthetic_table(layout: list[tuple[str, int]],
                                                              rng: random.Random) -> None:
    """The compiled path's coarse index, over regions of one block to a terabyte.

    Each metadata block holds its own number, so a lookup that lands in the wrong
    region serves the wrong bytes; zero regions read as zeros and Python regions
    come back as misses.  Huge zero regions make the index's slices larger than
    most regions, tiny ones make one slice hold many.
    """
    from array import array

    fr = fastpath._fastread
    assert fr is not None, fastpath.unavailable()
    kinds_by_name = {"meta": fr.META, "zero": fr.ZERO, "py": fr.PY}
    starts, kinds, aux, blocks = [], [], [], 0
    slots = 0
    for name, n in layout:
        if name == "meta":
            n = min(n, 7)  # a slot per metadata block
        starts.append(blocks * BLOCK)
        kinds.append(kinds_by_name[name])
        aux.append(slots if name == "meta" else 0)
        slots += n if name == "meta" else 0
        blocks += n
    size = blocks * BLOCK
    zeros = array("q", bytes(8 * len(kinds)))
    table = fr.Table(array("Q", [*starts, size]), array("B", kinds), array("q", aux), zeros, zeros,
                     [], slots, slots + 1)
    meta_blocks = [b for (name, n), s in zip(layout, starts, strict=True) if name == "meta"
                   for b in range(s // BLOCK, s // BLOCK + min(n, 7))]
    for b in meta_blocks:
        assert table.put_block(b, b.to_bytes(8, "little") * (BLOCK // 8))
    probes = [(b, "meta") for b in meta_blocks]
    for (name, n), s in zip(layout, starts, strict=True):
        first = s // BLOCK
        probes += [(first, name), (first + min(n, 7 if name == "meta" else n) - 1, name),
                   (first + rng.randrange(min(n, 7 if name == "meta" else n)), name)]
    buf = bytearray(BLOCK)
    for b, name in probes:
        left = table.read(buf, b * BLOCK)
        if name == "meta":
            assert left is None and bytes(buf) == b.to_bytes(8, "little") * (BLOCK // 8), b
        elif name == "zero":
            buf[:] = b"\xff" * BLOCK
            assert table.read(buf, b * BLOCK) is None and not any(buf), b
        else:
            assert left == [(b * BLOCK, (b + 1) * BLOCK)], (b, left)
    assert table.read(bytearray(), size) is None


def reference_table_inputs(regions: list, size: int) -> tuple:
    """The definition ``_fastread.table_inputs`` computes in C, as the Python loop it replaced."""
    from ext4gen.render.image import DataRegion, MetaRegion, ZeroRegion

    fr = fastpath._fastread
    starts, kinds, aux, offs, lens = [], [], [], [], []
    files: list[tuple] = []
    index: dict[int, int] = {}
    slots = 0
    for r in regions:
        starts.append(r.start)
        a = o = n = 0
        if type(r) is DataRegion and r.host is not None:
            kind = fr.FILE
            a = index.get(id(r.host), len(files))
            if a == len(files):
                index[id(r.host)] = a
                files.append((r.host.path, *r.host.pin))
            o, n = r.file_offset, r.nbytes
        elif type(r) is ZeroRegion:
            kind = fr.ZERO
        elif type(r) is MetaRegion:
            kind, a = fr.META, slots
            slots += (r.end - r.start) // BLOCK
        else:
            kind = fr.PY
        kinds.append(kind)
        aux.append(a)
        offs.append(o)
        lens.append(n)
    return ([*starts, size], kinds, aux, offs, lens, files, slots)


@pytest.mark.parametrize("dedup", ["none", "content"])
def test_table_inputs_are_read_from_every_kind_of_region(tmp_path: Path, dedup: str) -> None:
    """Tar members (runs of one host file at offsets), host files, a generator's and inline
    files, duplicates, metadata and zeros: the arrays C reads off the region records are
    the Python definition's, and every host file is one entry however many runs read it."""
    from array import array

    from ext4gen.render.image import DataRegion, MetaRegion, ZeroRegion

    fr = fastpath._fastread
    if fr is None:
        pytest.skip(f"compiled path unavailable: {fastpath.unavailable()}")
    archive = tmp_path / "t.tar"
    rng = random.Random(3)
    with tarfile.open(archive, "w") as tf:
        for i, size in enumerate([5000, 4096, 10, 100_000, 8191, 5000]):
            info = tarfile.TarInfo(f"m{i}")
            info.size = size
            tf.addfile(info, io.BytesIO(rng.randbytes(size) if i < 5 else b"\1" * size))
    tree, options = ext4gen.load(str(archive), dedup=dedup)
    for i in range(3):
        host = tmp_path / f"h{i}"
        host.write_bytes(pattern(0, 20_000 + i, seed=i))
        tree.add(f"/h{i}", ext4gen.Node("file", META, source=ext4gen.HostFileSource(str(host))))
    tree.add("/dup", ext4gen.Node("file", META, source=ext4gen.HostFileSource(str(tmp_path / "h1"))))
    tree.add("/gen", ext4gen.Node("file", META, source=ext4gen.CallableSource(
        9000, lambda o, k: pattern(o, k, 5), identity=("p", 5, 9000))))
    with open(tmp_path / "sparse", "wb") as f:  # SEEK_DATA segments: Python reads it
        f.write(b"s" * (BLOCK + 10))
        f.seek(20 * BLOCK)
        f.write(b"e" * 100)
    tree.add("/sparse", ext4gen.Node("file", META,
                                     source=ext4gen.HostFileSource(str(tmp_path / "sparse"))))
    image = ext4gen.plan(tree, options)
    size = image.size + 2 * BLOCK  # a free tail (this image has none: every block is used)
    regions = [*image._regions, ZeroRegion(image.size, size)]
    got = fr.table_inputs(regions, size, DataRegion, ZeroRegion, MetaRegion)
    want = reference_table_inputs(regions, size)
    decoded = [list(array(code, raw)) for code, raw in zip("QBqqq", got[:5], strict=True)]
    assert (*decoded, got[5], got[6]) == want
    kinds = set(want[1])
    assert {fr.FILE, fr.ZERO, fr.META, fr.PY} <= kinds, kinds
    assert len(want[5]) == 4 if dedup == "content" else 5  # the archive once, h0..h2, h1 again


def test_the_metadata_block_cache_fills_then_evicts_by_clock() -> None:
    """The compiled path's cache of rendered metadata: entries never written (the pool is
    calloc'd, not initialised) must not evict anything, and once the pool is full the clock
    evicts the least recently read block, whose reads then miss instead of serving another
    block's bytes."""
    from array import array

    fr = fastpath._fastread
    if fr is None:
        pytest.skip(f"compiled path unavailable: {fastpath.unavailable()}")
    blocks = 6
    zeros = array("q", [0])
    table = fr.Table(array("Q", [0, blocks * BLOCK]), array("B", [fr.META]), zeros, zeros, zeros,
                     [], blocks, 3)

    def content(b: int) -> bytes:
        return b.to_bytes(8, "little") * (BLOCK // 8)

    def cached(b: int) -> bool:
        buf = bytearray(BLOCK)
        left = table.read(buf, b * BLOCK)
        assert left is None or left == [(b * BLOCK, (b + 1) * BLOCK)], (b, left)
        assert left is not None or bytes(buf) == content(b), b
        return left is None

    for b in range(3):  # the pool's three entries, each written for the first time
        assert table.put_block(b, content(b))
        assert [cached(k) for k in range(blocks)] == [k <= b for k in range(blocks)], b
    assert table.put_block(3, content(3))  # full, every entry read since: block 0 goes
    assert [cached(k) for k in range(blocks)] == [False, True, True, True, False, False]
    assert table.put_block(4, content(4))
    assert [cached(k) for k in range(blocks)] == [False, False, True, True, True, False]


def test_a_source_swapped_for_a_fifo_fails_at_once_on_both_paths(tmp_path: Path) -> None:
    """Opening a FIFO with no writer blocks; sources are opened non-blocking, so the pin
    check answers (EIO) instead of a serving thread hanging for good."""
    p = tmp_path / "f"
    p.write_bytes(b"x" * 50_000)
    tree = ext4gen.Tree(DIR)
    tree.add("/f", ext4gen.Node("file", META, source=ext4gen.HostFileSource(str(p))))
    compiled, pure = pair(ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")))
    p.unlink()
    os.mkfifo(p)
    data = [(s, e) for s, e, k in pure.regions() if k == "data"]
    got = within(10, lambda: [(outcome(compiled, s, e - s), outcome(pure, s, e - s)) for s, e in data],
                 "a read of a FIFO-swapped source")
    assert got and all(a == b and isinstance(a, str) and "changed" in a for a, b in got), got
