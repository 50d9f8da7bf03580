#!/usr/bin/env python3
"""Every issue 10 target in one command: runs bench_paired.py (serving, in interleaved pairs
against nbdkit ``file`` and the trivial Python plugin) and bench_restart.py (time to serve
T1, T2 and the 1,000,000-file manifest, first and restart, against ``mkfs.ext4 -d``), then
prints one table: each target, what this run measured, and whether it is met.

Usage (root; fio, nbdfuse; about 35 minutes)::

    .venv/bin/python bench/bench_targets.py [--out bench/out/targets] [--rounds 2]
        [--paired-args "--pairs 12 ..."]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def serving_rows(p: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) from bench_paired.py's JSON."""
    t = p["tar_cold"]
    tar, left = t["time_ratio"], max(t["tree_bytes_cached_after_drops"])
    rows = [("sequential nbdcopy >= 0.9x file", f"{p['seq']['median_ratio']:.2f}x",
             p["seq"]["median_ratio"] >= 0.9)]
    for qd in (1, 16):
        r = p[f"qd{qd}"]["median_ratio"]
        rows.append((f"4k random QD{qd} >= 0.9x file", f"{r:.2f}x", r >= 0.9))
        if f"qd{qd}_pyfile" in p:
            r = p[f"qd{qd}_pyfile"]["median_ratio"]
            rows.append((f"4k random QD{qd} >= 0.95x the trivial Python plugin", f"{r:.2f}x", r >= 0.95))
    rows.append(("kernel tar, caches dropped, <= 1.1x file's time",
                 f"{tar:.2f}x ({left} bytes of T1 left cached by a drop)", tar <= 1.1 and left == 0))
    return rows


LIMITS = {  # tree: (none first, content first, restart) as a fraction of mkfs.ext4 -d
    "t1": (0.1, 0.5, 0.1),
    "t2": (0.5, 1.0, 0.3),
}


def restart_rows(results: list[dict]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) from bench_restart.py's JSON (best round of each)."""
    rows = []
    for r in results:
        name = r["tree"]
        if name in LIMITS:
            none_first, content_first, restart = LIMITS[name]
            for v, limit in (("none first", none_first), ("content first", content_first),
                             ("content restart", restart), ("none restart", restart)):
                x = r[v]["over_mkfs"]
                rows.append((f"{name.upper()} time to serve, {v} <= {limit}x mkfs", f"{x:.2f}x",
                             x <= limit))
        elif name == "million":
            for v, limit in (("content first", 10.0), ("none first", 10.0),
                             ("content restart", 3.0), ("none restart", 3.0)):
                x = r[v]["min_s"]
                rows.append((f"1,000,000 files, {v} <= {limit:.0f} s", f"{x:.2f} s", x <= limit))
            peak = max(run.get("peak_rss_mib", 0) for v in r if v != "tree" and isinstance(r[v], dict)
                       for run in r[v].get("runs", []))
            rows.append(("1,000,000 files, peak RSS of the serve <= 1 GiB", f"{peak} MiB", peak <= 1024))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "targets")
    ap.add_argument("--rounds", type=int, default=2, help="bench_restart.py rounds")
    ap.add_argument("--trees", default="t1,t2,million")
    ap.add_argument("--paired-args", default="", help="more arguments for bench_paired.py")
    ap.add_argument("--report-only", action="store_true", help="print the table of the last run")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    paired, restart = a.out / "paired.json", a.out / "restart.json"
    if not a.report_only:
        run("bench_paired.py", "--json", str(paired), *shlex.split(a.paired_args))
        run("bench_restart.py", "--trees", a.trees, "--rounds", str(a.rounds), "--json", str(restart))
    rows = serving_rows(json.loads(paired.read_text()))
    rows += restart_rows(json.loads(restart.read_text()))
    print("| issue 10 target | measured | met |\n| --- | ---: | --- |")
    for target, got, met in rows:
        print(f"| {target} | {got} | {'yes' if met else '**no**'} |")
    print(f"{sum(m for _t, _g, m in rows)} of {len(rows)} targets met")


if __name__ == "__main__":
    main()
