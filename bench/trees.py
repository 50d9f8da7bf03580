#!/usr/bin/env python3
"""Benchmark input trees, generated once into a cache outside the repository.

The trees come from the shared seeded generator (``gentree.py``, default seed)
so every run and every developer benchmarks the same bytes.  A tree is only
generated when its directory is missing; a half-written tree (interrupted run)
is detected by the absence of the ``.done`` marker next to it and regenerated.

Usage: ``bench/trees.py [t1|t2|t1x10 ...]`` prints the path of each tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GENTREE = Path(os.environ.get("EXT4GEN_GENTREE", "/work/shared/bench/gentree.py"))
CACHE = Path(os.environ.get("EXT4GEN_BENCH_CACHE", "/var/tmp/ext4gen-bench"))
PRESETS = ("t1", "t2")


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def ensure_tree(name: str) -> Path:
    """Return the directory of tree ``name`` (T1, T2 or T1x10), generating it if needed."""
    name = name.lower()
    if name == "t1x10":
        return ensure_sparse_x10(ensure_tree("t1"))
    if name not in PRESETS:
        raise SystemExit(f"unknown tree {name!r} (choose from t1, t2, t1x10)")
    path = CACHE / name.upper()
    done = _marker(path)
    if done.exists() and path.is_dir():
        return path
    if path.exists():
        shutil.rmtree(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, str(GENTREE), name, str(path)], check=True,
                         capture_output=True, text=True).stdout
    summary = out.strip().splitlines()[-1]
    done.write_text(summary + "\n")
    return path


def summary(path: Path) -> dict:
    """The generator's one-line JSON summary for a cached tree."""
    return json.loads(_marker(path).read_text())


def ensure_sparse_x10(t1: Path) -> Path:
    """T1's shape (same paths, modes, times) with every file 10x larger and fully sparse.

    Sparse host files cost no disk and no read I/O, so planning this tree with
    dedup=none measures whether planning depends on data size at all.
    """
    path = CACHE / "T1x10"
    done = _marker(path)
    if done.exists() and path.is_dir():
        return path
    if path.exists():
        shutil.rmtree(path)
    nfiles = total = 0
    for root, dirs, files in os.walk(t1):
        rel = os.path.relpath(root, t1)
        dst_root = path / rel
        dst_root.mkdir(parents=True, exist_ok=True)
        for f in files:
            st = os.lstat(os.path.join(root, f))
            dst = dst_root / f
            with open(dst, "wb") as fh:
                fh.truncate(st.st_size * 10)
            os.chmod(dst, st.st_mode & 0o7777)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            nfiles += 1
            total += st.st_size * 10
        del dirs
    for root, _dirs, _files in os.walk(t1, topdown=False):
        st = os.lstat(root)
        dst = path / os.path.relpath(root, t1)
        os.chmod(dst, st.st_mode & 0o7777)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    done.write_text(json.dumps({"preset": "t1x10-sparse", "files": nfiles, "bytes": total}) + "\n")
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["t1", "t2"]:
        p = ensure_tree(arg)
        print(p, _marker(p).read_text().strip())


def duplicate_stats(path: Path) -> dict:
    """Which files are byte copies of an earlier file, and the non-zero blocks they hold.

    ``dup_blocks`` is what a file-level dedup (and the issue's target "mkfs.ext4
    -d minus the duplicates") can save: mkfs.ext4 -d already skips all-zero
    blocks, so only non-zero 4 KiB blocks of the duplicate copies count.
    Cached next to the tree because it reads every byte.
    """
    cache = path.with_name(path.name + ".dups.json")
    if cache.exists() and cache.stat().st_mtime >= _marker(path).stat().st_mtime:
        return json.loads(cache.read_text())
    zero = bytes(4096)
    seen: set[bytes] = set()
    files = dup_files = dup_blocks = nonzero_blocks = dup_bytes = 0
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            files += 1
            nz = sum(1 for o in range(0, len(data), 4096) if data[o:o + 4096] != zero[:len(data[o:o + 4096])])
            nonzero_blocks += nz
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                dup_files += 1
                dup_blocks += nz
                dup_bytes += len(data)
            else:
                seen.add(digest)
    out = {"files": files, "nonzero_blocks": nonzero_blocks, "dup_files": dup_files,
           "dup_bytes": dup_bytes, "dup_blocks": dup_blocks}
    cache.write_text(json.dumps(out) + "\n")
    return out


def source_snapshot(rev: str = "HEAD", repo: Path | None = None) -> tuple[Path, str]:
    """Export ``rev``'s ext4gen/, plugins/ and setup.py to the cache; returns (dir, short sha).

    Benchmarks run the committed code through PYTHONPATH, not the shared working
    tree, because other developers edit the working tree while a run is going:
    figures must belong to one known commit.
    """
    repo = repo or Path(__file__).resolve().parent.parent
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = CACHE / f"src-{sha}"
    if not (dest / "ext4gen" / "__init__.py").exists():
        tmp = CACHE / f"src-{sha}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        paths = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", rev],
                               check=True, capture_output=True, text=True).stdout.split()
        wanted = [p for p in ("ext4gen", "plugins", "setup.py") if p in paths]
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, *wanted], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        # byte-compiled, as an installed copy is (scripts/setup.sh, pip): otherwise every
        # timed start compiles each module again wherever PYTHONDONTWRITEBYTECODE is set
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                        *(str(tmp / w) for w in wanted if w != "setup.py")],
                       check=True, stdout=subprocess.DEVNULL)
        tmp.rename(dest)
    return dest, sha


def busy_cores(window: float = 1.0) -> float:
    """How many cores the whole machine kept busy (not idle, not iowait) over ``window`` seconds."""
    def busy() -> int:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4]

    b0, t0 = busy(), time.monotonic()
    time.sleep(window)
    return (busy() - b0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)


def wait_quiet(threshold: float = 0.3, max_wait: float = 0.0, window: float = 2.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` cores.

    The benchmark machine is shared with other developers' test runs; call this
    while none of our own work is running.  Returns the last load seen, which the
    benchmarks record next to their figures.
    """
    deadline = time.monotonic() + max_wait
    while True:
        load = busy_cores(window)
        if load < threshold or time.monotonic() >= deadline:
            return load
