#!/usr/bin/env python3
"""Planning and build benchmark: ext4gen against ``mkfs.ext4 -d`` on the T1/T2 trees.

Everything in one run, so the figures in docs/PERFORMANCE.md are comparable:

* planning (tree → ``Image`` ready) through the Python API, dedup ``none`` and
  ``content``, warm page cache (best of N) and cold (caches dropped once);
* the same for a sparse copy of T1 with every file 10x larger (T1x10), to show
  that planning with dedup ``none`` does not depend on data size;
* the CLI path: JSON manifest generation, ``ext4gen build`` to a sparse file
  (plan + write, then the fsync that mkfs does itself), e2fsck -fn of the result;
* ``mkfs.ext4 -d`` with ext4gen's features as far as mkfs allows, timed the
  same way, and used blocks of both images.

Each measurement runs in a fresh process, so its peak RSS is that
measurement's own peak memory.  Usage (root, for drop_caches)::

    .venv/bin/python bench/bench_build.py [--trees t1,t2] [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import trees  # noqa: E402

REPO = HERE.parent
PY = sys.executable
# Set by main(): the ext4gen source under test (a snapshot of one commit by default).
SRC: Path = REPO
QUIET_WAIT = 60.0  # set by main(): how long to wait for other load to go away before a step
WORK = trees.CACHE / "work"
MKFS_OPTS = ["-q", "-F", "-b", "4096", "-I", "256", "-m", "0",
             "-O", "^has_journal,^resize_inode,sparse_super2",
             "-E", "num_backup_sb=0,lazy_itable_init=0"]


# -- worker: one planning measurement in its own process ----------------------------------
def vm_hwm_kb() -> int:
    """Peak RSS of this process image.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across
    fork/vfork + exec, so a small child of a big parent would report the parent.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(tree_dir: str, dedup: str, via: str) -> None:
    t0 = time.perf_counter()
    from tree_manifest import tree_from_dir

    import ext4gen

    t_import = time.perf_counter() - t0
    base_rss = vm_hwm_kb()
    t0 = time.perf_counter()
    c0 = time.process_time()
    if via == "api":  # tree_manifest's helper: HostFileSources without hole detection
        tree = tree_from_dir(tree_dir, detect_holes=False)
        opts = ext4gen.ImageOptions(dedup=dedup)
    else:  # "dir" (ext4gen's directory import) or "json" (a manifest file)
        tree, opts = ext4gen.load(tree_dir, dedup=dedup)
    t1 = time.perf_counter()
    c1 = time.process_time()
    image = ext4gen.plan(tree, opts)
    t2 = time.perf_counter()
    c2 = time.process_time()
    image.read(1024, 1024)  # the superblock: must cost nothing beyond planning
    t3 = time.perf_counter()
    geo = image.plan.geometry
    ds = image.plan.dedup_stats
    out = {
        "import_s": t_import, "load_s": t1 - t0, "plan_s": t2 - t1, "total_s": t2 - t0,
        "load_cpu_s": c1 - c0, "plan_cpu_s": c2 - c1,
        "superblock_read_s": t3 - t2,
        "maxrss_kb": vm_hwm_kb(), "import_rss_kb": base_rss,
        "size": image.size, "blocks_count": geo.blocks_count, "used_blocks": geo.used_blocks,
        "block_counts": image.block_counts(),
        "dedup": {k: getattr(ds, k) for k in vars(ds)} if ds is not None else None,
        "data_bytes_read_by_superblock": image.stats.bytes_data,
        "ext4gen_file": ext4gen.__file__,
    }
    print(json.dumps(out))


# -- helpers --------------------------------------------------------------------------------
def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}:{HERE}"}


