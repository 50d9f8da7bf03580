"""Serving with the compiled read path: it loads in nbdkit, the log stays small, descriptors stay free.

Every test runs twice (tests/conftest.py ``read_path``): compiled, and with
EXT4GEN_PURE_PYTHON=1, which the ``ext4gen serve`` processes inherit.

* Issue 11 item 3: 20,000 failing reads leave a log of a few lines (one per
  reason, then a count), not a traceback each.
* Issue 11 item 1: after a client has read thousands of distinct files, the
  source descriptor cache holds at most half the descriptor limit, so hundreds
  of further connections and one more are still served at once.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.cli import CLI
from helpers.processes import kill_pid, stop_process
from helpers.servers import connect, import_nbd

pytestmark = [pytest.mark.root]

LOG_LIMIT = 16 << 10  # bytes: a few lines, whatever the number of failed reads


class Serve:
    """``ext4gen serve SOURCE --socket S --foreground`` with an optional descriptor limit."""

    def __init__(self, source: Path, sock: Path, nofile: int | None = None) -> None:
        self.log = sock.with_suffix(".log")
        self._logf = open(self.log, "wb")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([*CLI, "serve", str(source), "--socket", str(sock), "--foreground"],
                                     stdout=subprocess.PIPE, stderr=self._logf, stdin=subprocess.DEVNULL,
                                     preexec_fn=limit)
        box: list[bytes] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(120)
        if not box or not box[0]:
            self.stop()
            raise AssertionError(f"serve printed no URI:\n{self.stderr()}")
        self.uri = box[0].decode().strip()
        self.nbdkit = self._nbdkit_pid()

    def _nbdkit_pid(self) -> int:
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for k in kids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{k}/comm").read_text().strip() == "nbdkit":
                    return int(k)
        raise AssertionError(f"no nbdkit child of {self.proc.pid}")

    def alive(self) -> bool:
        return self.proc.poll() is None and Path(f"/proc/{self.nbdkit}").exists()

    def stderr(self) -> str:
        if not self._logf.closed:
            self._logf.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        if hasattr(self, "nbdkit"):
            kill_pid(self.nbdkit)
        if not self._logf.closed:
            self.proc.stdout.close()
            self._logf.close()


@contextlib.contextmanager
def serve(source: Path, sock: Path, nofile: int | None = None):
    s = Serve(source, sock, nofile)
    try:
        yield s
    finally:
        s.stop()


def test_the_extension_loads_inside_nbdkit(tmp_path: Path, read_path: str) -> None:
    (tmp_path / "a.bin").write_bytes(random.Random(1).randbytes(100_000))
    (tmp_path / "m.toml").write_text('["/a.bin"]\nsource = "a.bin"\n')
    with serve(tmp_path / "m.toml", tmp_path / "s") as server:
        h = connect(server.uri)
        h.pread(4096, 0)
        maps = Path(f"/proc/{server.nbdkit}/maps").read_text()
        assert "_fastread" in maps, "the compiled read path is not loaded in nbdkit's Python"
        h.shutdown()
        assert "pure-Python read path" not in server.stderr(), server.stderr()


def test_20000_failing_reads_leave_a_small_log(tmp_path: Path, read_path: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(random.Random(i).randbytes(40_000))
        lines += [f'["/f{i}.bin"]', f'source = "src/f{i}.bin"']
    (tmp_path / "m.toml").write_text('[image]\ndedup = "none"\n' + "\n".join(lines) + "\n")
    with serve(tmp_path / "m.toml", tmp_path / "s") as server:
        h = connect(server.uri)
        size = h.get_size()
        blocks = [b for b in range(size // 4096) if h.pread(4096, b * 4096).count(0) < 4096]
        for i in range(3):
            with open(src / f"f{i}.bin", "r+b") as f:
                f.write(b"changed")
        nbd = import_nbd()
        failures = 0
        started = time.monotonic()
        while failures < 20_000:
            for b in blocks:
                try:
                    h.pread(4096, b * 4096)
                except nbd.Error:
                    failures += 1
        elapsed = time.monotonic() - started
        assert server.alive()
        h.shutdown()
        during = server.stderr()
        server.stop()
        log = server.stderr()
    assert len(log) < LOG_LIMIT, f"{len(log)} bytes of log for {failures} failed reads:\n{log[:3000]}"
    assert "Traceback" not in log, log[:3000]
    reasons = [ln for ln in during.splitlines() if ln.startswith("ext4gen: read error")]
    assert len(reasons) == 3, during  # one line per changed file while serving
    counted = [ln for ln in log.splitlines() if " more read errors: " in ln]
    assert len(counted) == 3 and sum(int(ln.split()[1]) for ln in counted) == failures - 3, log
    assert any(ln.startswith("ext4gen: served ") and f"source errors {failures}" in ln
               for ln in log.splitlines()), log
    print(f"{failures} failed reads in {elapsed:.1f} s, {len(log)} bytes of log")


def test_cached_descriptors_leave_room_for_clients(tmp_path: Path, read_path: str) -> None:
    """Issue 11 item 1: 2,000 files read under `ulimit -n 2048`, then 600 idle clients and one more."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    lines = ["[image]", 'dedup = "none"', "inline_data = false"]
    for i in range(2000):
        (src / f"f{i}").write_bytes(rng.randbytes(300))
        lines += [f'["/d/f{i}"]', f'source = "src/f{i}"']
    (tmp_path / "m.toml").write_text("\n".join(lines) + "\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # for our 600 clients
    held = []
    try:
        with serve(tmp_path / "m.toml", tmp_path / "s", nofile=2048) as server:
            subprocess.run(["nbdcopy", "--no-extents", server.uri, "null:"], check=True, timeout=300)
            subprocess.run(["nbdcopy", "--no-extents", server.uri, "null:"], check=True, timeout=300)
            fds = len(os.listdir(f"/proc/{server.nbdkit}/fd"))
            assert fds <= 1024 + 64, f"nbdkit holds {fds} descriptors of 2048 after reading 2,000 files"
            for _ in range(600):
                held.append(connect(server.uri))
            t0 = time.monotonic()
            h = connect(server.uri)
            assert len(h.pread(4096, 0)) == 4096
            h.shutdown()
            assert time.monotonic() - t0 < 10
            assert server.alive()
            for c in held:
                c.shutdown()
            held.clear()
            log = server.stderr()
            assert "Too many open files" not in log and len(log) < LOG_LIMIT, log[-3000:]
    finally:
        for c in held:
            with contextlib.suppress(Exception):
                c.shutdown()
        del held
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
