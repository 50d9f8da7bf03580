#!/usr/bin/env python3
"""Serving benchmark: the ext4gen nbdkit plugin against nbdkit ``file`` and a trivial Python plugin.

All serve the same T1 filesystem: ``file`` and the trivial plugin
(``bench/preadv_plugin.py``, one ``os.preadv`` per request: the ceiling of any
Python plugin) serve the ``ext4gen build`` output of T1; the ext4gen plugin
synthesizes it from the T1 manifest: as ``ext4gen serve`` runs it, with ext4gen's nbdkit
filter answering reads in C in front of the plugin (``ext4gen``), the same without reading
sources ahead (``ext4gen-noreadahead``, ``EXT4GEN_NO_READAHEAD=1``), the same checking every
read of a source by fstat instead of a lease (``ext4gen-noleases``, ``EXT4GEN_NO_LEASES=1``),
the same reading small random requests by pread rather than from a mapping of the source
(``ext4gen-nomapping``, ``EXT4GEN_NO_MAPPING=1``), the plugin alone with its compiled read
path (``ext4gen-nofilter``), and with ``EXT4GEN_PURE_PYTHON=1`` (``ext4gen-pure``).  In one run:

* sequential ``nbdcopy --no-extents URI null:`` (first pass with caches
  dropped, then warm), for nbdkit ``--threads`` 1, 2 and 16;
* 4 KiB random reads at queue depth 1 and 16 (fio's nbd engine), warm;
* the same with ``--filter cache cache-on-read=true`` after one warming pass;
* kernel end to end: nbdfuse + loop mount, ``tar -cf - MNT | wc -c`` with caches dropped
  (at ``--threads 1``, serve's default, when 1 is among the threads measured).

Every server, fuse mount and loop mount is torn down (umount, kill by pid)
even when a step fails.  Usage (root)::

    .venv/bin/python bench/bench_serve.py [--threads 1,2,16] [--runtime 5] [--json OUT]

It prints the ratios against issue 10's targets: sequential ≥ 0.9× file,
4 KiB random QD1 and QD16 ≥ 0.95× the trivial plugin.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import trees  # noqa: E402
from bench_dedup_cache import warm  # noqa: E402

REPO = HERE.parent
PY = sys.executable
WORK = trees.CACHE / "serve-work"
SRC: Path = REPO  # set by main(): the ext4gen source under test
QUIET_WAIT = 60.0  # set by main(): max wait for other load to go away before each step


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


LIVE: set[int] = set()  # pids of the running servers (Server): drop_caches pages out their maps

_MADV_PAGEOUT = 21
_SYS_PIDFD_OPEN, _SYS_PROCESS_MADVISE = 434, 440  # x86_64 and aarch64 alike


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def page_out_mappings(pid: int) -> int:
    """Reclaim the file pages server ``pid`` maps shared (MADV_PAGEOUT by process_madvise;
    root).  drop_caches leaves pages a process maps, and ext4gen maps the sources it keeps
    reading (docs/SERVING.md): without this, a server that served before is not cold after a
    drop.  Its descriptors stay open, as they would in a long-running server.  Best effort:
    the kernel skips pages another process maps too (two ext4gen servers side by side), so
    drop_caches checks what is left.  Returns the bytes of mappings advised."""
    spans = []
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/maps") as f:
        for line in f:
            addr, perms, *_rest = line.split()
            if perms == "r--s":  # ext4gen's source mappings; nbdkit's own are private
                lo, hi = (int(x, 16) for x in addr.split("-"))
                spans.append(_Iovec(lo, hi - lo))
    if not spans:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(_SYS_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0))
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), f"pidfd_open({pid})")
    done = 0
    try:
        k = 0
        while k < len(spans):  # at most UIO_MAXIOV (1024) spans and about 2 GiB per call
            part = (_Iovec * len(spans[k:k + 512]))(*spans[k:k + 512])
            got = libc.syscall(_SYS_PROCESS_MADVISE, ctypes.c_int(pidfd), part,
                               ctypes.c_size_t(len(part)), ctypes.c_int(_MADV_PAGEOUT),
                               ctypes.c_uint(0))
            if got < 0:
                raise OSError(ctypes.get_errno(), f"process_madvise({pid}, MADV_PAGEOUT)")
            done += got
            if got == 0:
                break  # nothing more will go
            for span in part:  # went on only as far as it got: resume there
                if got >= span.len:
                    got -= span.len
                    k += 1
                else:
                    spans[k] = _Iovec(span.base + got, span.len - got)
                    break
    finally:
        os.close(pidfd)
    return done


def _drop() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def drop_caches() -> int:
    """Drop the guest's caches for a cold step, after reading T1's files and the image once
    (prime_backing_store: the host's cache then holds both, whatever ran before), and after
    paging out what the servers map (page_out_mappings).  Returns how many bytes of T1 are
    still cached (it warns when that is over 1 MiB): a cold step is cold only if that is 0."""
    if PRIMED:
        prime_backing_store(*PRIMED)
    for pid in list(LIVE):
        page_out_mappings(pid)
    _drop()
    left = cached_bytes(PRIMED[0]) if PRIMED else 0
    _drop()  # again: fincore brought T1's inodes and dentries back
    if left > 1 << 20:
        log(f"warning: {left} bytes of T1 still cached after a drop (pages two servers map)")
    return left


def cached_bytes(tree_dir: Path) -> int:
    """How many bytes of the files under ``tree_dir`` the page cache holds (fincore)."""
    files = [str(p) for p in tree_dir.rglob("*") if p.is_file()]
    total = 0
    for k in range(0, len(files), 1000):
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *files[k:k + 1000]],
                             check=True, capture_output=True, text=True).stdout
        total += sum(int(x) for x in out.split())
    return total


def plugin_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Let nbdkit's embedded python3 import ext4gen (from SRC) and its dependencies (venv)."""
    site = sysconfig.get_paths()["purelib"]
    platlib = sysconfig.get_paths()["platlib"]
    env = {k: v for k, v in os.environ.items() if k != "EXT4GEN_PURE_PYTHON"}
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(SRC), site, platlib])),
            **(extra or {})}


