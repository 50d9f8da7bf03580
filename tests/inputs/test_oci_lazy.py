"""Issue 13: layers are read lazily — one index span per read, no decompressed copy, pinned blobs.

The image is made by umoci (gzip) and copied by skopeo (zstd, docker-archive with
plain layers).  Reads go through ``Image.read``, the path nbdkit's pread takes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from helpers.oci import descriptor, make_small, read_json, run

import ext4gen
from ext4gen.errors import SourceError
from ext4gen.layout.dedup import BLOCK_SIZE
from ext4gen.model.layer_sources import LayerMemberSource
from ext4gen.model.seekable import GzipLayer, LayerStats, ZstdLayer
from ext4gen.model.tree import Tree
from ext4gen.verify import compare_tree, e2fsck, loop_mount

BIG = os.urandom(10 << 20) + b"a compressible line of text\n" * 200_000
SMALL = b"the one file this test reads\n" * 100


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lazy")
    return make_small(root, [{"data/big": BIG, "data/small": SMALL, "data/zz-last": b"last\n" * 3000}])


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def read_file_through_image(image: ext4gen.Image, tree: Tree, *path: bytes) -> bytes:
    """Read one file's data blocks as a client would (Image.read), return its bytes."""
    node = tree.lookup(list(path))
    assert node is not None and node.source is not None
    start = image.plan.geometry.data_start
    out = bytearray(node.size)
    for run_ in image.plan.runs:
        if run_.source is node.source:
            data = image.read((start + run_.block) * BLOCK_SIZE, run_.nblocks * BLOCK_SIZE)
            out[run_.offset : run_.offset + run_.nbytes] = data[: run_.nbytes]
    return bytes(out)


def spans(layer: GzipLayer) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < layer.size:
        out.append(layer.span_of(pos))
        pos = out[-1][1]
    return out


def test_sequential_reading_inflates_each_span_once(layout: Path) -> None:
    tree, options = ext4gen.load(f"oci:{layout}:v1", dedup="none")
    image = ext4gen.plan(tree, options)
    node = tree.lookup([b"data", b"big"])
    assert node is not None and isinstance(node.source, LayerMemberSource)
    layer = node.source.layer
    assert isinstance(layer, GzipLayer)
    layer.stats = LayerStats()
    assert read_file_through_image(image, tree, b"data", b"big") == BIG
    touched = [s for s in spans(layer) if s[1] > node.source.base and s[0] < node.source.base + len(BIG)]
    assert layer.stats.restarts == len(touched)
    assert layer.stats.decompressed == sum(b - a for a, b in touched)


