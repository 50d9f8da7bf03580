"""Tar input: archives made by GNU tar round-trip exactly, and big archives are planned lazily.

The round trip starts from the fidelity host tree (every file type, xattrs,
ACLs, sparse 200 GiB file, times past 2038), archived by the real GNU tar
with ``--xattrs --acls``, built from the archive as a SOURCE (``ext4_image``,
the same load and write as ``ext4gen build ARCHIVE``), mounted, and compared
entry by entry with the directory tar read, not with what ext4gen parsed.
What GNU tar itself cannot carry is listed in ``TAR_CANNOT``.
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.compare import compare_dirs
from helpers.encoders import vfs_acl
from helpers.mounts import mounted, scratch_tmpfs
from helpers.readers import image_offset, process_rchar
from helpers.trees import NS, SPARSE_SIZE, SPARSE_WRITES, make_fidelity_tree

import ext4gen
import ext4gen.model.sources
from ext4gen.verify import compare_tree, e2fsck

TAR_FLAGS = ["--xattrs", "--acls", "--xattrs-include=*", "--sparse"]
TAR_CANNOT = {
    "special/socket": "tar skips sockets ('socket ignored')",
    "fifo hard links": "GNU tar 1.34 archives each name of a hard-linked fifo as its own fifo",
}
COMPRESS = {"plain": [], "gzip": ["-z"], "xz": ["-J"], "bzip2": ["-j"]}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decompressed archives go to a per-test cache, not the shared /var/tmp one."""
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def host_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (tmpfs, devices, trusted.* xattrs)")
    base = tmp_path_factory.mktemp("tar-host")
    with scratch_tmpfs(base / "tmpfs", size="1g") as fs:
        make_fidelity_tree(fs / "tree", huge="")
        yield fs / "tree"


def gnu_tar(source: Path, archive: Path, *flags: str) -> None:
    proc = subprocess.run(["tar", *flags, "-cpf", str(archive), "-C", str(source), "."],
                          capture_output=True, text=True, check=False)
    # exit 1 only means "some files differ/were ignored" (sockets); 2 is fatal
    assert proc.returncode in (0, 1), proc.stderr
    assert "socket ignored" in proc.stderr or not any(
        stat.S_ISSOCK(os.lstat(os.path.join(d, n)).st_mode) for d, _s, fs in os.walk(source) for n in fs)


def _tar_cannot(host: Path) -> Callable[[str, str], bool]:
    def ignore(rel: str, field: str) -> bool:
        if field in ("size", "holes"):
            return field == "holes" or os.path.isdir(host / rel)  # host dir sizes; host zero blocks
        if field == "nlink" and rel == "":
            return True  # lost+found, checked exactly below
        return field in ("nlink", "links") and stat.S_ISFIFO(os.lstat(host / rel).st_mode)

    return ignore


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_gnu_tar_with_xattrs_and_acls_round_trips(host_tree: Path, tmp_path: Path, compression: str,
                                                  ext4_image) -> None:
    archive = tmp_path / f"tree.tar{'.gz' if compression == 'gzip' else ''}"
    gnu_tar(host_tree, archive, *TAR_FLAGS, *COMPRESS[compression])
    image = ext4_image(archive)
    rc, complaints = e2fsck(str(image))
    assert (rc, complaints) == (0, []), "\n".join(complaints)
    with mounted(image) as mnt:
        diffs, count = compare_dirs(host_tree, mnt, skip=lambda rel: rel in ("lost+found", "special/socket"),
                                    ignore=_tar_cannot(host_tree))
        assert diffs == [], "\n".join(diffs)
        assert count > 3000
        assert not os.path.lexists(os.path.join(mnt, "special/socket"))
        assert os.stat(mnt).st_nlink == os.stat(host_tree).st_nlink + 1  # + lost+found
        for rel in ("special/fifo", "links/fifo_again"):
            assert os.lstat(os.path.join(mnt, rel)).st_nlink == 1  # TAR_CANNOT["fifo hard links"]
        st = os.stat(os.path.join(mnt, "sparse/200g"))
        assert st.st_size == SPARSE_SIZE and st.st_blocks * 512 <= (len(SPARSE_WRITES) + 4) * 4096
        # ext4gen's own verifier against what it parsed from the archive agrees
        tree, _options = ext4gen.load(str(archive))
        tree_diffs = compare_tree(tree, mnt)
        assert tree_diffs == [], "\n".join(tree_diffs[:40])


