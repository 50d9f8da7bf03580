#!/usr/bin/env python3
"""Content dedup with saved digests: first plan, restart, against ``mkfs.ext4 -d`` (issue 10 item 2).

For T1 and T2, in interleaved rounds (warm page cache), each in a fresh process
(``bench_build.py --worker``: directory import + plan, the part of the time to
serve that dedup decides):

* ``mkfs.ext4 -d`` of the tree (the anchor, options as in bench_build.py);
* ``dedup=none``;
* ``dedup=content`` as before saved digests (``EXT4GEN_NO_DIGEST_CACHE=1``);
* ``dedup=content`` first plan into an empty cache;
* ``dedup=content`` restart: the same tree again, digests saved.

Prints min / median wall seconds, CPU seconds, and ratios to mkfs; ``others``
is how many cores other processes kept busy meanwhile (a shared machine).
Usage (root)::

    .venv/bin/python bench/bench_dedup_cache.py [--trees t1,t2] [--rounds 3] [--json OUT] [--rev REV]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_build  # noqa: E402
import trees  # noqa: E402

VARIANTS = {
    "none": ("none", {}),
    "content, no saved digests (before)": ("content", {"EXT4GEN_NO_DIGEST_CACHE": "1"}),
    "content first": ("content", {}),
    "content restart": ("content", {}),
}


def warm(tree_dir: Path) -> None:
    """Read the whole tree: other benchmarks on this machine drop the page cache."""
    for d, _dirs, files in os.walk(tree_dir):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def plan_run(tree_dir: Path, dedup: str, env: dict[str, str]) -> dict:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        r = bench_build.run_rusage([sys.executable, str(HERE / "bench_build.py"), "--worker",
                                    str(tree_dir), dedup, "dir"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if r["rc"] != 0:
        raise SystemExit(f"planning worker failed: {r['stderr']}")
    res = json.loads(r["stdout"].strip().splitlines()[-1])
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "total_s": res["total_s"],
            "plan_s": res["plan_s"], "others_cores": r["others_cores"], "dedup": res["dedup"],
            "used_blocks": res["used_blocks"]}


def bench_tree(name: str, rounds: int, log) -> dict:
    tree_dir = trees.ensure_tree(name)
    mk = bench_build.WORK / f"{name}.dedupcache.mkfs.img"
    mk.parent.mkdir(parents=True, exist_ok=True)
    size_kib = max(1024, bench_build.du_kib(tree_dir) * 6 // 5)
    inodes = bench_build.count_entries(tree_dir) + 16
    runs: dict[str, list[dict]] = {"mkfs.ext4 -d": []}
    for v in VARIANTS:
        runs[v] = []
    cache = Path(tempfile.mkdtemp(prefix="ext4gen-bench-cache-"))
    try:
        bench_build.mkfs_once(tree_dir, mk, size_kib, inodes, cold=False)  # warm the page cache
        for i in range(rounds):
            warm(tree_dir)
            r = bench_build.mkfs_once(tree_dir, mk, size_kib, inodes, cold=False)
            if r["rc"] != 0:
                raise SystemExit(f"mkfs.ext4 failed: {r['stderr']}")
            runs["mkfs.ext4 -d"].append({"total_s": r["wall_s"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                         "others_cores": r["others_cores"], "cmd": r["cmd"]})
            for v, (dedup, env) in VARIANTS.items():
                root = cache / v.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
                warm(tree_dir)
                if v.startswith("content first"):
                    shutil.rmtree(root, ignore_errors=True)
                if v == "content restart":
                    root = cache / "content_first"
                run = plan_run(tree_dir, dedup, {"EXT4GEN_CACHE": str(root), **env})
                runs[v].append(run)
                log(f"{name} round {i + 1} {v}: {run['total_s']:.2f} s (cpu {run['cpu_s']:.2f}, "
                    f"others {run['others_cores']:.1f}), hits {run['dedup']['digest_hits']}, "
                    f"hashed {run['dedup']['bytes_hashed'] >> 20} MiB")
        sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in cache.iterdir()}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        mk.unlink(missing_ok=True)
    out: dict = {"tree": name, "cache_bytes": sizes, "mkfs_cmd": runs["mkfs.ext4 -d"][0]["cmd"]}
    for v, rs in runs.items():
        tot = [r["total_s"] for r in rs]
        out[v] = {"min_s": min(tot), "median_s": statistics.median(tot),
                  "cpu_min_s": min(r["cpu_s"] for r in rs),
                  "others_cores_median": statistics.median(r["others_cores"] for r in rs),
                  "all_s": tot}
    mk_min = out["mkfs.ext4 -d"]["min_s"]
    mk_cpu = out["mkfs.ext4 -d"]["cpu_min_s"]
    for v in VARIANTS:
        out[v]["over_mkfs"] = out[v]["min_s"] / mk_min
        out[v]["cpu_over_mkfs_cpu"] = out[v]["cpu_min_s"] / mk_cpu
    return out


def table(results: list[dict]) -> str:
    lines = ["| tree | run | load+plan min / median | CPU min | × mkfs (wall) | × mkfs (CPU) | others |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for v in ["mkfs.ext4 -d", *VARIANTS]:
            x = r[v]
            ratio = f"{x['over_mkfs']:.2f}×" if "over_mkfs" in x else "1"
            cratio = f"{x['cpu_over_mkfs_cpu']:.2f}×" if "cpu_over_mkfs_cpu" in x else "1"
            lines.append(f"| {r['tree'].upper()} | {v} | {x['min_s']:.2f} s / {x['median_s']:.2f} s | "
                         f"{x['cpu_min_s']:.2f} s | {ratio} | {cratio} | {x['others_cores_median']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", default="t1,t2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--rev", default="HEAD", help="commit to benchmark (exported to the cache)")
    ap.add_argument("--worktree", action="store_true", help="benchmark the working tree as it is")
    ap.add_argument("--quiet-wait", type=float, default=5.0,
                    help="seconds to wait, before each step, for other processes to use < 0.3 cores")
    args = ap.parse_args()
    if args.worktree:
        bench_build.SRC, sha = bench_build.REPO, "worktree"
    else:
        bench_build.SRC, sha = trees.source_snapshot(args.rev)
    bench_build.QUIET_WAIT = args.quiet_wait
    print(f"ext4gen at {sha}", file=sys.stderr)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = [bench_tree(t, args.rounds, log) for t in args.trees.split(",")]
    print(table(results))
    for r in results:
        saved = r["cache_bytes"].get("content_first", 0) / 2**20
        print(f"{r['tree'].upper()} saved digests: {saved:.1f} MiB on disk; mkfs: {r['mkfs_cmd']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
