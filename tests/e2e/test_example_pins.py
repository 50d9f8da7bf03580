"""The example images are pinned: a change to any of their bytes must be deliberate.

Moves and refactors promise byte-identical images; this test holds them to it.
Each example directory is copied to a fixed path (``/tmp/ext4gen-pin/<name>``,
recreated on every run) with fixed modes and times, and built with
``SOURCE_DATE_EPOCH`` unset, because today an image depends on where its
sources are (the UUID and hash seed are derived from the absolute source
paths) and on the host files' times.  The SHA-256 is taken over
``Image.read`` of the whole image.

When a change alters the bytes on purpose (a format change, or a new UUID
derivation that no longer covers the source paths), update PINS in the same
commit and say why in its message.  examples/bootdisk/rootfs.toml is not
pinned: it reads the host's /bin/busybox, which differs between machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import ext4gen
from ext4gen.render.image import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PIN_ROOT = Path("/tmp/ext4gen-pin")
FIXED_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, on every copied file and directory

# manifest (relative to examples/) -> SHA-256 of its image, recorded from the code of issue 9's move
# (the TOML and JSON demo manifests describe one tree, hence one image)
PINS = {
    "demo/manifest.toml": "49158b6d231c5991f30e6d225bfe6bd8d72682bb5fb904bfc269fca76c135134",
    "demo/manifest.json": "49158b6d231c5991f30e6d225bfe6bd8d72682bb5fb904bfc269fca76c135134",
    "ci-fixture/fixture.toml": "fc600015a4b7cc0fa512409bf0f5fd9d813fc355ccfb6fa9ac51950085e42e48",
    "bootdisk/data.toml": "7f4a4260cd0599b493174d4856579e8ed7c08b8b30459ce36e0a21d6a1ea14a7",
}


def image_sha256(image: Image, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    for offset in range(0, image.size, chunk):
        h.update(image.read(offset, min(chunk, image.size - offset)))
    return h.hexdigest()


@contextlib.contextmanager
def pinned_copy(example: str) -> Iterator[Path]:
    """``examples/<example>`` at ``/tmp/ext4gen-pin/<example>``, fresh, with fixed modes and times.

    The lock keeps two test sessions on one machine from rebuilding the copy
    under each other.
    """
    PIN_ROOT.mkdir(exist_ok=True)
    with open(PIN_ROOT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = PIN_ROOT / example
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(EXAMPLES / example, target, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for top, dirs, files in os.walk(target, topdown=False):
            for name in files + dirs:
                path = os.path.join(top, name)
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode):
                    executable = stat.S_ISDIR(st.st_mode) or st.st_mode & 0o100
                    os.chmod(path, 0o755 if executable else 0o644)
                os.utime(path, ns=(FIXED_NS, FIXED_NS), follow_symlinks=False)
        os.chmod(target, 0o755)
        os.utime(target, ns=(FIXED_NS, FIXED_NS))
        yield target


@pytest.mark.parametrize("manifest", sorted(PINS))
def test_example_image_bytes_are_pinned(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    example, name = manifest.split("/")
    with pinned_copy(example) as copy:
        tree, options = ext4gen.load(str(copy / name))
        digest = image_sha256(ext4gen.plan(tree, options))
    assert digest == PINS[manifest], (
        f"the image of examples/{manifest} changed; if that is deliberate, pin {digest}")
