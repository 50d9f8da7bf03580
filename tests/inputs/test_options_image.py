"""--label, --uuid, --hash-seed for every SOURCE kind, on the command line and in [image].

dumpe2fs (an independent reader) shows what the option promises, e2fsck -fn
is clean, and a flag wins over the manifest's key.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers.cli import build_cli, run_cli
from helpers.readers import dumpe2fs

from ext4gen.verify import e2fsck

UUID = "0f3c2a5e-1b2d-4c6f-8a9b-112233445566"
SEED = "6c2f1e0a-9d8b-4a7c-b5e4-665544332211"


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("box\n")
    for i in range(300):  # enough names for an htree: the hash seed matters
        (root / "etc" / f"name-{i:04d}").write_bytes(b"")
    return root


def _sources(tmp_path: Path) -> dict[str, Path]:
    tree = _tree(tmp_path / "tree")
    tar = tmp_path / "tree.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tar), "."], check=True)
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[import]]\nsource = "tree"\n')
    return {"directory": tree, "tar": tar, "manifest": manifest}


def _header(image: Path) -> dict[str, str]:
    rc, complaints = e2fsck(str(image))
    assert rc == 0 and complaints == [], complaints
    return dumpe2fs(image)[0]


@pytest.mark.parametrize("kind", ["directory", "tar", "manifest"])
def test_label_uuid_hash_seed_flags_for_every_source_kind(tmp_path: Path, kind: str) -> None:
    source = _sources(tmp_path)[kind]
    image = tmp_path / "x.img"
    build_cli(source, image, "--label", "flagged", "--uuid", UUID, "--hash-seed", SEED)
    h = _header(image)
    assert (h["Filesystem volume name"], h["Filesystem UUID"], h["Directory Hash Seed"]) == \
        ("flagged", UUID, SEED)
    # the defaults (no flags) are different, and themselves deterministic
    build_cli(source, tmp_path / "d1.img")
    build_cli(source, tmp_path / "d2.img")
    d1 = _header(tmp_path / "d1.img")
    assert d1["Filesystem UUID"] not in (UUID, "<none>") and d1["Filesystem volume name"] == "<none>"
    assert (tmp_path / "d1.img").read_bytes() == (tmp_path / "d2.img").read_bytes()


def test_manifest_keys_and_the_flag_wins(tmp_path: Path) -> None:
    _tree(tmp_path / "tree")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"image": {"label": "from-manifest", "uuid": UUID, "hash_seed": SEED},
                                    "import": [{"source": "tree"}]}))
    build_cli(manifest, tmp_path / "m.img")
    h = _header(tmp_path / "m.img")
    assert (h["Filesystem volume name"], h["Filesystem UUID"], h["Directory Hash Seed"]) == \
        ("from-manifest", UUID, SEED)
    other = str(uuid.UUID(int=0x1234))
    build_cli(manifest, tmp_path / "f.img", "--label", "from-flag", "--uuid", other)
    h = _header(tmp_path / "f.img")
    assert (h["Filesystem volume name"], h["Filesystem UUID"], h["Directory Hash Seed"]) == \
        ("from-flag", other, SEED)


def test_random_uuid_differs_every_build(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    got = set()
    for n in range(2):
        build_cli(tree, tmp_path / f"r{n}.img", "--uuid", "random", "--hash-seed", "random")
        h = _header(tmp_path / f"r{n}.img")
        got.add((h["Filesystem UUID"], h["Directory Hash Seed"]))
        assert uuid.UUID(h["Filesystem UUID"]).version == 4
    assert len(got) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--label", "x" * 17], "argument --label: the volume label is at most 16 bytes"),
    (["--uuid", "nope"], "argument --uuid: 'nope' is not a UUID (nor 'random')"),
    (["--hash-seed", "12"], "argument --hash-seed: '12' is not a UUID (nor 'random')"),
])
def test_bad_flag_values_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli("build", _tree(tmp_path / "tree"), "-o", tmp_path / "x.img", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("image", "key", "message"), [
    ({"label": "x" * 17}, "image.label", "the volume label is at most 16 bytes"),
    ({"uuid": "nope"}, "image.uuid", "'nope' is not a UUID (nor 'random')"),
    ({"times": "later"}, "image.times", "must be one of keep, clamp, epoch"),
    ({"root_owner": "0"}, "image.root_owner", "expected UID:GID or UID:GID:MODE"),
    ({"squash_owner": "a:b"}, "image.squash_owner", "uid 'a' is not a number"),
    ({"uid_map": ["0:1000:10", "5:2000:10"]}, "image.uid_map", "overlap on the container side"),
    ({"gid_map": "0:1:2"}, "image.gid_map", "must be an array"),
    ({"one_file_system": "yes"}, "image.one_file_system", "must be true or false"),
    ({"mount_point": "srv"}, "image.mount_point", "must be an absolute path"),
    ({"all_root": True, "squash_owner": "1:1"}, "image.all_root", "conflicts with image.squash_owner"),
])
def test_bad_image_keys_name_the_key(tmp_path: Path, image: dict, key: str, message: str) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"image": image, "/f": {"text": "x"}}))
    proc = run_cli("build", manifest, "-o", tmp_path / "x.img")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"ext4gen: {manifest}: {key}: ") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
