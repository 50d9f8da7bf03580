"""Issue 13: SOURCE forms of container images, their refusals, platforms, cache and dedup.

Images are made by umoci; the tests that need a malformed image edit its JSON (a
new manifest or index blob with its own correct digest), since no tool writes those.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest
from helpers.oci import descriptor, make_small, read_json, run, write_blob

import ext4gen
from ext4gen.cli import main
from ext4gen.errors import ManifestError
from ext4gen.inputs import layer_scan
from ext4gen.inputs.oci import absolute_source, is_oci_source, open_image, split_source
from ext4gen.layout.dedup import BLOCK_SIZE

RANDOM = os.urandom(3 * BLOCK_SIZE + 100)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def layout(tmp_path: Path, cache: Path) -> Path:
    return make_small(tmp_path, [
        {"etc/one": b"one\n", "data/r": RANDOM},
        {"etc/two": b"two\n", "copy/r": RANDOM, "etc/one": b"one, replaced\n"},
    ])


def names(tree: ext4gen.Tree, *path: bytes) -> list[bytes]:
    node = tree.lookup(list(path))
    assert node is not None and node.children is not None
    return sorted(node.children)


def test_source_strings_split_as_containers_transports_name_them(tmp_path: Path) -> None:
    assert is_oci_source("oci:x") and is_oci_source("oci-archive:a.tar:v1")
    assert is_oci_source("docker-archive:d.tar") and not is_oci_source("x.toml")
    assert not is_oci_source("/abs/oci:x") and not is_oci_source("oci")
    assert split_source("oci:dir:v1") == ("oci", "dir", "v1")
    assert split_source("oci:dir") == ("oci", "dir", "")
    assert split_source("oci:a/b:c/d") == ("oci", "a/b:c/d", "")  # "/" in a tail: part of the path
    (tmp_path / "we:ird").mkdir()
    assert split_source(f"oci:{tmp_path}/we:ird") == ("oci", f"{tmp_path}/we:ird", "")
    assert absolute_source("oci:rel:v1") == f"oci:{os.getcwd()}/rel:v1"


def test_tags_select_the_image(layout: Path) -> None:
    t1, _ = ext4gen.load(f"oci:{layout}:v1")
    t2, _ = ext4gen.load(f"oci:{layout}:v2")
    assert names(t1) == [b"data", b"etc"] and names(t1, b"etc") == [b"one"]
    assert names(t2) == [b"copy", b"data", b"etc"] and names(t2, b"etc") == [b"one", b"two"]


def test_manifest_import_of_an_image_under_a_target(layout: Path, tmp_path: Path) -> None:
    m = tmp_path / "m.toml"
    m.write_text(f'[[import]]\nsource = "oci:{os.path.relpath(layout, tmp_path)}:v2"\ntarget = "/srv"\n'
                 '["/srv/etc/extra"]\ntext = "x"\n')
    tree, _ = ext4gen.load(str(m))
    assert names(tree, b"srv", b"etc") == [b"extra", b"one", b"two"]


@pytest.mark.parametrize("case", ["missing_ref", "ambiguous", "unknown_media_type", "digest_mismatch",
                                  "missing_blob", "not_a_layout", "wrong_transport"])
def test_bad_images_fail_in_one_line(case: str, layout: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    source, needle = f"oci:{layout}:v2", ""
    manifest = read_json(layout / "blobs/sha256" / descriptor(layout, "v2")["digest"].split(":")[1])
    layer = manifest["layers"][-1]["digest"].split(":")[1]
    if case == "missing_ref":
        source, needle = f"oci:{layout}:nope", "no image named 'nope' (references: v0, v1, v2)"
    elif case == "ambiguous":
        source, needle = f"oci:{layout}", "3 images; name one as SOURCE:REF (v0, v1, v2)"
    elif case == "unknown_media_type":
        manifest["layers"][-1]["mediaType"] = "application/x-unheard-of"
        digest, size = write_blob(layout, manifest)
        index = read_json(layout / "index.json")
        index["manifests"] = [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": digest, "size": size}]
        (layout / "index.json").write_text(json.dumps(index))
        source, needle = f"oci:{layout}", "unknown media type 'application/x-unheard-of'"
    elif case == "digest_mismatch":
        blob = layout / "blobs/sha256" / layer
        data = bytearray(blob.read_bytes())
        data[-9] ^= 0xFF  # the gzip trailer's CRC: still gzip, not the blob its name says
        blob.write_bytes(bytes(data))
        needle = f"blob sha256:{layer}: digest mismatch"
    elif case == "missing_blob":
        (layout / "blobs/sha256" / layer).unlink()
        needle = f"missing blob sha256:{layer}"
    elif case == "not_a_layout":
        source, needle = f"oci:{tmp_path}", "not an OCI image layout (no index.json)"
    elif case == "wrong_transport":
        source, needle = f"oci-archive:{layout}", "is a directory; for an OCI layout use oci:"
    with pytest.raises(ManifestError) as e:
        ext4gen.load(source)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert main(["build", source, "-o", str(tmp_path / "x.img")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_a_multi_platform_index_picks_the_host_unless_told(layout: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    other = "s390x" if host != "s390x" else "amd64"
    v1, v2 = descriptor(layout, "v1"), descriptor(layout, "v2")
    nested, size = write_blob(layout, {"schemaVersion": 2, "manifests": [
        {**v1, "annotations": {}, "platform": {"os": "linux", "architecture": host}},
        {**v2, "annotations": {}, "platform": {"os": "linux", "architecture": other, "variant": "v9"}},
    ]})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested, "size": size,
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
    assert names(ext4gen.load(f"oci:{layout}:multi")[0], b"etc") == [b"one"]
    monkeypatch.setenv("EXT4GEN_PLATFORM", f"linux/{other}")
    assert names(ext4gen.load(f"oci:{layout}:multi")[0], b"etc") == [b"one", b"two"]
    monkeypatch.delenv("EXT4GEN_PLATFORM")
    assert main(["build", f"oci:{layout}:multi", "--platform", f"linux/{other}/v9",
                 "-o", str(tmp_path / "o.img"), "-q"]) == 0
    with pytest.raises(ManifestError, match=r"no image for platform linux/mips \(has: linux/"):
        open_image(f"oci:{layout}:multi", "linux/mips")


def test_dedup_across_layers_and_shadowed_files_cost_nothing(layout: Path) -> None:
    """data/r (layer 1) and copy/r (layer 2) share blocks; layer 1's etc/one is never planned."""
    tree, options = ext4gen.load(f"oci:{layout}:v2")
    image = ext4gen.plan(tree, options)
    s = image.plan.dedup_stats
    assert s.shared_references == 4 and s.unique_blocks == s.data_blocks_referenced - 4
    planned = {id(r.source) for r in image.plan.runs}
    live = set()
    stack = [tree.root]
    while stack:
        n = stack.pop()
        if n.children:
            stack.extend(n.children.values())
        elif n.source is not None:
            live.add(id(n.source))
    assert planned <= live  # nothing shadowed by a later layer was ever read or placed
    one = tree.lookup([b"etc", b"one"])
    assert one is not None and one.size == len(b"one, replaced\n")


