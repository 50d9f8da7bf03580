#!/usr/bin/env python3
"""How much of the gap to nbdkit ``file`` is the tree's layout rather than ext4gen.

``ext4gen serve`` reads each request from the host files the image was planned
from; nbdkit ``file`` reads one contiguous image file.  Two steps, one run:

* in-process, 256 KiB reads, best of 3: T1's source files read whole, one after
  the other (the bytes ext4gen serves, as the host keeps them); the
  ``ext4gen build`` image of T1 (what nbdkit ``file`` serves); and T1's plan
  through the compiled read path;
* through nbdkit at ``--threads 1``, interleaved rounds (``bench_serve``'s
  measurements: ``nbdcopy``, fio 4 KiB random QD1/QD16): nbdkit ``file`` on
  T1's image against ext4gen as ``serve`` runs it (its filter, then the plugin)
  on T1; and nbdkit ``file`` on a copy of that image against ext4gen serving a
  directory that holds only that copy (``--dedup none``): the same bytes from
  one host file, so what remains is ext4gen's own cost.

Usage (root)::

    .venv/bin/python bench/bench_layout.py [--repeat 3] [--runtime 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_serve as bs  # noqa: E402
import trees  # noqa: E402

REQ = 256 << 10


def _read_files(paths: list[Path]) -> tuple[int, float]:
    buf = memoryview(bytearray(REQ))
    total, t0 = 0, time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            off = 0
            while (n := os.preadv(fd, [buf], off)) > 0:
                off += n
            total += off
        finally:
            os.close(fd)
    return total, time.perf_counter() - t0


def in_process(tree_dir: Path, image: Path, repeat: int) -> dict:
    """MiB/s of the three in-process readers (best of ``repeat``), page cache warm."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(bs.SRC)!r})
from ext4gen.inputs.source import BuildChoices, plan_source
image, _tree = plan_source({str(tree_dir)!r}, BuildChoices(dedup="content"))
assert image.compiled
buf = memoryview(bytearray({REQ}))
best = 0.0
for _ in range({repeat + 1}):  # the first pass renders the metadata
    t0 = time.perf_counter()
    for off in range(0, image.size - {REQ} + 1, {REQ}):
        image.readinto(buf, off)
    best = max(best, image.size // {REQ} * {REQ} / (time.perf_counter() - t0) / 2**20)
print(json.dumps(best))
"""
    sources = sorted(p for p in tree_dir.rglob("*") if p.is_file() and not p.is_symlink())
    out: dict = {}
    for label, paths in (("source files", sources), ("built image", [image])):
        _read_files(paths)  # warm
        runs = []
        for _ in range(repeat):
            n, s = _read_files(paths)
            runs.append(n / s / 2**20)
        out[label] = {"MiB_s": max(runs), "all": [round(r) for r in runs]}
    r = subprocess.run([bs.PY, "-c", code], capture_output=True, text=True, env=bs.plugin_env(),
                       check=True)
    out["compiled path over T1's plan"] = {"MiB_s": json.loads(r.stdout)}
    return out


def through_nbdkit(manifest: Path, image: Path, repeat: int, runtime: float) -> dict:
    onedir = bs.WORK / "onefile"
    onedir.mkdir(parents=True, exist_ok=True)
    one = onedir / "image"
    shutil.copyfile(image, one)
    old = time.time() - 3600  # well outside the saved plan's racy window
    os.utime(one, (old, old))
    plug = bs.plugins(manifest, image)
    own = plug["ext4gen"][0]  # --filter=ext4gen's filter
    servers = {
        "file T1": ["file", f"file={image}"],
        "ext4gen T1": plug["ext4gen"],
        "file one": ["file", f"file={one}"],
        "ext4gen one": [own, "python", str(bs.SRC / "plugins" / "ext4gen_nbdkit.py"),
                        f"source={onedir}", "dedup=none"],
    }
    out: dict = {}
    with contextlib.ExitStack() as stack:
        srv = {n: stack.enter_context(bs.Server(n.replace(" ", "-"), a, 1)) for n, a in servers.items()}
        sizes = {n: int(subprocess.run(["nbdinfo", "--size", s.uri], capture_output=True, text=True,
                                       check=True).stdout) for n, s in srv.items()}
        for n, s in srv.items():
            bs.seq_copy(s.uri, sizes[n])  # warm: metadata rendered, descriptors open
        got = bs.measure_rounds(srv, repeat, sizes, runtime)
    for n, g in got.items():
        out[n] = {"seq": bs.best_of(g["seq"], "MiB_s"), "qd1": bs.best_of(g["qd1"], "iops"),
                  "qd16": bs.best_of(g["qd16"], "iops")}
    shutil.rmtree(onedir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=3.0, help="seconds per fio run")
    ap.add_argument("--json", default=str(bs.REPO / "bench" / "out" / "layout.json"))
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--quiet-wait", type=float, default=10.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_layout.py needs root (like bench_serve.py)")
    bs.QUIET_WAIT = a.quiet_wait
    bs.SRC, sha = trees.source_snapshot(a.rev)
    bs.build_extension(bs.SRC)
    result: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S %z"), "ext4gen_commit": sha}
    try:
        manifest, image, _size = bs.prepare()
        result["in_process"] = in_process(trees.ensure_tree("t1"), image, a.repeat)
        result["nbdkit"] = n = through_nbdkit(manifest, image, a.repeat, a.runtime)
    finally:
        shutil.rmtree(bs.WORK, ignore_errors=True)
    result["ratios"] = {
        f"{tree}: ext4gen / file": {k: round(n[f"ext4gen {tree}"][k][m] / n[f"file {tree}"][k][m], 2)
                                    for k, m in (("seq", "MiB_s"), ("qd1", "iops"), ("qd16", "iops"))}
        for tree in ("T1", "one")}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    for label, r in result["in_process"].items():
        bs.log(f"in-process, 256 KiB reads: {label}: {r['MiB_s']:.0f} MiB/s")
    for label, r in result["ratios"].items():
        bs.log(f"{label}: sequential {r['seq']:.2f}x, 4 KiB QD1 {r['qd1']:.2f}x, QD16 {r['qd16']:.2f}x")


if __name__ == "__main__":
    main()