def build_extension(src: Path) -> None:
    """Compile the C extensions inside an exported snapshot (git has no .so): as its
    setup.py lists them (an extension may have several sources), or, in a snapshot whose
    setup.py has no such list, one per ``_*.c``."""
    setup_py = src / "setup.py"
    if setup_py.exists() and "EXTENSIONS" in setup_py.read_text():
        ext = "runpy.run_path('setup.py', run_name='snapshot')['EXTENSIONS']"
    else:
        mods = [(f"ext4gen.{c.parent.name}.{c.stem}", str(c.relative_to(src)))
                for c in sorted(src.glob("ext4gen/*/_*.c"))]
        ext = f"[Extension(m, [c], extra_compile_args=['-O2']) for m, c in {mods!r}]"
    code = ("import runpy; from setuptools import Extension, setup; setup(name='x', "
            f"script_args=['-q', 'build_ext', '--inplace'], ext_modules={ext})")
    subprocess.run([PY, "-c", code], cwd=str(src), check=True, capture_output=True)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Server:
    """One nbdkit process on a Unix socket; stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, label: str, plugin: list[str], threads: int, filters: list[str] | None = None,
                 filter_params: list[str] | None = None):
        self.label = label
        self.env = plugin_env(ENVS.get(label.split("/")[0]))
        self.dir = Path(tempfile.mkdtemp(prefix=f"nbd-{label}-", dir=WORK))
        self.sock = self.dir / "sock"
        self.pidfile = self.dir / "pid"
        self.logfile = self.dir / "nbdkit.log"
        self.cmd = ["nbdkit", "-f", "-r", "-U", str(self.sock), "-P", str(self.pidfile),
                    "--threads", str(threads), *(filters or []), *plugin, *(filter_params or [])]
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    def __enter__(self) -> Server:
        t0 = time.perf_counter()
        with open(self.logfile, "wb") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(self.dir))
        try:
            deadline = time.monotonic() + 300
            while not self.pidfile.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.label}: nbdkit exited {self.proc.returncode}: "
                                       f"{self.logfile.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.label}: nbdkit not ready after 300 s")
                time.sleep(0.005)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        LIVE.add(self.proc.pid)
        said = self.logfile.read_text(errors="replace")
        if self.label.startswith("ext4gen") and "pure" not in self.label and "pure-Python" in said:
            self.stop()  # a snapshot whose extension did not build or load measures nothing here
            raise RuntimeError(f"{self.label}: serving in pure Python: {said.strip()[-500:]}")
        return self

    def stop(self) -> str:
        """Stop nbdkit; returns its log (the ext4gen plugin prints its stats on shutdown)."""
        if self.proc is not None:
            LIVE.discard(self.proc.pid)
        if self.proc is not None and self.proc.poll() is None:
            _kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        text = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        shutil.rmtree(self.dir, ignore_errors=True)
        return text

    def __exit__(self, *exc: object) -> None:
        self.log = self.stop()


# -- measurements ------------------------------------------------------------------------------
def seq_copy(uri: str, size: int) -> dict:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", "--no-extents", uri, "null:"], check=True)
    s = time.perf_counter() - t0
    return {"s": s, "MiB_s": size / s / 2**20}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fio_randread(uri: str, qd: int, runtime: float, pid: int | None = None) -> dict:
    """fio's 4 KiB random reads; with the server's ``pid``, also its CPU time per request,
    which a busy neighbour on the machine moves far less than the IOPS."""
    cpu0 = cpu_seconds(pid) if pid else 0.0
    cmd = ["fio", "--name=randread", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k",
           f"--iodepth={qd}", "--time_based", f"--runtime={runtime}", "--readonly",
           "--randseed=42", "--norandommap", "--output-format=json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"fio failed: {r.stderr.strip()[-500:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["read"]
    out = {"iops": job["iops"], "lat_mean_us": job["lat_ns"]["mean"] / 1000,
           "lat_p99_us": job["clat_ns"]["percentile"].get("99.000000", 0) / 1000}
    if pid and job["total_ios"]:
        out["server_cpu_us"] = (cpu_seconds(pid) - cpu0) / job["total_ios"] * 1e6
    return out


@contextlib.contextmanager
def kernel_mount(uri_sock: Path, base: Path) -> Iterator[Path]:
    """nbdfuse + ``mount -o loop,ro``; always unmounts and stops nbdfuse."""
    fuse_dir = base / "fuse"
    mnt = base / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    nbdfuse = subprocess.Popen(["nbdfuse", "-r", str(fuse_dir / "disk"), "--unix", str(uri_sock)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mounted = False
    try:
        deadline = time.monotonic() + 30
        while not (fuse_dir / "disk").exists():
            if nbdfuse.poll() is not None:
                raise RuntimeError(f"nbdfuse exited: {nbdfuse.stderr.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("nbdfuse did not come up")
            time.sleep(0.02)
        subprocess.run(["mount", "-o", "loop,ro", str(fuse_dir / "disk"), str(mnt)], check=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            if subprocess.run(["umount", str(mnt)]).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)])
        subprocess.run(["fusermount3", "-u", str(fuse_dir)], stderr=subprocess.DEVNULL)
        try:
            nbdfuse.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill(nbdfuse.pid, signal.SIGKILL)
            nbdfuse.wait()
        with contextlib.suppress(OSError):
            mnt.rmdir()
            fuse_dir.rmdir()


def tar_through_kernel(server: Server) -> dict:
    base = Path(tempfile.mkdtemp(prefix="e2e-", dir=WORK))
    try:
        with kernel_mount(server.sock, base) as mnt:
            left = drop_caches()
            t0 = time.perf_counter()
            out = subprocess.run(f"tar -cf - -C {mnt} . | wc -c", shell=True, check=True,
                                 capture_output=True, text=True).stdout
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            subprocess.run(f"tar -cf - -C {mnt} . | wc -c", shell=True, check=True, capture_output=True)
            warm = time.perf_counter() - t0
        return {"cold_s": cold, "warm_s": warm, "tar_bytes": int(out.strip()),
                "tree_cached_after_drop": left}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ext4gen_stats(log_text: str) -> str | None:
    m = re.search(r"ext4gen: served .*", log_text)
    return m.group(0) if m else None


# -- the benchmark -------------------------------------------------------------------------------
def prepare() -> tuple[Path, Path, int]:
    """T1's manifest and its ``ext4gen build`` image (what file and pyfile serve)."""
    tree_dir = trees.ensure_tree("t1")
    WORK.mkdir(parents=True, exist_ok=True)
    manifest = WORK / "t1.json"
    env = {**os.environ, "PYTHONPATH": f"{SRC}:{HERE}"}
    with open(manifest, "w") as f:
        subprocess.run([PY, str(HERE / "tree_manifest.py"), str(tree_dir)], stdout=f, check=True,
                       env=env, cwd=str(SRC))
    image = WORK / "t1.img"
    subprocess.run([PY, "-m", "ext4gen.cli", "build", "-q", str(manifest), "-o", str(image)],
                   check=True, env=env, cwd=str(SRC))
    PRIMED[:] = [tree_dir, image]
    return manifest, image, image.stat().st_size


