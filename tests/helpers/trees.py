"""Host trees and manifests that exercise every kind of thing ext4gen stores.

``make_fidelity_tree`` is the host directory of the fidelity, tar and xattr
tests (every file type, xattrs, ACLs, sparse 200 GiB, times past 2038);
``make_source_tree`` the manifest over host files the serving tests read
(every kind of region an image has).
"""

from __future__ import annotations

import base64
import os
import random
import stat
from pathlib import Path

from helpers.encoders import capability_v2, vfs_acl

NS = 10**9
BLOCK = 4096
EXT4_MIN_NS = -(1 << 31) * NS  # 1901-12-13T20:45:52Z
EXT4_MAX_NS = ((1 << 34) - (1 << 31)) * NS - 1  # 2446-05-10T22:38:55.999999999Z

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



# -- a manifest over host files for the serving tests ------------------------------------


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

