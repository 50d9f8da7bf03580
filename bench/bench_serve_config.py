#!/usr/bin/env python3
"""Which nbdkit configuration ``ext4gen serve`` should use by default, and what planning once saves.

Serves the T1 tree with ``ext4gen serve`` (the CLI as users run it) under each
configuration, interleaved over rounds, and measures for each:

* ``first``: sequential ``nbdcopy --no-extents`` of the whole export through a
  freshly started server (nbdkit's and the plugin's caches empty; the host page
  cache warm: this machine is shared, so the bench does not drop caches);
* ``again``: the same copy a second time through the same server (what a C
  cache filter could take off the Python path);
* ``qd1`` / ``qd16``: 4 KiB random reads (fio's nbd engine), after ``again``;
* ``cold QD1``: the same at queue depth 1 before anything else (``first`` then
  starts with fio's blocks cached).

Configurations: ``--threads`` 1, 2 and 4; the ``cache`` filter
(``cache-on-read=true``, with its default 64 KiB blocks and with 4 KiB); the
``readahead`` filter.  Also measures time to
serve (launch until the URI line) and the supervisor's and nbdkit's RSS.
Every server is stopped by pid even when a step fails.  Usage::

    .venv/bin/python bench/bench_serve_config.py [--tree t1] [--rounds 3] [--runtime 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import trees  # noqa: E402
from bench_serve import fio_randread  # noqa: E402
from procs import rss_mib, stop  # noqa: E402

CONFIGS: dict[str, list[str]] = {
    "threads=1 (default)": [],
    "threads=2": ["--threads", "2"],
    "threads=4": ["--threads", "4"],
    "cache filter": ["--filter", "cache", "--param", "cache-on-read=true"],
    "cache4k filter": ["--filter", "cache", "--param", "cache-on-read=true",
                       "--param", "cache-min-block-size=4096"],
    "readahead filter": ["--filter", "readahead"],
}


def copy_seconds(uri: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", "--no-extents", uri, "null:"], check=True)
    return time.perf_counter() - t0


def measure(tree: Path, extra: list[str], runtime: float, work: Path) -> dict[str, float]:
    sock = work / "nbd.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ext4gen.cli", "serve", str(tree), "--socket",
                             str(sock), "--foreground", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    nbdkit = None
    try:
        assert proc.stdout is not None
        uri = proc.stdout.readline().strip()
        if not uri:
            raise RuntimeError(f"serve {extra} printed no URI")
        out: dict[str, float] = {"time_to_serve_s": time.perf_counter() - t0}
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        nbdkit = int(kids[0])
        out["rss_supervisor_mib"] = rss_mib(proc.pid)
        out["rss_nbdkit_mib"] = rss_mib(nbdkit)
        out["cold_qd1_iops"] = fio_randread(uri, 1, runtime)["iops"]  # nothing cached yet
        out["first_s"] = copy_seconds(uri)
        out["again_s"] = copy_seconds(uri)
        out["qd1_iops"] = fio_randread(uri, 1, runtime)["iops"]
        out["qd16_iops"] = fio_randread(uri, 16, runtime)["iops"]
        return out
    finally:
        stop(proc)
        if nbdkit is not None:
            try:
                os.kill(nbdkit, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default="t1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=5.0)
    ap.add_argument("--only", help="comma-separated subset of the configuration names")
    args = ap.parse_args()
    tree = trees.ensure_tree(args.tree)
    size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
    configs = {k: v for k, v in CONFIGS.items()
               if not args.only or k.split(" ")[0] in args.only.split(",")}
    got: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    for rnd in range(args.rounds):
        for name, extra in configs.items():
            with tempfile.TemporaryDirectory(prefix="bench-cfg-") as work:
                r = measure(tree, extra, args.runtime, Path(work))
            got[name].append(r)
            print(json.dumps({"round": rnd, "config": name, **r}), file=sys.stderr, flush=True)
    base = {k: statistics.median(r[k] for r in got["threads=1 (default)"])
            for k in got["threads=1 (default)"][0]} if "threads=1 (default)" in got else None
    print(f"| config | time to serve | cold QD1 IOPS | first copy | again | QD1 IOPS | QD16 IOPS "
          f"| RSS sup/nbdkit |"
          f"  ({args.tree}, {size / 2**20:.0f} MiB of files, medians of {args.rounds})")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in got.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        ratios = bool(base) and name != "threads=1 (default)"

        def rel(k: str, m: dict[str, float] = m, ratios: bool = ratios) -> str:
            return f" ({m[k] / base[k]:.2f}×)" if ratios and base else ""

        print(f"| {name} | {m['time_to_serve_s']:.2f} s | "
              f"{m['cold_qd1_iops']:,.0f}{rel('cold_qd1_iops')} | {m['first_s']:.2f} s{rel('first_s')} | "
              f"{m['again_s']:.2f} s{rel('again_s')} | {m['qd1_iops']:,.0f}{rel('qd1_iops')} | "
              f"{m['qd16_iops']:,.0f}{rel('qd16_iops')} | "
              f"{m['rss_supervisor_mib']:.0f}/{m['rss_nbdkit_mib']:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