PRIMED: list[Path] = []  # T1's tree and image, read before every drop of the caches


def prime_backing_store(tree_dir: Path, image: Path) -> None:
    """Read T1's files and the image once, so the VM's disk has both in the host's cache.

    This VM's disk is a file on the host: blocks the host has not read lately come
    at a tenth of the speed (4 KiB random reads ramp from 900 to 40,000 per second
    over 20 s of one fio run), and the host keeps little: two servers reading the
    image cold push the tree out.  Without this, a cold step compared a host-cold
    tree with a host-warm image whenever ext4gen came after those two: its first
    cold copy ran at 54-92 MiB/s and its first tar took 9-13 s, the next ones
    850 MiB/s and 3.5-4 s.  Primed once at the start only, it still happened.
    """
    warm(tree_dir)
    with open(image, "rb") as f:
        while f.read(1 << 20):
            pass


ENVS = {"ext4gen-pure": {"EXT4GEN_PURE_PYTHON": "1"},  # per server label, on top of plugin_env()
        "ext4gen-noreadahead": {"EXT4GEN_NO_READAHEAD": "1"},
        "ext4gen-noleases": {"EXT4GEN_NO_LEASES": "1"},
        "ext4gen-nomapping": {"EXT4GEN_NO_MAPPING": "1"}}


