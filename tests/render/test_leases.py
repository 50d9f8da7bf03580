"""Source leases (``ext4gen/render/_leases.c``): the compiled read path's freshness check
without an fstat per read.

A lease may only replace the fstat if it catches everything the fstat caught, at once: a
writer (from another process, as the kernel breaks leases only for others), a truncation,
an unlink, a rename, a touch, a chmod.  And it must never hold a writer up for the kernel's
lease-break-time (45 s): the watcher thread gives a broken lease up at once.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.hostfiles import DIR, META, host_tree, race

import ext4gen
from ext4gen.errors import SourceError
from ext4gen.layout.plan import Plan
from ext4gen.render import fastpath
from ext4gen.render.image import Image

SIZE = 50_000

pytestmark = [pytest.mark.skipif(fastpath._fastread is None, reason="the extension is not built"),
              pytest.mark.usefixtures("long_used_at_once")]


LEASED_FS = {"ef53": "ext4", "58465342": "xfs", "9123683e": "btrfs", "1021994": "tmpfs"}


@pytest.fixture(autouse=True)
def lease_capable(tmp_path: Path) -> None:
    """ext4gen leases sources only on these file systems (_leases.c, fs_ok)."""
    kind = subprocess.run(["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True,
                          text=True, check=True).stdout.strip()
    if kind not in LEASED_FS:
        pytest.skip(f"{tmp_path} is on a file system (type 0x{kind}) ext4gen does not lease")


def leased_image(tmp_path: Path, n: int) -> tuple[Image, Image, list[Path], list[tuple[int, int]]]:
    """A compiled image with leases on, read twice (the second use takes the leases), the
    pure-Python image of the same plan, the sources, and each source's data region."""
    tree, paths = host_tree(tmp_path, n, SIZE)
    plan = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")).plan
    compiled, pure = Image(plan, compiled=True), Image(plan, compiled=False)
    assert compiled.use_leases() == ""
    whole = pure.read(0, pure.size)
    for _ in range(2):
        assert compiled.read(0, compiled.size) == whole
    data = [(s, e) for s, e, k in pure.regions() if k == "data"]
    assert len(data) == n
    return compiled, pure, paths, data


def one_file_plan(tmp_path: Path) -> tuple[Plan, Path]:
    """The plan of one host file ``f`` of SIZE bytes ``a`` (no dedup), and its path."""
    tree = ext4gen.Tree(DIR)
    p = tmp_path / "f"
    p.write_bytes(b"a" * SIZE)
    tree.add("/f", ext4gen.Node("file", META, source=ext4gen.HostFileSource(str(p))))
    return ext4gen.plan(tree, ext4gen.ImageOptions(dedup="none")).plan, p


def outcome(image: Image, start: int, end: int) -> bytes | str:
    try:
        return image.read(start, end - start)
    except SourceError as e:
        return str(e)


def writer(cmd: str) -> float:
    """Run a shell command in another process, as a writer of a served source would be;
    its wall time."""
    t0 = time.monotonic()
    subprocess.run(["sh", "-c", cmd], check=True, timeout=30)
    return time.monotonic() - t0


def test_reused_sources_are_leased_and_their_reads_skip_the_fstat(tmp_path: Path) -> None:
    compiled, pure, _paths, data = leased_image(tmp_path, 4)
    held = fastpath._fastread.leases_held()
    assert held >= 4
    # A read trusts a lease only while the watcher is idle (no inotify event queued, none
    # being handled: _leases.c); one busy with another image's events sends that read to the
    # fstat, which is correct, only slower.  So the four reads are made again until the watcher
    # was idle for all four, within a few seconds.
    deadline = time.monotonic() + 5
    while True:
        before = compiled.stats.leased_reads
        for s, e in data:
            assert compiled.read(s, e - s) == pure.read(s, e - s)
        if compiled.stats.leased_reads == before + 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert compiled.stats.leased_reads == before + 4
    del compiled  # its descriptors close, and their leases go with them
    assert fastpath._fastread.leases_held() == held - 4


def test_a_descriptor_is_leased_only_once_it_has_been_open_a_while(tmp_path: Path) -> None:
    """A file read once, in a few requests in a row (a copy, a tar), pays no lease."""
    fastpath._fastread.set_lease_after(0.5)
    plan, _ = one_file_plan(tmp_path)
    image = Image(plan, compiled=True)
    assert image.use_leases() == ""
    s, e = next((s, e) for s, e, k in image.regions() if k == "data")
    for _ in range(5):
        image.read(s, e - s)
    assert image.stats.leased_reads == 0
    time.sleep(0.6)
    image.read(s, e - s)  # takes the lease (and checks the pin) before it reads
    image.read(s, e - s)
    assert image.stats.leased_reads == 2


CHANGES: dict[str, Callable[[Path], object]] = {
    "rewritten in place by another process": lambda p: writer(
        f"printf XXXX | dd of={p} conv=notrunc status=none"),
    # truncate(1) opens with O_NONBLOCK, which a lease turns into EWOULDBLOCK: truncate(2)
    "truncated by another process": lambda p: writer(
        f"{sys.executable} -c 'import os; os.truncate(\"{p}\", 100)'"),
    "opened for writing and closed unchanged, then touched back": lambda p: (
        st := p.stat(), writer(f"exec 3>>{p}"), os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))),
    # truncates to nothing without breaking a read lease: the read comes up short
    "opened read-only with O_TRUNC": lambda p: os.close(os.open(p, os.O_RDONLY | os.O_TRUNC)),
    "opened for writing by this process and written": lambda p: p.write_bytes(b"w" * SIZE),
    "deleted": lambda p: p.unlink(),
    "renamed": lambda p: p.rename(p.with_name("moved")),
    "replaced by rename": lambda p: (p.with_name("new").write_bytes(b"n" * SIZE),
                                     p.with_name("new").rename(p)),
    "touched": lambda p: os.utime(p, ns=(1, 1)),
    "chmod": lambda p: p.chmod(0o600),
}


