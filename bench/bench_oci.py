#!/usr/bin/env python3
"""OCI benchmark: serve T1 packed as a container image, against ``umoci unpack`` + ``mkfs.ext4 -d``.

The image (made once into the bench cache) is T1 split into two umoci gzip layers
(top-level entries alternately in layer 1 and 2) plus a third layer that deletes
one directory.  Measured, each in a fresh process:

* ``ext4gen serve oci:…`` from start until the URI is printed (background mode:
  the CLI plans the image, then nbdkit plans it again), with an empty index cache
  ("cold") and with the cache the first run left ("warm"), for ``--dedup none`` and
  the default ``content``;
* the anchor: ``umoci unpack`` of the same image, then ``mkfs.ext4 -d`` of the
  unpacked rootfs (ext4gen's features as far as mkfs allows);
* disk used: the index cache against the decompressed layers and the unpacked tree.

Usage (root): ``.venv/bin/python bench/bench_oci.py [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import trees  # noqa: E402

REPO = HERE.parent
IMAGE = trees.CACHE / "oci-t1"
MKFS_OPTS = ["-q", "-F", "-b", "4096", "-I", "256", "-m", "0",
             "-O", "^has_journal,^resize_inode,sparse_super2",
             "-E", "num_backup_sb=0,lazy_itable_init=0"]


def sh(*cmd: str | os.PathLike[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run([os.fspath(c) for c in cmd], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def make_image(t1: Path) -> Path:
    """T1 as an umoci image (tag v3), made once."""
    done = IMAGE.with_name(IMAGE.name + ".done")
    if done.exists():
        return IMAGE
    shutil.rmtree(IMAGE, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="oci-t1-", dir=trees.CACHE))
    try:
        sh("umoci", "init", "--layout", IMAGE)
        sh("umoci", "new", "--image", f"{IMAGE}:v0")
        entries = sorted(os.listdir(t1))
        parts = [entries[0::2], entries[1::2]]
        for i, names in enumerate(parts, 1):
            bundle = work / f"b{i}"
            sh("umoci", "unpack", "--image", f"{IMAGE}:v{i - 1}", bundle)
            for n in names:
                sh("cp", "-a", t1 / n, bundle / "rootfs" / n)
            sh("umoci", "repack", "--image", f"{IMAGE}:v{i}", bundle)
            shutil.rmtree(bundle)
        bundle = work / "b3"
        sh("umoci", "unpack", "--image", f"{IMAGE}:v2", bundle)
        victim = next(n for n in sorted(os.listdir(bundle / "rootfs")) if (bundle / "rootfs" / n).is_dir())
        shutil.rmtree(bundle / "rootfs" / victim)
        sh("umoci", "repack", "--image", f"{IMAGE}:v3", bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    done.write_text("made\n")
    return IMAGE


def serve_ready(source: str, cache: Path, dedup: str) -> float:
    """Seconds from `ext4gen serve` (background) to its URI, then stop it by pid."""
    run = Path(tempfile.mkdtemp(prefix="bench-oci-serve-"))
    env = dict(os.environ, EXT4GEN_CACHE=str(cache))
    pidfile = run / "pid"
    try:
        t = sh(REPO / ".venv/bin/ext4gen", "serve", source, "--socket", run / "s.sock",
               "--pidfile", pidfile, "--dedup", dedup, env=env)
        return t
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            os.kill(pid, 15)
            for _ in range(200):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
        shutil.rmtree(run, ignore_errors=True)


def anchor(image: Path) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-oci-anchor-", dir=trees.CACHE))
    try:
        t_unpack = sh("umoci", "unpack", "--image", f"{image}:v3", work / "b")
        used = du(work / "b" / "rootfs")
        img = work / "x.img"
        size = int(used * 1.3) + (64 << 20)
        with open(img, "wb") as f:
            f.truncate(size)
        t_mkfs = sh("mkfs.ext4", *MKFS_OPTS, "-d", work / "b" / "rootfs", img)
        return {"umoci_unpack_s": t_unpack, "mkfs_d_s": t_mkfs, "unpacked_bytes_on_disk": used}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    t1 = trees.ensure_tree("t1")
    image = make_image(t1)
    source = f"oci:{image}:v3"
    layers = json.loads(subprocess.run(
        [sys.executable, "-c", "import json,sys; from ext4gen.inputs.oci import open_image; "
         "im=open_image(sys.argv[1]); print(json.dumps([l.blob.size for l in im.layers]))", source],
        capture_output=True, text=True, check=True, cwd=REPO).stdout)
    out: dict[str, object] = {"source": source, "layers_compressed_bytes": layers,
                              "loadavg_before": os.getloadavg()}
    for dedup in ("none", "content"):
        cache = Path(tempfile.mkdtemp(prefix="bench-oci-cache-"))
        try:
            out[f"serve_cold_{dedup}_s"] = serve_ready(source, cache, dedup)
            out[f"serve_warm_{dedup}_s"] = serve_ready(source, cache, dedup)
            out["index_cache_bytes"] = du(cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    out.update(anchor(image))
    out["loadavg_after"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
