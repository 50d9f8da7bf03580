"""A plan written and read back by layout/plan_codec.py serves exactly what the plan served."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from helpers.trees import make_source_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ext4gen
from ext4gen.inputs.source import BuildChoices, plan_source
from ext4gen.layout.plan import Plan
from ext4gen.layout.plan_codec import CHUNK, dump_plan, load_plan
from ext4gen.layout.planner import plan_tree
from ext4gen.model.options import ImageOptions
from ext4gen.model.sources import HostFileSource
from ext4gen.render.image import DATA, META, Image


def _round_trip(plan: Plan) -> Plan:
    buf = io.BytesIO()
    dump_plan(buf, plan)
    buf.seek(0)
    return load_plan(buf)


def _served(image: Image) -> list[object]:
    """Every region as served: metadata rendered, data by where its bytes come from."""
    out: list[object] = []
    for r in image._regions:
        if r.kind == META:
            out.append(image.read(r.start, r.end - r.start))
        elif r.kind == DATA:
            src = r.source  # type: ignore[attr-defined]
            host = src.host_file()
            out.append((r.start, r.end, type(src).__name__, src.describe(), src.size, r.source_offset,  # type: ignore[attr-defined]
                        r.nbytes, host and (host.path, host.pin, host.sparse)))  # type: ignore[attr-defined]
        else:
            out.append((r.kind, r.start, r.end))
    return out


def _same_service(plan: Plan) -> Plan:
    back = _round_trip(plan)
    assert _served(Image(back)) == _served(Image(plan))
    return back


def test_a_manifest_over_host_files_round_trips(tmp_path: Path):
    manifest = make_source_tree(tmp_path)  # htrees, extent trees, hard links, holes, shared blocks
    image, _tree = plan_source(str(manifest))
    back = _same_service(image.plan)
    assert len(back.inodes) == len(image.plan.inodes)
    assert any(ip is not None and ip.htree is not None for ip in back.inodes)


def test_tar_members_still_share_one_host_file(tmp_path: Path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(40):
        (src / "d" / f"f{i}").write_bytes(os.urandom(5000 + i))
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname=".")
    image, _tree = plan_source(str(tar), BuildChoices(dedup="none"))
    back = _same_service(image.plan)
    files = {id(ip.source.file) for ip in back.inodes
             if ip is not None and isinstance(ip.source, HostFileSource)}
    assert len(files) == 1


def test_metadata_comes_back_as_one_object_per_distinct_value():
    meta = ext4gen.Meta(0o644, 0, 0, 10**18, 10**18, 10**18, 10**18)
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    for i in range(3 * CHUNK):
        # equal values in separate objects, as a manifest's defaults give them
        m = ext4gen.Meta(meta.perm, 0, 0, meta.atime, meta.mtime, meta.ctime, meta.crtime)
        tree.add(f"/d{i % 7}/f{i}", ext4gen.Node("file", m, source=ext4gen.ZeroSource(i)))
    back = _same_service(plan_tree(tree, ImageOptions()))
    files = [ip for ip in back.inodes if ip is not None and ip.kind == "file"]
    assert len({id(ip.meta) for ip in files}) == 1


NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=30).filter(
    lambda s: s not in (".", ".."))


@st.composite
def trees(draw: st.DrawFn) -> ext4gen.Tree:
    base = draw(st.integers(0, 2**40))
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, base, base, base, base))
    dirs = ["/"] + [f"/{n}" for n in draw(st.sets(NAMES, max_size=4))]
    for d in dirs[1:]:
        tree.add(d, ext4gen.Node("dir", ext4gen.Meta(0o750, 1, 2, base, base + 1, base, base)))
    files: list[str] = []
    for i, name in enumerate(draw(st.lists(NAMES, max_size=160, unique=True))):
        path = f"{draw(st.sampled_from(dirs)).rstrip('/')}/{name}"
        if path in dirs:
            continue
        perm = draw(st.sampled_from([0o644, 0o600, 0o4755]))
        meta = ext4gen.Meta(perm, i % 3, 0, base, base + i, base, base)
        kind = draw(st.sampled_from(["inline", "zero", "symlink", "fifo", "chardev", "link"]))
        if kind == "inline":
            node = ext4gen.Node("file", meta, source=ext4gen.InlineSource(draw(st.binary(max_size=9000))))
            if i % 5 == 0:
                node.xattrs = {b"user.i": str(i).encode() * draw(st.integers(0, 40))}
        elif kind == "zero":
            node = ext4gen.Node("file", meta, source=ext4gen.ZeroSource(draw(st.integers(0, 1 << 24))))
        elif kind == "symlink":
            target = draw(st.binary(min_size=1, max_size=200)).replace(b"\0", b"x")
            node = ext4gen.Node("symlink", meta, target=target)
        elif kind == "chardev":
            rdev = (draw(st.integers(0, 4095)), draw(st.integers(0, 1 << 20)))
            node = ext4gen.Node("chardev", meta, rdev=rdev)
        elif kind == "link" and files:
            tree.add_hardlink(path, draw(st.sampled_from(files)), path)
            continue
        else:
            node = ext4gen.Node("fifo", meta)
        tree.add(path, node)
        if node.kind == "file":
            files.append(path)
    return tree


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), dedup=st.sampled_from(["none", "content"]), inline=st.booleans())
def test_random_trees_round_trip(tree: ext4gen.Tree, dedup: str, inline: bool):
    _same_service(plan_tree(tree, ImageOptions(dedup=dedup, inline_data=inline)))


def test_a_restored_plan_passes_e2fsck(tmp_path: Path):
    manifest = make_source_tree(tmp_path)
    image, _tree = plan_source(str(manifest))
    out = tmp_path / "img"
    with open(out, "wb") as f:
        f.write(Image(_round_trip(image.plan)).read(0, image.size))
    r = subprocess.run(["e2fsck", "-fn", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