def test_the_cache_holds_indexes_and_spares_the_second_scan(layout: Path, cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = ext4gen.plan(*ext4gen.load(f"oci:{layout}:v2"))
    files = sorted(p.name for p in (cache / "index").iterdir())
    assert files and all(f.endswith((".json", ".gzidx")) for f in files)
    sizes = sum(p.stat().st_size for p in (cache / "index").iterdir())
    assert sizes < 200_000  # indexes (a 32 KiB window per checkpoint), never layer data

    def no_scan(*_a: object) -> None:
        raise AssertionError("scanned a layer whose index is cached")

    monkeypatch.setattr(layer_scan, "_scan", no_scan)
    second = ext4gen.plan(*ext4gen.load(f"oci:{layout}:v2"))
    assert second.read(0, second.size) == first.read(0, first.size)


def test_a_cached_index_never_vouches_for_changed_bytes(layout: Path) -> None:
    ext4gen.load(f"oci:{layout}:v2")  # fills the cache
    manifest = read_json(layout / "blobs/sha256" / descriptor(layout, "v2")["digest"].split(":")[1])
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-9] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="digest mismatch"):
        ext4gen.load(f"oci:{layout}:v2")


def test_docker_archive_with_tags(layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "d.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:v2", f"docker-archive:{archive}:example/small:v2")
    t, _ = ext4gen.load(f"docker-archive:{archive}")
    assert names(t, b"etc") == [b"one", b"two"]
    assert names(ext4gen.load(f"docker-archive:{archive}:example/small:v2")[0], b"etc") == [b"one", b"two"]
    assert names(ext4gen.load(f"docker-archive:{archive}:@0")[0], b"etc") == [b"one", b"two"]
    with pytest.raises(ManifestError, match="no image named 'other:v1'"):
        ext4gen.load(f"docker-archive:{archive}:other:v1")


def test_inspect_shows_the_config_and_the_layer_table(layout: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import gzip
    import io
    import tarfile

    run("umoci", "config", "--image", f"{layout}:v2", "--config.entrypoint", "/bin/app",
        "--config.cmd", "--flag", "--config.env", "A=1", "--config.label", "k=v")
    assert main(["inspect", f"oci:{layout}:v2"]) == 0
    out = capsys.readouterr().out
    for line in ('entrypoint:     ["/bin/app"]', 'cmd:            ["--flag"]', "env:            A=1",
                 "labels:         k=v", "layers (2, bottom first; 0 lower entries removed by whiteouts):"):
        assert line in out, out
    manifest = read_json(layout / "blobs/sha256" / descriptor(layout, "v2")["digest"].split(":")[1])
    rows = [r.split() for r in out.splitlines() if r.strip()[:2] in ("1 ", "2 ")]
    assert len(rows) == 2
    for row, desc in zip(rows, manifest["layers"], strict=True):
        blob = (layout / "blobs/sha256" / desc["digest"].split(":")[1]).read_bytes()
        plain = gzip.decompress(blob)
        with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
            members = len(tf.getmembers())
        assert row[1] == desc["digest"][:19] and row[2] == desc["mediaType"]
        assert [int(x) for x in row[3:6]] == [len(blob), len(plain), members]
        assert row[6] == "0" and row[7] == "gzip,"  # no whiteouts; a gzip index
