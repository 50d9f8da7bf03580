"""Serving machinery for the NBD tests: a source tree, a real server, real clients.

Nothing here is mocked: servers are ``ext4gen serve`` processes running the
real nbdkit, and clients are libnbd (python3-libnbd), nbdcopy, nbdinfo and
nbdfuse.  Every process a helper starts is stopped by pid in a ``finally``,
so a failing test does not leave a server behind for the next run.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CLI = [sys.executable, "-m", "ext4gen.cli"]
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


def import_nbd() -> ModuleType:
    """python3-libnbd lives in Debian's dist-packages, which a plain venv does not see."""
    try:
        import nbd
    except ImportError:
        if DEBIAN_DIST_PACKAGES not in sys.path:
            sys.path.append(DEBIAN_DIST_PACKAGES)  # after the venv: never shadows its packages
        try:
            import nbd
        except ImportError:
            pytest.fail("python3-libnbd is not installed (apt install python3-libnbd)")
    return nbd


# -- a source tree exercising every kind of block ------------------------------------------


def make_source_tree(base: Path, *, dedup: str = "content", seed: int = 3) -> Path:
    """Write host files and a TOML manifest over them; return the manifest path.

    The tree has metadata of every kind (multi-block and hashed directories,
    extent trees, symlinks, hard links), data from host files and inline
    content, shared (deduplicated) blocks, and large holes, so reads land on
    every kind of region the image has.
    """
    rng = random.Random(seed)
    src = base / "src"
    src.mkdir(parents=True, exist_ok=True)

    def rand(n: int) -> bytes:
        return rng.randbytes(n)

    big = bytearray(rand(3 << 20))
    for blk in (5, 6, 7, 300, 301):  # all-zero blocks inside a file: holes with dedup=content
        big[blk * 4096 : (blk + 1) * 4096] = bytes(4096)
    (src / "big.bin").write_bytes(big)
    shared = rand(200_000)
    (src / "dup_a.bin").write_bytes(shared)
    (src / "dup_b.bin").write_bytes(shared)
    (src / "odd.bin").write_bytes(rand(12_345))
    for i in range(4):
        (src / f"victim{i}.bin").write_bytes(rand(64 * 1024 + 100 * i))
    (src / "healthy.bin").write_bytes(rand(96 * 1024))

    lines = [
        "[image]", 'label = "servetest"', f'dedup = "{dedup}"',
        "[defaults]", "mtime = 1600000000", "uid = 0", "gid = 0",
        '["/etc/hostname"]', 'text = "served\\n"', 'mode = "0644"',
        '["/etc/motd"]', f'base64 = "{base64.b64encode(rand(3000)).decode()}"',
        '["/bin/big.bin"]', 'source = "src/big.bin"', 'mode = "0755"', "uid = 1000", "gid = 1000",
        '["/data/dup_a.bin"]', 'source = "src/dup_a.bin"',
        '["/data/dup_b.bin"]', 'source = "src/dup_b.bin"',
        '["/data/odd.bin"]', 'source = "src/odd.bin"', "mtime = \"1700000000.123456789\"",
        '["/data/healthy.bin"]', 'source = "src/healthy.bin"',
        '["/data/sparse.img"]', f"size = {64 << 20}",
        '["/data/empty"]', 'text = ""',
        '["/secret"]', 'type = "dir"', 'mode = "0700"', "uid = 42",
        '["/secret/link"]', 'type = "symlink"', 'target = "../etc/hostname"',
        '["/etc/hostname.hard"]', 'type = "hardlink"', 'target = "/etc/hostname"',
    ]
    for i in range(4):
        lines += [f'["/victims/victim{i}.bin"]', f'source = "src/victim{i}.bin"']
    for i in range(400):  # a directory of several blocks (hashed when the core indexes it)
        lines += [f'["/many/entry-{i:04d}-{"x" * (i % 40)}"]', f'text = "{i}\\n"']
    manifest = base / "manifest.toml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def build_image(manifest: Path, out: Path) -> bytes:
    """``ext4gen build`` the manifest; return the image's bytes.

    For references that must be the CLI's own build ("byte-identical to
    ``ext4gen build``"); any other test takes its image from ``ext4_image``.
    """
    subprocess.run([*CLI, "build", str(manifest), "-o", str(out), "-q"], check=True)
    return out.read_bytes()


