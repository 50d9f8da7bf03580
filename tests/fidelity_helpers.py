"""Shared machinery for the issue-4 fidelity tests (host trees, tar, identity, big files).

The comparisons here are deliberately independent of ``ext4gen.verify``: they
compare two *directory trees* (a host directory, a mkfs.ext4 -d mount, an
ext4gen mount) entry by entry through the kernel, so a bug shared by the
planner and its own verifier cannot hide.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

NS = 10**9
BLOCK = 4096
EXT4_MIN_NS = -(1 << 31) * NS  # 1901-12-13T20:45:52Z
EXT4_MAX_NS = ((1 << 34) - (1 << 31)) * NS - 1  # 2446-05-10T22:38:55.999999999Z
FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long): the inode's i_generation

# POSIX ACL tags and the kernel's VFS xattr layout (linux/posix_acl_xattr.h)
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 16, 32
ACL_UNDEFINED_ID = 0xFFFFFFFF
_TAGS = {"u": (ACL_USER_OBJ, ACL_USER), "g": (ACL_GROUP_OBJ, ACL_GROUP), "m": (ACL_MASK, ACL_MASK),
         "o": (ACL_OTHER, ACL_OTHER)}


def vfs_acl(text: str) -> bytes:
    """``"u::rw-,u:1000:r--,g::r--,m::r--,o::---"`` → what setxattr(system.posix_acl_*) takes.

    Written here rather than borrowed from ext4gen.model.xattrs, so host trees are
    made without the code under test.  Entries must be given in kernel order.
    """
    out = [struct.pack("<I", 2)]
    for item in text.split(","):
        tag_s, qual, perm_s = item.split(":")
        perm = sum(bit for ch, bit in zip(perm_s, (4, 2, 1), strict=True) if ch != "-")
        obj_tag, named_tag = _TAGS[tag_s]
        tag, qid = (named_tag, int(qual)) if qual else (obj_tag, ACL_UNDEFINED_ID)
        out.append(struct.pack("<HHI", tag, perm, qid))
    return b"".join(out)


def capability_v2(permitted: int, inheritable: int = 0, effective: bool = True) -> bytes:
    """A VFS_CAP_REVISION_2 ``security.capability`` value (linux/capability.h)."""
    magic = 0x02000000 | (1 if effective else 0)
    return struct.pack("<IIIII", magic, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
                       permitted >> 32, inheritable >> 32)


# -- processes and mounts ---------------------------------------------------------


def run_cli(*args: str | os.PathLike[str], stdin: bytes | None = None,
            env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """``ext4gen ARGS`` in a subprocess: the real entry point, exit codes and stderr."""
    proc = subprocess.run([sys.executable, "-m", "ext4gen.cli", *map(str, args)], input=stdin,
                          capture_output=True, env=env, cwd=cwd, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def build_cli(source: str | os.PathLike[str], image: Path, *extra: str | os.PathLike[str]) -> None:
    proc = run_cli("build", source, "-o", image, "-q", *extra)
    assert proc.returncode == 0, f"ext4gen build failed ({proc.returncode}): {proc.stderr}"


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


def debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True,
                          errors="replace", check=True)
    return proc.stdout


def generation(path: str | os.PathLike[str]) -> int:
    """i_generation as the kernel reports it (FS_IOC_GETVERSION), the NFS file-handle half."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, FS_IOC_GETVERSION, b"\0" * 8)
    finally:
        os.close(fd)
    return struct.unpack("<Q", buf)[0] & 0xFFFFFFFF


# -- comparing two trees through the kernel -----------------------------------------

FIELDS = ("type", "mode", "uid", "gid", "size", "nlink", "atime", "mtime", "ctime", "rdev",
          "xattrs", "target", "bytes", "holes", "links")


def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) data runs by SEEK_DATA/SEEK_HOLE; a 200 GiB sparse file costs its data only."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
        pos = end
    return out


