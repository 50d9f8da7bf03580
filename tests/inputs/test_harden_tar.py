"""Issue 11 item 10: tar members get the manifest's validation.

Every member becomes exactly what it says or is refused with one line naming
it: symlink targets, device numbers, times, owners, sparse maps and sizes
that ext4 cannot hold are refused instead of being changed; a hard link
shares the inode of the member it named *when it was archived* (GNU tar).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import ext4gen
from ext4gen.cli import main
from ext4gen.verify import e2fsck, is_root, loop_mount


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
         fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def reg(name: str, data: bytes = b"x", pax: dict[str, str] | None = None, **fields):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_700_000_000
    if pax:
        ti.pax_headers = pax
    for k, v in fields.items():
        setattr(ti, k, v)
    return ti, data


def special(name: str, kind: bytes, *, linkname: str = "", major: int = 0, minor: int = 0):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.devmajor, ti.devminor = major, minor
    return ti, None


GNU = tarfile.GNU_FORMAT
REFUSED = {
    "symlink empty": ([special("l", tarfile.SYMTYPE, linkname="")], None, "empty"),
    "symlink 4096": ([special("l", tarfile.SYMTYPE, linkname="a" * 4096)], None, "4095"),
    "symlink 5000": ([special("l", tarfile.SYMTYPE, linkname="a" * 5000)], None, "4095"),
    "major 4096": ([special("d", tarfile.CHRTYPE, major=4096)], GNU, "major 0 .. 4095"),
    "major+minor max": ([special("d", tarfile.BLKTYPE, major=2097151, minor=2097151)], GNU, "minor"),
    "minor 2^20": ([special("d", tarfile.CHRTYPE, minor=1 << 20)], GNU, "minor 0 .. 1048575"),
    "GNU mtime 2^40": ([reg("f", mtime=1 << 40)], GNU, "range"),
    "GNU mtime -2^40": ([reg("f", mtime=-(1 << 40))], GNU, "range"),
    "GNU mtime 2^34": ([reg("f", mtime=1 << 34)], GNU, "range"),
    "PAX mtime huge": ([reg("f", pax={"mtime": "99999999999999999"})], None, "range"),
    "PAX mtime nan": ([reg("f", pax={"mtime": "nan"})], None, "nan"),
    "PAX mtime 1e300": ([reg("f", pax={"mtime": "1e300"})], None, "1e300"),
    "PAX atime junk": ([reg("f", pax={"atime": "yesterday"})], None, "atime"),
    "PAX uid huge": ([reg("f", uid=99999999999999)], None, "uid"),
    "PAX uid -1": ([reg("f", uid=-1)], None, "uid"),
    "PAX gid junk": ([reg("f", pax={"gid": "abc"})], None, "gid"),
    "GNU uid -5": ([reg("f", uid=-5)], GNU, "uid -5"),
    "uid 2^32-1": ([reg("f", uid=(1 << 32) - 1)], None, "uid"),
    "sparse negative": ([reg("s", b"0123456789", pax={"GNU.sparse.map": "-4096,4096",
                                                      "GNU.sparse.size": "12288"})], None, "sparse"),
    "sparse past size": ([reg("s", b"0123456789", pax={"GNU.sparse.map": "0,5,12285,5",
                                                       "GNU.sparse.size": "12288"})], None, "sparse"),
    "sparse overlap": ([reg("s", b"0123456789", pax={"GNU.sparse.map": "4096,5,0,5",
                                                     "GNU.sparse.size": "12288"})], None, "sparse"),
    "sparse size 2^50": ([reg("s", b"0123456789", pax={"GNU.sparse.map": "0,5,8192,5",
                                                       "GNU.sparse.size": str(1 << 50)})], None,
                         "17592186040320"),
    "link to later member": ([special("h", tarfile.LNKTYPE, linkname="f"), reg("f")], None, "earlier"),
    "link to directory": ([special("d", tarfile.DIRTYPE), special("h", tarfile.LNKTYPE, linkname="d")],
                          None, "directory"),
    "file as root": ([reg("./", b"x")], None, "root"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_members_ext4_cannot_hold_are_refused_naming_the_member(tmp_path: Path, capsys, case: str):
    members, fmt, needle = REFUSED[case]
    archive = _tar(tmp_path / "a.tar", members, fmt or tarfile.PAX_FORMAT)
    rc = main(["build", str(archive), "-o", str(tmp_path / "x.img"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"a.tar:{members[-1][0].name}" in err or f"a.tar:{members[0][0].name}" in err, err
    assert needle in err, err
    assert not (tmp_path / "x.img").exists()


def test_values_at_the_limits_are_kept_exactly(tmp_path: Path):
    members = [
        special("l", tarfile.SYMTYPE, linkname="t" * 4095),
        special("c", tarfile.CHRTYPE, major=4095, minor=1048575),
        reg("old", pax={"mtime": "-2147483648"}),
        reg("late", pax={"mtime": "15032385535.999999999", "atime": "1.5"}),
        reg("ids", uid=(1 << 32) - 2, gid=123456789),
        reg("s", b"0123456789", pax={"GNU.sparse.map": "0,5,8192,5", "GNU.sparse.size": "12288"}),
    ]
    archive = _tar(tmp_path / "a.tar", members)
    image = ext4gen.plan(*ext4gen.load(str(archive)))
    nodes = dict(image.plan.paths())
    assert nodes[b"/l"].target == b"t" * 4095
    assert nodes[b"/c"].rdev == (4095, 1048575)
    assert nodes[b"/old"].meta.mtime == -(1 << 31) * 10**9
    assert nodes[b"/late"].meta.mtime == 15032385535_999999999
    assert nodes[b"/late"].meta.atime == 1_500_000_000
    assert (nodes[b"/ids"].meta.uid, nodes[b"/ids"].meta.gid) == ((1 << 32) - 2, 123456789)
    out = tmp_path / "x.img"
    image.write(out)
    assert e2fsck(str(out)) == (0, [])
    if is_root():
        with loop_mount(str(out)) as mnt:
            assert Path(mnt, "s").read_bytes() == b"01234" + bytes(8187) + b"56789" + bytes(4091)
            assert os.readlink(Path(mnt, "l")) == "t" * 4095
            st = os.stat(Path(mnt, "c"), follow_symlinks=False)
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (4095, 1048575)
            assert os.stat(Path(mnt, "late")).st_mtime_ns == 15032385535_999999999


def test_a_hard_link_keeps_the_first_member_of_its_name(tmp_path: Path):
    archive = _tar(tmp_path / "a.tar", [reg("f", b"first"), special("h", tarfile.LNKTYPE, linkname="f"),
                                        reg("f", b"second!")])
    image = ext4gen.plan(*ext4gen.load(str(archive)))
    nodes = {p: ip for p, ip in image.plan.paths()}
    assert nodes[b"/h"] is not nodes[b"/f"]
    assert nodes[b"/h"].links == 1 and nodes[b"/f"].links == 1
    buf = bytearray(5)
    nodes[b"/h"].source.readinto(memoryview(buf), 0)
    assert bytes(buf) == b"first"


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_hard_link_semantics_match_gnu_tar_extraction(tmp_path: Path):
    """GNU tar writes f, h (link to f), then appends a new f: what tar -x makes is the reference."""
    work = tmp_path / "src"
    work.mkdir()
    (work / "f").write_bytes(b"first version")
    os.link(work / "f", work / "h")
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "-C", str(work), "-cf", str(archive), "f", "h"], check=True)
    (work / "h").unlink()
    (work / "f").unlink()
    (work / "f").write_bytes(b"second, longer version")
    subprocess.run(["tar", "-C", str(work), "-rf", str(archive), "f"], check=True)
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["tar", "-C", str(extracted), "-xf", str(archive)], check=True)
    image = ext4gen.plan(*ext4gen.load(str(archive)))
    out = tmp_path / "x.img"
    image.write(out)
    assert e2fsck(str(out)) == (0, [])
    if not is_root():
        pytest.skip("the kernel half needs root")
    with loop_mount(str(out)) as mnt:
        for name in ("f", "h"):
            assert Path(mnt, name).read_bytes() == (extracted / name).read_bytes()
        assert Path(mnt, "h").read_bytes() == b"first version"
