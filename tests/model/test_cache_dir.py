"""The user's cache: refused when others could write it, entries checked before use, bounded.

Issue 11 item 7: a decompressed copy planted in a shared directory ended up in
root's image.  These tests plant, truncate and replace entries the way another
user (or a crash) would, and check that the copy in use is always the one
decompressed from the archive named on the command line.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import ext4gen
from ext4gen import cache
from ext4gen.inputs import tar as tar_input

pytestmark = pytest.mark.root  # os.chown to another uid


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EXT4GEN_CACHE", str(root))
    monkeypatch.delenv("EXT4GEN_CACHE_MAX", raising=False)
    return root


def _targz(path: Path, members: dict[str, tuple[bytes, int]]) -> Path:
    """A gzip tar of regular files {name: (bytes, mode)} written with Python's tarfile."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ext4gen.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, check=False)


def _files(tree: ext4gen.Tree) -> dict[str, tuple[bytes, int]]:
    """Every regular file of the tree: path -> (bytes, mode), read through its source."""
    out = {}
    todo = [(b"", tree.root)]
    while todo:
        path, node = todo.pop()
        if node.children is not None:
            todo.extend((path + b"/" + name, child) for name, child in node.children.items())
        elif node.kind == "file" and node.source is not None:
            buf = bytearray(node.source.size)
            node.source.readinto(memoryview(buf), 0)
            out[path.decode()] = (bytes(buf), node.meta.perm)
    return out


GOOD = {"etc/motd": (b"hello\n", 0o644)}
EVIL = {"etc/motd": (b"owned\n", 0o644), "sbin/rootshell": (b"#!/bin/sh\n", 0o4755)}


@pytest.mark.parametrize("flaw", ["owned by another uid", "mode 0777", "a symlink"])
def test_untrusted_cache_directory_is_refused_with_one_line(tmp_path: Path, _private_cache: Path,
                                                            flaw: str) -> None:
    archive = _targz(tmp_path / "a.tar.gz", GOOD)
    if flaw == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        _private_cache.symlink_to(tmp_path / "elsewhere")
    else:
        _private_cache.mkdir(mode=0o700)
        if flaw == "mode 0777":
            os.chmod(_private_cache, 0o777)
        else:
            os.chown(_private_cache, 12345, 12345)
    for args in (["cache"], ["inspect", str(archive)]):
        proc = _cli(*args)
        assert proc.returncode == 2, proc
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ext4gen: cache directory {_private_cache}"), lines
        assert "Traceback" not in proc.stderr
    assert not (_private_cache / "tar").exists() or flaw == "a symlink"


def test_untrusted_area_inside_a_good_root_is_refused(tmp_path: Path, _private_cache: Path) -> None:
    (_private_cache / "tar").mkdir(parents=True, mode=0o700)
    os.chown(_private_cache / "tar", 12345, 0)
    proc = _cli("inspect", str(_targz(tmp_path / "a.tar.gz", GOOD)))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "owned by uid 12345" in proc.stderr


def _entry(root: Path) -> Path:
    (entry,) = (root / "tar").glob("*.tar")
    return entry


def _crafted_tar_bytes() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, (data, mode) in EVIL.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return raw.getvalue()


@pytest.mark.parametrize("how", ["replaced", "rewritten in place, times put back", "truncated"])
def test_a_planted_entry_is_never_used(tmp_path: Path, _private_cache: Path, how: str) -> None:
    archive = _targz(tmp_path / "a.tar.gz", GOOD)
    tree, _ = ext4gen.load(str(archive))
    assert _files(tree) == {"/etc/motd": GOOD["etc/motd"]}
    entry = _entry(_private_cache)
    good_bytes = entry.read_bytes()
    st = entry.stat()
    if how == "replaced":
        planted = entry.with_name("planted")
        planted.write_bytes(_crafted_tar_bytes())
        os.replace(planted, entry)
    elif how == "truncated":
        os.truncate(entry, 512)
    else:
        with open(entry, "r+b") as f:
            f.write(_crafted_tar_bytes()[: len(good_bytes)])
        os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))
    tree2, _ = ext4gen.load(str(archive))
    assert _files(tree2) == {"/etc/motd": GOOD["etc/motd"]}, "a planted cache entry was used"
    assert _entry(_private_cache).read_bytes() == good_bytes  # made again from the archive


def test_an_entry_planted_before_first_use_is_never_used(tmp_path: Path, _private_cache: Path) -> None:
    """Someone guesses the entry's name and puts a crafted tar there before ext4gen first runs."""
    archive = _targz(tmp_path / "a.tar.gz", GOOD)
    ext4gen.load(str(archive))
    name = _entry(_private_cache).name
    cache.clear()
    (_private_cache / "tar" / name).write_bytes(_crafted_tar_bytes())
    tree, _ = ext4gen.load(str(archive))
    assert _files(tree) == {"/etc/motd": GOOD["etc/motd"]}
    image = ext4gen.plan(tree)
    assert image.read(0, 4096)  # planned from the real archive