def _union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(a + b):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return {"<listxattr failed>": str(e).encode()}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def _compare_bytes(pa: str, pb: str, size: int, check_holes: bool) -> list[str]:
    out = []
    with open(pa, "rb", buffering=0) as fa, open(pb, "rb", buffering=0) as fb:
        runs = []
        for f in (fa, fb):
            try:
                runs.append(data_segments(f.fileno(), size))
            except OSError as e:  # read it all: the bytes must still agree
                out.append(f"holes: SEEK_DATA/SEEK_HOLE failed on {f.name}: {e.strerror}")
                runs.append([(0, size)] if size else [])
        sa, sb = runs
        if check_holes and sa != sb:
            out.append(f"holes: data runs {sa[:4]}... vs {sb[:4]}...")
        if not check_holes:
            out = []
        for start, end in _union(sa, sb):  # outside both, both read as zeros
            pos = start
            while pos < end:
                n = min(1 << 20, end - pos)
                ba, bb = os.pread(fa.fileno(), n, pos), os.pread(fb.fileno(), n, pos)
                if ba != bb:
                    i = next((i for i in range(min(len(ba), len(bb))) if ba[i] != bb[i]),
                             min(len(ba), len(bb)))
                    return [*out, f"bytes: differ at offset {pos + i}"]
                pos += n
    return out


