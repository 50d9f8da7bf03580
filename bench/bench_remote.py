#!/usr/bin/env python3
"""Remote content benchmark: one large file served from a local file, nginx (HTTP) and moto (S3).

For each origin, through a real ``ext4gen serve`` (nbdkit) and libnbd:

* time to first byte: a fresh server (empty chunk cache) reading the file's first 4 KiB;
* sequential throughput: ``nbdcopy --no-extents URI null:`` of the whole export,
  cold (empty chunk cache) and cached (a new server over the filled cache);
* requests per GiB read, from nginx's access log / moto's request log;
* for S3, the same cold figures at chunk sizes 256 KiB, 1 MiB and 4 MiB.

Origins run on 127.0.0.1 (no network latency: these figures bound ext4gen's own
cost, not a WAN's).  Usage (root)::

    .venv/bin/python bench/bench_remote.py [--size-mib 256] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers.origins import AWS_ENV, moto_serving, nginx_serving  # noqa: E402
from helpers.servers import connect  # noqa: E402

import ext4gen  # noqa: E402
from ext4gen.serve.commands import ServeOptions, start_background  # noqa: E402

MiB = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def serving(manifest: Path, logf: Path, cache: Path, chunk: int):
    os.environ["EXT4GEN_CACHE"] = str(cache)
    os.environ["EXT4GEN_CHUNK_SIZE"] = str(chunk)
    opts = ServeOptions(source=str(manifest), sources=[str(manifest)], log=str(logf))
    opts.check()
    rec = start_background(opts)
    try:
        yield rec.uri
    finally:
        rec.stop()


def first_block(manifest: Path) -> int:
    image = ext4gen.plan(*ext4gen.load(str(manifest)))
    for p, ip in image.plan.paths():
        if p == b"/big.bin":
            return image.plan.physical_extents(ip)[0][2] * 4096
    raise KeyError("/big.bin")


def measure(manifest: Path, work: Path, chunk: int, count) -> dict:  # type: ignore[no-untyped-def]
    cache = work / f"cache-{chunk}"
    shutil.rmtree(cache, ignore_errors=True)
    offset = first_block(manifest)
    out: dict[str, float] = {}
    before = count()
    with serving(manifest, work / "serve.log", cache, chunk) as uri:
        h = connect(uri)
        t0 = time.perf_counter()
        h.pread(4096, offset)
        out["ttfb_ms"] = (time.perf_counter() - t0) * 1000
        h.shutdown()
    shutil.rmtree(cache, ignore_errors=True)
    for phase in ("cold", "cached"):
        with serving(manifest, work / "serve.log", cache, chunk) as uri:
            n0 = count()
            t0 = time.perf_counter()
            subprocess.run(["nbdcopy", "--no-extents", uri, "null:"], check=True)
            secs = time.perf_counter() - t0
            out[f"{phase}_s"] = secs
            out[f"{phase}_requests"] = count() - n0
    out["requests_total"] = count() - before
    return out


def run_http(work: Path, www: Path) -> dict[str, dict]:
    with nginx_serving(work / "nginx", www) as web:
        m = work / "http.json"
        m.write_text(json.dumps({"/big.bin": {"url": web.url("big.bin")}}))
        r = measure(m, work, MiB, lambda: sum(1 for ln in web.requests("big.bin")
                                              if ln.startswith("GET ")))
        log(f"http: {r}")
        return {"http-1024KiB": r}


def run_s3(work: Path, www: Path, size: int) -> dict[str, dict]:
    out = {}
    with moto_serving(work) as s3:
        os.environ["EXT4GEN_S3_ENDPOINT"] = s3.endpoint
        s3.client().create_bucket(Bucket="bench")
        s3.client().upload_file(str(www / "big.bin"), "bench", "big.bin")
        out["s3-origin-alone"] = origin_alone(s3.client(), size)
        log(f"s3 origin alone: {out['s3-origin-alone']}")
        m = work / "s3.json"
        m.write_text(json.dumps({"/big.bin": {"s3": "s3://bench/big.bin"}}))
        for chunk in (256 << 10, MiB, 4 * MiB):
            key = f"s3-{chunk >> 10}KiB"
            out[key] = measure(m, work, chunk, lambda: s3.gets("bench", "big.bin"))
            log(f"{key}: {out[key]}")
    return out


def origin_alone(client, size: int) -> dict:  # type: ignore[no-untyped-def]
    """What the S3 server itself costs: boto3 range GETs of 1 MiB, no ext4gen involved."""
    times = []
    for i in range(10):
        start = (i * 7 * MiB) % max(MiB, size - MiB)
        t0 = time.perf_counter()
        client.get_object(Bucket="bench", Key="big.bin", Range=f"bytes={start}-{start + MiB - 1}")[
            "Body"].read()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"get_1MiB_median_ms": times[len(times) // 2] * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--origins", default="local,http,s3", help="which of local,http,s3 to run")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    os.environ.update(AWS_ENV)
    work = Path(tempfile.mkdtemp(prefix="ext4gen-bench-remote-"))
    results: dict[str, dict] = {}
    try:
        www = work / "www"
        www.mkdir()
        data = os.urandom(args.size_mib * MiB)
        (www / "big.bin").write_bytes(data)
        size = len(data)
        local = work / "local.json"
        local.write_text(json.dumps({"/big.bin": {"source": str(www / "big.bin")}}))
        origins = args.origins.split(",")
        if "local" in origins:
            results["local"] = measure(local, work, MiB, lambda: 0)
            log(f"local: {results['local']}")
        if "http" in origins:
            results.update(run_http(work, www))
        if "s3" in origins:
            results.update(run_s3(work, www, size))
        for r in results.values():
            if "cold_s" not in r:
                continue
            for phase in ("cold", "cached"):
                r[f"{phase}_MiB_s"] = size / MiB / r[f"{phase}_s"]
                r[f"{phase}_requests_per_GiB"] = r[f"{phase}_requests"] * (1 << 30) / size
        results["_meta"] = {"size_bytes": size}
        text = json.dumps(results, indent=1)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