def plugins(manifest: Path, image: Path) -> dict[str, list[str]]:
    """nbdkit arguments per server label.  ``ext4gen`` is what ``ext4gen serve`` runs: ext4gen's
    filter (answering reads in C) right in front of the plugin; ``ext4gen-nofilter`` is the
    plugin alone with its compiled path, ``ext4gen-pure`` the plugin in pure Python."""
    ext4gen = ["python", str(SRC / "plugins" / "ext4gen_nbdkit.py"), f"manifest={manifest}"]
    own = sorted((SRC / "ext4gen" / "serve").glob("_nbdfilter*.so"))
    if not own:
        raise SystemExit("ext4gen's nbdkit filter is not built (apt install nbdkit-plugin-dev)")
    return {
        "file": ["file", f"file={image}"],
        "pyfile": ["python", str(HERE / "preadv_plugin.py"), f"file={image}"],
        "ext4gen": [f"--filter={own[0]}", *ext4gen],  # innermost: after any filter Server adds
        "ext4gen-nofilter": ext4gen,
        "ext4gen-pure": ext4gen,
        "ext4gen-noreadahead": [f"--filter={own[0]}", *ext4gen],  # serve's, without read-ahead
        "ext4gen-noleases": [f"--filter={own[0]}", *ext4gen],  # serve's, an fstat per read
        "ext4gen-nomapping": [f"--filter={own[0]}", *ext4gen],  # serve's, pread only
    }


