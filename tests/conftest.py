"""Shared proof machinery: every feature test ends in the same three verdicts.

An image is only "right" when e2fsck -fn finds nothing, the kernel shows
exactly the tree it was planned from, and the kernel will not let anyone
write to it.  ``prove`` runs all three, so a feature test only has to build
its tree.  The kernel half needs root (loop mounts); CI runs as root, so the
skip below only ever triggers on a developer's unprivileged machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.mounts import assert_rw_mount_refused, loop_backing_files, mounted

import ext4gen
from ext4gen.model.options import ImageOptions
from ext4gen.model.tree import Tree
from ext4gen.pytest_plugin import ImageBuilder
from ext4gen.render.image import Image
from ext4gen.verify import compare_tree, e2fsck, is_root

ROOT_REASON = "needs root for loop mounts (CI runs as root, where this test must run)"
requires_root = pytest.mark.skipif(not is_root(), reason=ROOT_REASON)
REPLAN_CHECK_BYTES = 1 << 20  # a re-planned Image must render the file's first bytes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``@pytest.mark.root`` skip with a visible reason when not root."""
    if is_root():
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


# -- both read paths for the serving tests (issue 10) ----------------------------

# Test modules (by basename prefix) whose every test runs twice: with the compiled read
# path (ext4gen's nbdkit filter in front of the plugin, as serve runs it) and with
# EXT4GEN_PURE_PYTHON=1, which the servers they start inherit.  The read-path module also
# runs a third time with EXT4GEN_NO_FILTER=1: the plugin's own compiled path, as nbdkit
# runs it without the filter.
BOTH_READ_PATHS = ("test_serve", "test_multi_export", "test_readpath_serve")
THREE_READ_PATHS = ("test_readpath_serve",)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    name = metafunc.module.__name__.rpartition(".")[2]
    if "read_path" in metafunc.fixturenames and name.startswith(BOTH_READ_PATHS):
        paths = ["compiled", "pure"] + (["nofilter"] if name.startswith(THREE_READ_PATHS) else [])
        metafunc.parametrize("read_path", paths, indirect=True)


@pytest.fixture(autouse=True)
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """"compiled" (the default everywhere), "pure" (EXT4GEN_PURE_PYTHON=1) or "nofilter"
    (compiled, without ext4gen's nbdkit filter: EXT4GEN_NO_FILTER=1)."""
    path = getattr(request, "param", "compiled")
    if path == "pure":
        monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("EXT4GEN_PURE_PYTHON", raising=False)
    if path == "nofilter":
        monkeypatch.setenv("EXT4GEN_NO_FILTER", "1")
    else:
        monkeypatch.delenv("EXT4GEN_NO_FILTER", raising=False)
    return path


@pytest.fixture
def long_used_at_once() -> Iterator[None]:
    """Serving leases and maps a source whose descriptor is still in use a second after it
    was opened (so a file read once gets neither); here, at once, so leases and mappings are
    in play in every test.  The images a test made go when it ends, with their descriptors,
    leases and mappings, not in a later test.  Without the extension, nothing to set."""
    import gc

    from ext4gen.render import fastpath

    if fastpath._fastread is not None:
        fastpath._fastread.set_lease_after(0)
    yield
    if fastpath._fastread is not None:
        fastpath._fastread.set_lease_after(1)
    gc.collect()


# -- the proof -----------------------------------------------------------------

# The session's ``ext4_image`` (tests/ get it from the ext4gen pytest plugin), for the many
# tests that call ``prove`` as a plain function (``from conftest import prove``).
_session_images: ImageBuilder | None = None


@pytest.fixture(autouse=True, scope="session")
def _images_for_plain_prove(ext4_image: ImageBuilder) -> Iterator[None]:
    global _session_images
    _session_images = ext4_image
    try:
        yield
    finally:
        _session_images = None


