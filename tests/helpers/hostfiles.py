"""Host files for read-path tests: written under a test's directory, and a tree serving them."""

from __future__ import annotations

import random
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
