"""Mounts that are undone on the way out, whatever the test did.

``mounted`` is ``ext4gen.verify.loop_mount`` plus a check that the mount really
went away; ``scratch_tmpfs`` and ``bind_over`` hold host trees for the
fidelity tests.  Every helper unmounts in a ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext4gen.verify import loop_mount

HASH_IMAGE_LIMIT = 256 << 20  # rw-refusal check hashes images up to this size


def mounted_targets() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def loop_backing_files() -> list[str]:
    proc = subprocess.run(["losetup", "-a", "-n", "-O", "BACK-FILE"], capture_output=True,
                          text=True, check=False)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def mounted(path: str | os.PathLike[str], options: str = "ro") -> Iterator[str]:
    """``verify.loop_mount`` plus a check that the mount really went away."""
    mnt = ""
    try:
        with loop_mount(str(path), options=options) as mnt:
            yield mnt
    finally:
        if mnt and mnt in mounted_targets():
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
            pytest.fail(f"{mnt} was still mounted after loop_mount exited")


def assert_rw_mount_refused(path: Path) -> None:
    """``mount -o loop`` (rw) must fail, or give a mount the kernel forced read-only."""
    before = _digest(path) if path.stat().st_size <= HASH_IMAGE_LIMIT else None
    try:
        cm = mounted(path, options="rw")
        mnt = cm.__enter__()
    except subprocess.CalledProcessError:
        pass  # refused outright (e.g. shared_blocks): fine
    else:
        try:
            opts = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", "--mountpoint", mnt],
                                  capture_output=True, text=True, check=True).stdout.strip()
            assert "ro" in opts.split(","), f"rw mount gave options {opts}"
            with pytest.raises(OSError) as exc:
                os.mkdir(os.path.join(mnt, "ext4gen-write-probe"))
            assert exc.value.errno == errno.EROFS, exc.value
        finally:
            cm.__exit__(None, None, None)
    if before is not None:
        assert _digest(path) == before, "the rw mount attempt modified the image file"

def _umount(path: str) -> None:
    for args in (["umount", path], ["umount", "-l", path]):
        if subprocess.run(args, capture_output=True, check=False).returncode == 0:
            return


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


@contextlib.contextmanager
def scratch_tmpfs(path: Path, size: str = "4g") -> Iterator[Path]:
    """A private ``noatime`` tmpfs, unmounted on the way out whatever happens.

    Host trees live here because reading them (mkfs.ext4 -d, ext4gen, the
    comparisons) must not move their atimes: the disk under /tmp is ``relatime``.
    """
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"noatime,size={size},nr_inodes=0,mode=0755",
                    "ext4gen-fidelity", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        _umount(str(path))
        assert not is_mountpoint(path), f"{path} is still mounted"


@contextlib.contextmanager
def bind_over(source: Path, target: Path) -> Iterator[None]:
    """Temporarily show ``source`` at ``target`` (hides a subtree from a tree walker)."""
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True, capture_output=True)
    try:
        yield
    finally:
        _umount(str(target))
        assert not is_mountpoint(target), f"{target} is still mounted"



@contextlib.contextmanager
def nbdfuse_loop_mount(sock: Path, workdir: Path) -> Iterator[Path]:
    """The NBD export on ``sock`` as a kernel ro loop mount (nbdfuse → mount -o loop,ro),
    the way users without the nbd module mount it; unmounted and nbdfuse stopped whatever
    the test did."""
    fuse_dir, mnt = workdir / "fuse", workdir / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    disk = fuse_dir / "disk"
    nbdfuse = subprocess.Popen(["nbdfuse", "-r", str(disk), "--unix", str(sock)],
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mounted = False
    try:
        deadline = time.monotonic() + 30
        while not disk.exists():
            assert nbdfuse.poll() is None, nbdfuse.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "nbdfuse did not expose the disk"
            time.sleep(0.05)
        proc = subprocess.run(["mount", "-t", "ext4", "-o", "loop,ro", str(disk), str(mnt)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["fusermount3", "-u", str(fuse_dir)], check=False)
        try:
            nbdfuse.wait(30)
        except subprocess.TimeoutExpired:
            nbdfuse.kill()
            nbdfuse.wait()
