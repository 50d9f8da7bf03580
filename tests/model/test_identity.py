"""Stable identity: inode numbers and generations across rebuilds (the NFS file-handle concern).

Each test builds successive versions of a tree through the CLI with
``--write-map`` / ``--base-map``, mounts them, and reads identities the way a
file-handle user sees them: ``st_ino`` and ``i_generation`` from the kernel
(FS_IOC_GETVERSION), cross-checked with debugfs on the image.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import build_cli, run_cli
from helpers.mounts import mounted
from helpers.readers import debugfs, generation, superblock

pytestmark = pytest.mark.root

EPOCH = 1_700_000_000


def _doc(paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"defaults": {"mtime": EPOCH}, **paths}


BASE = {
    "/etc/hostname": {"text": "box\n"},
    "/etc/passwd": {"text": "root:x:0:0::/root:/bin/sh\n"},
    "/etc/ssl/cert.pem": {"text": "-----BEGIN-----\n" * 20},
    "/home/alice/notes.txt": {"text": "hello\n"},
    "/home/alice/link": {"type": "symlink", "target": "notes.txt"},
    "/home/bob/data.bin": {"size": 3 * 4096},
    "/srv/www/index.html": {"text": "<html></html>\n"},
    "/srv/www/again.html": {"type": "hardlink", "target": "/srv/www/index.html"},
    "/var/log/syslog": {"text": "boot\n"},
    "/var/spool/fifo": {"type": "fifo"},
}


def _build(tmp_path: Path, name: str, paths: dict[str, dict[str, Any]], *extra: str | Path) -> Path:
    manifest = tmp_path / f"{name}.json"
    manifest.write_text(json.dumps(_doc(paths)))
    image = tmp_path / f"{name}.ext4"
    build_cli(manifest, image, *extra)
    return image


def _identities(image: Path, paths: list[str]) -> dict[str, tuple[int, int]]:
    """path -> (st_ino, i_generation) as the kernel reports them on a read-only mount."""
    out = {}
    with mounted(image) as mnt:
        for p in paths:
            full = os.path.join(mnt, p.lstrip("/"))
            st = os.lstat(full)
            # the ioctl needs an ext4 file descriptor: fifos and symlinks are read with debugfs
            regular = stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
            gen = generation(full) if regular else _debugfs_generation(image, p)
            out[p] = (st.st_ino, gen)
    return out


def _debugfs_generation(image: Path, path: str) -> int:
    m = re.search(r"Generation: (\d+)", debugfs(image, f'stat "{path}"'))
    assert m, f"debugfs stat {path}"
    return int(m.group(1))


def _load_map(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and set(doc) >= {"uuid", "hash_seed", "inodes"}
    return doc


def test_unchanged_paths_keep_inode_numbers_and_generations(tmp_path: Path) -> None:
    v1 = _build(tmp_path, "v1", BASE, "--write-map", tmp_path / "v1.map")
    before = _identities(v1, list(BASE))
    map1 = _load_map(tmp_path / "v1.map")
    for p, (ino, gen) in before.items():  # the map says what the kernel sees
        assert map1["inodes"][p][:2] == [ino, gen], p
        assert _debugfs_generation(v1, p) == gen, p

    # v2: new files (some sorting before everything), some removed, a renamed-away one
    v2_paths = {k: v for k, v in BASE.items() if k not in ("/etc/passwd", "/home/bob/data.bin")}
    v2_paths.update({"/aaa/first": {"text": "new, sorts first\n"}, "/etc/aaa.conf": {"text": "x\n"},
                     "/home/alice/new.txt": {"text": "new\n"}, "/zzz": {"type": "dir"}})
    v2 = _build(tmp_path, "v2", v2_paths, "--base-map", tmp_path / "v1.map")
    after = _identities(v2, [*v2_paths, "/aaa"])
    for p in BASE:
        if p in v2_paths:
            assert after[p] == before[p], f"{p}: {before[p]} -> {after[p]}"
    assert after["/srv/www/again.html"][0] == after["/srv/www/index.html"][0]  # still one hard-linked inode

    # numbers of removed paths are reused only with a new generation; nothing collides
    removed = {before[p] for p in ("/etc/passwd", "/home/bob/data.bin")}
    new = ("/aaa", "/aaa/first", "/etc/aaa.conf", "/home/alice/new.txt", "/zzz")
    reused = [(p, after[p], old) for p in new for old in removed if after[p][0] == old[0]]
    assert len(reused) == 2, "premise: both freed numbers are taken by new paths"
    for p, (ino, gen), (_old_ino, old_gen) in reused:
        assert gen > old_gen, f"{p} reuses inode {ino} with generation {gen} (was {old_gen})"
    inos = [after[p][0] for p in v2_paths if p != "/srv/www/again.html"]
    assert len(set(inos)) == len(inos)

    # without the map, the same v2 renumbers (which is why the map exists)
    plain = _build(tmp_path, "v2plain", v2_paths)
    renumbered = _identities(plain, list(v2_paths))
    assert any(renumbered[p][0] != before[p][0] for p in BASE if p in v2_paths)


def test_deleted_and_readded_path_with_reused_number_gets_a_new_generation(tmp_path: Path) -> None:
    v1 = _build(tmp_path, "v1", BASE, "--write-map", tmp_path / "v1.map")
    ino1, gen1 = _identities(v1, ["/etc/passwd"])["/etc/passwd"]
    without = {k: v for k, v in BASE.items() if k != "/etc/passwd"}
    v2 = _build(tmp_path, "v2", without, "--base-map", tmp_path / "v1.map",
                "--write-map", tmp_path / "v2.map")
    assert str(ino1) in _load_map(tmp_path / "v2.map")["retired"]
    with mounted(v2) as mnt:
        assert not os.path.exists(os.path.join(mnt, "etc/passwd"))
    # re-added: its old number is the only free one below the highest, so it is reused
    v3 = _build(tmp_path, "v3", BASE, "--base-map", tmp_path / "v2.map", "--write-map", tmp_path / "v3.map")
    ino3, gen3 = _identities(v3, ["/etc/passwd"])["/etc/passwd"]
    assert ino3 == ino1, "the test premise: the freed number is reused"
    assert gen3 != gen1, "a stale file handle (ino, generation) must not name the re-added file"
    assert _debugfs_generation(v3, "/etc/passwd") == gen3
    # and a further rebuild from v3's map keeps the new identity
    v4 = _build(tmp_path, "v4", BASE, "--base-map", tmp_path / "v3.map")
    assert _identities(v4, ["/etc/passwd"])["/etc/passwd"] == (ino3, gen3)


def test_number_reused_by_a_different_path_gets_a_new_generation(tmp_path: Path) -> None:
    v1 = _build(tmp_path, "v1", BASE, "--write-map", tmp_path / "v1.map")
    ino1, gen1 = _identities(v1, ["/etc/passwd"])["/etc/passwd"]
    swapped = {k: v for k, v in BASE.items() if k != "/etc/passwd"}
    swapped["/etc/zz_other"] = {"text": "different file\n"}  # the only new inode
    v2 = _build(tmp_path, "v2", swapped, "--base-map", tmp_path / "v1.map")
    ino2, gen2 = _identities(v2, ["/etc/zz_other"])["/etc/zz_other"]
    assert ino2 == ino1, "the test premise: the freed number is reused"
    assert gen2 != gen1


def test_kind_change_gets_a_new_identity(tmp_path: Path) -> None:
    v1 = _build(tmp_path, "v1", BASE, "--write-map", tmp_path / "v1.map")
    before = _identities(v1, ["/var/log/syslog"])["/var/log/syslog"]
    changed = dict(BASE)
    changed["/var/log/syslog"] = {"type": "dir"}
    v2 = _build(tmp_path, "v2", changed, "--base-map", tmp_path / "v1.map")
    assert _identities(v2, ["/var/log/syslog"])["/var/log/syslog"] != before


def test_uuid_and_hash_seed_are_kept_with_a_base_map(tmp_path: Path) -> None:
    v1 = _build(tmp_path, "v1", BASE, "--write-map", tmp_path / "v1.map")
    changed = dict(BASE, **{"/new": {"text": "changes the content digest\n"}})
    v2_plain = _build(tmp_path, "v2plain", changed)
    v2 = _build(tmp_path, "v2", changed, "--base-map", tmp_path / "v1.map")
    sb1, sb_plain, sb2 = superblock(v1), superblock(v2_plain), superblock(v2)
    assert sb_plain.s_uuid != sb1.s_uuid, "premise: a content change changes the default UUID"
    assert (sb2.s_uuid, sb2.s_hash_seed) == (sb1.s_uuid, sb1.s_hash_seed)
    map1 = _load_map(tmp_path / "v1.map")
    import uuid

    assert uuid.UUID(map1["uuid"]).bytes == sb1.s_uuid


def test_identities_are_deterministic_without_a_map(tmp_path: Path) -> None:
    a = _build(tmp_path, "a", BASE, "--write-map", tmp_path / "a.map")
    b = _build(tmp_path, "b", BASE, "--write-map", tmp_path / "b.map")
    assert _identities(a, list(BASE)) == _identities(b, list(BASE))
    assert (tmp_path / "a.map").read_text() == (tmp_path / "b.map").read_text()


def test_a_host_directory_rebuild_keeps_identities(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in ("a/one", "a/two", "b/three", "c/four"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    v1 = tmp_path / "v1.ext4"
    build_cli(src, v1, "--write-map", tmp_path / "v1.map")
    rels = ["/a/one", "/a/two", "/b/three", "/c/four"]
    before = _identities(v1, rels)
    (src / "a" / "two").unlink()
    (src / "a" / "0first").write_text("new")
    v2 = tmp_path / "v2.ext4"
    build_cli(src, v2, "--base-map", tmp_path / "v1.map")
    after = _identities(v2, ["/a/one", "/b/three", "/c/four", "/a/0first", "/a"])
    for p in ("/a/one", "/b/three", "/c/four"):
        assert after[p] == before[p], p
    assert after["/a/0first"][0] == before["/a/two"][0], "premise: the only new inode takes the freed number"
    assert after["/a/0first"][1] != before["/a/two"][1]


@pytest.mark.parametrize("content", ["", "{not json", '{"version": 99, "inodes": {}}', '{"version": 1}'])
def test_bad_base_map_is_one_line_exit_2(tmp_path: Path, content: str) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(_doc(BASE)))
    bad = tmp_path / "bad.map"
    if content:
        bad.write_text(content)
    proc = run_cli("build", manifest, "-o", tmp_path / "o.img", "--base-map", bad)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ext4gen: ") and "--base-map" in lines[0], proc.stderr
    assert not (tmp_path / "o.img").exists()
