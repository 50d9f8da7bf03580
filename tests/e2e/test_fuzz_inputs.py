"""Issue 11 proof: hostile manifests and tar archives, fuzzed with a fixed budget per CI run.

Every case runs ``ext4gen build`` (the CLI entry function, in-process for
speed) under an alarm, and must end in exactly one of two ways:

- exit 0, and the image passes ``e2fsck -fn`` with no complaint;
- exit 2, and stderr is exactly one line naming the manifest (then the key)
  or the tar archive (then the member).

Anything else (a traceback, another exit status, a second line, a hang) fails.
``derandomize`` keeps CI reproducible; EXT4GEN_PROPERTY_RANDOM=1 explores anew.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from helpers.strategies import NAME_CHARS, metadata
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ext4gen.cli import main
from ext4gen.verify import e2fsck

MANIFEST_EXAMPLES = 700
TAR_EXAMPLES = 350
CASE_TIMEOUT = 30  # seconds: anything slower is a hang
FUZZ = dict(deadline=None, database=None, derandomize=not os.environ.get("EXT4GEN_PROPERTY_RANDOM"),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                   HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
DEEP = "@@DEEP@@"  # replaced by 1,000 nested arrays in the JSON text

# -- values a hostile manifest may hold --------------------------------------------------------

EDGE_INTS = [0, 1, -1, 0o7777, 0o10000, 255, 256, 4095, 4096, 0xFFFFF, 0x100000, (1 << 31) - 1,
             1 << 31, -(1 << 31), -(1 << 31) - 1, (1 << 32) - 2, (1 << 32) - 1, 1 << 32,
             (1 << 34) - (1 << 31) - 1, 1 << 34, ((1 << 32) - 1) * 4096, 1 << 44, (1 << 44) + 1,
             1 << 63, -(1 << 63), 10**30]
NASTY_TEXT = ["", ".", "..", "/", "//", "a\nb", "a\x00b", "\ud800", "x\udfffy", "\ud83d\ude00",
              "é" * 200, "n" * 255, "n" * 256, "t" * 4095, "t" * 4096, "t" * 5000, "0644", "07777",
              "1700000000.123456789", "2021-01-01T00:00:00Z", "1e300", "nan", "-0", " 12 ",
              "user.k", "trusted.k", "security.selinux", "system.posix_acl_access", "bogus.k",
              "u::rwx,g::r-x,o::r--", "u::rwx,u:1000:rw-,g::r-x,m::rwx,o::---", "content", "none",
              "12345678-1234-5678-1234-567812345678", "aGVsbG8=", "!!!", "host.bin", "gen:fill"]
scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NASTY_TEXT),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(NASTY_TEXT) | st.text(max_size=8), inner,
                                        max_size=3), max_leaves=6) | st.just(DEEP)

ENTRY_KEYS = ["type", "mode", "uid", "gid", "mtime", "atime", "ctime", "crtime", "text", "base64",
              "source", "size", "target", "major", "minor", "xattrs", "acl", "default_acl",
              "generator", "args", "identity", "junk"]
VALID_NAMES = ["a", "b", "c", "d", "e", "lost+found", "n" * 255, "é", "x y"]
NASTY_NAMES = ["n" * 256, "..", ".", "a\nb", "\ud800", "a\x00b", ""]
names = st.sampled_from(VALID_NAMES) | st.text(NAME_CHARS, min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))


@st.composite
def paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(names, min_size=1, max_size=3))
    if draw(st.integers(0, 15)) == 0:  # a hostile path now and then
        parts[draw(st.integers(0, len(parts) - 1))] = draw(st.sampled_from(NASTY_NAMES))
        return draw(st.sampled_from(["/" + "/".join(parts), "/".join(parts), "/" + "//".join(parts)]))
    return "/" + "/".join(parts)


@st.composite
def valid_entry(draw: st.DrawFn, all_paths: list[str]) -> dict[str, Any]:
    """What a reasonable manifest says: the base that mutations then break."""
    entry: dict[str, Any] = draw(metadata())
    kind = draw(st.sampled_from(["text", "base64", "source", "size", "generator", "dir", "symlink",
                                 "hardlink", "chardev", "blockdev", "fifo", "socket", "empty"]))
    if kind == "text":
        entry["text"] = draw(st.text(max_size=300))
    elif kind == "base64":
        entry["base64"] = base64.b64encode(draw(st.binary(max_size=9000))).decode()
    elif kind == "source":
        entry["source"] = draw(st.sampled_from(["host.bin", "tiny.txt"]))
    elif kind == "size":
        entry["size"] = draw(st.integers(0, 1 << 40) | st.sampled_from([((1 << 32) - 1) * 4096]))
    elif kind == "generator":
        entry.update(generator="gen:fill", size=draw(st.integers(0, 9000)))
        if draw(st.booleans()):
            entry["identity"] = draw(st.sampled_from(["one", "two"]))
    elif kind == "empty":
        entry["type"] = "file"
    elif kind in ("symlink", "hardlink"):
        entry["type"] = kind
        if kind == "hardlink":  # a hard link has no metadata of its own; links may form cycles
            entry = {"type": kind}
        entry["target"] = draw(st.sampled_from(all_paths) | st.text(NAME_CHARS, min_size=1,
                                                                        max_size=300))
    elif kind in ("chardev", "blockdev"):
        entry.update(type=kind, major=draw(st.integers(0, 4095)), minor=draw(st.integers(0, 0xFFFFF)))
    else:
        entry["type"] = kind
    if kind in ("text", "base64", "source", "size", "generator", "dir", "empty") and draw(st.booleans()):
        entry["xattrs"] = draw(st.dictionaries(st.sampled_from(["user.k", "user.long" + "l" * 200,
                                                                "trusted.t", "security.s"]),
                                               st.text(max_size=400), max_size=3))
    return entry


@st.composite
def mutate(draw: st.DrawFn, entry: Any, all_paths: list[str]) -> Any:
    """Replace or add one key with a hostile value: types, huge and negative numbers, text."""
    if not isinstance(entry, dict) or draw(st.integers(0, 9)) == 0:
        return draw(values)
    key = draw(st.sampled_from(ENTRY_KEYS))
    if key == "target" and draw(st.booleans()):
        entry[key] = draw(st.sampled_from(all_paths + NASTY_TEXT))
    elif key == "xattrs":
        entry[key] = draw(st.dictionaries(st.sampled_from(NASTY_TEXT) | st.text(max_size=300),
                                          values, max_size=4))
    elif key in ("size", "uid", "gid", "major", "minor", "mode", "mtime"):
        entry[key] = draw(st.sampled_from(EDGE_INTS) | values)
    elif key == "source":
        entry[key] = draw(st.sampled_from(["missing", "/etc/hostname", "sub", "a.tar", "", "."])
                          | values)
    elif key == "generator":
        entry[key] = draw(st.sampled_from(["gen:nope", "os:closerange", "/x/y:z", "gen", ":",
                                           "gen:CONST"]) | values)
    else:
        entry[key] = draw(values)
    return entry


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    all_paths = draw(st.lists(paths(), min_size=1, max_size=8, unique=True))
    for path in all_paths:
        doc[path] = draw(valid_entry(all_paths))
    for _ in range(draw(st.integers(0, 2) | st.just(0))):  # about half the cases stay valid
        path = draw(st.sampled_from(all_paths))
        doc[path] = draw(mutate(doc[path], all_paths))
    if draw(st.booleans()):
        image = {"dedup": draw(st.sampled_from(["content", "none"])),
                 "inline_data": draw(st.booleans())}
        if draw(st.integers(0, 3)) == 0:
            image[draw(st.sampled_from(["label", "uuid", "hash_seed", "dedup", "inline_data",
                                        "junk"]))] = draw(values)
        doc["image"] = image
    if draw(st.integers(0, 4)) == 0:
        doc["defaults"] = draw(st.dictionaries(st.sampled_from(["uid", "gid", "mode", "dir_mode",
                                                                "mtime", "junk"]),
                                               st.sampled_from([0, 7, "0750", 1700000000]) | values,
                                               max_size=2))
    if draw(st.integers(0, 4)) == 0:
        doc["import"] = [{"source": draw(st.sampled_from(["sub", "a.tar", "missing"]) | values),
                          "target": draw(st.sampled_from(["/", "/imp", "/imp/deeper"]) | values)}]
    return doc


HOST_FILES = {"host.bin": bytes(range(256)) * 40 + b"tail", "tiny.txt": b"tiny\n",
              "gen.py": "def fill(offset, length):\n    return b'g' * length\nCONST = 5\n"}


def _write_host_files(work: Path) -> None:
    for name, data in HOST_FILES.items():
        (work / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    (work / "sub").mkdir()
    (work / "sub" / "f").write_bytes(b"in a directory")
    os.symlink("f", work / "sub" / "l")
    with tarfile.open(work / "a.tar", "w") as tf:
        ti = tarfile.TarInfo("t/m")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))


class _Hang(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Hang(f"a case ran over {CASE_TIMEOUT} s")


def run_build(source: Path, out: Path) -> tuple[int, str]:
    """``ext4gen build SOURCE -o OUT`` in-process; (exit status, stderr). A hang raises."""
    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["build", str(source), "-o", str(out), "-q"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, err.getvalue()


def check_outcome(rc: int, err: str, out: Path, where: str) -> None:
    if rc == 0:
        assert err == "", err
        assert e2fsck(str(out)) == (0, []), f"built image fails e2fsck: {e2fsck(str(out))}"
        out.unlink()
        return
    assert rc == 2, (rc, err)
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith(f"ext4gen: {where}"), f"does not name {where}: {err!r}"
    assert len(err) > len(f"ext4gen: {where}: ") + 3, err
    assert not out.exists() or out.stat().st_size > 0


def _sys_modules_guard() -> set[str]:
    return set(sys.modules)


@settings(max_examples=MANIFEST_EXAMPLES, **FUZZ)
@given(doc=manifests())
def test_fuzzed_manifests_build_clean_or_fail_in_one_line(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="ext4gen-fuzz-") as d:
        work = Path(d)
        _write_host_files(work)
        text = json.dumps(doc).replace(json.dumps(DEEP), "[" * 1000 + "]" * 1000)
        m = work / "m.json"
        m.write_text(text)
        before = _sys_modules_guard()
        rc, err = run_build(m, work / "x.img")
        for name in _sys_modules_guard() - before:  # a fresh gen.py per case
            if name == "gen" or name.startswith("_ext4gen_generator_"):
                sys.modules.pop(name, None)
        check_outcome(rc, err, work / "x.img", str(m))


# -- tar archives ----------------------------------------------------------------------------

KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.BLKTYPE, tarfile.FIFOTYPE, b"V", b"Z"]
MEMBER_NAMES = ["f", "d", "d/f", "./f", "..", "../x", "/abs", "a\nb", "é", "n" * 255, "n" * 256,
                "d/" + "n" * 200 + "/" + "m" * 200, "", "./"]
TIMES = [0, 1_700_000_000, -1, -(1 << 31), (1 << 31) - 1, 1 << 33, 1 << 34, 1 << 40, -(1 << 40),
         15032385535, 15032385536]
PAX_JUNK = ["nan", "1e300", "-1.5", "1.0000000001", "99999999999999999", "abc", "", "1700000000.5"]


@st.composite
def members(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes | None]:
    """A valid member, then with some probability one or two hostile fields."""
    ti = tarfile.TarInfo(draw(st.sampled_from(["f", "d", "d/f", "./g", "e/h/i", "é"])))
    ti.type = draw(st.sampled_from(KINDS[:7]))
    ti.mode = draw(st.sampled_from([0o644, 0o755, 0o4755]))
    ti.mtime = draw(st.integers(-(1 << 31), 15032385535))
    ti.uid, ti.gid = draw(st.integers(0, 70000)), draw(st.integers(0, 70000))
    ti.linkname = draw(st.sampled_from(["f", "d/f", "g", "t" * 300]))
    ti.devmajor, ti.devminor = draw(st.integers(0, 4095)), draw(st.integers(0, 0xFFFFF))
    pax: dict[str, str] = {}
    for _ in range(draw(st.integers(0, 2) | st.just(0))):
        field = draw(st.sampled_from(["name", "type", "mode", "mtime", "uid", "gid", "linkname",
                                      "devmajor", "devminor", "pax"]))
        if field == "name":
            ti.name = draw(st.sampled_from(MEMBER_NAMES) | st.text(max_size=10))
        elif field == "type":
            ti.type = draw(st.sampled_from(KINDS))
        elif field == "mode":
            ti.mode = draw(st.sampled_from([0o7777, 0o170777, 0]))
        elif field == "mtime":
            ti.mtime = draw(st.sampled_from(TIMES) | st.integers(-(1 << 35), 1 << 35))
        elif field in ("uid", "gid"):
            setattr(ti, field, draw(st.sampled_from([(1 << 32) - 2, (1 << 32) - 1, 99999999999999,
                                                     -1, -5, 1 << 21])))
        elif field == "linkname":
            ti.linkname = draw(st.sampled_from(["", "t" * 4095, "t" * 4096, "t" * 5000, "a\x00b",
                                                "../f", "/etc/passwd", "missing", "d"]))
        elif field in ("devmajor", "devminor"):
            setattr(ti, field, draw(st.sampled_from([4096, 1048576, 2097151])))
        else:
            key = draw(st.sampled_from(["mtime", "atime", "ctime", "uid", "gid", "GNU.sparse.map",
                                        "GNU.sparse.size", "SCHILY.xattr.user.k",
                                        "SCHILY.xattr.bogus", "SCHILY.acl.access"]))
            if key == "GNU.sparse.map":
                pax[key] = draw(st.sampled_from(["0,5,8192,5", "-4096,4096", "0,99999",
                                                 "8192,5,0,5", "0,5,", "x"]))
                pax.setdefault("GNU.sparse.size", "12288")
            elif key == "GNU.sparse.size":
                pax[key] = draw(st.sampled_from(["12288", str(1 << 50), "-1", "0"]))
            elif key.startswith("SCHILY"):
                pax[key] = draw(st.sampled_from(["v", "", "u::rwx,g::r-x,o::r--", "\x02\x00"]))
            else:
                pax[key] = draw(st.sampled_from(PAX_JUNK + [str(t) for t in TIMES]))
    ti.pax_headers = pax
    data = None
    if ti.type == tarfile.REGTYPE:
        data = draw(st.sampled_from([b"", b"0123456789", b"x" * 5000, b"y" * 129]))
        ti.size = len(data)
    return ti, data


@settings(max_examples=TAR_EXAMPLES, **FUZZ)
@given(ms=st.lists(members(), min_size=1, max_size=5),
       fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
def test_fuzzed_tar_archives_build_clean_or_fail_in_one_line(ms: list, fmt: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ext4gen-fuzz-") as d:
        work = Path(d)
        archive = work / "a.tar"
        try:
            with tarfile.open(archive, "w", format=fmt) as tf:
                for ti, data in ms:
                    tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        except (ValueError, OverflowError, UnicodeError, tarfile.TarError):
            assume(False)  # Python's tarfile would not write this member: nothing to test
        rc, err = run_build(archive, work / "x.img")
        check_outcome(rc, err, work / "x.img", str(archive))


# -- a few through a real process: stderr, exit status, nothing left behind ------------------------

SUBPROCESS_CASES = {
    "surrogate key": '{"/\\ud800": {}}',
    "deep": '{"/a": {"text": "x", "args": ' + "[" * 1000 + "]" * 1000 + "}}",
    "newline key": '{"/a\\nb": {"size": -1}}',
    "too big": '{"/a": {"size": 17592186044416}}',
    "evil generator": '{"/a": {"generator": "os:closerange", "size": 10}}',
}


def test_hostile_manifests_through_the_real_cli(tmp_path: Path) -> None:
    for name, text in SUBPROCESS_CASES.items():
        m = tmp_path / "m.json"
        m.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "ext4gen.cli", "build", str(m), "-o",
                               str(tmp_path / "x.img")], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (name, proc)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"ext4gen: {m}: "), (name, proc.stderr)
        assert "Traceback" not in proc.stderr and not (tmp_path / "x.img").exists(), name
