"""--one-file-system: a host directory import does not descend into other filesystems.

Mount points stay, as empty directories with the mounted root's metadata (as
``cp -x`` and ``rsync -x`` leave them); without the option the walk goes in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import mounted, requires_root
from helpers.cli import build_cli
from helpers.mounts import scratch_tmpfs
from helpers.readers import debugfs

import ext4gen
from ext4gen.model.options import SourceOptions
from ext4gen.verify import compare_tree, e2fsck

pytestmark = requires_root


def _check(image: Path) -> None:
    rc, complaints = e2fsck(str(image))
    assert rc == 0 and complaints == [], complaints


def test_a_mount_inside_the_tree_is_not_walked_into(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "proc").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "etc" / "hostname").write_text("box\n")
    with scratch_tmpfs(src / "proc", size="1m") as inner:
        (inner / "cpuinfo").write_text("not the tree's\n")
        (inner / "sub").mkdir()
        for flags, manifest_key in (([], None), (["--one-file-system"], None), ([], True)):
            image = tmp_path / "x.img"
            if manifest_key:
                m = tmp_path / "m.json"
                m.write_text(json.dumps({"image": {"one_file_system": True},
                                         "import": [{"source": str(src)}]}))
                build_cli(m, image)
                tree, _o = ext4gen.load(str(m))
            else:
                build_cli(src, image, *flags)
                tree, _o = ext4gen.load(str(src), source_options=SourceOptions(
                    one_file_system=True if flags else None))
            _check(image)
            staying = bool(flags or manifest_key)
            with mounted(image) as mnt:
                assert compare_tree(tree, mnt) == []
                assert os.path.isfile(f"{mnt}/etc/hostname")
                assert sorted(os.listdir(f"{mnt}/proc")) == ([] if staying else ["cpuinfo", "sub"])
                st, host = os.stat(f"{mnt}/proc"), os.stat(inner)
                assert (st.st_mode, st.st_uid, st.st_mtime_ns) == (host.st_mode, host.st_uid,
                                                                   host.st_mtime_ns)


@pytest.mark.skipif(not os.path.ismount("/dev/pts"), reason="/dev/pts is not a mount point here")
def test_build_dev_does_not_descend_into_dev_pts(tmp_path: Path) -> None:
    assert os.listdir("/dev/pts"), "devpts always holds ptmx: the premise"
    image = tmp_path / "dev.img"
    build_cli("/dev", image, "--one-file-system")
    _check(image)
    # debugfs ends a directory listing with an empty entry (inode 0): not a name
    names = [line.split()[-1] for line in debugfs(image, "ls -l /pts").splitlines()
             if line.strip() and line.split()[0] != "0"]
    assert sorted(names) == [".", ".."], names