def busy_jiffies() -> int:
    """CPU time (all cores, in clock ticks) the whole machine spent not idle."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # minus idle and iowait


def run_rusage(cmd: list[str], stdout_path: Path | None = None) -> dict:
    """Run ``cmd``: wall time and the child's own rusage (peak RSS, CPU) via wait4.

    ``others_cores`` is how many cores other processes kept busy meanwhile: the
    machine is shared with other developers' test runs, so every figure says
    how contended it was.
    """
    # Peak RSS through GNU time: its own tiny process is what the command's high-water
    # mark starts from (see vm_hwm_kb), and the parent's is not inherited.
    fd, rss_file = tempfile.mkstemp(prefix="maxrss-")
    os.close(fd)
    cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file, *cmd]
    b0 = busy_jiffies()
    t0 = time.perf_counter()
    sink = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    p = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, env=child_env(), cwd=SRC)
    # Drain stderr in a thread so neither pipe can fill up; reap with wait4 for rusage.
    errs: list[bytes] = []
    t = threading.Thread(target=lambda: errs.append(p.stderr.read()))  # type: ignore[union-attr]
    t.start()
    out = p.stdout.read() if p.stdout else b""
    t.join()
    if stdout_path:
        sink.close()  # type: ignore[union-attr]
    err = errs[0]
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    others = (busy_jiffies() - b0) / os.sysconf("SC_CLK_TCK") - ru.ru_utime - ru.ru_stime
    p.returncode = os.waitstatus_to_exitcode(status)
    try:
        maxrss = int(Path(rss_file).read_text().split()[-1])
    except (ValueError, IndexError):
        maxrss = -1  # the command failed before GNU time could report
    os.unlink(rss_file)
    return {"rc": p.returncode, "wall_s": wall, "maxrss_kb": maxrss, "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime, "cpu_s": ru.ru_utime + ru.ru_stime,
            "others_cores": max(0.0, others / wall), "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace")}


def plan_once(tree_dir: Path | str, dedup: str, via: str, cold: bool) -> dict:
    before = trees.wait_quiet(0.3, QUIET_WAIT)
    if cold:
        drop_caches()
    r = run_rusage([PY, __file__, "--worker", str(tree_dir), dedup, via])
    if r["rc"] != 0:
        raise SystemExit(f"planning worker failed: {r['stderr']}")
    res = json.loads(r["stdout"].strip().splitlines()[-1])
    res["process_wall_s"] = r["wall_s"]
    res["others_cores"] = r["others_cores"]
    res["load_before"] = before
    return res


def best(runs: list[dict], key: str) -> dict:
    vals = [r[key] for r in runs]
    return {"min": min(vals), "median": statistics.median(vals), "all": vals}


def fsync_time(path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def dumpe2fs(path: Path) -> dict:
    out = subprocess.run(["dumpe2fs", "-h", str(path)], capture_output=True, text=True).stdout
    fields = {}
    for key in ("Block count", "Free blocks", "Inode count", "Free inodes", "Filesystem features"):
        m = re.search(rf"^{key}:\s+(.*)$", out, re.M)
        if m:
            fields[key] = m.group(1).strip()
    bc, fb = int(fields["Block count"]), int(fields["Free blocks"])
    return {"blocks_count": bc, "free_blocks": fb, "used_blocks": bc - fb,
            "inodes_count": int(fields["Inode count"]), "features": fields.get("Filesystem features")}


def count_entries(path: Path) -> int:
    n = 1
    for _root, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
    return n


def du_kib(path: Path) -> int:
    out = subprocess.run(["du", "-c", "-k", "-s", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def mkfs_cmd(tree_dir: Path, img: Path, size_kib: int, inodes: int | None,
             extra: list[str] | None = None) -> list[str]:
    img.unlink(missing_ok=True)
    img.parent.mkdir(parents=True, exist_ok=True)  # the work directory of a fresh cache
    with open(img, "wb") as f:
        f.truncate(size_kib * 1024)
    cmd = ["mkfs.ext4", *MKFS_OPTS, *(extra or [])]
    if inodes is not None:
        cmd += ["-N", str(inodes)]
    return [*cmd, "-d", str(tree_dir), str(img)]


def mkfs_once(tree_dir: Path, img: Path, size_kib: int, inodes: int | None, cold: bool) -> dict:
    cmd = mkfs_cmd(tree_dir, img, size_kib, inodes)
    before = trees.wait_quiet(0.3, QUIET_WAIT)
    if cold:
        drop_caches()
    r = run_rusage(cmd)
    r["load_before"] = before
    r["cmd"] = " ".join(cmd)
    if r["rc"] == 0:
        r["fs"] = dumpe2fs(img)
    return r


def build_once(source: Path, img: Path, dedup: str, cold: bool) -> dict:
    img.unlink(missing_ok=True)
    cmd = [PY, "-m", "ext4gen.cli", "build", str(source), "--dedup", dedup, "-o", str(img)]
    before = trees.wait_quiet(0.3, QUIET_WAIT)
    if cold:
        drop_caches()
    r = run_rusage(cmd)
    r["load_before"] = before
    if r["rc"] != 0:
        raise SystemExit(f"ext4gen build failed: {r['stderr']}")
    m = re.search(r"planned in ([\d.]+) s, written in ([\d.]+) s", r["stderr"])
    r["cmd"] = " ".join(cmd)
    r["planned_s"], r["written_s"] = (float(m.group(1)), float(m.group(2))) if m else (None, None)
    r["fsync_s"] = fsync_time(img)
    r["allocated_kib"] = os.stat(img).st_blocks // 2
    return r


def e2fsck_clean(img: Path) -> dict:
    r = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    return {"rc": r.returncode, "tail": r.stdout.strip().splitlines()[-1:]}


# -- the benchmark ------------------------------------------------------------------------------
def plan_series(tree_dir: Path, dedup: str, via: str, repeat: int, cold: bool) -> dict:
    """One warm-up, ``repeat`` warm runs and one cold run of a planning worker."""
    plan_once(tree_dir, dedup, via, cold=False)  # warm-up: page cache, .pyc
    warm = [plan_once(tree_dir, dedup, via, cold=False) for _ in range(repeat)]
    entry = {"warm_plan_s": best(warm, "plan_s"), "warm_load_s": best(warm, "load_s"),
             "warm_plan_cpu_s": best(warm, "plan_cpu_s"), "warm_load_cpu_s": best(warm, "load_cpu_s"),
             "others_cores": best(warm, "others_cores"), "load_before": best(warm, "load_before"),
             "warm_total_s": best(warm, "total_s"), "maxrss_kb": max(r["maxrss_kb"] for r in warm),
             "import_rss_kb": warm[0]["import_rss_kb"], "used_blocks": warm[0]["used_blocks"],
             "blocks_count": warm[0]["blocks_count"], "block_counts": warm[0]["block_counts"],
             "size": warm[0]["size"], "dedup_stats": warm[0]["dedup"],
             "superblock_read_s": warm[0]["superblock_read_s"],
             "superblock_data_bytes": warm[0]["data_bytes_read_by_superblock"]}
    if cold:
        c = plan_once(tree_dir, dedup, via, cold=True)
        entry["cold"] = {k: c[k] for k in ("load_s", "plan_s", "total_s", "maxrss_kb", "plan_cpu_s",
                                           "load_cpu_s", "others_cores")}
    return entry


def bench_tree(name: str, repeat: int, cold: bool, log) -> dict:
    tree_dir = trees.ensure_tree(name)
    res: dict = {"tree": name, "path": str(tree_dir), "summary": trees.summary(tree_dir)}
    res["duplicates"] = trees.duplicate_stats(tree_dir)
    entries = count_entries(tree_dir)
    res["entries"] = entries
    WORK.mkdir(parents=True, exist_ok=True)

    # Planning: the directory import (the product path, SOURCE = DIR) for both dedup modes; for
    # T1 also a Tree built through the API with hole detection off (the T1x10 comparison).
    res["plan"] = {}
    variants = [("dir", "none"), ("dir", "content")] + ([("api", "none")] if name == "t1" else [])
    for via, dedup in variants:
        key = dedup if via == "dir" else f"{via}_{dedup}"
        res["plan"][key] = entry = plan_series(tree_dir, dedup, via, repeat, cold)
        log(f"{name} plan {via} dedup={dedup}: warm plan {entry['warm_plan_s']['min']:.3f} s "
            f"(import {entry['warm_load_s']['min']:.3f} s)"
            + (f", cold import+plan {entry['cold']['total_s']:.3f} s" if cold else "")
            + f", rss {entry['maxrss_kb'] // 1024} MiB, "
            f"others busy {entry['others_cores']['median']:.2f} cores")

    # The CLI path: JSON manifest, then ext4gen build.
    manifest = WORK / f"{name}.json"
    t0 = time.perf_counter()
    run_rusage([PY, str(HERE / "tree_manifest.py"), str(tree_dir)], stdout_path=manifest)
    res["manifest_gen_s"] = time.perf_counter() - t0
    res["manifest_bytes"] = manifest.stat().st_size
    plan_once(manifest, "none", "json", cold=False)
    json_runs = [plan_once(manifest, "none", "json", cold=False) for _ in range(repeat)]
    res["plan_via_json_none"] = {"warm_load_s": best(json_runs, "load_s"),
                                 "warm_plan_s": best(json_runs, "plan_s"),
                                 "maxrss_kb": max(r["maxrss_kb"] for r in json_runs)}
    img = WORK / f"{name}.ext4gen.img"
    res["build"] = {}
    for dedup in ("none", "content"):
        b = build_once(tree_dir, img, dedup, cold=False)
        again = build_once(tree_dir, img, dedup, cold=False)
        b["warm_again"] = again["wall_s"]
        b["warm_again_planned_s"] = again["planned_s"]
        b["warm_again_others_cores"] = again["others_cores"]
        if cold:
            b["cold"] = {k: v for k, v in build_once(tree_dir, img, dedup, cold=True).items()
                         if k in ("wall_s", "planned_s", "written_s", "fsync_s", "maxrss_kb", "cpu_s",
                                  "others_cores")}
        b["e2fsck"] = e2fsck_clean(img)
        b["fs"] = dumpe2fs(img)
        b.pop("stdout")
        res["build"][dedup] = b
        log(f"{name} ext4gen build dedup={dedup}: {min(b['wall_s'], b['warm_again']):.2f} s warm "
            f"(+fsync {b['fsync_s']:.2f}), e2fsck rc {b['e2fsck']['rc']}, used {b['fs']['used_blocks']}")
    img.unlink(missing_ok=True)

    # mkfs.ext4 -d: sized like nbdkit-linuxdisk (du x 6/5), inodes = entries + reserved.
    mk = WORK / f"{name}.mkfs.img"
    size_kib = max(1024, du_kib(tree_dir) * 6 // 5)
    inodes = entries + 16
    res["mkfs"] = {"size_kib": size_kib, "inodes_arg": inodes}
    mkfs_once(tree_dir, mk, size_kib, inodes, cold=False)  # warm-up
    warm = [mkfs_once(tree_dir, mk, size_kib, inodes, cold=False) for _ in range(repeat)]
    for r in warm:
        if r["rc"] != 0:
            raise SystemExit(f"mkfs.ext4 failed: {r['stderr']}")
    res["mkfs"].update({"cmd": warm[0]["cmd"], "warm_s": best(warm, "wall_s"),
                        "warm_cpu_s": best(warm, "cpu_s"), "others_cores": best(warm, "others_cores"),
                        "maxrss_kb": max(r["maxrss_kb"] for r in warm), "fs": warm[0]["fs"],
                        "user_s": warm[0]["user_s"], "sys_s": warm[0]["sys_s"]})
    if cold:
        c = mkfs_once(tree_dir, mk, size_kib, inodes, cold=True)
        res["mkfs"]["cold_s"] = c["wall_s"]
        res["mkfs"]["cold_cpu_s"] = c["cpu_s"]
        res["mkfs"]["cold_others_cores"] = c["others_cores"]
    # With inline_data too, as ext4gen enables it by default (used blocks only).
    il = run_rusage(mkfs_cmd(tree_dir, mk, size_kib, inodes, extra=["-O", "inline_data"]))
    res["mkfs_inline_data"] = {"rc": il["rc"], "wall_s": il["wall_s"],
                               "fs": dumpe2fs(mk) if il["rc"] == 0 else None,
                               "error": il["stderr"].strip().splitlines()[-1:]}
    # What nbdkit-linuxdisk itself would do (no -N): does it even fit?
    ld = mkfs_once(tree_dir, mk, size_kib, None, cold=False)
    res["mkfs_linuxdisk_default_inodes"] = {"rc": ld["rc"], "fs": ld.get("fs"),
                                           "error": ld["stderr"].strip().splitlines()[-1:]}
    mk.unlink(missing_ok=True)
    log(f"{name} mkfs.ext4 -d: warm {res['mkfs']['warm_s']['min']:.2f} s "
        f"(cpu {res['mkfs']['warm_cpu_s']['min']:.2f} s)"
        + (f", cold {res['mkfs']['cold_s']:.2f} s" if cold else "")
        + f", used {res['mkfs']['fs']['used_blocks']}")
    return res


def bench_x10(repeat: int, cold: bool, log) -> dict:
    """T1's shape with 10x larger (sparse, unread) files, planned like T1's "api_none"."""
    tree_dir = trees.ensure_tree("t1x10")
    res = plan_series(tree_dir, "none", "api", repeat, cold)
    res["summary"] = trees.summary(tree_dir)
    log(f"t1x10 plan api dedup=none: warm plan {res['warm_plan_s']['min']:.3f} s, "
        f"image {res['size'] >> 20} MiB")
    return res


def ratios(r: dict) -> dict:
    out: dict = {}
    for name, t in r["trees"].items():
        mk = t["mkfs"]["warm_s"]["min"]
        pn = t["plan"]["none"]
        out[name] = {
            "plan_none_over_mkfs_warm": pn["warm_plan_s"]["min"] / mk,
            "load_plus_plan_none_over_mkfs_warm": pn["warm_total_s"]["min"] / mk,
            "plan_none_cpu_over_mkfs_cpu": pn["warm_plan_cpu_s"]["min"] / t["mkfs"]["warm_cpu_s"]["min"],
            "load_plus_plan_none_cpu_over_mkfs_cpu": (pn["warm_plan_cpu_s"]["min"]
                                                      + pn["warm_load_cpu_s"]["min"])
            / t["mkfs"]["warm_cpu_s"]["min"],
            "plan_content_over_mkfs_warm": t["plan"]["content"]["warm_plan_s"]["min"] / mk,
            "build_content_over_mkfs_warm": (min(t["build"]["content"]["wall_s"],
                                                 t["build"]["content"]["warm_again"])
                                             + t["build"]["content"]["fsync_s"]) / mk,
            "used_blocks_ext4gen_content": t["plan"]["content"]["used_blocks"],
            "used_blocks_ext4gen_none": t["plan"]["none"]["used_blocks"],
            "used_blocks_mkfs": t["mkfs"]["fs"]["used_blocks"],
            "used_blocks_target": t["mkfs"]["fs"]["used_blocks"] - t["duplicates"]["dup_blocks"],
        }
        if "cold" in pn and "cold_s" in t["mkfs"]:
            out[name]["load_plus_plan_none_cold_over_mkfs_cold"] = pn["cold"]["total_s"] / t["mkfs"]["cold_s"]
    if "t1x10" in r and "t1" in r["trees"]:
        t1 = r["trees"]["t1"]["plan"]["api_none"]
        out["t1x10_over_t1_plan_none"] = r["t1x10"]["warm_plan_s"]["min"] / t1["warm_plan_s"]["min"]
        out["t1x10_over_t1_plan_none_cpu"] = (r["t1x10"]["warm_plan_cpu_s"]["min"]
                                              / t1["warm_plan_cpu_s"]["min"])
        out["t1x10_over_t1_image_size"] = r["t1x10"]["size"] / t1["size"]
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", default="t1,t2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-cold", action="store_true", help="skip runs with dropped caches")
    ap.add_argument("--json", default=str(REPO / "bench" / "out" / "build.json"))
    ap.add_argument("--rev", default="HEAD", help="commit to benchmark (exported to the cache)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds to wait, before each step, for other processes to use < 0.3 cores")
    ap.add_argument("--worktree", action="store_true",
                    help="benchmark the working tree as it is instead of a commit")
    a = ap.parse_args()
    global SRC, QUIET_WAIT
    QUIET_WAIT = a.quiet_wait
    if a.worktree:
        SRC, sha = REPO, "worktree"
    else:
        SRC, sha = trees.source_snapshot(a.rev)
    cold = not a.no_cold
    if cold and os.geteuid() != 0:
        raise SystemExit("cold-cache runs need root (drop_caches); use --no-cold")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    names = [n.strip().lower() for n in a.trees.split(",") if n.strip()]
    result: dict = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "mkfs": subprocess.run(["mkfs.ext4", "-V"], capture_output=True,
                                           text=True).stderr.splitlines()[0]},
        "ext4gen_commit": sha, "src": str(SRC),
        "repeat": a.repeat, "trees": {},
    }
    try:
        for n in names:
            result["trees"][n] = bench_tree(n, a.repeat, cold, log)
        if "t1" in names:
            result["t1x10"] = bench_x10(a.repeat, cold, log)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    result["ratios"] = ratios(result)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
