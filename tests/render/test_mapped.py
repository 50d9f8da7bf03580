"""Source mappings (``ext4gen/render/_mapped.c``): reads of a source the server keeps reading
are copied from a shared mapping of the file instead of a pread: small random ones always,
others when the page cache holds their bytes.

A mapping must give the bytes and the errors a pread gives, with or without leases: a copy
that faults (the file was truncated under it) must fail that read like a short pread, and
leave the server running; a SIGBUS that is not ext4gen's must still do what it did before.
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.hostfiles import host_tree, race
from helpers.pagecache import cached, evict

import ext4gen
from ext4gen.errors import SourceError
from ext4gen.render import fastpath
from ext4gen.render.image import Image

SIZE = 50_000

pytestmark = [pytest.mark.skipif(fastpath._fastread is None, reason="the extension is not built"),
              pytest.mark.usefixtures("long_used_at_once")]


def images(tmp_path: Path, n: int, leases: bool, readahead: bool = False, size: int = SIZE,
           ) -> tuple[Image, Image, list[Path], list[tuple[int, int]]]:
    """A compiled image whose sources are open (and so mapped at their next use), the
    pure-Python image of the same plan, the sources, and each source's data region.
    With ``readahead``, as serving does, only reads that feed no read-ahead stream (small,
    and not within 256 KiB of the previous one) are mapped."""
    tree, paths = host_tree(tmp_path, n, size)
    plan = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")).plan
    compiled, pure = Image(plan, compiled=True), Image(plan, compiled=False)
    if readahead:
        compiled.read_ahead(1 << 20)
    if leases:
        why = compiled.use_leases()
        if why:
            pytest.skip(f"no leases here: {why}")
    assert compiled.read(0, compiled.size) == pure.read(0, pure.size)  # opens every source
    data = [(s, e) for s, e, k in pure.regions() if k == "data"]
    assert len(data) == n
    return compiled, pure, paths, data


def outcome(image: Image, start: int, length: int) -> bytes | str:
    try:
        return image.read(start, length)
    except SourceError as e:
        return str(e)


def random_small_reads(data: list[tuple[int, int]], rng: random.Random, count: int,
                       size: int = SIZE) -> list[tuple[int, int]]:
    """Requests under 16 KiB within the sources' bytes (not the zeros that pad their last
    block): reads that start no read-ahead stream when far from each other."""
    out = []
    for _ in range(count):
        s, _e = rng.choice(data)
        n = rng.choice([1, 512, 4096, 5000, 12345])
        out.append((rng.randrange(s, s + size - n), n))
    return out


@pytest.mark.parametrize("leases", [True, False], ids=["leases", "no-leases"])
def test_small_random_reads_are_copied_from_a_mapping(tmp_path: Path, leases: bool) -> None:
    compiled, pure, _paths, data = images(tmp_path, 4, leases)
    before = compiled.stats.mapped_reads
    for off, n in random_small_reads(data, random.Random(1), 300):
        assert compiled.read(off, n) == pure.read(off, n)
    assert compiled.stats.mapped_reads == before + 300


def test_with_read_ahead_on_random_reads_are_mapped_too(tmp_path: Path) -> None:
    compiled, pure, _paths, data = images(tmp_path, 8, True, readahead=True, size=1 << 20)
    before = compiled.stats.mapped_reads
    for off, n in random_small_reads(data, random.Random(1), 300, 1 << 20):
        assert compiled.read(off, n) == pure.read(off, n)
    # 8 MiB of data: about one read in eight lands within 256 KiB of the one before
    assert compiled.stats.mapped_reads >= before + 200


def test_large_and_sequential_reads_copy_what_the_page_cache_holds(tmp_path: Path) -> None:
    """Large requests, and small ones that continue each other, copy from the mapping too
    when mincore says the page cache holds their run."""
    compiled, pure, _paths, data = images(tmp_path, 2, False, readahead=True)
    before, reads = compiled.stats.mapped_reads, 0
    for s, e in data:
        assert compiled.read(s, e - s) == pure.read(s, e - s)
        for off in range(s, e - 4096, 4096):
            assert compiled.read(off, 4096) == pure.read(off, 4096)
        reads += 1 + len(range(s, e - 4096, 4096))
    assert compiled.stats.mapped_reads == before + reads


@pytest.mark.parametrize("readahead", [True, False], ids=["read-ahead", "no-read-ahead"])
def test_a_run_out_of_the_page_cache_is_read_by_pread(tmp_path: Path, readahead: bool) -> None:
    """A large read must not fault its pages in one at a time through the mapping
    (MADV_RANDOM), nor hide its miss from read-ahead: a run not all cached is read by pread.
    The pread caches it, and the same read then copies from the mapping."""
    compiled, pure, paths, data = images(tmp_path, 2, False, readahead=readahead)
    evict(paths)  # nothing is mapped in the page tables yet: images() read by pread
    s, e = data[0]
    assert not cached(paths[0], 0)
    before = compiled.stats.mapped_reads
    assert compiled.read(s, e - s) == pure.read(s, e - s)
    assert compiled.stats.mapped_reads == before
    assert compiled.read(s, e - s) == pure.read(s, e - s)
    assert compiled.stats.mapped_reads == before + 1


AS_USER = """
import json, sys
sys.path[:0] = {path!r}
import ext4gen
from ext4gen.render import fastpath
from ext4gen.render.image import Image
fastpath._fastread.set_lease_after(0)
tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
tree.add("/f", ext4gen.Node("file", ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0),
                            source=ext4gen.HostFileSource({src!r})))
