"""Issue 13: layer application against a model of the OCI image spec (layer.md), by Hypothesis.

Random stacks of layers — files, directories, hard links, ``.wh.NAME`` whiteouts and
``.wh..wh..opq`` opaque markers over a few names — are written as tars and applied
with the real scan and apply path; the resulting tree (kinds, bytes, which names
share an inode) must equal the model's, and inputs the model rejects (a parent that
is a file, a hard link to nothing) must be refused with a one-line ManifestError.
The umoci/skopeo tests prove the same semantics against an independent tool; this
one reaches the orderings no tool writes on purpose.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ext4gen.errors import ManifestError
from ext4gen.inputs.layer_scan import scan_layer
from ext4gen.inputs.layers import apply_layer
from ext4gen.inputs.oci_layout import Layer
from ext4gen.model.blobs import Blob
from ext4gen.model.sources import HostFile
from ext4gen.model.tree import DIR, FILE, Meta, Tree

NAMES = ("a", "b")
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map(tuple)
OP = st.tuples(st.sampled_from(["file", "file", "dir", "wh", "opq", "link"]), PATHS, PATHS,
               st.binary(max_size=12))
LAYERS = st.lists(st.lists(OP, min_size=1, max_size=5, unique_by=lambda op: op[1]), min_size=1, max_size=4)
# Stacks the random search reaches rarely, always run: an opaque directory, a whiteout of a
# directory, a file over a directory and back, a link whose other name is replaced later.
EXAMPLES = (
    [[("file", ("a", "b"), ("a",), b"x"), ("file", ("b",), ("a",), b"y")],
     [("opq", ("a",), ("a",), b""), ("file", ("a", "a"), ("a",), b"z")]],
    [[("file", ("a", "b"), ("a",), b"x")], [("wh", ("a",), ("a",), b"")]],
    [[("file", ("a", "b"), ("a",), b"x")], [("file", ("a",), ("a",), b"f")],
     [("dir", ("a",), ("a",), b""), ("file", ("a", "a"), ("a",), b"g")]],
    [[("file", ("a",), ("a",), b"1"), ("link", ("b",), ("a",), b"")], [("file", ("a",), ("a",), b"2")]],
)


class Rejected(Exception):
    pass


def model(layers: list[list[tuple]], fix: bool = False) -> dict[tuple, tuple]:  # type: ignore[type-arg]
    """path -> ("dir",) or ("file", bytes, identity): the spec's result, or Rejected.

    ``fix`` points each hard link at a file that exists when it is read (the first
    one), or turns it into a file, in place: random targets would mostly dangle.
    """
    state: dict[tuple, tuple] = {}  # type: ignore[type-arg]
    ident = 0

    def drop(p: tuple, strictly_under: bool = False) -> None:  # type: ignore[type-arg]
        for q in [q for q in state if q[: len(p)] == p and (len(q) > len(p) or not strictly_under)]:
            del state[q]

    for ops in layers:
        for kind, p, _t, _d in ops:
            if kind == "opq" and state.get(p, ("",))[0] == "dir":
                drop(p, strictly_under=True)
        for kind, p, _t, _d in ops:
            if kind == "wh":
                drop(p)
        for j, (kind, p, t, data) in enumerate(ops):
            if kind == "link" and fix and state.get(t, ("",))[0] != "file":
                files = sorted(q for q, v in state.items() if v[0] == "file")
                ops[j] = ("link", p, files[0], data) if files else ("file", p, t, data)
                kind, p, t, data = ops[j]
            if kind in ("wh", "opq"):
                continue
            for i in range(1, len(p)):
                q = p[:i]
                if q in state and state[q][0] != "dir":
                    raise Rejected
                state.setdefault(q, ("dir",))
            if kind == "dir":
                if state.get(p, ("",))[0] != "dir":
                    drop(p)
                    state[p] = ("dir",)
            elif kind == "file":
                drop(p)
                ident += 1
                state[p] = ("file", data, ident)
            else:
                if state.get(t, ("",))[0] != "file":
                    raise Rejected
                if p != t:
                    target = state[t]
                    drop(p)
                    state[p] = target
    return state


def write_layer(path: Path, ops: list[tuple]) -> Layer:  # type: ignore[type-arg]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, p, t, data in ops:
            name = "/".join(p)
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind == "file":
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, "/".join(t)
                tf.addfile(ti)
            else:
                marker = ".wh..wh..opq" if kind == "opq" else ".wh." + p[-1]
                base = p if kind == "opq" else p[:-1]
                tf.addfile(tarfile.TarInfo("/".join((*base, marker))))
    raw = buf.getvalue()
    path.write_bytes(raw)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Layer(Blob(HostFile(str(path)), 0, len(raw), digest, str(path)),
                 "application/vnd.oci.image.layer.v1.tar", "")


def tree_state(tree: Tree) -> dict[tuple, tuple]:  # type: ignore[type-arg]
    out: dict[tuple, tuple] = {}  # type: ignore[type-arg]
    ids: dict[int, int] = {}

    def walk(node, path: tuple) -> None:  # type: ignore[no-untyped-def,type-arg]
        for name, child in (node.children or {}).items():
            p = (*path, name.decode())
            if child.kind == DIR:
                out[p] = ("dir",)
                walk(child, p)
            else:
                assert child.kind == FILE
                buf = bytearray(child.size)
                child.source.readinto(memoryview(buf), 0)
                out[p] = ("file", bytes(buf), ids.setdefault(id(child), len(ids)))

    walk(tree.root, ())
    return out


def same_links(state: dict[tuple, tuple]) -> set[frozenset]:  # type: ignore[type-arg]
    groups: dict[object, set] = {}  # type: ignore[type-arg]
    for p, v in state.items():
        if v[0] == "file":
            groups.setdefault(v[2], set()).add(p)
    return {frozenset(g) for g in groups.values()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=LAYERS)
@example(layers=EXAMPLES[0])
@example(layers=EXAMPLES[1])
@example(layers=EXAMPLES[2])
@example(layers=EXAMPLES[3])
def test_layers_apply_as_the_spec_says(layers: list[list[tuple]], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as d:
        monkeypatch.setenv("EXT4GEN_CACHE", str(Path(d) / "cache"))
        try:
            want = model(layers, fix=True)
        except Rejected:  # a parent that is a file: the fixed stack is still refused
            want = None
        tree = Tree(Meta(0o755, 0, 0, 0, 0, 0, 0))
        try:
            for i, ops in enumerate(layers):
                apply_layer(tree, scan_layer(write_layer(Path(d) / f"l{i}.tar", ops)), f"layer{i}")
        except ManifestError as e:
            assert want is None, f"refused a valid stack: {e}"
            assert "\n" not in str(e)
            return
        assert want is not None, "accepted a stack the model rejects"
        got = tree_state(tree)
        assert {p: v[:2] for p, v in got.items()} == {p: v[:2] for p, v in want.items()}
        assert same_links(got) == same_links(want)
