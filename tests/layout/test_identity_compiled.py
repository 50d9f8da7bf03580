"""The identity digest's per-inode loop in C (``layout/_identity.c``) writes exactly the
bytes of its Python definition (``identity._digest_inodes``), for every kind of inode."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.trees import make_source_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ext4gen
from ext4gen.inputs.source import BuildChoices, load_source
from ext4gen.layout import identity, planner
from ext4gen.layout.planner import plan_tree
from ext4gen.model.options import ImageOptions
from ext4gen.model.sources import CallableSource, HostFileSource, InlineSource, ZeroSource
from ext4gen.model.times import MAX_TIME_NS, MIN_TIME_NS
from ext4gen.model.tree import FILE, SYMLINK

pytestmark = pytest.mark.skipif(identity._identity is None, reason="ext4gen.layout._identity is not built")


def _inputs(tree: ext4gen.Tree, options: ImageOptions, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """The (inodes, nodes) planning hands to identity_digest."""
    got: list[tuple] = []
    real = planner.identity_digest

    def capture(opts, inodes, nodes, content):
        got.append((inodes, nodes))
        return real(opts, inodes, nodes, content)

    with monkeypatch.context() as m:
        m.setattr(planner, "identity_digest", capture)
        plan_tree(tree, options)
    return got[0]


def _streams(inodes, nodes) -> tuple[bytes, bytes]:
    compiled: list[bytes] = []
    identity._identity.digest_inodes(
        lambda b: compiled.append(bytes(b)), inodes, nodes, identity._xattr_bytes,  # (a reused buffer)
        identity._source_bytes, InlineSource, (ZeroSource, HostFileSource), FILE, SYMLINK,
        identity.hashlib.sha256)
    python: list[bytes] = []
    identity._digest_inodes(python.append, inodes, nodes)
    return b"".join(compiled), b"".join(python)


def _same(tree: ext4gen.Tree, options: ImageOptions, monkeypatch: pytest.MonkeyPatch) -> bytes:
    compiled, python = _streams(*_inputs(tree, options, monkeypatch))
    assert compiled == python
    return compiled


def test_every_kind_of_inode_and_the_edges_of_time(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    # 1901 (negative ns: floor division) and 2446 (past 2**63 ns: Python's divmod)
    old = ext4gen.Meta(0o644, 7, 8, MIN_TIME_NS, MIN_TIME_NS + 1, -1, -(10**9))
    new = ext4gen.Meta(0o4755, 2**32 - 2, 1, MAX_TIME_NS, 2**63 + 5, 2**63 - 1, 10**9 - 1)
    tree.add("/a/inline", ext4gen.Node("file", old, source=InlineSource(b"text\n"),
                                       xattrs={b"user.k": b"v", b"trusted.x": b"\0"}))
    tree.add("/a/zeros", ext4gen.Node("file", new, source=ZeroSource(12345)))
    tree.add("/a/gen", ext4gen.Node("file", old, source=CallableSource(
        9000, lambda off, n: bytes(n), identity=("seed", 3), name="zeros-\udcff")))
    tree.add("/a/short", ext4gen.Node("symlink", new, target=b"inline"))
    tree.add("/a/long", ext4gen.Node("symlink", old, target=b"t" * 300))
    tree.add("/a/tty", ext4gen.Node("chardev", new, rdev=(4, 1)))
    tree.add("/a/disk", ext4gen.Node("blockdev", old, rdev=(4095, 2**20 - 1)))
    tree.add("/a/fifo", ext4gen.Node("fifo", new))
    tree.add("/a/sock", ext4gen.Node("socket", old))
    tree.add_hardlink("/b/again", "/a/inline", "/b/again")
    for i in range(400):  # one directory's entries past the C buffer (64 KiB) in one piece
        tree.add(f"/big/{i:03d}" + "n" * 200, ext4gen.Node("file", new, source=ZeroSource(i)))
    stream = _same(tree, ImageOptions(), monkeypatch)
    assert len(stream) > 80 * 400 + 400 * 200


def test_host_files_htrees_and_extent_trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_source_tree(tmp_path)
    tree, options = load_source(str(manifest), BuildChoices(dedup="content"))
    _same(tree, options, monkeypatch)


def test_the_digest_is_the_same_with_and_without_the_extension(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_source_tree(tmp_path)
    compiled = plan_tree(*load_source(str(manifest)))
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")
    python = plan_tree(*load_source(str(manifest)))
    assert (compiled.uuid, compiled.hash_seed) == (python.uuid, python.hash_seed)


NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=40).filter(
    lambda s: s not in (".", ".."))
TIMES = st.integers(MIN_TIME_NS, MAX_TIME_NS)


@st.composite
def trees(draw: st.DrawFn) -> ext4gen.Tree:
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, *(draw(TIMES) for _ in range(4))))
    metas = [ext4gen.Meta(draw(st.integers(0, 0o7777)), draw(st.integers(0, 2**32 - 1)),
                          draw(st.integers(0, 2**32 - 1)), *(draw(TIMES) for _ in range(4)))
             for _ in range(draw(st.integers(1, 4)))]  # shared and distinct Metas
    for name in draw(st.lists(NAMES, max_size=60, unique=True)):
        path = f"/{draw(st.sampled_from(['', 'd/', 'd/e/', 'f/']))}{name}"
        meta = draw(st.sampled_from(metas))
        kind = draw(st.sampled_from(["inline", "zero", "generator", "symlink", "chardev", "dir"]))
        if kind == "inline":
            node = ext4gen.Node("file", meta, source=InlineSource(draw(st.binary(max_size=6000))))
        elif kind == "zero":
            node = ext4gen.Node("file", meta, source=ZeroSource(draw(st.integers(0, 1 << 30))))
        elif kind == "generator":
            node = ext4gen.Node("file", meta, source=CallableSource(
                draw(st.integers(0, 1 << 20)), lambda off, n: bytes(n), identity=draw(st.integers())))
        elif kind == "symlink":
            node = ext4gen.Node("symlink", meta, target=draw(st.binary(min_size=1, max_size=120)
                                                              ).replace(b"\0", b"x"))
        elif kind == "chardev":
            node = ext4gen.Node("chardev", meta, rdev=(draw(st.integers(0, 4095)),
                                                       draw(st.integers(0, 2**20 - 1))))
        else:
            node = ext4gen.Node("dir", meta)
        if draw(st.integers(0, 4)) == 0:  # (user.* only where the kernel allows it)
            prefix = b"user." if node.kind in ("file", "dir") else b"trusted."
            node.xattrs = {prefix + draw(NAMES).encode(): draw(st.binary(max_size=50))}
        try:
            tree.add(path, node)
        except ext4gen.ManifestError:  # a parent that is not a directory: skip this one
            continue
    return tree


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(tree=trees(), dedup=st.sampled_from(["none", "content"]), inline=st.booleans())
def test_random_trees(tree: ext4gen.Tree, dedup: str, inline: bool, monkeypatch: pytest.MonkeyPatch):
    _same(tree, ImageOptions(dedup=dedup, inline_data=inline), monkeypatch)
