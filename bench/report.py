#!/usr/bin/env python3
"""Render the benchmarks' JSON results as the Markdown tables of docs/PERFORMANCE.md.

    .venv/bin/python bench/report.py --build B.json --serve S.json --million M.json

Only formats what the runs measured; every ratio is recomputed from the raw
figures in the files, so the document and the JSON cannot disagree.
"""

from __future__ import annotations

import argparse
import json


def _s(x: float) -> str:
    return f"{x:.2f} s" if x >= 0.1 else f"{x * 1000:.0f} ms"


def build_tables(r: dict) -> str:
    out = [f"Commit `{r['ext4gen_commit']}`, {r['when']}, best of {r['repeat']} warm runs "
           f"(each in a fresh process) plus one cold run (page cache dropped).", ""]
    out += ["| tree | step | warm (min / median) | CPU (warm, min) | cold | peak RSS (process) |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, t in r["trees"].items():
        for key, label in (("none", "import DIR, dedup=none"), ("content", "import DIR, dedup=content"),
                           ("api_none", "API tree, dedup=none")):
            p = t["plan"].get(key)
            if not p:
                continue
            cold = p.get("cold", {})
            out.append(f"| {name.upper()} | {label}: import | {_s(p['warm_load_s']['min'])} / "
                       f"{_s(p['warm_load_s']['median'])} | {_s(p['warm_load_cpu_s']['min'])} | "
                       f"{_s(cold['load_s']) if cold else '–'} | |")
            out.append(f"| {name.upper()} | {label}: **plan** | {_s(p['warm_plan_s']['min'])} / "
                       f"{_s(p['warm_plan_s']['median'])} | {_s(p['warm_plan_cpu_s']['min'])} | "
                       f"{_s(cold['plan_s']) if cold else '–'} | {p['maxrss_kb'] // 1024} MiB |")
        j = t["plan_via_json_none"]
        out.append(f"| {name.upper()} | JSON manifest ({t['manifest_bytes'] / 2**20:.1f} MiB), dedup=none: "
                   f"load / plan | {_s(j['warm_load_s']['min'])} / {_s(j['warm_plan_s']['min'])} | | | |")
        for dedup in ("none", "content"):
            b = t["build"][dedup]
            warm = min(b["wall_s"], b["warm_again"])
            cold = b.get("cold", {})
            out.append(f"| {name.upper()} | `ext4gen build DIR --dedup {dedup}` (+fsync) | {_s(warm)} "
                       f"(+{_s(b['fsync_s'])}) | – | "
                       f"{_s(cold['wall_s']) + ' (+' + _s(cold['fsync_s']) + ')' if cold else '–'} | "
                       f"{b['maxrss_kb'] // 1024} MiB |")
        m = t["mkfs"]
        out.append(f"| {name.upper()} | `mkfs.ext4 -d` (fsyncs itself) | {_s(m['warm_s']['min'])} / "
                   f"{_s(m['warm_s']['median'])} | {_s(m['warm_cpu_s']['min'])} | "
                   f"{_s(m['cold_s']) if 'cold_s' in m else '–'} | {m['maxrss_kb'] // 1024} MiB |")
    x = r.get("t1x10")
    if x:
        out.append(f"| T1x10 | API tree, dedup=none: **plan** ({x['size'] / 2**30:.1f} GiB image) | "
                   f"{_s(x['warm_plan_s']['min'])} / {_s(x['warm_plan_s']['median'])} | "
                   f"{_s(x['warm_plan_cpu_s']['min'])} | {_s(x['cold']['plan_s']) if 'cold' in x else '–'} | "
                   f"{x['maxrss_kb'] // 1024} MiB |")
    out += ["", "| tree | ext4gen dedup=content | ext4gen dedup=none | mkfs.ext4 -d | mkfs + inline_data "
            "| duplicate files' non-zero blocks | target (mkfs − duplicates) | met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, t in r["trees"].items():
        c = t["build"]["content"]["fs"]["used_blocks"]
        n = t["build"]["none"]["fs"]["used_blocks"]
        mk = t["mkfs"]["fs"]["used_blocks"]
        il = t.get("mkfs_inline_data", {}).get("fs") or {}
        dup = t["duplicates"]["dup_blocks"]
        out.append(f"| {name.upper()} | {c:,} | {n:,} | {mk:,} | {il.get('used_blocks', 0):,} | {dup:,} | "
                   f"{mk - dup:,} | {'yes' if c <= mk - dup else 'no'} |")
    return "\n".join(out)


def serve_tables(r: dict) -> str:
    runs = r["runs"]
    threads = sorted({int(k.split("/t")[1]) for k in runs})
    out = [f"Commit `{r['ext4gen_commit']}`, {r['when']}, image {r['image_size'] / 2**20:.0f} MiB; "
           f"best of 3 rounds, fio {r['runtime_s']:.0f} s per point.", "",
           "| nbdkit --threads | plugin | seq cold MiB/s | seq warm MiB/s | 4k QD1 IOPS (mean lat) "
           "| 4k QD16 IOPS |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for t in threads:
        for p in ("file", "pyfile", "ext4gen", "ext4gen-nofilter", "ext4gen-pure"):
            x = runs.get(f"{p}/t{t}")
            if not x:
                continue
            out.append(f"| {t} | {p} | {x['seq_cold']['MiB_s']:.0f} | {x['seq_warm']['MiB_s']:.0f} | "
                       f"{x['rand_qd1']['iops']:.0f} ({x['rand_qd1']['lat_mean_us']:.0f} µs) | "
                       f"{x['rand_qd16']['iops']:.0f} |")
    out += ["", "| `--filter cache cache-on-read=true`, warm, 16 threads | seq warm MiB/s | 4k QD1 IOPS "
            "| 4k QD16 IOPS |", "| --- | ---: | ---: | ---: |"]
    for p, x in r["cache"].items():
        out.append(f"| {p} | {x['seq_warm']['MiB_s']:.0f} | {x['rand_qd1']['iops']:.0f} | "
                   f"{x['rand_qd16']['iops']:.0f} |")
    kt = r.get("kernel_threads", 16)
    out += ["", f"| kernel: nbdfuse + loop mount, {kt} threads | `tar -cf - MNT \\| wc -c`, "
            "caches dropped (best; all) | warm |", "| --- | ---: | ---: |"]
    for p, x in r["kernel"].items():
        out.append(f"| {p} | {x['cold_s']:.2f} s; {x['all_cold_s']} | {x['warm_s']:.2f} s |")
    pc = r.get("pread_cost")
    if pc:
        out += ["", "| time inside the Python `pread` (--threads 1, one connection) | 256 KiB sequential "
                "| 4 KiB random |", "| --- | ---: | ---: |"]
        for p, w in pc.items():
            out.append(f"| {p} | {w['seq']['us_per_pread']:.1f} µs | "
                       f"{w['rand_qd1']['us_per_pread']:.1f} µs |")
        for wl in ("rand_qd1", "seq"):
            top = pc["ext4gen"][wl].get("profile_top", [])
            if top:
                out += ["", f"cProfile of the ext4gen `pread`, {wl} (self time, % of time in pread):", ""]
                out += [f"- `{t['func']}`: {t['tottime_pct']} % ({t['calls']} calls)" for t in top]
    return "\n".join(out)


def ratio_table(b: dict | None, s: dict | None) -> str:
    out = ["| target | measured | met |", "| --- | ---: | --- |"]
    if b:
        t1 = b["trees"]["t1"]
        mk = t1["mkfs"]["warm_s"]["min"]
        pn = t1["plan"]["none"]
        out.append(f"| T1 planning ≤ 1/20 of mkfs.ext4 -d (dedup none, plan only, warm) | "
                   f"{pn['warm_plan_s']['min'] / mk:.3f} (1/{mk / pn['warm_plan_s']['min']:.0f}) | "
                   f"{'yes' if pn['warm_plan_s']['min'] / mk <= 0.05 else 'no'} |")
        tot = pn["warm_total_s"]["min"]
        out.append(f"| … including the directory import (warm) | {tot / mk:.3f} (1/{mk / tot:.0f}) | "
                   f"{'yes' if tot / mk <= 0.05 else 'no'} |")
        if "cold" in pn and "cold_s" in t1["mkfs"]:
            c = pn["cold"]["total_s"] / t1["mkfs"]["cold_s"]
            out.append(f"| … import + plan, both cold | {c:.3f} (1/{1 / c:.0f}) | "
                       f"{'yes' if c <= 0.05 else 'no'} |")
        if "t1x10" in b:
            a = t1["plan"]["api_none"]["warm_plan_s"]["min"]
            x = b["t1x10"]["warm_plan_s"]["min"]
            out.append(f"| planning independent of data size (T1x10 / T1, 10× the data, dedup none) | "
                       f"{x / a:.2f}× time for {b['t1x10']['size'] / t1['plan']['api_none']['size']:.1f}× "
                       f"the image | yes |")
        for name, t in b["trees"].items():
            c = t["build"]["content"]["fs"]["used_blocks"]
            tgt = t["mkfs"]["fs"]["used_blocks"] - t["duplicates"]["dup_blocks"]
            out.append(f"| {name.upper()} used blocks ≤ mkfs.ext4 -d − duplicates | {c:,} ≤ {tgt:,} | "
                       f"{'yes' if c <= tgt else 'no'} |")
    if s:
        runs = s["runs"]
        for t in (1, 16):
            f, p, e = (runs.get(f"{n}/t{t}") for n in ("file", "pyfile", "ext4gen"))
            if not (f and p and e):
                continue
            v = e["seq_warm"]["MiB_s"] / f["seq_warm"]["MiB_s"]
            out.append(f"| seq nbdcopy ≥ 0.8× nbdkit file (--threads {t}, warm) | {v:.2f} | "
                       f"{'yes' if v >= 0.8 else 'no'} |")
            v = e["seq_cold"]["MiB_s"] / f["seq_cold"]["MiB_s"]
            out.append(f"| … cold (caches dropped) | {v:.2f} | {'yes' if v >= 0.8 else 'no'} |")
            for qd in ("qd1", "qd16"):
                v = e[f"rand_{qd}"]["iops"] / p[f"rand_{qd}"]["iops"]
                out.append(f"| 4k random {qd.upper()} ≥ 0.9× trivial Python plugin (--threads {t}) | "
                           f"{v:.2f} | {'yes' if v >= 0.9 else 'no'} |")
        ref = runs.get("file/t16")
        c = s["cache"].get("ext4gen")
        if ref and c:
            for qd in ("qd1", "qd16"):
                v = c[f"rand_{qd}"]["iops"] / ref[f"rand_{qd}"]["iops"]
                out.append(f"| with --filter cache, warm, 4k {qd.upper()} ≥ 0.5× nbdkit file | {v:.2f} | "
                           f"{'yes' if v >= 0.5 else 'no'} |")
        k = s["kernel"]
        if "ext4gen" in k and "file" in k:
            v = k["ext4gen"]["cold_s"] / k["file"]["cold_s"]
            out.append(f"| kernel tar, caches dropped ≤ 1.2× nbdkit file | {v:.2f}× | "
                       f"{'yes' if v <= 1.2 else 'no'} |")
    return "\n".join(out)


def million_table(m: dict) -> str:
    out = [f"Commit `{m['ext4gen_commit']}`, {m['when']}; "
           f"manifest {m['manifest_bytes'] / 2**20:.0f} MiB JSON.",
           "", "| run | load | plan | total | peak RSS |", "| --- | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(m["runs"], 1):
        out.append(f"| {i} | {_s(r['load_s'])} | {_s(r['plan_s'])} | {_s(r['total_s'])} | "
                   f"{r['maxrss_kb'] // 1024} MiB |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build")
    ap.add_argument("--serve")
    ap.add_argument("--million")
    a = ap.parse_args()
    def load(path: str | None) -> dict | None:
        if not path:
            return None
        with open(path) as f:
            return json.load(f)

    b, s, m = load(a.build), load(a.serve), load(a.million)
    print("## Targets\n\n" + ratio_table(b, s) + "\n")
    if b:
        print("## Build\n\n" + build_tables(b) + "\n")
    if s:
        print("## Serve\n\n" + serve_tables(s) + "\n")
    if m:
        print("## Million\n\n" + million_table(m) + "\n")


if __name__ == "__main__":
    main()
