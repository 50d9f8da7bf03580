"""Host files for read-path tests: written under a test's directory, and a tree serving them."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ext4gen

META = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)
DIR = ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0)


def host_tree(tmp_path: Path, n: int, size: int) -> tuple[ext4gen.Tree, list[Path]]:
    """Files ``/f0`` … of ``size`` seeded random bytes each (the same bytes in every run, and
    no two files alike, so dedup shares nothing), and the host paths they are read from."""
    tree = ext4gen.Tree(DIR)
    paths = []
    for i in range(n):
        p = tmp_path / f"f{i}"
        p.write_bytes(random.Random(i).randbytes(size))
        paths.append(p)
        tree.add(f"/f{i}", ext4gen.Node("file", META, source=ext4gen.HostFileSource(str(p))))
    return tree, paths


def race(read: Callable[[random.Random], str], change: Callable[[], object],
         threads: int = 4) -> dict[str, int]:
    """Run ``change`` while ``threads`` threads call ``read`` in a loop (each with a random
    generator of its own); ``read`` says what it got: "old" (the planned bytes), "error" or
    "wrong".  How many of each, over all threads."""
    seen = {"old": 0, "error": 0, "wrong": 0}
    stop = threading.Event()

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            seen[read(rng)] += 1

    workers = [threading.Thread(target=hammer, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    try:
        time.sleep(0.2)
        change()
        time.sleep(0.2)
    finally:
        stop.set()
        for t in workers:
            t.join(10)
    return seen