class Meter:
    """CPU that other processes (not ours, not the servers) used while a step ran.

    The machine is shared with other developers' test runs; each figure records
    how many cores were busy elsewhere so contended numbers can be recognised.
    """

    def __init__(self, servers: list[Server]) -> None:
        self.pids = [s.proc.pid for s in servers if s.proc is not None]

    @staticmethod
    def _busy() -> int:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4]

    def _ours(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return total + ru.ru_utime + ru.ru_stime + me.ru_utime + me.ru_stime

    def __enter__(self) -> Meter:
        self.t0, self.b0, self.o0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        busy = (self._busy() - self.b0) / os.sysconf("SC_CLK_TCK")
        self.others_cores = max(0.0, (busy - (self._ours() - self.o0)) / wall)


def measured(servers: list[Server], fn, *args) -> dict:
    before = trees.wait_quiet(0.3, QUIET_WAIT, window=1.0)
    with Meter(servers) as m:
        r = fn(*args)
    r["others_cores"] = round(m.others_cores, 2)
    r["load_before"] = round(before, 2)
    return r


def measure_rounds(srv: dict[str, Server], repeat: int, size: int | dict[str, int],
                   runtime: float) -> dict:
    """``repeat`` rounds of sequential copy and 4 KiB random reads (QD1, QD16) per server,
    interleaved so that drift on the machine hits every server alike.  ``size``: the
    export size, or each server's by name when their exports differ."""
    allsrv = list(srv.values())
    got: dict = {n: {"seq": [], "qd1": [], "qd16": []} for n in srv}
    for _ in range(repeat):
        for n, s in srv.items():
            n_bytes = size[n] if isinstance(size, dict) else size
            got[n]["seq"].append(measured(allsrv, seq_copy, s.uri, n_bytes))
            pid = s.proc.pid if s.proc is not None else None
            got[n]["qd1"].append(measured(allsrv, fio_randread, s.uri, 1, runtime, pid))
            got[n]["qd16"].append(measured(allsrv, fio_randread, s.uri, 16, runtime, pid))
    return got


def min_cpu(runs: list[dict]) -> str:
    """The lowest server CPU time per request over the rounds (µs), "?" without a figure."""
    got = [r["server_cpu_us"] for r in runs if "server_cpu_us" in r]
    return f"{min(got):.2f}" if got else "?"


def best_of(runs: list[dict], key: str) -> dict:
    b = max(runs, key=lambda r: r[key])
    return {**b, "all": [round(r[key], 1) for r in runs]}


def run(threads_list: list[int], runtime: float, repeat: int, only: list[str] | None) -> dict:
    """All servers of a round run side by side (idle ones cost nothing) and are measured in
    turn, round after round, so a burst of outside load hits every plugin alike."""
    manifest, image, size = prepare()
    res: dict = {"image_size": size, "runs": {}, "cache": {}, "kernel": {}, "startup_s": {}}
    plug = plugins(manifest, image)
    if only:
        plug = {k: v for k, v in plug.items() if k in only}
    for threads in threads_list:
        with contextlib.ExitStack() as stack:
            srv = {n: stack.enter_context(Server(n, a, threads)) for n, a in plug.items()}
            allsrv = list(srv.values())
            for n, s in srv.items():
                res["startup_s"].setdefault(n, []).append(round(s.startup_s, 3))
            cold = {}
            for n, s in srv.items():
                drop_caches()
                cold[n] = measured(allsrv, seq_copy, s.uri, size)
            got = measure_rounds(srv, repeat, size, runtime)
        for n, s in srv.items():
            g = got[n]
            r = {"seq_cold": cold[n], "seq_warm": best_of(g["seq"], "MiB_s"),
                 "rand_qd1": best_of(g["qd1"], "iops"), "rand_qd16": best_of(g["qd16"], "iops"),
                 "qd16_server_cpu_us": min_cpu(g["qd16"]), "server_stats": ext4gen_stats(s.log)}
            res["runs"][f"{n}/t{threads}"] = r
            log(f"{n}/t{threads}: seq cold {r['seq_cold']['MiB_s']:.0f} MiB/s, "
                f"warm {r['seq_warm']['MiB_s']:.0f} MiB/s {r['seq_warm']['all']}; "
                f"4k QD1 {r['rand_qd1']['iops']:.0f} IOPS {r['rand_qd1']['all']}, "
                f"QD16 {r['rand_qd16']['iops']:.0f} IOPS {r['rand_qd16']['all']}; server CPU per "
                f"4 KiB read, QD16: {min_cpu(g['qd16'])} us")
    # --filter cache (nbdkit's default 16 threads), warmed by one full pass each.
    with contextlib.ExitStack() as stack:
        srv = {n: stack.enter_context(Server(n, a, 16, ["--filter=cache"], ["cache-on-read=true"]))
               for n, a in plug.items()}
        for s in srv.values():
            seq_copy(s.uri, size)
        got = measure_rounds(srv, repeat, size, runtime)
    for n, g in got.items():
        r = {"seq_warm": best_of(g["seq"], "MiB_s"), "rand_qd1": best_of(g["qd1"], "iops"),
             "rand_qd16": best_of(g["qd16"], "iops")}
        res["cache"][n] = r
        log(f"{n}+cache: seq {r['seq_warm']['MiB_s']:.0f} MiB/s; 4k QD1 {r['rand_qd1']['iops']:.0f} "
            f"{r['rand_qd1']['all']}, QD16 {r['rand_qd16']['iops']:.0f} {r['rand_qd16']['all']} IOPS")
    # Kernel end to end, caches dropped before each tar, at the threads serve uses (1).  One
    # server at a time, all its rounds in a row: the kernel does not page out a page two
    # processes map (page_out_mappings), so two ext4gen servers side by side would keep each
    # other's sources cached through a drop.  (bench_paired.py interleaves ext4gen and file.)
    kthreads = 1 if 1 in threads_list else threads_list[0]
    res["kernel_threads"] = kthreads
    ker: dict = {n: [] for n in plug}
    for n, a in plug.items():
        with Server(n, a, kthreads) as s:
            for _ in range(repeat):
                ker[n].append(measured([s], tar_through_kernel, s))
    for n, runs in ker.items():
        k = min(runs, key=lambda r: r["cold_s"])
        res["kernel"][n] = {**k, "all_cold_s": [round(r["cold_s"], 2) for r in runs],
                            "all_warm_s": [round(r["warm_s"], 2) for r in runs]}
        log(f"{n} kernel tar: cold {k['cold_s']:.2f} s {res['kernel'][n]['all_cold_s']}, "
            f"warm {k['warm_s']:.2f} s ({k['tar_bytes']} bytes)")
    return res


def _mark(uri: str) -> None:
    """Tell profiled_plugin.py that warming is over (a 1-byte read at offset 0)."""
    if "/usr/lib/python3/dist-packages" not in sys.path:
        sys.path.append("/usr/lib/python3/dist-packages")
    import nbd

    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        h.pread(1, 0)
    finally:
        h.shutdown()


def profile_step(manifest: Path, image: Path, size: int, runtime: float) -> dict:
    """Time spent inside pread per request (and a cProfile of it) for pyfile and ext4gen.

    Time inside the Python callback barely depends on outside load, unlike
    throughput, so it is the robust way to compare the two plugins; the
    difference is what region lookup, fd handling and generation cost.
    """
    plug = plugins(manifest, image)
    plug["ext4gen"] = plug["ext4gen-nofilter"]  # the plugin's own pread (the filter is C)
    out: dict = {}
    for name in ("pyfile", "ext4gen"):
        target, *params = plug[name][1:]
        for workload in ("seq", "rand_qd1"):
            for profiled in (False, True):
                env_out = WORK / f"{name}-{workload}.prof"
                os.environ["PROFILED_PLUGIN"] = target
                if profiled:
                    os.environ["PROFILE_OUT"] = str(env_out)
                else:
                    os.environ.pop("PROFILE_OUT", None)
                with Server(f"prof-{name}", ["python", str(HERE / "profiled_plugin.py"), *params], 1) as srv:
                    subprocess.run(["nbdcopy", "-C", "1", "--no-extents", srv.uri, "null:"], check=True)
                    _mark(srv.uri)
                    if workload == "seq":
                        for _ in range(2):
                            subprocess.run(["nbdcopy", "-C", "1", "--no-extents", srv.uri, "null:"],
                                           check=True)
                    else:
                        fio_randread(srv.uri, 1, runtime)
                m = re.search(r"profiled_plugin: (\d+) preads, ([\d.]+) s in pread, ([\d.]+) us", srv.log)
                if not m:
                    raise RuntimeError(f"profiled_plugin printed nothing: {srv.log[-500:]}")
                entry = out.setdefault(name, {}).setdefault(workload, {})
                if not profiled:
                    entry.update({"preads": int(m.group(1)), "in_pread_s": float(m.group(2)),
                                  "us_per_pread": float(m.group(3))})
                    continue
                if name != "ext4gen":
                    continue
                st = pstats.Stats(str(env_out))
                total = st.total_tt  # type: ignore[attr-defined]
                rows = []
                for (fn, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
                    rows.append((tt, ct, nc, f"{os.path.basename(fn)}:{line}({func})"))
                rows.sort(reverse=True)
                entry["profile_top"] = [{"func": f, "calls": nc, "tottime_pct": round(100 * tt / total, 1),
                                         "cumtime_pct": round(100 * ct / total, 1)}
                                        for tt, ct, nc, f in rows[:12]]
        os.environ.pop("PROFILED_PLUGIN", None)
        os.environ.pop("PROFILE_OUT", None)
    for name, w in out.items():
        log(f"{name}: in pread {w['seq']['us_per_pread']:.1f} us per 256 KiB sequential request, "
            f"{w['rand_qd1']['us_per_pread']:.1f} us per 4 KiB random read")
    for workload in ("seq", "rand_qd1"):
        top = out["ext4gen"][workload]["profile_top"][:5]
        log(f"ext4gen {workload} hot spots: " + ", ".join(f"{r['func']} {r['tottime_pct']}%" for r in top))
    return out


def ratios(res: dict, threads_list: list[int]) -> dict:
    out: dict = {}
    runs = res["runs"]
    for t in threads_list:
        f, p, e = (runs.get(f"{n}/t{t}") for n in ("file", "pyfile", "ext4gen"))
        if not (f and p and e):
            continue
        out[f"t{t}"] = r = {
            "seq_warm_ext4gen_over_file": e["seq_warm"]["MiB_s"] / f["seq_warm"]["MiB_s"],
            "seq_cold_ext4gen_over_file": e["seq_cold"]["MiB_s"] / f["seq_cold"]["MiB_s"],
            "qd1_ext4gen_over_pyfile": e["rand_qd1"]["iops"] / p["rand_qd1"]["iops"],
            "qd16_ext4gen_over_pyfile": e["rand_qd16"]["iops"] / p["rand_qd16"]["iops"],
            "qd1_ext4gen_over_file": e["rand_qd1"]["iops"] / f["rand_qd1"]["iops"],
            "qd16_ext4gen_over_file": e["rand_qd16"]["iops"] / f["rand_qd16"]["iops"],
            "pyfile_seq_over_file": p["seq_warm"]["MiB_s"] / f["seq_warm"]["MiB_s"],
        }
        if "?" not in (f["qd16_server_cpu_us"], e["qd16_server_cpu_us"]):
            # the QD16 ratio a server bound by its own CPU would reach: file's CPU per read
            # over ext4gen's (nbdkit runs one thread per connection here)
            r["qd16_cpu_file_over_ext4gen"] = (float(f["qd16_server_cpu_us"])
                                               / float(e["qd16_server_cpu_us"]))
        nof = runs.get(f"ext4gen-nofilter/t{t}")
        if nof:
            r["seq_warm_nofilter_over_file"] = nof["seq_warm"]["MiB_s"] / f["seq_warm"]["MiB_s"]
            r["qd1_nofilter_over_pyfile"] = nof["rand_qd1"]["iops"] / p["rand_qd1"]["iops"]
            r["qd16_nofilter_over_pyfile"] = nof["rand_qd16"]["iops"] / p["rand_qd16"]["iops"]
        pure = runs.get(f"ext4gen-pure/t{t}")
        if pure:
            r["seq_warm_pure_over_file"] = pure["seq_warm"]["MiB_s"] / f["seq_warm"]["MiB_s"]
            r["qd1_pure_over_pyfile"] = pure["rand_qd1"]["iops"] / p["rand_qd1"]["iops"]
            r["qd16_pure_over_pyfile"] = pure["rand_qd16"]["iops"] / p["rand_qd16"]["iops"]
    c = res["cache"]
    ref = runs.get("file/t16")
    if {"file", "ext4gen"} <= c.keys() and ref:
        out["cache"] = {  # the cache filter runs at nbdkit's default 16 threads
            "qd1_ext4gen_cache_over_file": c["ext4gen"]["rand_qd1"]["iops"] / ref["rand_qd1"]["iops"],
            "qd16_ext4gen_cache_over_file": c["ext4gen"]["rand_qd16"]["iops"] / ref["rand_qd16"]["iops"],
        }
    k = res["kernel"]
    if {"file", "ext4gen"} <= k.keys():
        out["kernel_tar_cold_ext4gen_over_file"] = k["ext4gen"]["cold_s"] / k["file"]["cold_s"]
    if {"file", "ext4gen-noreadahead"} <= k.keys():
        out["kernel_tar_cold_noreadahead_over_file"] = (k["ext4gen-noreadahead"]["cold_s"]
                                                        / k["file"]["cold_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2,16")
    ap.add_argument("--runtime", type=float, default=5.0, help="seconds per fio run")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over all servers; best is kept")
    ap.add_argument("--no-profile", action="store_true", help="skip the pread cost/cProfile step")
    ap.add_argument("--only", help="comma-separated subset of file, pyfile, ext4gen, "
                    "ext4gen-noreadahead, ext4gen-noleases, ext4gen-nomapping, ext4gen-nofilter, "
                    "ext4gen-pure")
    ap.add_argument("--json", default=str(REPO / "bench" / "out" / "serve.json"))
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds to wait, before each step, for other processes to use < 0.3 cores")
    ap.add_argument("--worktree", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_serve.py needs root (drop_caches, loop mounts)")
    for tool in ("fio", "nbdcopy", "nbdfuse"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_serve.py needs {tool} (apt install fio libnbd-bin)")
    global SRC, QUIET_WAIT
    QUIET_WAIT = a.quiet_wait
    SRC, sha = (REPO, "worktree") if a.worktree else trees.source_snapshot(a.rev)
    if not a.worktree:
        build_extension(SRC)
    if not (SRC / "plugins" / "ext4gen_nbdkit.py").exists():
        raise SystemExit(f"no plugins/ext4gen_nbdkit.py in {sha}")
    threads_list = [int(x) for x in a.threads.split(",")]
    only = a.only.split(",") if a.only else None
    result: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S %z"), "ext4gen_commit": sha,
                    "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                "nbdkit": subprocess.run(["nbdkit", "--version"], capture_output=True,
                                                         text=True).stdout.strip()},
                    "runtime_s": a.runtime}
    try:
        result.update(run(threads_list, a.runtime, a.repeat, only))
        if not a.no_profile:
            manifest, image = WORK / "t1.json", WORK / "t1.img"
            result["pread_cost"] = profile_step(manifest, image, result["image_size"], a.runtime)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    result["ratios"] = ratios(result, threads_list)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratios"], indent=1))
    for t in threads_list:
        r = result["ratios"].get(f"t{t}")
        if r:
            log(f"--threads {t}: sequential {r['seq_warm_ext4gen_over_file']:.2f}x file (target 0.9); "
                f"4 KiB random QD1 {r['qd1_ext4gen_over_pyfile']:.2f}x, QD16 "
                f"{r['qd16_ext4gen_over_pyfile']:.2f}x the trivial plugin (target 0.95), "
                f"{r['qd1_ext4gen_over_file']:.2f}x / {r['qd16_ext4gen_over_file']:.2f}x nbdkit file "
                "(target 0.9)")
    k = result["ratios"].get("kernel_tar_cold_ext4gen_over_file")
    if k:
        log(f"kernel tar, caches dropped: {k:.2f}x nbdkit file's time (target 1.1)")


if __name__ == "__main__":
    main()
