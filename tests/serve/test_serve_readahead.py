"""``ext4gen serve`` reads cold sources ahead of a sequential client and pre-renders metadata.

Runs on both read paths (tests/conftest.py): the compiled one reads ahead and
pre-renders; the pure-Python one does neither.  The sources are evicted from
the page cache (fsync, POSIX_FADV_DONTNEED: no root needed) after the server
planned them, so the copy that follows finds them cold.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers.cli import build_cli, cli_serving
from helpers.pagecache import evict

NFILES = 96
FILE_SIZE = 64 * 1024


@pytest.mark.parametrize("readahead", [True, False], ids=["default", "EXT4GEN_NO_READAHEAD"])
def test_a_cold_sequential_copy_is_read_ahead(tmp_path: Path, read_path: str, readahead: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    files = []
    for i in range(NFILES):
        p = tree / f"f{i:03d}"
        p.write_bytes(os.urandom(FILE_SIZE))
        files.append(p)
    reference = tmp_path / "ref.img"
    build_cli(tree, reference)
    if not readahead:
        monkeypatch.setenv("EXT4GEN_NO_READAHEAD", "1")
    copy = tmp_path / "copy.img"
    with cli_serving(tree, tmp_path / "nbd.sock", "--verbose") as server:
        evict(files)
        subprocess.run(["nbdcopy", "--no-extents", server.uri, str(copy)], check=True)
    assert server.returncode == 0
    assert copy.read_bytes() == reference.read_bytes()
    err = server.stderr()
    summary = re.search(r"ext4gen: served .*read ahead (\d+);", err)
    assert summary, err
    compiled = read_path != "pure"
    ahead = int(summary.group(1))
    if compiled and readahead:
        assert 0 < ahead <= NFILES * FILE_SIZE, summary.group(0)
    else:
        assert ahead == 0, summary.group(0)
    rendered = re.search(r"debug: ext4gen: .*: (\d+) metadata blocks rendered ahead", err)
    if compiled:
        assert rendered and int(rendered.group(1)) > 0, err
    else:
        assert rendered is None, err
