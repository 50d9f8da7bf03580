"""Remote entries in manifests: one-line errors naming the key, plans made without fetching,
dedup of declared digests, holes.  No server is involved: every case here either fails
before any request or declares everything a plan needs (so any request would be a bug:
the URLs point at a port where nothing listens)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.origins import free_port

import ext4gen
from ext4gen.errors import ManifestError
from ext4gen.model.remote import RemoteSource

SHA = "ab" * 32
DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail the test


def remote(**kw: object) -> dict:
    return {"url": f"{DEAD}/x", "size": 10, "sha256": SHA, **kw}


BAD = [
    ("https-only", '"/f".url', {"/f": {"url": "http://example.com/x", "size": 1, "sha256": SHA}}),
    ("not-a-url", '"/f".url', {"/f": {"url": "ftp://h/x", "size": 1, "sha256": SHA}}),
    ("url-type", '"/f".url', {"/f": {"url": 7, "size": 1, "sha256": SHA}}),
    ("s3-form", '"/f".s3', {"/f": {"s3": "s3://bucket", "size": 1, "sha256": SHA}}),
    ("two-places", '"/f".s3', {"/f": {"url": f"{DEAD}/x", "s3": "s3://b/k", "size": 1}}),
    ("with-text", '"/f".text', {"/f": remote(text="x")}),
    ("with-source", '"/f".source', {"/f": remote(source="x")}),
    ("digest-short", '"/f".sha256', {"/f": remote(sha256="abc")}),
    ("digest-hex", '"/f".sha256', {"/f": remote(sha256="zz" * 32)}),
    ("digest-alone", '"/f".sha256', {"/f": {"type": "file", "sha256": SHA}}),
    ("size-negative", '"/f".size', {"/f": remote(size=-1)}),
    ("chunks-shape", '"/f".chunks', {"/f": remote(chunks=[SHA])}),
    ("chunks-size", '"/f".chunks.size', {"/f": remote(chunks={"size": 1000, "sha256": [SHA]})}),
    ("chunks-count", '"/f".chunks.sha256',
     {"/f": remote(size=200_000, chunks={"size": 65536, "sha256": [SHA]})}),
    ("chunks-digest", '"/f".chunks.sha256[1]',
     {"/f": remote(size=70_000, chunks={"size": 65536, "sha256": [SHA, "x"]})}),
    ("holes-align", '"/f".holes[0]', {"/f": remote(size=10_000, holes=[[1, 4096]])}),
    ("holes-order", '"/f".holes[1]',
     {"/f": remote(size=20_000, holes=[[8192, 12288], [0, 4096]])}),
    ("holes-past-end", '"/f".holes[0]', {"/f": remote(size=5000, holes=[[4096, 8192]])}),
    ("dir-with-url", '"/d".url', {"/d": {"type": "dir", "url": f"{DEAD}/x"}}),
    ("allow-http-type", "image.allow_http", {"image": {"allow_http": "yes"}}),
    ("endpoint-url", "image.s3_endpoint", {"image": {"s3_endpoint": "localhost:9000"}}),
    ("timeout", "image.remote_timeout", {"image": {"remote_timeout": 0}}),
    ("prefetch", "image.prefetch", {"image": {"prefetch": ["relative/path"]}}),
    ("unreachable-head", '"/f".url', {"/f": {"url": f"{DEAD}/x"}, "image": {"remote_timeout": 0.3}}),
]


@pytest.mark.parametrize(("doc", "key"), [(d, k) for _i, k, d in BAD], ids=[i for i, _k, _d in BAD])
def test_bad_remote_entry_names_its_key(doc: dict, key: str) -> None:
    with pytest.raises(ManifestError) as info:
        ext4gen.parse_manifest(json.loads(json.dumps(doc)))
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"/f": {"url": "http://example.com/x", "size": 1, "sha256": SHA}}))
    proc = run_cli("build", m, "-o", tmp_path / "out.img")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and '"/f".url' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_http_allowed_when_asked() -> None:
    doc = {"/f": {"url": "http://example.com/x", "size": 5, "sha256": SHA},
           "image": {"allow_http": True}}
    tree, _opts = ext4gen.parse_manifest(doc)
    assert isinstance(tree.lookup([b"f"]).source, RemoteSource)


def test_declared_digests_plan_and_dedup_without_fetching() -> None:
    size = 3 << 20
    chunks = {"size": 1 << 20, "sha256": [SHA] * 3}
    tree, opts = ext4gen.parse_manifest({
        "/a": {"url": f"{DEAD}/a", "size": size, "sha256": SHA},
        "/b": {"s3": "s3://bucket/b", "size": size, "sha256": SHA},  # same content elsewhere
        "/c": {"url": f"{DEAD}/c", "size": size, "chunks": chunks},
        "/d": {"url": f"{DEAD}/d", "size": size, "chunks": chunks},
        "/e": {"url": f"{DEAD}/e", "size": 100, "sha256": "cd" * 32},
    })
    image = ext4gen.plan(tree, opts)
    st = image.plan.dedup_stats
    ext = {p: image.plan.physical_extents(ip) for p, ip in image.plan.paths() if ip.source}
    assert ext[b"/a"] == ext[b"/b"] and ext[b"/c"] == ext[b"/d"]
    assert ext[b"/a"] != ext[b"/c"]
    assert ext[b"/e"]  # small remote files are never inline: they stay in their own blocks
    assert st.shared_references == 2 * 768 and st.bytes_hashed == 0  # nothing was read


def test_holes_are_not_allocated() -> None:
    tree, opts = ext4gen.parse_manifest({
        "/f": {"url": f"{DEAD}/f", "size": 40_000, "sha256": SHA, "holes": [[4096, 16384], [36864, 40000]]},
    })
    src = tree.lookup([b"f"]).source
    assert src.data_ranges() == [(0, 4096), (16384, 36864)]
    image = ext4gen.plan(tree, opts)
    ip = next(ip for p, ip in image.plan.paths() if p == b"/f")
    assert sum(n for _l, n, _p in ip.extents) == 1 + 5


def test_identity_is_the_declared_digest() -> None:
    data = b"x" * 100
    digest = hashlib.sha256(data).hexdigest()
    tree, _ = ext4gen.parse_manifest({"/f": {"url": f"{DEAD}/f", "size": 100, "sha256": digest}})
    assert tree.lookup([b"f"]).source.identity == ("sha256", bytes.fromhex(digest))
