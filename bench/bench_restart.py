#!/usr/bin/env python3
"""Time to serve, first and restart, against ``mkfs.ext4 -d`` (issue 10 targets).

Time to serve = launch of ``ext4gen serve SOURCE --socket S --foreground --dedup D``
until the first NBD answer (a 4 KiB read at offset 0 through libnbd).  For each
dedup mode, "first" starts with an empty cache directory (``$EXT4GEN_CACHE``);
the server is stopped only once it has saved its plan, and "restart" is a new
serve over the same cache and the unchanged tree.  The anchor is ``mkfs.ext4 -d``
of the same tree in the same round (options as in bench_build.py), warm page
cache; its image is deleted once mkfs is timed, so that writing it back does not
slow the serve timed next.  RSS is summed over the supervisor and nbdkit at the first answer, and
so is their peak (VmHWM) when the server is stopped (after the save, for "first").

``million`` is bench_million.py's 1,000,000-file manifest (no mkfs anchor: its
targets are absolute).  Usage (root)::

    .venv/bin/python bench/bench_restart.py [--trees t1,t2,million] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_build  # noqa: E402
import trees  # noqa: E402
from bench_dedup_cache import warm  # noqa: E402
from procs import descendants, status_kib, stop  # noqa: E402

VARIANTS = ("none first", "none restart", "content first", "content restart")


def serve_once(source: Path, dedup: str, cache: Path, wait_saved: bool) -> dict:
    import nbd

    env = {**os.environ, "EXT4GEN_CACHE": str(cache)}
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as work:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ext4gen.cli", "serve", str(source), "--socket",
                                 os.path.join(work, "s.sock"), "--foreground", "--dedup", dedup],
                                cwd=bench_build.SRC, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            uri = proc.stdout.readline().decode().strip()
            if not uri:
                raise SystemExit(f"serve printed no URI: {proc.stderr.read().decode()[-2000:]}")
            h = nbd.NBD()
            h.connect_uri(uri)
            h.pread(4096, 0)
            seconds = time.perf_counter() - t0
            rss = sum(status_kib(p) for p in [proc.pid, *descendants(proc.pid)]) // 1024
            h.shutdown()
            saved_s = None
            if wait_saved:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and not list((cache / "plans").glob("*.plan")):
                    time.sleep(0.05)
                saved_s = time.perf_counter() - t0
            peak = sum(status_kib(p, "VmHWM") for p in [proc.pid, *descendants(proc.pid)]) // 1024
            return {"seconds": seconds, "rss_mib": rss, "peak_rss_mib": peak, "saved_after_s": saved_s}
        finally:
            stop(proc)


def bench_source(name: str, rounds: int, log) -> dict:
    if name == "million":
        import bench_million

        source, anchor = bench_million.make_manifest(1_000_000), None
    else:
        source = trees.ensure_tree(name)
        anchor = bench_build.WORK / f"{name}.restart.mkfs.img"
        anchor.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {v: [] for v in ("mkfs.ext4 -d", *VARIANTS)}
    caches = Path(tempfile.mkdtemp(prefix="ext4gen-bench-restart-"))
    try:
        if anchor is not None:
            size_kib = max(1024, bench_build.du_kib(source) * 6 // 5)
            inodes = bench_build.count_entries(source) + 16
        for i in range(rounds):
            if anchor is not None:
                warm(source)
                r = bench_build.mkfs_once(source, anchor, size_kib, inodes, cold=False)
                if r["rc"] != 0:
                    raise SystemExit(f"mkfs.ext4 failed: {r['stderr']}")
                # Deleting the image drops its dirty pages unwritten: mkfs's writeback,
                # which its own time leaves out, must not land in the serve timed next.
                anchor.unlink()
                runs["mkfs.ext4 -d"].append({"seconds": r["wall_s"], "cmd": r["cmd"]})
                log(f"{name} round {i + 1} mkfs.ext4 -d: {r['wall_s']:.2f} s")
            for v in VARIANTS:
                dedup, when = v.split()
                cache = caches / dedup
                if when == "first":
                    shutil.rmtree(cache, ignore_errors=True)
                if anchor is not None:
                    warm(source)
                trees.wait_quiet(0.3, 30)
                r = serve_once(source, dedup, cache, wait_saved=when == "first")
                runs[v].append(r)
                saved = (f", plan saved after {r['saved_after_s']:.1f} s" if r["saved_after_s"] else "")
                saved += f", peak RSS {r['peak_rss_mib']} MiB"
                log(f"{name} round {i + 1} {v}: {r['seconds']:.2f} s, {r['rss_mib']} MiB{saved}")
    finally:
        shutil.rmtree(caches, ignore_errors=True)
        if anchor is not None:
            anchor.unlink(missing_ok=True)
    out: dict = {"tree": name}
    for v, rs in runs.items():
        if rs:
            secs = [r["seconds"] for r in rs]
            out[v] = {"min_s": min(secs), "median_s": statistics.median(secs), "runs": rs}
    if runs["mkfs.ext4 -d"]:
        mk = out["mkfs.ext4 -d"]["min_s"]
        for v in VARIANTS:
            out[v]["over_mkfs"] = out[v]["min_s"] / mk
    return out


def _mib(x: int) -> str:
    return f"{x} MiB" if x else "–"


def table(results: list[dict]) -> str:
    lines = ["| tree | run | min / median | × mkfs | RSS at first answer | peak RSS | saved after |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for v in ("mkfs.ext4 -d", *VARIANTS):
            x = r.get(v)
            if not x:
                continue
            ratio = f"{x['over_mkfs']:.2f}×" if "over_mkfs" in x else ("1" if v.startswith("mkfs") else "–")
            rss = max((run.get("rss_mib", 0) for run in x["runs"]), default=0)
            peak = max((run.get("peak_rss_mib", 0) for run in x["runs"]), default=0)
            saved = [run["saved_after_s"] for run in x["runs"] if run.get("saved_after_s")]
            lines.append(f"| {r['tree'].upper()} | {v} | {x['min_s']:.2f} / {x['median_s']:.2f} s | "
                         f"{ratio} | {_mib(rss)} | {_mib(peak)} | "
                         f"{f'{min(saved):.1f} s' if saved else '–'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", default="t1,t2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = [bench_source(name, args.rounds, log) for name in args.trees.split(",")]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