def _named_ids() -> tuple[int, int]:
    """A non-root uid and gid that have names here: GNU tar writes ACL entries by name."""
    uid = next(p.pw_uid for p in pwd.getpwall() if p.pw_uid != 0)
    gid = next(g.gr_gid for g in grp.getgrall() if g.gr_gid != 0)
    return uid, gid


def _acl_user_entry_forms(uid: int, perms: str, *, numeric: bool) -> set[str]:
    """How GNU tar may write a named-user ACL entry: by name (1.34; 1.35 without
    --numeric-owner), by name with the id appended, or (1.35 with --numeric-owner) by id."""
    name = pwd.getpwuid(uid).pw_name
    forms = {f"user:{name}:{perms}", f"user:{name}:{perms}:{uid}"}
    if numeric:
        forms.add(f"user:{uid}:{perms}")
    return forms


def test_acl_user_entry_forms_are_exactly_what_tar_writes() -> None:
    """The premise above accepts the two versions' forms and nothing else."""
    uid, _gid = _named_ids()
    name = pwd.getpwuid(uid).pw_name
    assert _acl_user_entry_forms(uid, "r--", numeric=False) == {f"user:{name}:r--",
                                                                  f"user:{name}:r--:{uid}"}
    assert f"user:{uid}:r--" in _acl_user_entry_forms(uid, "r--", numeric=True)
    assert f"user:{uid}:rw-" not in _acl_user_entry_forms(uid, "r--", numeric=True)


@pytest.mark.root
def test_acl_entries_that_gnu_tar_writes_by_name(tmp_path: Path, ext4_image) -> None:
    """GNU tar's SCHILY.acl.* text names users/groups (``user:daemon:r--``).

    With --numeric-owner, tar 1.34 still writes names, tar 1.35 writes the id
    (``user:1:r--``); both must read back as the same ACL.
    """
    uid, gid = _named_ids()
    with scratch_tmpfs(tmp_path / "src", size="16m") as src:
        (src / "file").write_bytes(b"acl\n")
        acl = vfs_acl(f"u::rw-,u:{uid}:r--,u:54321:rw-,g::r--,g:{gid}:r-x,m::rwx,o::---")
        os.setxattr(src / "file", "system.posix_acl_access", acl)
        os.mkdir(src / "dir")
        for name, text in (("access", f"u::rwx,u:{uid}:r-x,g::r-x,m::r-x,o::---"),
                           ("default", f"u::rwx,g::r-x,g:{gid}:rwx,m::rwx,o::---")):
            os.setxattr(src / "dir", f"system.posix_acl_{name}", vfs_acl(text))
        for flags in (["--acls"], ["--acls", "--numeric-owner"]):
            archive = tmp_path / "acl.tar"
            gnu_tar(src, archive, *flags)
            members = {m.name: m.pax_headers for m in tarfile.open(archive)}
            # the premise: the entry for uid is written by name (or, numeric-owner, by id)
            entries = members["./file"]["SCHILY.acl.access"].split()
            forms = _acl_user_entry_forms(uid, "r--", numeric="--numeric-owner" in flags)
            assert set(entries) & forms, f"tar {flags} wrote {entries}, none of {sorted(forms)}"
            with mounted(ext4_image(archive)) as mnt:
                diffs, _count = compare_dirs(src, mnt, skip=lambda rel: rel == "lost+found",
                                             ignore=lambda rel, field: field in ("size", "nlink"),
                                             time_unit=NS)
                assert diffs == [], "\n".join(diffs)


