"""A third-party test suite using ext4gen's pytest fixtures.

Nothing to configure: installing ext4gen registers the plugin (``pytest11``
entry point), so ``ext4_image`` and ``ext4_export`` are just there.  The
checks use only independent tools (e2fsck, the kernel, nbdinfo, nbdcopy), as
a suite testing its own software against these images would.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ext4gen.verify import e2fsck, is_root, loop_mount

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "fixture.toml"
needs_root = pytest.mark.skipif(not is_root(), reason="loop-mounting an image needs root")


def test_image_is_clean_ext4(ext4_image):
    image = ext4_image(MANIFEST)
    assert e2fsck(str(image)) == (0, [])
    assert ext4_image(MANIFEST) == image  # the same manifest is built once per session


@needs_root
def test_image_content_as_the_kernel_sees_it(ext4_image):
    with loop_mount(str(ext4_image(MANIFEST))) as mnt:
        root = Path(mnt)
        assert (root / "etc/hostname").read_text() == "fixture\n"
        assert (root / "etc/motd").read_bytes() == (HERE / "files/motd").read_bytes()
        assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
        assert (root / "var/lib/empty.img").stat().st_size == 1 << 20
        blob = (HERE / "files/blob.txt").read_bytes()
        assert (root / "srv/data/a.txt").read_bytes() == blob == (root / "srv/data/b.txt").read_bytes()


@needs_root
def test_in_memory_manifest(ext4_image):
    image = ext4_image({"/opt/app/config.json": {"text": '{"debug": false}\n', "mode": "0600",
                                                 "uid": 1000}})
    with loop_mount(str(image)) as mnt:
        config = Path(mnt, "opt/app/config.json")
        assert json.loads(config.read_text()) == {"debug": False}
        assert (config.stat().st_mode & 0o777, config.stat().st_uid) == (0o600, 1000)


def test_export_serves_the_same_disk(ext4_image, ext4_export, tmp_path):
    uri = ext4_export(MANIFEST)  # stopped when this test ends
    info = json.loads(subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True,
                                     check=True).stdout)
    assert info["exports"][0]["is_read_only"] is True
    copy = tmp_path / "copy.img"
    subprocess.run(["nbdcopy", uri, str(copy)], check=True)
    assert copy.read_bytes() == ext4_image(MANIFEST).read_bytes()
