"""Processes by pid: whatever a test starts, it can stop and wait for, even after a failure."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

STOP_TIMEOUT = 30.0


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


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a child we started (as Ctrl-C or a service manager would), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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