@pytest.mark.root
def test_directory_with_only_a_default_acl(tmp_path: Path, ext4_image) -> None:
    """GNU tar also writes the trivial access ACL (``user::rwx group::r-x other::r-x``) of such a
    directory; ext4 never stores an ACL equivalent to the mode, so neither may the image."""
    with scratch_tmpfs(tmp_path / "src", size="16m") as src:
        os.mkdir(src / "d")
        os.setxattr(src / "d", "system.posix_acl_default", vfs_acl("u::rwx,g::---,o::---"))
        archive = tmp_path / "d.tar"
        gnu_tar(src, archive, "--acls")
        assert "SCHILY.acl.access" in {m.name: m for m in tarfile.open(archive)}["./d"].pax_headers
        with mounted(ext4_image(archive)) as mnt:
            assert sorted(os.listxattr(os.path.join(mnt, "d"))) == ["system.posix_acl_default"]
            assert os.getxattr(os.path.join(mnt, "d"), "system.posix_acl_default") == \
                os.getxattr(src / "d", "system.posix_acl_default")
            assert os.stat(os.path.join(mnt, "d")).st_mode == os.stat(src / "d").st_mode


def _small_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "file").write_bytes(os.urandom(3 * 4096 + 7))
    os.link(root / "a" / "file", root / "a" / "b" / "second")
    os.link(root / "a" / "file", root / "third")
    (root / "long" / ("n" * 90) / ("m" * 90)).mkdir(parents=True)  # > 100 bytes: ustar prefix
    (root / "long" / ("n" * 90) / ("m" * 90) / "x").write_bytes(b"long path\n")
    os.symlink("a/file", root / "sym")
    os.link(root / "sym", root / "sym_hard", follow_symlinks=False)
    os.symlink("s" * 99, root / "sym_99")
    os.mknod(root / "chr", stat.S_IFCHR | 0o600, os.makedev(4, 64))
    os.mkfifo(root / "fifo")
    (root / "big_uid").write_bytes(b"u")
    os.chown(root / "big_uid", 2_000_000, 3_000)  # > 2097151 needs GNU base-256 or PAX
    (root / "setuid").write_bytes(b"s")
    os.chmod(root / "setuid", 0o4755)
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(1_500_000_000_111_111_111, 1_400_000_000_222_222_222), follow_symlinks=False)
    os.utime(root, ns=(1_500_000_000_111_111_111, 1_400_000_000_222_222_222))


@pytest.mark.root
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_tar_formats_and_hard_links(tmp_path: Path, fmt: str, ext4_image) -> None:
    """ustar, GNU and PAX headers; hard links (file x3, symlink x2) keep one inode and exact counts."""
    with scratch_tmpfs(tmp_path / "src", size="16m") as src:
        _small_tree(src)
        if fmt == "ustar":
            os.chown(src / "big_uid", 2_000, 3_000)  # ustar's 7 octal digits stop at 2097151
        archive = tmp_path / "small.tar"
        gnu_tar(src, archive, f"--format={fmt}")
        image = ext4_image(archive)
        rc, complaints = e2fsck(str(image))
        assert (rc, complaints) == (0, []), "\n".join(complaints)
        with mounted(image) as mnt:
            # ustar/gnu headers carry whole-second mtimes only; atime/ctime then follow mtime
            exact = fmt == "posix"
            diffs, _count = compare_dirs(
                src, mnt, skip=lambda rel: rel == "lost+found", time_unit=1 if exact else NS,
                ignore=lambda rel, field: (field in ("size", "holes") and os.path.isdir(src / rel))
                or (rel == "" and field == "nlink") or (not exact and field in ("atime", "ctime")))
            assert diffs == [], "\n".join(diffs)
            ino = os.stat(os.path.join(mnt, "a/file")).st_ino
            assert {os.stat(os.path.join(mnt, p)).st_ino for p in ("a/b/second", "third")} == {ino}
            assert os.stat(os.path.join(mnt, "third")).st_nlink == 3
            assert os.lstat(os.path.join(mnt, "sym_hard")).st_ino == os.lstat(os.path.join(mnt, "sym")).st_ino
            if not exact:
                st = os.stat(os.path.join(mnt, "a/file"))
                assert st.st_mtime_ns == st.st_atime_ns == st.st_ctime_ns == 1_400_000_000 * NS