def test_a_sidecar_edited_to_match_a_planted_copy_fails_its_seal(tmp_path: Path,
                                                                 _private_cache: Path) -> None:
    archive = _targz(tmp_path / "a.tar.gz", GOOD)
    ext4gen.load(str(archive))
    entry = _entry(_private_cache)
    sidecar = entry.with_suffix(".json")
    entry.write_bytes(_crafted_tar_bytes())
    sealed = sidecar.read_bytes()
    pin = list(tar_input.Pin.of(entry.stat()))
    meta = json.loads(sealed[32:])
    meta["entry_pin"] = pin
    sidecar.write_bytes(sealed[:32] + json.dumps(meta).encode())  # the old MAC on a new body
    tree, _ = ext4gen.load(str(archive))
    assert _files(tree) == {"/etc/motd": GOOD["etc/motd"]}


def test_a_changed_archive_is_decompressed_again(tmp_path: Path) -> None:
    archive = _targz(tmp_path / "a.tar.gz", GOOD)
    ext4gen.load(str(archive))
    _targz(archive, {"etc/motd": (b"new\n", 0o644)})
    tree, _ = ext4gen.load(str(archive))
    assert _files(tree) == {"/etc/motd": (b"new\n", 0o644)}


def test_the_bound_evicts_the_least_recently_used_entry(tmp_path: Path, _private_cache: Path) -> None:
    """Each ext4gen run is its own process (a running one holds its entries, see cache.hold)."""
    archives = {n: _targz(tmp_path / f"{n}.tar.gz", {f"{n}/data": (os.urandom(60_000), 0o644)})
                for n in ("a", "b", "c")}
    bound = {"EXT4GEN_CACHE_MAX": "150K"}  # two decompressed copies (~70 KiB each) fit, three do not
    for n in ("a", "b"):
        assert _cli("inspect", str(archives[n]), env=bound).returncode == 0
        time.sleep(0.05)
    sizes = {e.stem: e.nbytes for e in cache.entries("tar")}
    assert len(sizes) == 2 and sum(sizes.values()) <= 150 << 10 < sum(sizes.values()) * 3 / 2
    first = {p.name for p in (_private_cache / "tar").iterdir()}
    assert _cli("inspect", str(archives["a"]), env=bound).returncode == 0  # a is now the most recent
    assert {p.name for p in (_private_cache / "tar").iterdir()} == first  # used again, not remade
    time.sleep(0.05)
    assert _cli("inspect", str(archives["c"]), env=bound).returncode == 0
    kept = {e.stem for e in cache.entries("tar")}
    assert len(kept) == 2
    ident = {n: _cli("inspect", str(archives[n]), env={"EXT4GEN_CACHE_MAX": "1G"}) for n in ("a", "c")}
    assert all(p.returncode == 0 for p in ident.values())
    assert {e.stem for e in cache.entries("tar")} == kept  # a and c were cached: b was evicted


def test_an_entry_in_use_is_not_evicted(tmp_path: Path, _private_cache: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _targz(tmp_path / "a.tar.gz", {"x": (os.urandom(50_000), 0o644)})
    tree, _ = ext4gen.load(str(archive))  # this process now holds the entry
    assert cache.enforce_bound(0) == []
    assert len(list((_private_cache / "tar").glob("*.tar"))) == 1
    assert _files(tree)["/x"][0]  # still readable


def test_cache_show_and_clear(tmp_path: Path, _private_cache: Path) -> None:
    archive = _targz(tmp_path / "a.tar.gz", GOOD)
    assert _cli("inspect", str(archive)).returncode == 0
    shown = _cli("cache")
    assert shown.returncode == 0, shown.stderr
    assert f"cache root: {_private_cache}" in shown.stdout
    (line,) = [x for x in shown.stdout.splitlines() if x.split()[:1] == ["tar"]]
    assert line.split()[1] == "1" and "entry" in line
    assert "bound" in shown.stdout and "4.0 GiB" in shown.stdout
    assert "1.0 GiB" in _cli("cache", "show", env={"EXT4GEN_CACHE_MAX": "1G"}).stdout
    bad = _cli("cache", env={"EXT4GEN_CACHE_MAX": "lots"})
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "EXT4GEN_CACHE_MAX" in bad.stderr
    cleared = _cli("cache", "clear", "tar")
    assert cleared.returncode == 0 and "removed 1 entry" in cleared.stdout
    assert list((_private_cache / "tar").iterdir()) == []


@pytest.mark.parametrize(("text", "value"), [("", 4 << 30), ("123", 123), ("500M", 500 << 20),
                                             ("8G", 8 << 30), ("1.5GiB", 3 << 29), ("2k", 2048)])
def test_cache_max_parses_sizes(monkeypatch: pytest.MonkeyPatch, text: str, value: int) -> None:
    monkeypatch.setenv("EXT4GEN_CACHE_MAX", text)
    assert cache.cache_max() == value


def test_a_corrupt_compressed_stream_is_one_line_and_leaves_no_entry(tmp_path: Path,
                                                                     _private_cache: Path) -> None:
    data = gzip.compress(os.urandom(1000) + bytes(100_000))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[:20] + bytes(50) + data[70:])  # zlib.error, not an OSError
    proc = _cli("inspect", str(bad))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "cannot decompress gzip archive" in proc.stderr
    assert list((_private_cache / "tar").iterdir()) == []
