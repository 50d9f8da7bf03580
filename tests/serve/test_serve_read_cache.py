"""``serve --cache SIZE``: nbdkit's C cache filter over reads, set up as measured
(4 KiB blocks, bounded, its file under the runtime directory), serves the same bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.cli import build_image
from helpers.cli import cli_serving as serving
from helpers.trees import make_source_tree


def test_cached_export_serves_the_built_image_twice(tmp_path: Path):
    manifest = make_source_tree(tmp_path)
    reference = build_image(manifest, tmp_path / "ref.img")
    with serving(manifest, tmp_path / "nbd.sock", "--cache", "64M") as server:
        argv = Path(f"/proc/{server.nbdkit_pid}/cmdline").read_bytes().split(b"\0")
        assert b"--filter=cache" in argv and b"cache-max-size=64M" in argv
        assert b"cache-min-block-size=4096" in argv and b"cache-on-read=true" in argv
        for attempt in ("cold", "warm"):
            out = tmp_path / f"{attempt}.img"
            subprocess.run(["nbdcopy", server.uri, str(out)], check=True)
            assert out.read_bytes() == reference, attempt
