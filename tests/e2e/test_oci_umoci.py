"""Issue 13: container images made by umoci and skopeo, served as ext4, equal `umoci unpack`.

One scenario (tests/helpers/oci.py) in every container: a base layer with a setuid
binary carrying security.capability, a user xattr, hard links, a fifo, a symlink and
a 14 MiB file; a layer that deletes a file, replaces a file by a directory and a
directory by a file; a GNU-tar layer that makes a directory opaque.  umoci writes
the gzip layout; skopeo copies it to zstd, oci-archive and docker-archive (plain
layers).  Each image is proved (e2fsck -fn clean, kernel mount equals the planned
tree) and its mount is compared entry by entry with `umoci unpack` of the same tag.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.oci import Images, compare_trees, make_images

from ext4gen.verify import e2fsck, is_root, loop_mount

pytestmark = [pytest.mark.root, pytest.mark.slow]

FORMS: dict[str, Callable[[Images], str]] = {
    "oci-gzip-v1": lambda im: f"oci:{im.layout}:v1",
    "oci-gzip-v2": lambda im: f"oci:{im.layout}:v2",
    "oci-gzip-v3": lambda im: f"oci:{im.layout}:v3",
    "oci-zstd": lambda im: f"oci:{im.zstd_layout}",
    "oci-archive": lambda im: f"oci-archive:{im.oci_archive}:v3",
    "docker-archive": lambda im: f"docker-archive:{im.docker_archive}",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    if not is_root():
        pytest.skip("needs root (umoci unpack of owners and security xattrs, loop mounts)")
    old = os.environ.get("EXT4GEN_CACHE")
    os.environ["EXT4GEN_CACHE"] = str(tmp_path_factory.mktemp("oci-cache"))
    try:
        yield make_images(tmp_path_factory.mktemp("oci-images"))
    finally:
        if old is None:
            os.environ.pop("EXT4GEN_CACHE", None)
        else:
            os.environ["EXT4GEN_CACHE"] = old


def _tag(form: str) -> str:
    return form.rsplit("-", 1)[1] if form.startswith("oci-gzip") else "v3"


@pytest.mark.parametrize("form", sorted(FORMS))
def test_image_equals_umoci_unpack(form: str, images: Images, prove, tmp_path: Path) -> None:
    reference = images.unpacked(_tag(form))

    def same_as_umoci(mnt: str) -> None:
        diffs = compare_trees(mnt, str(reference))
        assert diffs == [], f"{form}: differs from umoci unpack:\n" + "\n".join(diffs[:40])

    prove(FORMS[form](images), tmp_path, while_mounted=same_as_umoci)


def test_the_comparison_sees_each_layer_change(images: Images, prove, tmp_path: Path) -> None:
    """The v2 image against the v3 unpack: only the opaque directory differs, and it is seen."""
    reference = images.unpacked("v3")
    seen: list[str] = []
    prove(f"oci:{images.layout}:v2", tmp_path,
          while_mounted=lambda mnt: seen.extend(compare_trees(mnt, str(reference))))
    assert "only in image: opq/old" in seen and "only in image: opq/inner/deep" in seen
    assert "only in reference: opq/new" in seen


def test_layers_did_what_the_scenario_says(images: Images, prove, tmp_path: Path) -> None:
    """Not only equal to umoci: the features under test are really in the image."""

    def check(mnt: str) -> None:
        m = Path(mnt)
        assert not (m / "etc/hello").exists()                       # whiteout
        assert (m / "etc/conf").is_dir() and (m / "etc/conf/inner").read_text() == "inner\n"
        assert (m / "olddir").is_file()                              # directory replaced by a file
        assert sorted(os.listdir(m / "opq")) == ["new"]             # opaque
        assert sorted(os.listdir(m / "d")) == ["g"]
        st = os.stat(m / "data/suid")
        assert st.st_mode & 0o7777 == 0o4755 and (st.st_uid, st.st_gid) == (12, 34)
        assert os.getxattr(m / "data/suid", "security.capability")[:4] == bytes.fromhex("01000002")
        assert os.stat(m / "data/a").st_ino == os.stat(m / "data/b").st_ino
        assert os.stat(m / "twice").st_ino == os.stat(m / "twice-link").st_ino
        assert (m / "twice").read_text() == "second layer's version, longer\n"

    prove(f"oci:{images.layout}:v3", tmp_path, while_mounted=check)


def test_served_by_nbdkit_equals_build(images: Images, ext4_export, tmp_path: Path) -> None:
    """`ext4gen serve oci-archive:…` (the nbdkit plugin plans it) gives the bytes of build."""
    source = FORMS["oci-archive"](images)
    uri = ext4_export(source)
    served, built = tmp_path / "served.img", tmp_path / "built.img"
    subprocess.run(["nbdcopy", uri, str(served)], check=True)
    from ext4gen.cli import main

    assert main(["build", source, "-o", str(built), "-q"]) == 0
    assert served.read_bytes() == built.read_bytes()
    rc, complaints = e2fsck(str(served))
    assert (rc, complaints) == (0, [])
    with loop_mount(str(served)) as mnt:
        assert compare_trees(mnt, str(images.unpacked("v3"))) == []