class Proof:
    """What ``prove`` built: the tree, the image file, and (planned on first use) the Image.

    The file comes from ``ext4_image``, which keeps no Image object, so tests
    that inspect the plan get a second plan of the same tree and options; it is
    checked against the file's first bytes, so it is the image that was proved.
    """

    def __init__(self, tree: Tree, options: ImageOptions, path: Path) -> None:
        self.tree, self.options, self.path = tree, options, path

    @functools.cached_property
    def image(self) -> Image:
        image = ext4gen.plan(self.tree, self.options)
        n = min(image.size, REPLAN_CHECK_BYTES)
        with open(self.path, "rb") as f:
            written = f.read(n)
        assert image.size == self.path.stat().st_size and image.read(0, n) == written, \
            "planning the same tree twice gave another image: planning is not deterministic"
        return image


Subject = Tree | tuple[Tree, ImageOptions] | dict[str, Any] | str | os.PathLike[str]


def build(subject: Subject, tmp_path: Path, *, options: ImageOptions | None = None,
          dedup: str | None = None, images: ImageBuilder | None = None) -> tuple[Tree, ImageOptions, Path]:
    """Load ``subject`` (tree, manifest document or manifest file); ``ext4_image`` writes the image.

    A document is written into ``tmp_path`` and loaded from there, so its relative
    ``source`` paths mean files in ``tmp_path``.  Never cached: the rw-mount
    probe and the lazily re-planned Image need a file no other test shares.
    """
    if isinstance(subject, tuple):
        tree, options = subject
    elif isinstance(subject, Tree):
        tree = subject
    else:
        if isinstance(subject, dict):
            manifest = tmp_path / "manifest.json"
            manifest.write_text(json.dumps(subject))
            subject = manifest
        tree, options = ext4gen.load(str(subject))
    options = options or ImageOptions()
    if dedup is not None:
        options = dataclasses.replace(options, dedup=dedup)
    images = images or _session_images
    if images is None:
        raise RuntimeError("prove() builds through the ext4_image fixture: call it from a test")
    return tree, options, images((tree, options), cache=False)


def prove(subject: Subject, tmp_path: Path, *, options: ImageOptions | None = None,
          dedup: str | None = None, check_content: bool = True, check_rw: bool = True,
          while_mounted: Callable[[str], None] | None = None,
          images: ImageBuilder | None = None) -> Proof:
    """Build (through ``ext4_image``), e2fsck, and (as root) compare the kernel's view with the tree.

    ``while_mounted(mountpoint)`` runs extra checks against the read-only mount.
    Without root the kernel half is skipped with a visible reason, after
    e2fsck has passed.  ``images`` defaults to the session's ``ext4_image``.
    """
    tree, options, path = build(subject, tmp_path, options=options, dedup=dedup, images=images)
    rc, complaints = e2fsck(str(path))
    assert rc == 0 and complaints == [], f"e2fsck -fn exit {rc}:\n" + "\n".join(complaints)
    if not is_root():
        pytest.skip(ROOT_REASON)
    with mounted(path) as mnt:
        diffs = compare_tree(tree, mnt, check_content=check_content)
        assert diffs == [], "kernel view differs:\n" + "\n".join(diffs[:40])
        if while_mounted is not None:
            while_mounted(mnt)
    if check_rw:
        assert_rw_mount_refused(path)
    return Proof(tree, options, path)


@pytest.fixture(name="prove")
def prove_fixture(ext4_image: ImageBuilder) -> Callable[..., Proof]:
    """``prove(subject, tmp_path, **kw)`` building through this session's ``ext4_image``."""
    return functools.partial(prove, images=ext4_image)


@pytest.fixture(autouse=True, scope="session")
def _no_leaked_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail loudly if an image under this session's temp dir is still attached.

    Only our own images count: other sessions may be mounting theirs right now.
    """
    base = str(tmp_path_factory.getbasetemp())
    yield
    leaked = [f for f in loop_backing_files() if f.startswith(base)]
    assert not leaked, f"leaked loop devices (still mounted or attached): {leaked}"
