#!/usr/bin/env python3
"""A 200,000-entry directory through the kernel: the built image on a loop mount, and served live.

One directory of empty files (``entry-NNNNNN.txt``: an htree with one index
level) from a JSON manifest, ``ext4gen build`` then ``mount -o loop,ro``, and
``ext4gen mount`` (nbdkit + nbdfuse + loop); for each, ``ls -f`` cold and warm,
``ls -l`` cold (a stat of every entry) and one lookup cold, caches dropped
before each cold step.  Every mount is undone (umount, ``ext4gen umount``)
even when a step fails.  Usage (root)::

    .venv/bin/python bench/bench_bigdir.py [--entries 200000] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import trees  # noqa: E402  (bench/ helpers, found through the path set just above)

CLI = [sys.executable, "-m", "ext4gen.cli"]


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def make_manifest(entries: int) -> Path:
    """The manifest, written once into the benchmark cache."""
    path = trees.CACHE / f"bigdir-{entries}.json"
    if not path.exists():
        trees.CACHE.mkdir(parents=True, exist_ok=True)
        doc = {"image": {"label": "bigdir"}, "defaults": {"mtime": 1700000000}}
        doc |= {f"/big/entry-{i:06d}.txt": {"text": ""} for i in range(entries)}
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    return path


def measure(mnt: Path, entries: int) -> dict[str, float]:
    big = str(mnt / "big")
    out: dict[str, float] = {}
    drop_caches()
    out["ls_f_cold_s"] = timed(["ls", "-f", big])
    out["ls_f_warm_s"] = timed(["ls", "-f", big])
    drop_caches()
    out["ls_l_cold_s"] = timed(["ls", "-l", big])
    drop_caches()
    t = time.perf_counter()
    os.stat(os.path.join(big, f"entry-{entries // 2:06d}.txt"))
    out["lookup_cold_s"] = time.perf_counter() - t
    return out


@contextlib.contextmanager
def loop_mounted(image: Path, mnt: Path) -> Iterator[Path]:
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@contextlib.contextmanager
def served_mount(manifest: Path, mnt: Path) -> Iterator[Path]:
    subprocess.run([*CLI, "mount", str(manifest), str(mnt)], check=True, cwd=REPO)
    try:
        yield mnt
    finally:
        subprocess.run([*CLI, "umount", str(mnt)], check=False, cwd=REPO)


def run(name: str, mount: Callable[[Path], contextlib.AbstractContextManager[Path]],
        entries: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bigdir-mnt-") as d:
        with mount(Path(d)) as mnt:
            result = measure(mnt, entries)
    print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), file=sys.stderr)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--json", default=str(HERE / "out" / "bigdir.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_bigdir.py needs root (loop mounts, drop_caches)")
    manifest = make_manifest(a.entries)
    with tempfile.TemporaryDirectory(prefix="bigdir-", dir=trees.CACHE) as work:
        image = Path(work) / "big.img"
        t = time.perf_counter()
        subprocess.run([*CLI, "build", str(manifest), "-o", str(image), "-q"], check=True, cwd=REPO)
        build_s = time.perf_counter() - t
        built = run("built image, loop mount", lambda mnt: loop_mounted(image, mnt), a.entries)
    served = run("served live (ext4gen mount)", lambda mnt: served_mount(manifest, mnt), a.entries)
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S %z"), "entries": a.entries,
              "build_s": build_s, "built": built, "served": served}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print("| | `ls -f` cold | `ls -f` warm | `ls -l` cold | one lookup, cold |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, r in (("built image, loop mount", built), ("served live (`ext4gen mount`)", served)):
        print(f"| {label} | {r['ls_f_cold_s']:.2f} s | {r['ls_f_warm_s']:.2f} s | "
              f"{r['ls_l_cold_s']:.2f} s | {r['lookup_cold_s']:.3f} s |")


if __name__ == "__main__":
    main()
