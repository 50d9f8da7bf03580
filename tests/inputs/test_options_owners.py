"""Owners other than the source's: --root-owner, --all-root/--squash-owner, --uid-map/--gid-map.

Each is built through the CLI (and the manifest's [image] keys), checked by
e2fsck -fn, and read back from a kernel mount: the owners the option promises,
stated here, and every other field equal to the source (compare_tree against
the same SOURCE loaded with the same options).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import mounted, requires_root
from helpers.cli import build_cli, run_cli
from helpers.encoders import vfs_acl
from helpers.mounts import scratch_tmpfs

import ext4gen
from ext4gen.cli import build_parser
from ext4gen.inputs.arguments import image_flags
from ext4gen.inputs.ownership import IdMap, parse_id_range, parse_root_owner
from ext4gen.model.options import IdRange
from ext4gen.verify import compare_tree, e2fsck

pytestmark = requires_root
SHIFT = 100_000
MAP = ["--uid-map", f"0:{SHIFT}:65536", "--gid-map", f"0:{SHIFT}:65536"]


@pytest.fixture
def owned(tmp_path: Path) -> Iterator[Path]:
    """A rootless container's tree: ids shifted by 100000, one file owned by an unmapped id."""
    with scratch_tmpfs(tmp_path / "src", size="16m") as src:
        os.chown(src, 1234, 1234)
        os.chmod(src, 0o700)
        (src / "a").mkdir()
        os.chown(src / "a", SHIFT, SHIFT)
        for name, uid, gid in (("file", SHIFT, SHIFT), ("other", SHIFT + 5, SHIFT + 7),
                               ("stranger", 7, 7)):
            (src / "a" / name).write_text(name)
            os.chown(src / "a" / name, uid, gid)
        (src / "a" / "acl").write_text("acl")
        os.chown(src / "a" / "acl", SHIFT, SHIFT)
        os.setxattr(src / "a" / "acl", "system.posix_acl_access",
                    vfs_acl(f"u::rw-,u:{SHIFT + 3}:r--,g::r--,g:{SHIFT + 4}:r--,m::r--,o::---"))
        os.symlink("file", src / "a" / "link")
        os.chown(src / "a" / "link", SHIFT + 1, SHIFT + 1, follow_symlinks=False)
        yield src


def _build_and_mount(source: Path, image: Path, *flags: str) -> tuple[object, Iterator[str]]:
    build_cli(source, image, *flags)
    rc, complaints = e2fsck(str(image))
    assert rc == 0 and complaints == [], complaints
    args = build_parser().parse_args(["build", str(source), "-o", str(image), *flags])
    flags = image_flags(args)
    tree, _options = ext4gen.load(str(source), source_options=flags.source, **flags.image_overrides())
    return tree, mounted(image)


