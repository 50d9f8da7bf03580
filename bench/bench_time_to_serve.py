#!/usr/bin/env python3
"""Time to serve and the memory of each process, for two checkouts side by side.

Launch of ``ext4gen serve TREE --socket S --foreground --dedup D`` until the URI
line, then the RSS of the supervisor and of nbdkit; rounds interleave the
checkouts.  Used for "plan once" (docs/PERFORMANCE.md)::

    git archive 46b40f1 | tar -x -C /tmp/before
    .venv/bin/python bench/bench_time_to_serve.py t1 --before /tmp/before --dedup none,content
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import trees  # noqa: E402
from procs import rss_mib, stop  # noqa: E402


def time_to_serve(tree: Path, dedup: str, checkout: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-tts-") as work:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ext4gen.cli", "serve", str(tree),
                                 "--socket", os.path.join(work, "s.sock"), "--foreground",
                                 "--dedup", dedup], cwd=checkout, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise RuntimeError(f"{checkout}: serve printed no URI")
            seconds = time.perf_counter() - t0
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            return {"seconds": round(seconds, 2), "rss_supervisor_mib": rss_mib(proc.pid),
                    "rss_nbdkit_mib": sum(rss_mib(int(k)) for k in kids)}
        finally:
            stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", help="t1 or t2 (bench/trees.py)")
    ap.add_argument("--before", type=Path, required=True, help="checkout to compare with")
    ap.add_argument("--dedup", default="none,content")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tree = trees.ensure_tree(args.tree)
    for rnd in range(args.rounds):
        for dedup in args.dedup.split(","):
            for name, checkout in (("before", args.before), ("after", HERE.parent)):
                r = time_to_serve(tree, dedup, checkout)
                print(json.dumps({"round": rnd, "dedup": dedup, "version": name, **r}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
