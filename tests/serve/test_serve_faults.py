"""Issue 3: sources that change while served give EIO on their blocks, never stale bytes.

Host files are pinned when the image is planned.  Here they are truncated,
rewritten in place, deleted and replaced while nbdkit serves them; reads that
touch them must fail with EIO (with the reason in the server's log), every
other block must keep its bytes, and the server must keep serving.  The
reference image is built (``ext4_image``, uncached) before any source changes.
The first test checks what ``ext4gen serve`` logs and how it exits, so it runs
the CLI itself; the others only read, from an ``ext4_export``.
"""

from __future__ import annotations

import errno
import os
import random
import re
import threading
import time
from pathlib import Path

import pytest
from helpers.cli import cli_serving
from helpers.servers import connect, export, import_nbd
from helpers.trees import make_source_tree

BLOCK = 4096


def locate(reference: bytes, content: bytes) -> int:
    """Where a (unique, random) file's bytes sit in the image; it must be contiguous."""
    at = reference.find(content)
    assert at >= 0, "the test expects each victim stored contiguously"
    assert reference.find(content, at + 1) < 0
    return at


def wait_until(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def expect_eio(h, length: int, offset: int) -> None:
    nbd = import_nbd()
    with pytest.raises(nbd.Error) as e:
        h.pread(length, offset)
    assert e.value.errnum == errno.EIO, e.value


@pytest.fixture
def tree(tmp_path: Path, ext4_image) -> tuple[Path, bytes]:
    manifest = make_source_tree(tmp_path, seed=11)
    # Uncached: the tests change these sources, so no other test may be handed this image.
    return manifest, ext4_image(manifest, cache=False).read_bytes()


def test_truncated_rewritten_deleted_and_replaced_sources_fail_with_eio(tree, tmp_path: Path,
                                                                       read_path: str):
    manifest, reference = tree
    src = manifest.parent / "src"
    victims = {i: src / f"victim{i}.bin" for i in range(4)}
    original = {i: p.read_bytes() for i, p in victims.items()}
    where = {i: locate(reference, data) for i, data in original.items()}
    healthy = (src / "healthy.bin").read_bytes()
    healthy_at = locate(reference, healthy)

    with cli_serving(manifest, tmp_path / "nbd.sock") as server:
        h = connect(server.uri)
        # Victims 0 and 2 are read first, so the server holds their descriptors open, and
        # again over a second later, so it leases them (ext4gen/render/_leases.c): the
        # truncation below must wait for the lease to be given up, and the deletion is seen
        # by its inotify watch.
        for i in (0, 2):
            assert h.pread(len(original[i]), where[i]) == original[i]
        time.sleep(1.1)
        for i in (0, 2):
            assert h.pread(len(original[i]), where[i]) == original[i]

        os.truncate(victims[0], len(original[0]) // 2)  # shrunk
        with open(victims[1], "r+b") as f:  # rewritten in place, same size
            f.write(bytes(b ^ 0xFF for b in original[1][:BLOCK]))
        victims[2].unlink()  # deleted
        replacement = tmp_path / "replacement.bin"  # replaced by rename (a new inode)
        replacement.write_bytes(random.Random(5).randbytes(len(original[3])))
        os.replace(replacement, victims[3])

        for i in victims:
            n, at = len(original[i]), where[i]
            expect_eio(h, n, at)  # the whole file
            expect_eio(h, 1, at + n // 2)  # one byte in the middle
            expect_eio(h, 2 * BLOCK, at - BLOCK)  # a read that starts in the previous block
        # The second half of the truncated file no longer exists, the first half does:
        # both are refused, since the file no longer matches what was planned.
        expect_eio(h, 100, where[0])

        # Everything else is intact: metadata, other files, zeros.
        assert h.pread(len(healthy), healthy_at) == healthy
        spoiled = set()
        for i in victims:
            spoiled.update(range(where[i] // BLOCK, -(-(where[i] + len(original[i])) // BLOCK)))
        intact = [b for b in range(len(reference) // BLOCK) if b not in spoiled]
        assert intact[:16] == list(range(16)), "the metadata at the start must be intact"
        for b in intact[:16] + random.Random(1).sample(intact, 300):
            assert h.pread(BLOCK, b * BLOCK) == reference[b * BLOCK : (b + 1) * BLOCK], b
        h.shutdown()
        # ... for new clients too, and the server is alive.
        h2 = connect(server.uri)
        assert h2.pread(len(healthy), healthy_at) == healthy
        expect_eio(h2, 10, where[2])
        h2.shutdown()
        assert server.alive()

    assert server.returncode == 0
    log = server.stderr()
    for p in victims.values():
        reasons = [ln for ln in log.splitlines()
                   if ln.startswith("ext4gen: read error (EIO to the client): ") and str(p) in ln]
        assert reasons, f"no logged reason for {p}:\n{log}"
    assert "source errors 0;" not in log
    if read_path == "compiled":  # the pure-Python path never leases
        assert re.search(r"source reads checked by a lease [1-9]", log), log


def test_a_file_rewritten_during_reads_never_yields_new_or_mixed_bytes(tree, ext4_export):
    """Reads race with an in-place rewrite: each succeeds with the old bytes or fails."""
    manifest, reference = tree
    victim = manifest.parent / "src" / "victim1.bin"
    old = victim.read_bytes()
    at = locate(reference, old)
    nbd = import_nbd()
    outcomes = {"old": 0, "eio": 0, "wrong": 0}
    stop = threading.Event()

    def hammer(uri: str) -> None:
        h = connect(uri)
        while not stop.is_set():
            try:
                got = h.pread(len(old), at)
            except nbd.Error as e:
                outcomes["eio" if e.errnum == errno.EIO else "wrong"] += 1
                continue
            outcomes["old" if got == old else "wrong"] += 1
        h.shutdown()

    server = export(ext4_export, manifest)
    t = threading.Thread(target=hammer, args=(server.uri,), daemon=True)
    t.start()
    try:
        wait_until(lambda: outcomes["old"] >= 20)
        new = random.Random(9).randbytes(len(old))
        with open(victim, "r+b") as f:
            for k in range(0, len(new), BLOCK):  # block by block, so readers can see a mix
                f.write(new[k : k + BLOCK])
                f.flush()
        done_at = sum(outcomes.values())
        wait_until(lambda: sum(outcomes.values()) >= done_at + 50)
    finally:
        stop.set()
        t.join(30)
    h = connect(server.uri)
    expect_eio(h, len(old), at)
    h.shutdown()
    assert server.alive()
    assert outcomes["wrong"] == 0, outcomes
    assert outcomes["old"] >= 20 and outcomes["eio"] >= 50, outcomes


def test_a_rewrite_that_restores_the_mtime_is_still_refused(tree, ext4_export):
    manifest, reference = tree
    victim = manifest.parent / "src" / "victim2.bin"
    old = victim.read_bytes()
    at = locate(reference, old)
    st = victim.stat()
    h = connect(ext4_export(manifest))
    assert h.pread(len(old), at) == old
    with open(victim, "r+b") as f:
        f.write(b"X" * BLOCK)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    expect_eio(h, len(old), at)
    h.shutdown()
