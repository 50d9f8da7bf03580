"""Proof that an image is right: e2fsck's verdict and a kernel read-back against the tree.

Used by ``ext4gen check`` and by the test suite, so the check users run is the
one CI runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator

from .format.ondisk import EXT4_LINK_MAX
from .layout.numbering import LOST_FOUND
from .model.sources import data_runs
from .model.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node, Tree

_KIND_OF_MODE = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK,
                 stat.S_IFCHR: CHARDEV, stat.S_IFBLK: BLOCKDEV, stat.S_IFIFO: FIFO,
                 stat.S_IFSOCK: SOCKET}
_E2FSCK_OK_PREFIXES = ("e2fsck ", "Pass 1:", "Pass 2:", "Pass 3:", "Pass 4:", "Pass 5:")


def e2fsck(image: str) -> tuple[int, list[str]]:
    """Run ``e2fsck -fn``; return its exit code and every line that is a complaint."""
    proc = subprocess.run(["e2fsck", "-fn", image], capture_output=True, text=True,
                          errors="replace", check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    complaints = []
    for i, line in enumerate(lines):
        if not line.strip() or line.startswith(_E2FSCK_OK_PREFIXES):
            continue
        if " files (" in line and " blocks" in line and i >= len(lines) - 2:
            continue  # the summary line "LABEL: 12/32 files (0.0% non-contiguous), 13/13 blocks"
        complaints.append(line)
    return proc.returncode, complaints


def is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def loop_mount(image: str, mountpoint: str | None = None, *, options: str = "ro") -> Iterator[str]:
    """Mount ``image`` through a loop device; always unmount and detach afterwards."""
    own_dir = mountpoint is None
    mnt = mountpoint or tempfile.mkdtemp(prefix="ext4gen-mnt-")
    try:
        subprocess.run(["mount", "-t", "ext4", "-o", f"loop,{options}", image, mnt],
                       check=True, capture_output=True, text=True)
        try:
            yield mnt
        finally:
            _umount(mnt)
    finally:
        if own_dir:
            with contextlib.suppress(OSError):
                os.rmdir(mnt)


def _umount(mnt: str) -> None:
    """Unmount; the loop device was set up with autoclear by mount(8)."""
    for args in (["umount", mnt], ["umount", "-l", mnt]):
        if subprocess.run(args, capture_output=True, check=False).returncode == 0:
            return


def compare_tree(tree: Tree, root: str, *, check_content: bool = True,
                 progress: Callable[[int], object] | None = None) -> list[str]:
    """Differences between ``tree`` and the mounted filesystem at ``root`` (empty = equal).

    ``progress(1)`` is called for every entry compared."""
    comparison = _TreeComparison(os.fsencode(root), check_content, progress)
    comparison.walk(tree.root, comparison.root, "/")
    return comparison.finish()


class _TreeComparison:
    """One walk of the tree beside the mounted filesystem, collecting every difference."""

    def __init__(self, root: bytes, check_content: bool,
                 progress: Callable[[int], object] | None) -> None:
        self.root = root
        self.check_content = check_content
        self.progress = progress
        self.diffs: list[str] = []
        self.inode_of: dict[int, int] = {}  # id(node) -> st_ino of its first name
        self.names_of: dict[int, int] = {}  # id(node) -> names seen
        self.node_links: dict[int, tuple[Node, int, str]] = {}  # id(node) -> (node, st_nlink, shown)
        self.birth_checks: list[tuple[str, str, int]] = []

    def walk(self, node: Node, path: bytes, shown: str) -> None:
        if self.progress is not None:
            self.progress(1)
        try:
            st = os.lstat(path)
        except OSError as e:
            self.diffs.append(f"{shown}: missing ({e.strerror})")
            return
        kind = _KIND_OF_MODE.get(stat.S_IFMT(st.st_mode))
        if kind != node.kind:
            self.diffs.append(f"{shown}: is a {kind}, expected {node.kind}")
            return
        self._compare_meta(node, st, path, shown)
        self.diffs.extend(_compare_xattrs(node, path, shown))
        if node.kind != DIR:
            self._count_name(node, st, shown)
        if node.kind == FILE:
            if st.st_size != node.size:
                self.diffs.append(f"{shown}: size {st.st_size}, expected {node.size}")
            elif self.check_content:
                diff = _compare_content(node, path)
                if diff:
                    self.diffs.append(f"{shown}: {diff}")
        elif node.kind == SYMLINK:
            target = os.readlink(path)
            if target != node.target:
                self.diffs.append(f"{shown}: symlink target {target!r}, expected {node.target!r}")
        elif node.kind in (CHARDEV, BLOCKDEV):
            got_rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if got_rdev != tuple(node.rdev):
                self.diffs.append(f"{shown}: device {got_rdev}, expected {tuple(node.rdev)}")
        elif node.kind == DIR:
            self._compare_dir(node, st, path, shown)

    def _compare_meta(self, node: Node, st: os.stat_result, path: bytes, shown: str) -> None:
        m = node.meta
        expect = {"mode": m.perm, "uid": m.uid, "gid": m.gid, "mtime_ns": m.mtime,
                  "ctime_ns": m.ctime, "atime_ns": m.atime}
        got = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
               "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "atime_ns": st.st_atime_ns}
        if node.kind == SYMLINK and m.perm == 0o777:
            got["mode"] = 0o777
        for k, v in expect.items():
            if got[k] != v:
                self.diffs.append(f"{shown}: {k} is {got[k]!r}, expected {v!r}")
        self.birth_checks.append((path.decode("utf-8", "surrogateescape"), shown, m.crtime))

    def _count_name(self, node: Node, st: os.stat_result, shown: str) -> None:
        """Every name of a non-directory must reach one inode, whose nlink counts them."""
        prev = self.inode_of.setdefault(id(node), st.st_ino)
        if prev != st.st_ino:
            self.diffs.append(f"{shown}: inode {st.st_ino}, expected a hard link to inode {prev}")
        self.names_of[id(node)] = self.names_of.get(id(node), 0) + 1
        self.node_links[id(node)] = (node, st.st_nlink, shown)

    def _compare_dir(self, node: Node, st: os.stat_result, path: bytes, shown: str) -> None:
        """Entries and link count; the image's own lost+found is fine if the tree has none."""
        assert node.children is not None
        on_disk = set(os.listdir(path))
        expected = set(node.children)
        implicit_lost_found = path == self.root and LOST_FOUND not in expected
        if implicit_lost_found:
            on_disk.discard(LOST_FOUND)
        for name in sorted(on_disk - expected):
            self.diffs.append(f"{shown}: unexpected entry {name!r}")
        subdirs = sum(1 for c in node.children.values() if c.kind == DIR) + implicit_lost_found
        want_links = 2 + subdirs if 2 + subdirs <= EXT4_LINK_MAX else 1
        if st.st_nlink != want_links:
            self.diffs.append(f"{shown}: nlink {st.st_nlink}, expected {want_links}")
        for name in sorted(expected):
            child_shown = shown.rstrip("/") + "/" + name.decode("utf-8", "replace")
            self.walk(node.children[name], os.path.join(path, name), child_shown)

    def finish(self) -> list[str]:
        """Add the link-count and birth-time differences, which need the whole walk."""
        for key, (_node, nlink, shown) in self.node_links.items():
            if nlink != self.names_of[key]:
                self.diffs.append(f"{shown}: nlink {nlink}, expected {self.names_of[key]}")
        self.diffs.extend(_compare_birth_times(self.birth_checks))
        return self.diffs