def _owner(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _tar(src: Path, out: Path) -> Path:
    subprocess.run(["tar", "--acls", "--numeric-owner", "-C", str(src), "-cf", str(out), "."],
                   check=True)
    return out


@pytest.mark.parametrize("kind", ["directory", "tar"])
def test_uid_gid_maps_shift_a_rootless_tree_back(owned: Path, tmp_path: Path, kind: str) -> None:
    source = owned if kind == "directory" else _tar(owned, tmp_path / "t.tar")
    tree, mount = _build_and_mount(source, tmp_path / "x.img", *MAP, "--root-owner", "0:0:0755")
    with mount as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        st = os.stat(mnt)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
        assert _owner(f"{mnt}/a") == (0, 0)
        assert _owner(f"{mnt}/a/file") == (0, 0)
        assert _owner(f"{mnt}/a/other") == (5, 7)
        assert _owner(f"{mnt}/a/stranger") == (65534, 65534)  # outside the map: the overflow id
        assert _owner(f"{mnt}/a/link") == (1, 1)
        assert os.getxattr(f"{mnt}/a/acl", "system.posix_acl_access") == \
            vfs_acl("u::rw-,u:3:r--,g::r--,g:4:r--,m::r--,o::---")


def test_without_options_the_source_owners_stay(owned: Path, tmp_path: Path) -> None:
    tree, mount = _build_and_mount(owned, tmp_path / "x.img")
    with mount as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        assert _owner(mnt) == (1234, 1234) and os.stat(mnt).st_mode & 0o777 == 0o700
        assert _owner(f"{mnt}/a/other") == (SHIFT + 5, SHIFT + 7)


@pytest.mark.parametrize(("flags", "owner"), [(["--all-root"], (0, 0)),
                                               (["--squash-owner", "1000:1001"], (1000, 1001))])
def test_one_owner_for_every_inode(owned: Path, tmp_path: Path, flags: list[str],
                                   owner: tuple[int, int]) -> None:
    tree, mount = _build_and_mount(owned, tmp_path / "x.img", *flags)
    with mount as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        seen = 0
        for top, dirs, files in os.walk(mnt):
            for name in [".", *dirs, *files]:
                assert _owner(os.path.join(top, name)) == owner, os.path.join(top, name)
                seen += 1
        assert seen >= 8  # root, lost+found, a, and its five entries
        assert os.stat(f"{mnt}/a/other").st_mode & 0o777 == 0o644  # modes are untouched


def test_manifest_keys_and_the_flag_wins(owned: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({
        "image": {"uid_map": [f"0:{SHIFT}:65536"], "gid_map": [f"0:{SHIFT}:65536"],
                  "root_owner": "5:5:0750"},
        "import": [{"source": str(owned)}],
        "/declared": {"text": "mine", "uid": SHIFT + 9, "gid": 3},
    }))
    tree, mount = _build_and_mount(manifest, tmp_path / "m.img")
    with mount as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        assert _owner(mnt) == (5, 5) and os.stat(mnt).st_mode & 0o7777 == 0o750
        assert _owner(f"{mnt}/a/other") == (5, 7)
        assert _owner(f"{mnt}/declared") == (9, 65534)  # the map applies to declared entries too
    tree, mount = _build_and_mount(manifest, tmp_path / "f.img", "--root-owner", "0:0",
                                   "--uid-map", f"0:{SHIFT + 5}:1")
    with mount as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        assert _owner(mnt) == (0, 0) and os.stat(mnt).st_mode & 0o7777 == 0o700  # no MODE: kept
        assert _owner(f"{mnt}/a/other") == (0, 7)  # the flag's uid map replaced the manifest's
        assert _owner(f"{mnt}/a/file") == (65534, 0)


def test_id_map_semantics() -> None:
    m = IdMap((IdRange(0, 100_000, 10), IdRange(1000, 5000, 2)))
    assert [m(i) for i in (100_000, 100_009, 100_010, 5000, 5001, 5002, 0)] == \
        [0, 9, 65534, 1000, 1001, 65534, 65534]
    assert parse_id_range("0:100000:65536") == IdRange(0, 100_000, 65536)
    assert parse_root_owner("1:2:0700") == (1, 2, 0o700) and parse_root_owner("1:2") == (1, 2, None)
    for bad, message in (("0:1", "expected CONTAINER:HOST:COUNT"), ("0:1:0", "at least 1"),
                         ("4294967290:0:10", "passes")):
        with pytest.raises(ValueError, match=message):
            parse_id_range(bad)


@pytest.mark.parametrize(("flags", "message"), [
    (["--uid-map", "0:1000:10", "--uid-map", "5:3000:1"], "--uid-map: ranges 0:1000:10 and 5:3000:1 "
                                                          "overlap on the container side"),
    (["--all-root", "--squash-owner", "1:1"], "not allowed with argument --all-root"),
    (["--root-owner", "0:0:999"], "argument --root-owner: mode '999' is not octal"),
])
def test_bad_owner_flags(tmp_path: Path, flags: list[str], message: str) -> None:
    (tmp_path / "src").mkdir()
    proc = run_cli("build", tmp_path / "src", "-o", tmp_path / "x.img", *flags)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
