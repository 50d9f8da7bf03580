"""``ext4gen mount``'s stack: serve → nbdfuse (a FUSE file backed by the NBD export) →
a read-only loop mount, and its teardown.

Kernels without the nbd module (this project's CI) can still mount that way.
Every piece is recorded by pid in a state directory keyed by the mountpoint, so
``umount`` (or a failed ``mount``) stops exactly those processes, in reverse order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..inputs.oci_names import absolute_any  # os.path.abspath that keeps oci:PATH[:REF] intact
from .environment import runtime_dir
from .options import ServeError, ServeOptions
from .processes import STOP_TIMEOUT, read_pidfile, stop_pid, wait_gone
from .supervisor import Background, start_background


@dataclass
class MountState:
    """Everything ``umount`` needs, saved as JSON next to the pieces it names."""

    mountpoint: str
    source: str
    dir: str
    disk: str
    server: dict[str, object]
    nbdfuse_pid: int | None = None
    mounted: bool = False

    @property
    def fuse_dir(self) -> str:
        return os.path.dirname(self.disk)


def mount_state_dir(mountpoint: str) -> Path:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return runtime_dir() / "mounts" / key


def _save_state(state: MountState) -> None:
    path = Path(state.dir) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    os.replace(tmp, path)


def load_state(mountpoint: str) -> MountState:
    path = mount_state_dir(mountpoint) / "state.json"
    try:
        return MountState(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise ServeError(f"{mountpoint}: not mounted by ext4gen (no {path})") from None
    except (ValueError, TypeError) as e:
        raise ServeError(f"{path}: unreadable mount state: {e}") from None


def is_mountpoint(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == real:
                return True
    return False


def _unescape(s: str) -> str:
    return s.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def check_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ServeError(f"needed but not installed: {', '.join(missing)}")


def mount(opts: ServeOptions, mountpoint: str) -> tuple[str, Background]:
    """Serve ``opts`` in the background and mount it read-only at ``mountpoint``.

    Returns (state directory, server).  On any failure, undoes what it started.
    """
    mnt = os.path.realpath(mountpoint)
    if os.geteuid() != 0:
        raise ServeError("mount needs root (loop devices)")
    if not os.path.exists(mnt):
        raise ServeError(f"{mountpoint}: the mount point does not exist (mkdir -p {mountpoint})")
    if not os.path.isdir(mnt):
        raise ServeError(f"{mountpoint}: the mount point is not a directory")
    check_tools("nbdkit", "nbdfuse", "fusermount3", "mount", "umount")
    sdir = mount_state_dir(mnt)
    if (sdir / "state.json").exists():
        raise ServeError(f"{mnt}: already mounted by ext4gen (run `ext4gen umount {mnt}` first)")
    if is_mountpoint(mnt):
        raise ServeError(f"{mnt}: something is already mounted there")
    opts.check()
    shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(mode=0o700, parents=True)
    fuse_dir = sdir / "fuse"
    fuse_dir.mkdir()
    opts.socket = str(sdir / "nbd.sock")
    opts.pidfile = str(sdir / "serve.pid")
    opts.log = str(sdir / "serve.log")
    state = MountState(mountpoint=mnt, source=absolute_any(opts.source), dir=str(sdir),
                       disk=str(fuse_dir / "disk"), server={})
    try:
        server = start_background(opts)
        state.server = asdict(server)
        _save_state(state)
        state.nbdfuse_pid = _start_nbdfuse(state, opts.socket)
        _save_state(state)
        r = _run(["mount", "-t", "ext4", "-o", "loop,ro", state.disk, mnt])
        if r.returncode != 0:
            raise ServeError(f"mount {mnt} failed: {r.stderr.strip() or r.stdout.strip()}")
        state.mounted = True
        _save_state(state)
    except BaseException:
        with contextlib.suppress(Exception):
            teardown(state, lazy=True)
        raise
    return str(sdir), server


def _start_nbdfuse(state: MountState, sock: str) -> int:
    pidfile = os.path.join(state.dir, "nbdfuse.pid")
    with open(os.path.join(state.dir, "nbdfuse.log"), "ab") as logf:
        proc = subprocess.Popen(["nbdfuse", "-r", "-P", pidfile, state.disk, "--unix", sock],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)
    state.nbdfuse_pid = proc.pid
    deadline = time.monotonic() + 30
    while read_pidfile(pidfile) is None:
        if proc.poll() is not None:
            tail = Path(state.dir, "nbdfuse.log").read_text(errors="replace").strip().splitlines()
            raise ServeError(f"nbdfuse exited with status {proc.returncode}"
                             + (f": {tail[-1]}" if tail else ""))
        if time.monotonic() > deadline:
            raise ServeError("nbdfuse did not become ready within 30 s")
        time.sleep(0.02)
    return proc.pid


def teardown(state: MountState, *, lazy: bool = False) -> list[str]:
    """Undo a mount in reverse order: filesystem, loop device, nbdfuse, nbdkit, files.

    Each step runs only if its piece exists, so this also cleans up after a
    ``mount`` that failed halfway.  A busy filesystem stops the teardown
    (unless ``lazy``), because the layers under it must outlive its users.
    Returns the server's shutdown summary lines (its log goes with the state).
    """
    if is_mountpoint(state.mountpoint):
        r = _run(["umount", state.mountpoint])
        if r.returncode != 0:
            if not lazy:
                raise ServeError(f"umount {state.mountpoint} failed: {r.stderr.strip()} (stop what "
                                 f"uses it, or detach it now: ext4gen umount --lazy {state.mountpoint})")
            _run(["umount", "-l", state.mountpoint])
    state.mounted = False
    # mount(8) set up the loop device with autoclear; detach any left behind.
    if os.path.exists(state.disk) or state.nbdfuse_pid:
        r = _run(["losetup", "-n", "-O", "NAME", "-j", state.disk])
        for dev in r.stdout.split():
            _run(["losetup", "-d", dev])
    _unmount_fuse(state.fuse_dir)
    if state.nbdfuse_pid and not wait_gone(state.nbdfuse_pid, STOP_TIMEOUT, "nbdfuse"):
        stop_pid(state.nbdfuse_pid, "nbdfuse")
    summary: list[str] = []
    if state.server:
        bg = Background(**state.server)  # type: ignore[arg-type]
        bg.stop()
        with contextlib.suppress(OSError):
            summary = [ln for ln in Path(bg.log).read_text(errors="replace").splitlines()
                       if ln.startswith("ext4gen: served ")]
    shutil.rmtree(state.dir, ignore_errors=True)
    return summary


def _unmount_fuse(fuse_dir: str) -> None:
    deadline = time.monotonic() + 5
    while is_mountpoint(fuse_dir):
        # Busy while the kernel is still releasing the loop device: retry, then detach lazily.
        lazy_fuse = time.monotonic() > deadline
        _run(["fusermount3", "-u", *(["-z"] if lazy_fuse else []), fuse_dir])
        if lazy_fuse:
            break
        if is_mountpoint(fuse_dir):
            time.sleep(0.1)