def _compare_xattrs(node: Node, path: bytes, shown: str) -> list[str]:
    try:
        names = {os.fsencode(n) for n in os.listxattr(path, follow_symlinks=False)}
    except OSError as e:
        return [f"{shown}: listxattr failed ({e.strerror})"]
    diffs = []
    if names != set(node.xattrs):
        diffs.append(f"{shown}: xattrs {sorted(names)}, expected {sorted(node.xattrs)}")
    for name in sorted(names & set(node.xattrs)):
        value = os.getxattr(path, name, follow_symlinks=False)
        if value != node.xattrs[name]:
            diffs.append(f"{shown}: xattr {name!r} is {value!r}, expected {node.xattrs[name]!r}")
    return diffs


def _compare_content(node: Node, path: bytes) -> str | None:
    """Compare bytes where the mounted file has data; where it has holes the source must be zero.

    SEEK_DATA on the mounted ext4 file reports its extents, so a sparse 200 GiB file
    costs only its data.
    """
    assert node.source is not None
    size = node.size
    with open(path, "rb", buffering=0) as f:
        image_data = data_runs(f.fileno(), size)
        for start, end in image_data:
            diff = _compare_range(node, f.fileno(), start, end)
            if diff:
                return diff
    src_ranges = node.source.data_ranges()
    expect_data = [(0, size)] if src_ranges is None else src_ranges
    for start, end in _subtract(expect_data, image_data):
        diff = _check_source_zero(node, start, end)
        if diff:
            return diff
    return None


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for start, end in ranges:
        pos = start
        for c0, c1 in cut:
            if c1 <= pos or c0 >= end:
                continue
            if c0 > pos:
                out.append((pos, c0))
            pos = max(pos, c1)
        if pos < end:
            out.append((pos, end))
    return out


def _source_chunks(node: Node, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
    """The expected bytes of ``[start, end)`` in 1 MiB pieces, read from the node's source."""
    assert node.source is not None
    buf = bytearray(min(1 << 20, end - start))
    offset = start
    while offset < end:
        n = min(len(buf), end - offset)
        mv = memoryview(buf)[:n]
        node.source.readinto(mv, offset)
        yield offset, mv
        offset += n


def _compare_range(node: Node, fd: int, start: int, end: int) -> str | None:
    for offset, want in _source_chunks(node, start, end):
        got = os.pread(fd, len(want), offset)
        if got != want:
            for i in range(min(len(got), len(want))):
                if got[i] != want[i]:
                    return f"content differs at byte {offset + i}"
            return f"content is short at byte {offset + len(got)}"
    return None


def _check_source_zero(node: Node, start: int, end: int) -> str | None:
    for offset, want in _source_chunks(node, start, end):
        if want.tobytes().count(0) != len(want):
            return f"image has a hole where the source has data near byte {offset}"
    return None


def _compare_birth_times(checks: list[tuple[str, str, int]]) -> list[str]:
    """os.stat has no birth time on Linux; coreutils stat(1) reads it through statx."""
    if not checks or shutil.which("stat") is None:
        return []
    diffs = []
    batch = 500
    for i in range(0, len(checks), batch):
        part = checks[i : i + batch]
        proc = subprocess.run(["stat", "--printf", "%.9W\\n", "--", *(p for p, _s, _c in part)],
                              capture_output=True, text=True, check=False)
        values = proc.stdout.splitlines()
        for (_p, shown, crtime), value in zip(part, values, strict=False):
            sec, _, frac = value.partition(".")
            got = int(sec) * 1_000_000_000 + (int(frac.ljust(9, "0")) if not sec.startswith("-")
                                              else -int(frac.ljust(9, "0")))
            if got != crtime:
                diffs.append(f"{shown}: crtime_ns is {got}, expected {crtime}")
    return diffs