@pytest.mark.parametrize("how", CHANGES)
def test_a_change_to_a_leased_source_fails_the_very_next_read(tmp_path: Path, how: str) -> None:
    compiled, pure, paths, data = leased_image(tmp_path, 3)
    CHANGES[how](paths[1])
    outcomes = [(outcome(compiled, s, e), outcome(pure, s, e)) for s, e in data]
    assert outcomes[0][0] == outcomes[0][1] and isinstance(outcomes[0][0], bytes)
    assert outcomes[2][0] == outcomes[2][1] and isinstance(outcomes[2][0], bytes)
    a, b = outcomes[1]
    assert isinstance(a, str) and isinstance(b, str), (how, a, b)
    assert a == b and "f1: source" in a


def test_a_ctime_change_no_event_reports_fails_reads_within_seconds(tmp_path: Path) -> None:
    """An atime-only utimensat changes the ctime (so the pin fails) but raises only IN_ACCESS,
    which every read raises too: the watcher's audit, every 5 s, catches it."""
    compiled, pure, paths, data = leased_image(tmp_path, 2)
    os.utime(paths[1], ns=(1, paths[1].stat().st_mtime_ns))
    s, e = data[1]
    assert isinstance(outcome(pure, s, e), str)
    deadline = time.monotonic() + 15  # the watcher audits every lease every 5 s
    while isinstance(outcome(compiled, s, e), bytes):  # the same old bytes meanwhile
        assert time.monotonic() < deadline, "an atime-only change was never caught"
        time.sleep(0.05)
    assert outcome(compiled, s, e) == outcome(pure, s, e)
    assert isinstance(outcome(compiled, *data[0]), bytes)


def test_a_fork_child_starts_leases_of_its_own() -> None:
    """A child forked after leases started (its handlers point into the parent's pipe) must be
    able to start its own."""
    code = (
        "import os, sys\n"
        "from ext4gen.render import _fastread\n"
        "assert _fastread.start_leases() is None\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    why = _fastread.start_leases()\n"
        "    os._exit(0 if why is None else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_a_writer_is_not_held_up_by_a_lease(tmp_path: Path) -> None:
    """The kernel makes an opener for writing wait until the lease is given up: the watcher
    must do that at once, not after the lease-break-time (45 s)."""
    _compiled, _pure, paths, _data = leased_image(tmp_path, 2)
    took = writer(f"printf XXXX | dd of={paths[0]} conv=notrunc status=none")
    assert took < 5, f"a writer waited {took:.1f} s for a lease to be given up"


def test_a_source_open_for_writing_elsewhere_is_not_leased_and_still_checked(
        tmp_path: Path) -> None:
    plan, p = one_file_plan(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(p)!r}, 'r+b'); input()"],
                              stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)  # it has the file open for writing (its import takes less)
        compiled = Image(plan, compiled=True)
        assert compiled.use_leases() == ""
        s, e = next((s, e) for s, e, k in compiled.regions() if k == "data")
        for _ in range(3):
            assert compiled.read(s, e - s)[:SIZE] == b"a" * SIZE
        assert compiled.stats.leased_reads == 0  # F_SETLEASE said EAGAIN: fstat per read
        with open(p, "r+b") as f:
            f.write(b"b")
        assert isinstance(outcome(compiled, s, e), str)
    finally:
        holder.communicate(b"\n", timeout=10)


def test_reads_racing_a_rewrite_never_return_new_or_mixed_bytes(tmp_path: Path) -> None:
    """Four threads read a leased source while another process rewrites it block by block:
    every read is the planned bytes or an error, and once the writer is done, an error."""
    compiled, pure, paths, data = leased_image(tmp_path, 1)
    (s, e), old = data[0], pure.read(data[0][0], data[0][1] - data[0][0])

    def read(_rng: random.Random) -> str:
        got = outcome(compiled, s, e)
        return "error" if isinstance(got, str) else "old" if got == old else "wrong"

    leased = compiled.stats.leased_reads
    seen = race(read, lambda: writer(
        f"for i in $(seq 0 12); do printf %4096s x | dd of={paths[0]} bs=4096 seek=$i "
        "conv=notrunc status=none; done"))
    assert seen["wrong"] == 0, seen
    assert seen["old"] > 0 and seen["error"] > 0, seen
    assert compiled.stats.leased_reads > leased  # the lease, not an fstat, vouched for reads
    assert isinstance(outcome(compiled, s, e), str)


def test_leases_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXT4GEN_NO_LEASES", "1")
    plan, _ = one_file_plan(tmp_path)
    image = Image(plan, compiled=True)
    assert "EXT4GEN_NO_LEASES" in image.use_leases()
    for _ in range(3):
        image.read(0, image.size)
    assert image.stats.leased_reads == 0
    assert "pure-Python" in Image(image.plan, compiled=False).use_leases()
