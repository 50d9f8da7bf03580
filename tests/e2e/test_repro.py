"""Reproducibility: the same manifest gives the same bytes; a different one, a different UUID.

Byte-identical output is what lets an image be cached, diffed and signed;
UUID changes on any manifest change keep two different images from being
mistaken for one another (the kernel and blkid identify filesystems by UUID).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers.readers import dumpe2fs, superblock

import ext4gen

EXT4GEN = [sys.executable, "-m", "ext4gen.cli"]

BASE: dict[str, Any] = {
    "image": {"label": "repro"},
    "defaults": {"uid": 1000, "gid": 1000},
    "/etc/hostname": {"text": "host-a\n"},
    "/bin/tool": {"source": "tool.bin", "mode": "0755", "mtime": "1700000000.5"},
    "/var/lib/empty": {"type": "dir"},
    "/var/sparse": {"size": 123456},
    "/lib/link": {"type": "symlink", "target": "../bin/tool"},
    "/lib/hard": {"type": "hardlink", "target": "/bin/tool"},
    "/data/dup1": {"base64": "AAAAAQID"},
    "/data/dup2": {"base64": "AAAAAQID"},
}


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "m.json") -> Path:
    tool = tmp_path / "tool.bin"
    if not tool.exists():
        tool.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _plan(manifest: Path) -> ext4gen.Image:
    return ext4gen.plan(*ext4gen.load(str(manifest)))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_cli_builds_are_byte_identical(tmp_path: Path) -> None:
    manifest = _write(tmp_path, BASE)
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    outs = []
    for name in ("one.img", "two.img"):
        out = tmp_path / name
        subprocess.run([*EXT4GEN, "build", str(manifest), "-o", str(out), "-q"], check=True, env=env)
        outs.append(out)
    assert _digest(outs[0]) == _digest(outs[1])
    # and the in-process API produces the very same bytes
    image = _plan(manifest)
    assert hashlib.sha256(image.read(0, image.size)).hexdigest() == _digest(outs[0])


def test_the_same_manifest_from_a_different_directory_is_identical(tmp_path: Path) -> None:
    """Relative sources are resolved against the manifest, not the working directory."""
    a = _write(tmp_path, BASE)
    other = tmp_path / "elsewhere"
    other.mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(other)
        again = _plan(a)
    finally:
        os.chdir(cwd)
    first = _plan(a)
    assert first.read(0, first.size) == again.read(0, again.size)


def _variant(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    if change == "content_same_length":
        doc["/etc/hostname"] = {"text": "host-b\n"}
    elif change == "base64_content":
        doc["/data/dup2"] = {"base64": "AAAAAQIE"}
    elif change == "mode":
        doc["/etc/hostname"]["mode"] = "0600"
    elif change == "owner":
        doc["/var/sparse"]["uid"] = 7
    elif change == "mtime":
        doc["/lib/link"]["mtime"] = 5
    elif change == "crtime":
        doc["/lib/link"]["crtime"] = 5
    elif change == "added_file":
        doc["/new"] = {"text": ""}
    elif change == "renamed":
        doc["/etc/hostnamf"] = doc.pop("/etc/hostname")
    elif change == "symlink_target":
        doc["/lib/link"]["target"] = "../bin/toom"
    elif change == "sparse_size":
        doc["/var/sparse"]["size"] = 123457
    elif change == "label":
        doc["image"]["label"] = "other"
    elif change == "dedup":
        doc["image"]["dedup"] = "none"
    else:
        raise AssertionError(change)
    return doc


@pytest.mark.parametrize("change", ["content_same_length", "base64_content", "mode", "owner", "mtime",
                                    "crtime", "added_file", "renamed", "symlink_target", "sparse_size",
                                    "label", "dedup"])
def test_a_different_manifest_changes_the_uuid(tmp_path: Path, change: str) -> None:
    base = _plan(_write(tmp_path, BASE, "base.json"))
    changed = _plan(_write(tmp_path, _variant(change), "changed.json"))
    sb_base, sb_changed = superblock(base), superblock(changed)
    assert sb_base.s_uuid != sb_changed.s_uuid, f"{change} kept the UUID"
    assert sb_base.s_hash_seed != sb_changed.s_hash_seed, f"{change} kept the hash seed"


def test_explicit_uuid_and_hash_seed_are_honoured(tmp_path: Path, ext4_image) -> None:
    want_uuid = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    want_seed = uuid.UUID("fedcba98-7654-3210-fedc-ba9876543210")
    doc = copy.deepcopy(BASE)
    doc["image"].update(uuid=str(want_uuid), hash_seed=str(want_seed))
    manifest = _write(tmp_path, doc)
    sb = superblock(_plan(manifest))
    assert sb.s_uuid == want_uuid.bytes
    assert sb.s_hash_seed == want_seed.bytes
    header, _ = dumpe2fs(ext4_image(manifest))
    assert header["Filesystem UUID"] == str(want_uuid)
    assert header["Directory Hash Seed"] == str(want_seed)
    # a given UUID stays put when the content changes
    doc2 = _variant("mode")
    doc2["image"].update(uuid=str(want_uuid), hash_seed=str(want_seed))
    assert superblock(_plan(_write(tmp_path, doc2, "m2.json"))).s_uuid == want_uuid.bytes


def test_source_date_epoch_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    epoch = 1_234_567_890
    manifest = _write(tmp_path, BASE)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
    tree, options = ext4gen.load(str(manifest))
    image = ext4gen.plan(tree, options)
    sb = superblock(image)
    assert sb.s_mkfs_time == sb.s_wtime == epoch
    hostname = tree.lookup([b"etc", b"hostname"])
    assert hostname is not None
    m = hostname.meta
    assert m.mtime == m.atime == m.ctime == m.crtime == epoch * 10**9
    tool = tree.lookup([b"bin", b"tool"])
    assert tool is not None and tool.meta.mtime == 1_700_000_000_500_000_000  # explicit wins
    # a different epoch is a different image; the same epoch, the same bytes
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch + 1))
    later = _plan(manifest)
    assert superblock(later).s_uuid != sb.s_uuid
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
    again = _plan(manifest)
    assert again.read(0, again.size) == image.read(0, image.size)


def test_source_date_epoch_through_the_cli(tmp_path: Path) -> None:
    manifest = _write(tmp_path, BASE)
    out = tmp_path / "e.img"
    env = dict(os.environ, SOURCE_DATE_EPOCH="946684800")
    subprocess.run([*EXT4GEN, "build", str(manifest), "-o", str(out), "-q"], check=True, env=env)
    header, _ = dumpe2fs(out)
    assert header["Filesystem created"] == "Sat Jan  1 00:00:00 2000"
    stat = subprocess.run(["debugfs", "-R", "stat /etc/hostname", str(out)], capture_output=True,
                          text=True, check=True).stdout
    assert "mtime: 0x386d4380:00000000" in stat
