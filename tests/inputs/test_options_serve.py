"""The image options reach what serve and mount plan (the nbdkit plugin plans for itself).

``serve … --label L --all-root`` must export exactly the bytes ``build`` writes
with the same options, and ``mount`` must show the owners and labels.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import requires_root
from helpers.cli import build_cli, run_cli
from helpers.cli import cli_serving as serving

pytestmark = [requires_root, pytest.mark.slow]
FLAGS = ("--label", "served", "--all-root", "--root-owner", "0:0:0711", "--times", "epoch")


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    os.chown(root / "etc" / "motd", 1234, 5678)
    return root


def test_serve_exports_what_build_writes_with_the_same_options(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    env_sde = {"SOURCE_DATE_EPOCH": "1700000000"}
    os.environ.update(env_sde)
    try:
        build_cli(src, tmp_path / "built.img", *FLAGS)
        with serving(src, tmp_path / "s.sock", *FLAGS) as server:
            subprocess.run(["nbdcopy", server.uri, str(tmp_path / "served.img")], check=True)
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    built = (tmp_path / "built.img").read_bytes()
    assert (tmp_path / "served.img").read_bytes() == built
    assert built[1024 + 0x78 : 1024 + 0x78 + 6] == b"served"  # s_volume_name: the options took effect


def test_mount_shows_the_options(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fc = tmp_path / "file_contexts"
    fc.write_text("/.* system_u:object_r:default_t:s0\n/etc(/.*)? system_u:object_r:etc_t:s0\n")
    proc = run_cli("mount", src, mnt, "--squash-owner", "7:8", "--file-contexts", fc)
    try:
        assert proc.returncode == 0, proc.stderr
        st = os.stat(mnt / "etc" / "motd")
        assert (st.st_uid, st.st_gid) == (7, 8)
        assert os.getxattr(mnt / "etc" / "motd", "security.selinux") == b"system_u:object_r:etc_t:s0\0"
    finally:
        if proc.returncode == 0:
            done = run_cli("umount", mnt)
            if done.returncode != 0:
                with contextlib.suppress(Exception):
                    run_cli("umount", "--lazy", mnt)
            assert done.returncode == 0, done.stderr