def compare_dirs(a: str | os.PathLike[str], b: str | os.PathLike[str], *,
                 skip: Callable[[str], bool] = lambda rel: False,
                 ignore: Callable[[str, str], bool] = lambda rel, field: False,
                 time_unit: int = 1, limit: int = 60) -> tuple[list[str], int]:
    """Differences between the trees at ``a`` and ``b`` (through lstat/getxattr/read), and
    how many entries were compared.

    ``skip(rel)`` leaves an entry (and its subtree) out entirely; ``ignore(rel,
    field)`` waives one field of one entry (documented exceptions); times are
    compared in units of ``time_unit`` ns (floored, as time_t is).  Hard links
    are compared as structure: two names share an inode in ``a`` iff they do in ``b``.
    """
    a, b = os.fspath(a), os.fspath(b)
    diffs: list[str] = []
    first_name_a: dict[int, str] = {}
    first_name_b: dict[int, str] = {}
    count = 0
    stack = [""]
    while stack and len(diffs) < limit:
        rel = stack.pop()
        pa, pb = os.path.join(a, rel), os.path.join(b, rel)
        shown = "/" + rel
        count += 1
        try:
            sa, sb = os.lstat(pa), os.lstat(pb)
        except OSError as e:
            diffs.append(f"{shown}: {e}")
            continue

        def check(field: str, va: object, vb: object, rel: str = rel, shown: str = shown) -> None:
            if va != vb and not ignore(rel, field):
                diffs.append(f"{shown}: {field} {va!r} != {vb!r}")

        ta, tb = stat.S_IFMT(sa.st_mode), stat.S_IFMT(sb.st_mode)
        if ta != tb:
            diffs.append(f"{shown}: type {ta:o} != {tb:o}")
            continue
        check("mode", stat.S_IMODE(sa.st_mode), stat.S_IMODE(sb.st_mode))
        check("uid", sa.st_uid, sb.st_uid)
        check("gid", sa.st_gid, sb.st_gid)
        check("nlink", sa.st_nlink, sb.st_nlink)
        check("atime", sa.st_atime_ns // time_unit, sb.st_atime_ns // time_unit)
        check("mtime", sa.st_mtime_ns // time_unit, sb.st_mtime_ns // time_unit)
        check("ctime", sa.st_ctime_ns // time_unit, sb.st_ctime_ns // time_unit)
        if not stat.S_ISDIR(sa.st_mode) or not ignore(rel, "size"):
            check("size", sa.st_size, sb.st_size)
        check("xattrs", _xattrs(pa), _xattrs(pb))
        if not stat.S_ISDIR(sa.st_mode) and sa.st_nlink > 1:
            fa = first_name_a.setdefault(sa.st_ino, shown)
            fb = first_name_b.setdefault(sb.st_ino, shown)
            check("links", f"same inode as {fa}", f"same inode as {fb}")
        if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
            check("rdev", (os.major(sa.st_rdev), os.minor(sa.st_rdev)),
                  (os.major(sb.st_rdev), os.minor(sb.st_rdev)))
        elif stat.S_ISLNK(sa.st_mode):
            check("target", os.readlink(pa), os.readlink(pb))
        elif stat.S_ISREG(sa.st_mode) and sa.st_size == sb.st_size:
            for d in _compare_bytes(pa, pb, sa.st_size, not ignore(rel, "holes")):
                field = d.split(":", 1)[0]
                if not ignore(rel, field):
                    diffs.append(f"{shown}: {d}")
        elif stat.S_ISDIR(sa.st_mode):
            na = {n for n in os.listdir(pa) if not skip(os.path.join(rel, n))}
            nb = {n for n in os.listdir(pb) if not skip(os.path.join(rel, n))}
            if na != nb:
                diffs.append(f"{shown}: only in a {sorted(na - nb)[:5]}, only in b {sorted(nb - na)[:5]}")
            stack.extend(os.path.join(rel, n) for n in sorted(na & nb, reverse=True))
    return diffs, count


# -- the fidelity host tree ---------------------------------------------------------

T0 = 1_600_000_000_123_456_789
SPECIAL_TIMES = {  # name -> (atime, mtime), all with nanoseconds
    "times/pre1970": (-1_000_000_001, -123_456_789_987_654_321),
    "times/min": (EXT4_MIN_NS + 1, EXT4_MIN_NS),
    "times/y2038_edge": ((1 << 31) * NS - 1, (1 << 31) * NS + 1),
    "times/y2242": ((1 << 33) * NS + 999_999_999, (1 << 32) * NS + 500_000_000),
    "times/max": (EXT4_MAX_NS, EXT4_MAX_NS - 999_999_998),
    "times/dir_pre1970": (-7 * NS - 3, -86_400 * NS * 365 * 30 + 17),
}
DEVICES = {  # name -> (S_IFCHR/S_IFBLK, major, minor); old encoding iff both < 256
    "dev/null_old": (stat.S_IFCHR, 1, 3),
    "dev/chr_255": (stat.S_IFCHR, 255, 255),
    "dev/chr_major_new": (stat.S_IFCHR, 300, 5),
    "dev/chr_minor_new": (stat.S_IFCHR, 5, 70000),
    "dev/blk_old": (stat.S_IFBLK, 8, 1),
    "dev/blk_max": (stat.S_IFBLK, 4095, (1 << 20) - 1),
}
HTREE_ENTRIES = 3000  # a multi-block (htree) directory mkfs.ext4 -d can still build quickly
SPARSE_SIZE = 200 << 30
SPARSE_WRITES = (0, (1 << 30) + 5, 100 << 30, SPARSE_SIZE - 10)


def _rand(seed: int, n: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def make_fidelity_tree(root: Path, *, huge: str = "huge", huge_entries: int = 200_000,
                       huge_subdirs: int = 65_010) -> None:
    """A host directory holding every kind of thing issue 4 items 1–4 name.

    ``huge`` gets ``huge_entries`` entries, ``huge_subdirs`` of them directories
    (over ext4's 65,000 link limit, so the directory needs dir_nlink).
    """
    root.mkdir()
    p = lambda rel: str(root / rel)  # noqa: E731
    for d in ("files", "times", "symlinks", "links/sub", "dev", "special", "xattrs", "acl/dir",
              "acl/default_only", "dirs/empty", "dirs/small", "dirs/htree", "sparse", "modes", "owners"):
        os.makedirs(p(d))
    deep = "dirs/deep/" + "/".join(f"d{i}" for i in range(30))
    os.makedirs(p(deep))

    files = {
        "files/empty": b"",
        "files/tiny": b"hello\n",
        "files/inline_60": _rand(1, 60),
        "files/inline_128": _rand(2, 128),
        "files/just_over_inline": _rand(3, 129),
        "files/one_block": _rand(4, BLOCK),
        "files/blocks": _rand(5, 3 * BLOCK + 17),
        "files/zero_middle": _rand(6, BLOCK) + bytes(2 * BLOCK) + _rand(7, BLOCK + 1),
        "files/written_zeros": bytes(3 * BLOCK),
        "files/dup_a": _rand(8, 2 * BLOCK + 99),
        "files/dup_b": _rand(8, 2 * BLOCK + 99),
        "files/utf8 ünïcødé 🌍": "grüße\n".encode(),
        "files/" + "n" * 255: b"a 255-byte name\n",
        deep + "/leaf": b"deep\n",
    }
    for rel, data in files.items():
        with open(p(rel), "wb") as f:
            f.write(data)
    for rel in SPECIAL_TIMES:
        if rel.startswith("times/dir"):
            os.mkdir(p(rel))
        else:
            with open(p(rel), "wb") as f:
                f.write(rel.encode())

    # sparse: 200 GiB with a few written blocks, and one with a leading hole
    with open(p("sparse/200g"), "wb") as f:
        f.truncate(SPARSE_SIZE)
        for i, off in enumerate(SPARSE_WRITES):
            f.seek(off)
            f.write(_rand(100 + i, min(BLOCK, SPARSE_SIZE - off)))
    with open(p("sparse/hole_first"), "wb") as f:
        f.truncate(1 << 20)
        f.seek((1 << 20) - 3)
        f.write(b"end")

    # symlinks: fast (< 60 bytes, in the inode), slow, maximal, dangling, pointing out of the tree
    links = {
        "symlinks/fast": "../files/tiny",
        "symlinks/fast59": "f" * 59,
        "symlinks/slow60": "s" * 60,
        "symlinks/slow_long": "/" + "L" * 4094,
        "symlinks/dangling": "no/such/file",
        "symlinks/outside": "/etc/passwd",
        "symlinks/updir": "../../../../..",
    }
    for rel, target in links.items():
        os.symlink(target, p(rel))

    # hard links: a file with three names, a fifo and a symlink with two
    os.link(p("files/blocks"), p("links/blocks_again"))
    os.link(p("files/blocks"), p("links/sub/blocks_third"))
    os.mkfifo(p("special/fifo"))
    os.link(p("special/fifo"), p("links/fifo_again"))
    os.link(p("symlinks/fast"), p("links/symlink_again"), follow_symlinks=False)

    for rel, (kind, major, minor) in DEVICES.items():
        os.mknod(p(rel), kind | 0o640, os.makedev(major, minor))
    os.mknod(p("special/socket"), stat.S_IFSOCK | 0o755)

    # modes and owners (chown before chmod: chown clears set-id bits)
    for m in (0o4755, 0o2755, 0o6711, 0o1777, 0o7777, 0o0000, 0o0400):
        with open(p(f"modes/f{m:04o}"), "wb") as f:
            f.write(b"m")
        os.chmod(p(f"modes/f{m:04o}"), m)
    for m in (0o1777, 0o2775, 0o0700):
        os.mkdir(p(f"modes/d{m:04o}"))
        os.chmod(p(f"modes/d{m:04o}"), m)
    owners = {"owners/u1000": (1000, 1000), "owners/u65536": (65536, 70000),
              "owners/u2p31": (1 << 31, (1 << 31) + 1), "owners/u_max": (4294967294, 4294967293)}
    for rel, (uid, gid) in owners.items():
        with open(p(rel), "wb") as f:
            f.write(b"o")
        os.chown(p(rel), uid, gid)
    os.chown(p("dev/chr_major_new"), 0, 6)
    os.chown(p("symlinks/slow60"), 4242, 4343, follow_symlinks=False)
    os.chown(p("modes/d2775"), 1234, 5678)
    os.chmod(p("modes/d2775"), 0o2775)

    # xattrs of every namespace, in-inode and spilling into an external (shared) block
    big = _rand(9, 3000)
    xattrs: dict[str, dict[str, bytes]] = {
        "xattrs/user": {"user.mime_type": b"text/plain", "user.empty": b""},
        "xattrs/trusted": {"trusted.overlay.opaque": b"y", "trusted.bin": bytes(range(256))},
        "xattrs/selinux": {"security.selinux": b"system_u:object_r:etc_t:s0\x00"},
        "xattrs/capability": {"security.capability": capability_v2(1 << 10 | 1 << 13)},
        "xattrs/big_a": {"user.big": big, "user.small": b"a"},
        "xattrs/big_b": {"user.big": big, "user.small": b"a"},
        "xattrs/mixed": {"user.a": b"1", "trusted.b": b"\0\1\2", "security.selinux": b"x\x00",
                         "security.ima": _rand(10, 300)},
    }
    for rel, attrs in xattrs.items():
        with open(p(rel), "wb") as f:
            f.write(rel.encode())
        for name, value in attrs.items():
            os.setxattr(p(rel), name, value)
    os.setxattr(p("xattrs"), "user.on_a_dir", b"dir")
    os.setxattr(p("symlinks/fast"), "trusted.on_symlink", b"L", follow_symlinks=False)
    os.setxattr(p("symlinks/slow60"), "security.selinux", b"system_u:object_r:lnk:s0\x00",
                follow_symlinks=False)
    os.setxattr(p("special/fifo"), "trusted.on_fifo", b"F")
    os.setxattr(p("dev/blk_old"), "security.selinux", b"system_u:object_r:fixed_disk:s0\x00")

    # POSIX ACLs: access on a file, access + default on a directory, default only
    with open(p("acl/file"), "wb") as f:
        f.write(b"acl\n")
    os.chown(p("acl/file"), 1000, 1000)
    os.setxattr(p("acl/file"), "system.posix_acl_access",
                vfs_acl("u::rw-,u:1001:r--,u:4294967290:rw-,g::r--,g:2000:rw-,m::rw-,o::---"))
    os.setxattr(p("acl/dir"), "system.posix_acl_access", vfs_acl("u::rwx,u:1000:r-x,g::r-x,m::r-x,o::--x"))
    os.setxattr(p("acl/dir"), "system.posix_acl_default",
                vfs_acl("u::rwx,u:1000:rwx,g::r-x,g:100:r-x,m::rwx,o::---"))
    os.setxattr(p("acl/default_only"), "system.posix_acl_default", vfs_acl("u::rwx,g::---,o::---"))
    with open(p("acl/dir/child"), "wb") as f:  # inherits the default ACL, as in real life
        f.write(b"inherited\n")
    os.mkdir(p("acl/dir/subdir"))  # inherits it as access and default ACL

    # directories: inline-sized, multi-block htree with long and UTF-8 names
    for i in range(3):
        with open(p(f"dirs/small/{i}"), "wb") as f:
            f.write(b"s")
    hfd = os.open(p("dirs/htree"), os.O_RDONLY)
    try:
        for i in range(HTREE_ENTRIES):
            name = f"{i:05d}-" + ("x" * (i % 200)) + ("é" if i % 7 == 0 else "")
            os.mknod(name, stat.S_IFREG | 0o644, dir_fd=hfd)
    finally:
        os.close(hfd)

    # times: every entry gets distinct ns stamps; some far before 1970 and after 2038
    stamped = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            stamped.append(os.path.join(dirpath, name))
        stamped.append(dirpath)
    for i, path in enumerate(stamped):
        rel = os.path.relpath(path, root)
        if rel.startswith("dirs/htree/"):
            continue
        atime, mtime = SPECIAL_TIMES.get(rel, (T0 + i * 1_000_003, T0 - i * 7_777_777))
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)

    if huge:
        make_huge_dir(root / huge, huge_entries, huge_subdirs)
        os.utime(root, ns=(T0 + 11, T0 + 13))


def make_huge_dir(path: Path, entries: int, subdirs: int) -> None:
    """``entries`` names in one directory, ``subdirs`` of them directories: fast on tmpfs."""
    path.mkdir()
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in range(subdirs):
            os.mkdir(f"d{i:06d}", 0o755, dir_fd=fd)
        for i in range(entries - subdirs):
            os.mknod(f"f{i:06d}", stat.S_IFREG | 0o644, dir_fd=fd)
    finally:
        os.close(fd)
    os.utime(path, ns=(T0 + 1, T0 + 3))


# -- where a file's bytes live in a planned image ------------------------------------


def image_offset(image: object, path: bytes, file_offset: int) -> int | None:
    """The image byte offset holding byte ``file_offset`` of ``path``, or None in a hole.

    Taken from the plan's extents (what the inode will say), so a test can read
    one data block through ``Image.read`` and see which sources that touches.
    """
    plan = image.plan  # type: ignore[attr-defined]
    for p, ip in plan.paths():
        if p == path:
            lblock, within = divmod(file_offset, BLOCK)
            for logical, count, physical in plan.physical_extents(ip):
                if logical <= lblock < logical + count:
                    return (physical + lblock - logical) * BLOCK + within
            return None
    raise KeyError(path)


def process_rchar() -> int:
    """Bytes this process has read through read-like syscalls (/proc/self/io)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")
