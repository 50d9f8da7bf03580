"""Reproducible host imports: SOURCE_DATE_EPOCH clamps times, --times chooses, location never counts.

The image of a host tree must not change because someone read it (atime),
copied it elsewhere (ctime, path) or named it by a relative path; and the
times a kernel mount shows are the ones the mode promises.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import mounted, requires_root
from helpers.cli import run_cli

import ext4gen
from ext4gen.model.options import SourceOptions
from ext4gen.verify import compare_tree, e2fsck

NS = 1_000_000_000
SDE = 1_700_000_000
PAST = 1_000_000_000  # before SDE: clamp keeps it
FUTURE = 1_800_000_000  # after SDE: clamp lowers it


def _tree(root: Path) -> Path:
    (root / "d" / "e").mkdir(parents=True)
    for i, rel in enumerate(("a.txt", "d/b.bin", "d/e/c.txt")):
        (root / rel).write_bytes(os.urandom(5000 + i) if rel.endswith(".bin") else b"text %d\n" % i)
    os.symlink("a.txt", root / "link")
    os.utime(root / "a.txt", ns=(time.time_ns(), PAST * NS))  # a checkout: read now, old mtime
    os.utime(root / "d" / "b.bin", ns=(FUTURE * NS, FUTURE * NS))
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env.update(extra)
    return env


def _build(source: str | Path, image: Path, *flags: str, sde: int | None = None,
           cwd: Path | None = None) -> bytes:
    env = _env(SOURCE_DATE_EPOCH=str(sde)) if sde is not None else _env()
    proc = run_cli("build", source, "-o", image, "-q", *flags, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return image.read_bytes()


def _read_everything(root: Path) -> None:
    """Read every file the way a backup would: on a relatime filesystem the first read after
    a write moves the atime to now; where atimes are off (noatime), move them as it would."""
    for top, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(top, name)
            if not os.path.islink(p):
                before = os.stat(p)
                Path(p).read_bytes()
                if os.stat(p).st_atime_ns == before.st_atime_ns:
                    os.utime(p, ns=(time.time_ns(), before.st_mtime_ns))


def test_reading_the_tree_then_building_with_sde_is_byte_identical(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    with_sde = _build(src, tmp_path / "1.img", sde=SDE)
    without = _build(src, tmp_path / "2.img")
    atimes = {p: os.stat(p).st_atime_ns for p in src.rglob("*") if p.is_file()}
    _read_everything(src)
    moved = [p for p, t in atimes.items() if os.stat(p).st_atime_ns != t]
    assert moved, "reading did not move any atime: the test would prove nothing"
    assert _build(src, tmp_path / "3.img", sde=SDE) == with_sde
    assert _build(src, tmp_path / "4.img") != without  # without SDE the atimes are kept: they show


@pytest.mark.parametrize("kind", ["directory", "tar", "manifest"])
def test_absolute_and_relative_paths_give_the_same_image(tmp_path: Path, kind: str) -> None:
    _tree(tmp_path / "src")
    if kind == "tar":
        subprocess.run(["tar", "-C", str(tmp_path / "src"), "-cf", str(tmp_path / "src.tar"), "."],
                       check=True)
        rel = "src.tar"
    elif kind == "manifest":
        (tmp_path / "m.toml").write_text('[[import]]\nsource = "src"\n\n["/extra"]\nsource = "src/a.txt"\n')
        rel = "m.toml"
    else:
        rel = "src"
    for dedup in ("content", "none"):
        relative = _build(rel, tmp_path / "rel.img", "--dedup", dedup, cwd=tmp_path)
        absolute = _build(tmp_path / rel, tmp_path / "abs.img", "--dedup", dedup, cwd=Path("/"))
        assert relative == absolute, f"{kind}, dedup {dedup}: the image depends on the path"


def test_a_copy_elsewhere_with_sde_gives_the_same_image(tmp_path: Path) -> None:
    """cp -a keeps mtimes but not ctimes, and the copy lives elsewhere: the same content and
    SOURCE_DATE_EPOCH still make the same image (UUID included)."""
    src = _tree(tmp_path / "src")
    first = _build(src, tmp_path / "1.img", sde=SDE)
    shutil.copytree(src, tmp_path / "elsewhere" / "copy", symlinks=True)
    assert _build(tmp_path / "elsewhere" / "copy", tmp_path / "2.img", sde=SDE) == first
    (tmp_path / "elsewhere" / "copy" / "a.txt").write_bytes(b"other bytes\n")
    os.utime(tmp_path / "elsewhere" / "copy" / "a.txt", ns=(PAST * NS, PAST * NS))
    changed = _build(tmp_path / "elsewhere" / "copy", tmp_path / "3.img", sde=SDE)
    assert changed[1024 + 0x68 : 1024 + 0x78] != first[1024 + 0x68 : 1024 + 0x78], \
        "different content must give a different default UUID"


def _times(path: str) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    birth = subprocess.run(["stat", "--printf", "%W", path], capture_output=True, text=True,
                           check=True).stdout
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, int(birth) * NS


@requires_root
@pytest.mark.parametrize("mode", ["default", "clamp", "epoch", "keep"])
def test_times_read_back_as_the_mode_promises(tmp_path: Path, mode: str) -> None:
    src = _tree(tmp_path / "src")
    flags = [] if mode == "default" else ["--times", mode]
    image = tmp_path / "x.img"
    _build(src, image, *flags, sde=SDE)
    # as the build left them (reading a symlink moves its atime)
    source_times = {rel: os.lstat(src / rel) for rel in ("a.txt", "d/b.bin", "d/e/c.txt", "link")}
    rc, complaints = e2fsck(str(image))
    assert rc == 0 and complaints == [], complaints
    os.environ["SOURCE_DATE_EPOCH"] = str(SDE)
    try:
        tree, _o = ext4gen.load(str(src), source_options=SourceOptions(times=None if mode == "default"
                                                                       else mode))
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    with mounted(image) as mnt:
        assert compare_tree(tree, mnt) == []
        for rel, st in source_times.items():
            got = _times(os.path.join(mnt, rel))
            src4 = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, st.st_ctime_ns)
            if mode == "keep":
                want = src4
            elif mode == "epoch":
                want = (SDE * NS,) * 4
            else:  # clamp (the default with SOURCE_DATE_EPOCH)
                want = tuple(min(t, SDE * NS) for t in src4)
            assert got[:3] == want[:3], (rel, got, want)
            assert got[3] == (want[3] // NS) * NS  # stat %W: whole seconds
        if mode in ("default", "clamp"):
            assert os.lstat(f"{mnt}/d/b.bin").st_mtime_ns == SDE * NS  # the future one was lowered
            assert os.lstat(f"{mnt}/a.txt").st_mtime_ns == PAST * NS  # the past one kept


@requires_root
def test_manifest_times_key_and_declared_times(tmp_path: Path) -> None:
    """By default SOURCE_DATE_EPOCH clamps imports, not times a manifest declares;
    [image].times applies to every inode, and the flag wins over it."""
    _tree(tmp_path / "src")
    doc = {"import": [{"source": "src"}], "/declared": {"text": "x", "mtime": FUTURE}}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    image = tmp_path / "x.img"
    _build(manifest, image, sde=SDE)
    with mounted(image) as mnt:
        assert os.stat(f"{mnt}/declared").st_mtime == FUTURE
        assert os.stat(f"{mnt}/d/b.bin").st_mtime == SDE
    doc["image"] = {"times": "epoch"}
    manifest.write_text(json.dumps(doc))
    _build(manifest, image, sde=SDE)
    with mounted(image) as mnt:
        assert os.stat(f"{mnt}/declared").st_mtime == SDE
        assert os.stat(f"{mnt}/a.txt").st_mtime == SDE
    _build(manifest, image, "--times", "keep", sde=SDE)
    with mounted(image) as mnt:
        assert os.stat(f"{mnt}/declared").st_mtime == FUTURE
        assert os.stat(f"{mnt}/a.txt").st_mtime == PAST


@pytest.mark.parametrize("mode", ["clamp", "epoch"])
def test_clamp_and_epoch_need_source_date_epoch(tmp_path: Path, mode: str) -> None:
    proc = run_cli("build", _tree(tmp_path / "src"), "-o", tmp_path / "x.img", "--times", mode,
                   env=_env())
    assert proc.returncode == 2
    assert proc.stderr == f"ext4gen: times: {mode} needs SOURCE_DATE_EPOCH (integer seconds) in the " \
                          "environment\n"