def test_reading_one_file_decompresses_at_most_one_span(layout: Path, cache: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where a decompressed copy would go
    started = time.time()
    tree, options = ext4gen.load(f"oci:{layout}:v1", dedup="none")  # dedup would read every file
    image = ext4gen.plan(tree, options)
    node = tree.lookup([b"data", b"small"])
    assert node is not None and isinstance(node.source, LayerMemberSource)
    src, layer = node.source, node.source.layer
    assert isinstance(layer, GzipLayer) and layer.span_count >= 4
    assert src.base > 10 << 20  # behind the big file: a plain gzip reader would inflate all of that
    layer.stats = LayerStats()
    assert read_file_through_image(image, tree, b"data", b"small") == SMALL
    span_start, span_end = layer.span_of(src.base)
    assert span_end >= src.base + src.size  # the file lies in one span
    cstart, cend = layer.compressed_span_of(src.base)
    assert layer.stats.decompressed == span_end - span_start  # that span, once
    assert layer.stats.decompressed <= max(b - a for a, b in spans(layer)) + src.size
    assert layer.stats.decompressed < layer.size // 4 and layer.stats.restarts == 1
    readbuf = 64 << 10  # what zran reads ahead of the inflater
    assert 0 < layer.stats.compressed_read <= (cend - cstart) + 2 * readbuf
    # reading it again costs nothing: the span is kept in memory
    assert read_file_through_image(image, tree, b"data", b"small") == SMALL
    assert layer.stats.restarts == 1
    # nothing the size of the decompressed layer was written where ext4gen writes
    big = layer.size // 2
    for top in (str(cache), str(private_tmp), "/var/tmp/ext4gen-cache"):
        for dirpath, _dirs, files in os.walk(top):
            for f in files:
                p = os.path.join(dirpath, f)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                assert not (st.st_mtime >= started and st.st_size >= big), p


def test_a_blob_changed_while_served_is_an_error_not_stale_bytes(layout: Path, tmp_path: Path) -> None:
    copy = tmp_path / "img"
    run("cp", "-a", layout, copy)
    tree, options = ext4gen.load(f"oci:{copy}:v1", dedup="none")
    image = ext4gen.plan(tree, options)
    assert read_file_through_image(image, tree, b"data", b"small") == SMALL
    manifest = read_json(copy / "blobs/sha256" / descriptor(copy, "v1")["digest"].split(":")[1])
    blob = copy / "blobs/sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    with open(blob, "r+b") as f:  # same bytes, rewritten: the pin (mtime, ctime) no longer holds
        first = f.read(1)
        f.seek(0)
        f.write(first)
    with pytest.raises(SourceError, match="source changed since the image was planned"):
        read_file_through_image(image, tree, b"data", b"zz-last")


@pytest.mark.parametrize("form", ["zstd", "docker-archive"])
def test_other_layer_kinds_read_right_in_any_order(form: str, layout: Path, tmp_path: Path) -> None:
    """zstd (one frame: restarts from the frame start when reading backwards) and plain layers."""
    if form == "zstd":
        target = tmp_path / "z"
        run("skopeo", "copy", "-q", "--dest-compress-format", "zstd", f"oci:{layout}:v1", f"oci:{target}:v1")
        source = f"oci:{target}:v1"
    else:
        target = tmp_path / "d.tar"
        run("skopeo", "copy", "-q", f"oci:{layout}:v1", f"docker-archive:{target}")
        source = f"docker-archive:{target}"
    tree, options = ext4gen.load(source, dedup="none")
    image = ext4gen.plan(tree, options)
    assert read_file_through_image(image, tree, b"data", b"zz-last") == b"last\n" * 3000
    assert read_file_through_image(image, tree, b"data", b"small") == SMALL  # backwards
    assert read_file_through_image(image, tree, b"data", b"big") == BIG
    node = tree.lookup([b"data", b"big"])
    assert node is not None
    if form == "zstd":
        assert isinstance(node.source, LayerMemberSource) and isinstance(node.source.layer, ZstdLayer)
        assert node.source.layer.stats.restarts >= 2
    else:
        assert not isinstance(node.source, LayerMemberSource)  # served by offset from the archive


def test_zstd_members_dedup_whole_by_digest_without_reading(tmp_path: Path) -> None:
    """In a zstd layer, planning reads nothing: files are hashed in the scan, in tar order."""
    copy_of = os.urandom(5 * BLOCK_SIZE + 7)
    src = make_small(tmp_path, [{"a/one": copy_of, "a/other": b"x" * 9000},
                                {"b/two": copy_of, "b/three": copy_of + b"!"}])
    target = tmp_path / "z"
    run("skopeo", "copy", "-q", "--dest-compress-format", "zstd", f"oci:{src}:v2", f"oci:{target}:v2")
    tree, options = ext4gen.load(f"oci:{target}:v2")  # dedup "content", the default
    image = ext4gen.plan(tree, options)
    layers = {n.source.layer for n in (tree.lookup([b"a", b"one"]), tree.lookup([b"b", b"two"]))
              if n is not None and isinstance(n.source, LayerMemberSource)}
    assert len(layers) == 2 and all(isinstance(x, ZstdLayer) for x in layers)
    assert sum(x.stats.decompressed for x in layers) == 0  # planning read no file data
    assert image.plan.dedup_stats.shared_references == 6  # b/two shares a/one's 6 blocks
    built = tmp_path / "z.img"
    image.write(built)
    assert e2fsck(str(built)) == (0, [])
    if os.geteuid() == 0:
        with loop_mount(str(built)) as mnt:
            assert compare_tree(tree, mnt) == []  # the shared file reads right through its extents
            assert Path(mnt, "b/two").read_bytes() == copy_of