image = Image(ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")).plan, compiled=True)
s, e = next((s, e) for s, e, k in image.regions() if k == "data")
whole = image.read(s, e - s)  # opens the source, cached from here on
again = image.read(s, e - s)  # maps it: a large read, copied only if known cached
large = image.stats.mapped_reads
small = image.read(s + 8192, 4096)  # no read-ahead: a small read copies whatever
expected = open({src!r}, "rb").read()
print(json.dumps([large, image.stats.mapped_reads,
                  whole[:len(expected)] == again[:len(expected)] == expected,
                  small == expected[8192:12288]]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another user (CI runs as "
                    "root, where this test must run)")
@pytest.mark.parametrize("user", ["owner", "another user"])
def test_where_the_kernel_hides_the_page_cache_large_reads_go_by_pread(user: str) -> None:
    """The kernel tells a process a file's page cache only if it owns the file or could write
    it: to anyone else mincore says every page is cached.  Reading root's file as nobody, a
    large read must not trust it (a cold run would fault in one page at a time, and hide its
    miss from read-ahead); small random reads still copy."""
    shared = Path(tempfile.mkdtemp(prefix="ext4gen-mapped-"))  # tmp_path is root's alone
    try:
        shared.chmod(0o755)
        src = shared / "src"
        src.write_bytes(random.Random(5).randbytes(SIZE))
        src.chmod(0o644)
        code = AS_USER.format(path=sys.path, src=str(src))
        switch = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        if user == "another user":
            can = subprocess.run([*switch, sys.executable, "-c", f"import sys; sys.path[:0] = "
                                  f"{sys.path!r}; import ext4gen.render._fastread"],
                                 cwd=shared, capture_output=True, text=True, timeout=60)
            if can.returncode:  # e.g. a checkout under /root, mode 0700
                pytest.skip(f"nobody cannot run this Python and import ext4gen here: "
                            f"{can.stderr.strip().splitlines()[-1:]}")
        out = subprocess.run([*(switch if user == "another user" else []), sys.executable, "-c",
                              code], cwd=shared, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        large, total, same, small = json.loads(out.stdout)
        assert same and small
        assert large == (user == "owner")
        assert total == large + 1
    finally:
        shutil.rmtree(shared)


def test_mappings_go_with_their_descriptors(tmp_path: Path) -> None:
    held = fastpath._fastread.maps_held()
    compiled, pure, _paths, data = images(tmp_path, 3, False)
    for s, _e in data:
        assert compiled.read(s + 8192, 4096) == pure.read(s + 8192, 4096)
    assert fastpath._fastread.maps_held() == held + 3
    del compiled
    gc.collect()
    assert fastpath._fastread.maps_held() == held


def test_descriptors_the_clock_evicts_take_their_mappings_along(tmp_path: Path) -> None:
    """More sources than the descriptor budget: the clock closes idle descriptors to open
    others, and their mappings go too (unmapped once the lock is released)."""
    from ext4gen.model.sources import source_fd_budget

    held = fastpath._fastread.maps_held()
    compiled, pure, _paths, data = images(tmp_path, 12, False)
    compiled._fast.close()  # every descriptor idle: closed
    try:
        fastpath._fastread.set_fd_budget(fastpath._fastread.set_fd_budget(1 << 20) + 4)
        for rnd in range(3):
            for k, (s, _e) in enumerate(data):
                off = s + 4096 * ((k + rnd) % 8)
                for _ in range(2):  # opened (evicting another), then mapped
                    assert compiled.read(off, 4096) == pure.read(off, 4096)
                assert fastpath._fastread.maps_held() <= held + 4
        stats = compiled._fast.stats()
        assert stats["open_fds"] <= 4 and stats["opens"] >= 12 * 3
        assert compiled.stats.mapped_reads >= 12 * 3
    finally:
        fastpath.set_fd_budget(source_fd_budget())
    del compiled
    gc.collect()
    assert fastpath._fastread.maps_held() == held


def test_mappings_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXT4GEN_NO_MAPPING", "1")
    compiled, pure, _paths, data = images(tmp_path, 2, False)
    for off, n in random_small_reads(data, random.Random(2), 50):
        assert compiled.read(off, n) == pure.read(off, n)
    assert compiled.stats.mapped_reads == 0


def other_process(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


CHANGES: dict[str, Callable[[Path], object]] = {
    "truncated by another process": lambda p: other_process(f"import os; os.truncate({str(p)!r}, 100)"),
    "truncated by this process": lambda p: os.truncate(p, 100),
    # truncates without breaking a read lease: the mapped page is gone, a SIGBUS in the copy
    "opened read-only with O_TRUNC": lambda p: os.close(os.open(p, os.O_RDONLY | os.O_TRUNC)),
    "rewritten in place by another process": lambda p: other_process(
        f"f = open({str(p)!r}, 'r+b'); f.seek(8192); f.write(b'X' * 4096)"),
    "deleted": lambda p: p.unlink(),
}


@pytest.mark.parametrize("size", [4096, 32768], ids=["small", "large"])
@pytest.mark.parametrize("leases", [True, False], ids=["leases", "no-leases"])
@pytest.mark.parametrize("how", CHANGES)
def test_a_change_under_a_mapping_fails_the_next_read_as_pread_would(
        tmp_path: Path, how: str, leases: bool, size: int) -> None:
    """``small``: a random read, copied whatever the page cache holds; ``large``: copied only
    when mincore says the page cache holds it."""
    compiled, pure, paths, data = images(tmp_path, 3, leases)
    s1 = data[1][0]
    assert compiled.read(s1 + 8192, size) == pure.read(s1 + 8192, size)
    assert compiled.stats.mapped_reads == 1
    CHANGES[how](paths[1])
    a, b = outcome(compiled, s1 + 8192, size), outcome(pure, s1 + 8192, size)
    assert isinstance(a, str) and a == b and "f1: source" in a, (how, a, b)
    # truncated: a small copy faulted and pread told why, a large one saw the pages gone and
    # went by pread at once; else the copy succeeded, and the check after it failed
    truncated = "truncated" in how or "O_TRUNC" in how
    assert compiled._fast.stats()["map_faults"] == (truncated and size == 4096)
    assert compiled.stats.mapped_reads == 1 + (not truncated)
    for s, _e in (data[0], data[2]):  # the others still read, from their mappings
        assert outcome(compiled, s + 4096, 4096) == pure.read(s + 4096, 4096)


@pytest.mark.parametrize("leases", [True, False], ids=["leases", "no-leases"])
def test_reads_racing_a_rewrite_and_a_truncation_never_return_wrong_bytes(
        tmp_path: Path, leases: bool) -> None:
    """Four threads read pieces of a mapped source (small ones, copied whatever is cached, and
    large ones, copied when mincore says cached: a truncation can land between the two) while
    another process rewrites it block by block and then truncates it: every read is the
    planned bytes or an error."""
    compiled, pure, paths, data = images(tmp_path, 1, leases)
    s, e = data[0]
    old = pure.read(s, e - s)

    def read(rng: random.Random) -> str:
        n = rng.choice([4096, 20000])
        off = rng.randrange(0, e - s - n)
        got = outcome(compiled, s + off, n)
        return "error" if isinstance(got, str) else "old" if got == old[off:off + n] else "wrong"

    mapped = compiled.stats.mapped_reads
    seen = race(read, lambda: other_process(
        f"import os\nf = os.open({str(paths[0])!r}, os.O_WRONLY)\n"
        "for i in range(12):\n    os.pwrite(f, b'x' * 4096, i * 4096)\n"
        "os.ftruncate(f, 4096)\n"))
    assert seen["wrong"] == 0, seen
    assert seen["old"] > 0 and seen["error"] > 0, seen
    assert compiled.stats.mapped_reads > mapped
    assert isinstance(outcome(compiled, s + 8192, 4096), str)


FOREIGN_SIGBUS = """
import mmap, os, sys
sys.path[:0] = {path!r}
import ext4gen
from ext4gen.render import fastpath
from ext4gen.render.image import Image
fastpath._fastread.set_lease_after(0)
src = {src!r}
tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
tree.add("/f", ext4gen.Node("file", ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0),
                            source=ext4gen.HostFileSource(src)))
image = Image(ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")).plan, compiled=True)
s = next(s for s, e, k in image.regions() if k == "data")
image.read(s, 4096)
image.read(s + 8192, 4096)
assert image.stats.mapped_reads == 1, image.stats  # ext4gen's SIGBUS handler is in place
{then}
victim = {victim!r}
with open(victim, "wb") as f:
    f.write(b"v" * 65536)
with open(victim, "r+b") as f:
    m = mmap.mmap(f.fileno(), 65536)
os.truncate(victim, 0)
print("touching", flush=True)
m[40000]  # a SIGBUS that is not ext4gen's
print("survived", flush=True)
"""


def mapped_then(tmp_path: Path, then: str, *python: str) -> subprocess.CompletedProcess:
    """Run FOREIGN_SIGBUS in a new Python: a source mapped, ``then``, a foreign SIGBUS."""
    src = tmp_path / "src"
    src.write_bytes(random.Random(3).randbytes(SIZE))
    code = FOREIGN_SIGBUS.format(path=sys.path, src=str(src), victim=str(tmp_path / "victim"),
                                 then=then)
    return subprocess.run([sys.executable, *python, "-c", code], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("faulthandler", [False, True], ids=["default", "faulthandler"])
def test_a_sigbus_that_is_not_ours_still_does_what_it_did(tmp_path: Path, faulthandler: bool) -> None:
    """The process dies of it, through the handler that was there before ext4gen's."""
    r = mapped_then(tmp_path, "", *(["-X", "faulthandler"] if faulthandler else []))
    assert "touching" in r.stdout and "survived" not in r.stdout, (r.stdout, r.stderr)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stderr)
    if faulthandler:
        assert "Fatal Python error: Bus error" in r.stderr, r.stderr


def test_a_sigbus_sent_by_kill_still_kills(tmp_path: Path) -> None:
    r = mapped_then(tmp_path, "os.kill(os.getpid(), 7)\nprint('survived', flush=True)\n")
    assert r.returncode == -signal.SIGBUS and "survived" not in r.stdout, (r.returncode, r.stdout)


TRUNCATED_READS = (
    "os.truncate(src, 100)\n"
    "from ext4gen.errors import SourceError\n"
    "for k in range(3):  # the same thread faults again: SIGBUS must not stay blocked\n"
    "    try:\n        image.read(s + 8192 + 4096 * k, 4096)\n"
    "    except SourceError as e:\n        print('failed cleanly:', e, flush=True)\n"
    "sys.exit(0)\n")

REPLACED = {
    # faulthandler's handler over ours: it would print a fatal error before passing it on
    "faulthandler enabled": ((), "import faulthandler\nfaulthandler.enable()\n"),
    # enabled before ours, so ours chained to it; disabling it puts back SIG_DFL over ours
    "faulthandler disabled": (("-X", "faulthandler"), "import faulthandler\nfaulthandler.disable()\n"),
    # Python's handler only sets a flag: a fault would run again and again
    "signal.signal": ((), "import signal\nsignal.signal(signal.SIGBUS, lambda *a: None)\n"),
}


@pytest.mark.parametrize("how", REPLACED)
def test_a_handler_installed_over_ours_is_topped_again(tmp_path: Path, how: str) -> None:
    """Another SIGBUS handler installed after ext4gen mapped a source: within a second readers
    put ext4gen's back on top, so a copy that faults still fails like a short read, silently."""
    python, then = REPLACED[how]
    r = mapped_then(tmp_path, then + "import time\ntime.sleep(1.2)\n"
                    "image.read(s + 16384, 4096)  # a reader looks\n" + TRUNCATED_READS, *python)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.count("failed cleanly:") == 3, r.stdout
    assert "source is shorter than planned" in r.stdout, r.stdout
    assert "Fatal Python error" not in r.stderr, r.stderr