# -- processes by pid ------------------------------------------------------------------------


def pid_running(pid: int) -> bool:
    """Alive and not a zombie; reaps it first if it is our (possibly adopted) child."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def kill_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL; returns when the pid is gone (or reaped)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_running(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def program(pid: int) -> str:
    try:
        return os.path.basename(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
    except (OSError, IndexError):
        return ""


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Adopt orphans of the CLI processes we run, so we can reap them by pid.

    ``ext4gen mount`` leaves nbdfuse and the serve supervisor running after it
    exits; they are reparented to the nearest subreaper.  PID 1 on some CI
    machines never reaps, which would leave zombies looking like leaks.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)
        reap_zombie_children()


def reap_zombie_children() -> None:
    """waitpid() every child of ours that has already exited (adopted orphans)."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(d), os.WNOHANG)


# -- a server -------------------------------------------------------------------------------


class Server:
    """``ext4gen serve SOURCE [SOURCE …] --socket SOCK --foreground``: the CLI as users run it.

    ``more`` are further SOURCE arguments (``[NAME=]PATH``), one export each;
    ``uris`` then holds the URI serve printed for each export, in order.
    """

    def __init__(self, manifest: Path | str, sock: Path, *extra: str, log: Path | None = None,
                 more: tuple[str, ...] = ()) -> None:
        self.sock = sock
        self.log = log or sock.with_suffix(".log")
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [*CLI, "serve", str(manifest), *more, "--socket", str(sock), "--foreground", *extra],
            stdout=subprocess.PIPE, stderr=self._logf, stdin=subprocess.DEVNULL)
        self.uris = [self._read_uri() for _ in range(1 + len(more))]
        self.uri = self.uris[0]
        nbdkits = [p for p in children(self.proc.pid) if program(p) == "nbdkit"]
        assert len(nbdkits) == 1, f"expected one nbdkit child, found {nbdkits}"
        self.nbdkit_pid = nbdkits[0]
        self.returncode: int | None = None

    def _read_uri(self) -> str:
        box: list[bytes] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(START_TIMEOUT)
        if not box or not box[0]:
            self.stop()
            raise AssertionError(f"ext4gen serve did not print a URI; its stderr:\n{self.stderr()}")
        return box[0].decode().strip()

    def stderr(self) -> str:
        if not self._logf.closed:
            self._logf.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None and pid_running(self.nbdkit_pid)

    def stop(self) -> int:
        """SIGTERM the CLI (as Ctrl-C or a service manager would); kill by pid if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "nbdkit_pid"):
            kill_pid(self.nbdkit_pid)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._logf.close()
        self.returncode = self.proc.returncode
        return self.returncode


@contextlib.contextmanager
def serving(manifest: Path | str, sock: Path, *extra: str,
            more: tuple[str, ...] = ()) -> Iterator[Server]:
    server = Server(manifest, sock, *extra, more=more)
    try:
        yield server
    finally:
        server.stop()


# -- an export from the ext4_export fixture -------------------------------------------------


@dataclass
class Export:
    """A server started by the ``ext4_export`` fixture, which stops it when the test ends.

    For tests where serving is the means, not the subject: the plugin's record
    gives the pids and the log the checks below need.
    """

    uri: str
    record: Any  # ext4gen.serve.commands.Background

    @property
    def sock(self) -> Path:
        return Path(self.record.socket)

    def alive(self) -> bool:
        return pid_running(self.record.pid) and pid_running(self.record.nbdkit_pid)

    def stderr(self) -> str:
        return Path(self.record.log).read_text(errors="replace")

    def stop(self) -> None:
        """Stop it now (the fixture's teardown then finds nothing left to stop)."""
        self.record.stop()


def export(ext4_export: Any, manifest: Path | str, **options: Any) -> Export:
    """``ext4_export(manifest)`` plus the record of the server it started."""
    uri = ext4_export(manifest, **options)
    record = ext4_export.servers[-1]
    assert record.uri == uri
    return Export(uri, record)


def nbdinfo_json(uri: str) -> dict:
    out = subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def connect(uri: str):  # -> nbd.NBD
    nbd = import_nbd()
    h = nbd.NBD()
    h.connect_uri(uri)
    return h