@pytest.mark.root
@pytest.mark.parametrize("compression", ["gzip", "xz", "bzip2"])
def test_compressed_tar_is_decompressed_once_into_the_cache(tmp_path: Path, compression: str,
                                                            ext4_image) -> None:
    with scratch_tmpfs(tmp_path / "src", size="16m") as src:
        _small_tree(src)
        archive = tmp_path / "small.tar.z"  # detected by content, not by name
        gnu_tar(src, archive, "--format=posix", *COMPRESS[compression])
        cache = tmp_path / "cache" / "tar"
        tree, options = ext4gen.load(str(archive))
        cached = list(cache.glob("*.tar"))
        assert len(cached) == 1
        before = cached[0].stat().st_mtime_ns, cached[0].stat().st_ino
        tree2, _ = ext4gen.load(str(archive))  # a second load reuses the decompressed copy
        assert list(cache.glob("*.tar")) == cached
        assert (cached[0].stat().st_mtime_ns, cached[0].stat().st_ino) == before
        with mounted(ext4_image((tree, options))) as mnt:
            diffs = compare_tree(tree2, mnt)
            assert diffs == [], "\n".join(diffs)
            with open(os.path.join(mnt, "a/file"), "rb") as f:
                assert f.read() == (src / "a" / "file").read_bytes()


def _sparse_tar(path: Path, members: list[tuple[str, int]], marks: int = 4) -> dict[str, list[int]]:
    """A PAX tar whose member data regions are holes except ``marks`` stamped offsets each.

    Written header by header with seeks, so a 1 GiB archive costs a few KiB of disk
    and no time; returns where each member's stamps are (member offsets).
    """
    stamps: dict[str, list[int]] = {}
    with open(path, "wb", buffering=0) as f:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            f.write(info.tobuf(format=tarfile.PAX_FORMAT))
            data_at = f.tell()
            offsets = sorted({0, size - 8, *(size * k // marks for k in range(1, marks))})
            for off in offsets:
                os.pwrite(f.fileno(), f"{off:08x}"[:8].encode(), data_at + off)
            stamps[name] = offsets
            f.seek(data_at + -(-size // 512) * 512)
        f.seek(f.tell() + 1024)  # two zero blocks end the archive
        f.truncate()
    return stamps


def test_1gib_tar_is_planned_without_reading_member_data(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    members = [(f"big/m{i}", 256 << 20) for i in range(4)] + [(f"small/f{i}", 1000 + i) for i in range(200)]
    archive = tmp_path / "1g.tar"
    stamps = _sparse_tar(archive, members)
    assert archive.stat().st_size > 1 << 30
    calls: list[tuple[str, int, int]] = []
    real = ext4gen.model.sources.HostFile.read_parts  # every read of a host file goes through it

    def counting(self: ext4gen.model.sources.HostFile, parts: list[tuple[memoryview, int, int]],
                 **kw: bool) -> None:
        calls.extend((self.path, offset, len(buf)) for buf, offset, _ndata in parts)
        real(self, parts, **kw)

    monkeypatch.setattr(ext4gen.model.sources.HostFile, "read_parts", counting)
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")  # count reads where Python makes them
    rchar = process_rchar()
    t0 = time.perf_counter()
    tree, options = ext4gen.load(str(archive), dedup="none")
    image = ext4gen.plan(tree, options)
    elapsed = time.perf_counter() - t0
    read = process_rchar() - rchar
    assert calls == [], f"planning read member data: {calls[:5]}"
    assert read < 4 << 20, f"planning read {read} bytes through syscalls (headers are ~100 KiB)"
    assert elapsed < 10, f"planning took {elapsed:.1f} s"
    assert image.plan.dedup_stats.bytes_hashed == 0

    # the data is served from the archive, by offset, only when asked for
    for name, offsets in stamps.items():
        if not name.startswith("big/") and name != "small/f7":
            continue
        for off in offsets:
            at = image_offset(image, b"/" + name.encode(), off)
            assert at is not None, (name, off)
            assert image.read(at, 8) == f"{off:08x}".encode(), (name, off)
    assert calls and all(path == str(archive) and n <= 4096 for path, n in ((c[0], c[2]) for c in calls))
    assert len(calls) == 4 * len(stamps["big/m0"]) + len(stamps["small/f7"])


def test_member_escaping_the_archive_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        data = b"pwned\n"
        info = tarfile.TarInfo("ok/../../etc/evil")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    image = tmp_path / "evil.ext4"
    proc = run_cli("build", archive, "-o", image)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ext4gen: ") and "evil" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not image.exists()
