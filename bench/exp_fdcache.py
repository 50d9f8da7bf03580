#!/usr/bin/env python3
"""Experiment: how much of the serving gap a cheaper fd cache closes (see exp_fdcache_plugin.py).

Serves T1 with the ext4gen plugin as it is and with the patched fd cache, side
by side at nbdkit ``--threads 1`` (``ext4gen serve``'s setting), plus the
trivial Python plugin as the reference; reports sequential and random
throughput, kernel ``tar`` with caches dropped, and time inside ``pread``::

    .venv/bin/python bench/exp_fdcache.py [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_serve as bs  # noqa: E402
import trees  # noqa: E402


def pread_us(plugin_args: list[str], env_extra: dict[str, str], runtime: float) -> dict:
    """Mean time inside pread for 4 KiB random reads and 256 KiB sequential reads."""
    out = {}
    for workload in ("seq", "rand_qd1"):
        os.environ.update(env_extra)
        os.environ["PROFILED_PLUGIN"] = plugin_args[1]
        os.environ.pop("PROFILE_OUT", None)
        with bs.Server("exp-prof", ["python", str(HERE / "profiled_plugin.py"), *plugin_args[2:]], 1) as s:
            subprocess.run(["nbdcopy", "-C", "1", "--no-extents", s.uri, "null:"], check=True)
            bs._mark(s.uri)
            if workload == "seq":
                subprocess.run(["nbdcopy", "-C", "1", "--no-extents", s.uri, "null:"], check=True)
            else:
                bs.fio_randread(s.uri, 1, runtime)
        m = re.search(r"([\d.]+) us each", s.log)
        out[workload] = float(m.group(1)) if m else None
    for k in env_extra:
        os.environ.pop(k, None)
    os.environ.pop("PROFILED_PLUGIN", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=5.0)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--json", default=str(HERE / "out" / "exp_fdcache.json"))
    a = ap.parse_args()
    bs.SRC, sha = trees.source_snapshot()
    bs.QUIET_WAIT = a.quiet_wait
    manifest, image, size = bs.prepare()
    plug = bs.plugins(manifest, image)
    exp = ["python", str(HERE / "exp_fdcache_plugin.py"), *plug["ext4gen"][2:]]
    variants = {"pyfile": (plug["pyfile"], {}), "ext4gen": (plug["ext4gen"], {}),
                "evict": (exp, {"EXP_PATCH": "evict"}), "evict+limit": (exp, {"EXP_PATCH": "evict+limit"})}
    res: dict = {"ext4gen_commit": sha, "threads": 1, "variants": {}}
    try:
        with contextlib.ExitStack() as stack:
            srv = {}
            for n, (args, env) in variants.items():
                os.environ.update(env)
                srv[n] = stack.enter_context(bs.Server(n, args, 1))
                for k in env:
                    os.environ.pop(k, None)
            allsrv = list(srv.values())
            got: dict = {n: {"seq": [], "qd1": [], "qd16": [], "tar": []} for n in srv}
            for s in srv.values():
                bs.seq_copy(s.uri, size)
            for _ in range(a.repeat):
                for n, s in srv.items():
                    got[n]["seq"].append(bs.measured(allsrv, bs.seq_copy, s.uri, size))
                    got[n]["qd1"].append(bs.measured(allsrv, bs.fio_randread, s.uri, 1, a.runtime))
                    got[n]["qd16"].append(bs.measured(allsrv, bs.fio_randread, s.uri, 16, a.runtime))
                    got[n]["tar"].append(bs.measured(allsrv, bs.tar_through_kernel, s))
        for n, g in got.items():
            r = {"seq_MiB_s": max(x["MiB_s"] for x in g["seq"]),
                 "qd1_iops": max(x["iops"] for x in g["qd1"]),
                 "qd16_iops": max(x["iops"] for x in g["qd16"]),
                 "tar_cold_s": min(x["cold_s"] for x in g["tar"]),
                 "others_cores_max": max(x["others_cores"] for k in g for x in g[k])}
            args, env = variants[n]
            r["pread_us"] = pread_us(args, env, a.runtime)
            res["variants"][n] = r
            bs.log(f"{n}: seq {r['seq_MiB_s']:.0f} MiB/s, QD1 {r['qd1_iops']:.0f}, "
                   f"QD16 {r['qd16_iops']:.0f} IOPS, tar cold {r['tar_cold_s']:.2f} s, pread {r['pread_us']}")
    finally:
        shutil.rmtree(bs.WORK, ignore_errors=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
