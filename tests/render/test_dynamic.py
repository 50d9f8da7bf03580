"""Dynamic content: generator bytes are produced only for the blocks a client reads.

A counting generator records every ``(offset, length)`` it is asked for.
Planning, and reading every metadata byte of the image, must ask for nothing;
reading one data block must ask for exactly that block.  Both the API form
(:class:`ext4gen.CallableSource`) and the manifest form (``generator =
"module:function"``) are covered, plus identity dedup and generator failures.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import prove
from helpers.cli import run_cli
from helpers.readers import image_offset
from helpers.trees import BLOCK

import ext4gen
from ext4gen.render.image import DATA

META = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)
ROOT = ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0)


def pattern(offset: int, length: int, seed: int = 0) -> bytes:
    """Deterministic bytes that depend on the absolute offset (so misplaced reads show)."""
    return bytes(((i * 2654435761) >> 13 ^ seed) & 0xFF for i in range(offset, offset + length))


class Counting:
    """A generator that remembers what it was asked for."""

    def __init__(self, seed: int = 0, fail_at: int | None = None,
                 result: Callable[[int, int], object] | None = None) -> None:
        self.seed = seed
        self.calls: list[tuple[int, int]] = []
        self.fail_at = fail_at
        self.result = result

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        if self.fail_at is not None and offset <= self.fail_at < offset + length:
            if self.result is not None:
                return self.result(offset, length)  # type: ignore[return-value]
            raise RuntimeError("backend unavailable")
        return pattern(offset, length, self.seed)


def _tree(files: dict[str, ext4gen.Source]) -> ext4gen.Tree:
    tree = ext4gen.Tree(ROOT)
    for path, src in files.items():
        tree.add(path, ext4gen.Node("file", META, source=src))
    return tree


def _read_all_metadata(image: ext4gen.Image) -> int:
    """Read every non-data region (superblock, descriptors, bitmaps, inode tables, dirs, trees)."""
    n = 0
    for start, end, kind in image.regions():
        if kind != DATA:
            image.read(start, end - start)
            n += end - start
    return n


@pytest.mark.parametrize("dedup", ["content", "none"])
def test_api_generator_runs_only_for_the_blocks_read(dedup: str) -> None:
    gen = Counting(seed=3)
    size = 64 * BLOCK + 123
    other = Counting(seed=9)
    tree = _tree({"/data/gen.bin": ext4gen.CallableSource(size, gen),
                  "/data/other.bin": ext4gen.CallableSource(5 * BLOCK, other),
                  "/plain.txt": ext4gen.InlineSource(b"x" * 5000)})
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup=dedup))
    assert gen.calls == [] and other.calls == [], "planning must not call generators"
    assert _read_all_metadata(image) > 0
    assert gen.calls == [] and other.calls == [], "metadata reads must not call generators"

    for file_off, length in ((7 * BLOCK, BLOCK), (20 * BLOCK, 3 * BLOCK), (64 * BLOCK, 123)):
        gen.calls.clear()
        at = image_offset(image, b"/data/gen.bin", file_off)
        assert at is not None
        got = image.read(at, length)
        assert got == pattern(file_off, length, 3)
        assert gen.calls == [(file_off, length)], "only the blocks read may be generated"
        assert image.read(at, length) == got, "the same bytes on every read"
    assert other.calls == []
    # a partial read inside one block asks for exactly those bytes
    gen.calls.clear()
    at = image_offset(image, b"/data/gen.bin", 9 * BLOCK + 100)
    assert at is not None
    assert image.read(at, 50) == pattern(9 * BLOCK + 100, 50, 3)
    assert gen.calls == [(9 * BLOCK + 100, 50)]
    # the padding after the last byte of the file is zeros and asks for nothing
    gen.calls.clear()
    at = image_offset(image, b"/data/gen.bin", 64 * BLOCK)
    assert at is not None
    assert image.read(at + 123, BLOCK - 123) == bytes(BLOCK - 123)
    assert gen.calls == []


def test_terabyte_generator_plans_instantly_and_reads_one_block() -> None:
    gen = Counting(seed=1)
    size = 1 << 40
    tree = _tree({"/tb": ext4gen.CallableSource(size, gen)})
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="content"))
    assert gen.calls == []
    off = 512 << 30
    at = image_offset(image, b"/tb", off)
    assert at is not None
    assert image.read(at, BLOCK) == pattern(off, BLOCK, 1)
    assert gen.calls == [(off, BLOCK)]


def _generator_module(tmp_path: Path) -> tuple[str, Path]:
    """A fresh generator module beside the manifest (a unique name: imports are cached)."""
    name = f"ext4gen_test_gen_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        open(__file__ + ".imported", "w").close()  # proves whether anything imported it
        CALLS = []

        def pattern(offset, length, seed=0, scale=1):
            CALLS.append((offset, length))
            return bytes(((i * 2654435761) >> 13 ^ seed) & 0xFF for i in range(offset, offset + length))

        def broken(offset, length):
            raise OSError("backend down")

        def short(offset, length):
            return b"x" * (length - 1)

        NOT_CALLABLE = 42
    """))
    return name, tmp_path


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_manifest_generator_with_args_is_lazy_and_exact(tmp_path: Path, fmt: str) -> None:
    mod, _ = _generator_module(tmp_path)
    size = 10 * BLOCK + 77
    doc = {"/gen/a.bin": {"generator": f"{mod}:pattern", "size": size, "args": {"seed": 5}},
           "/gen/b.bin": {"generator": f"{mod}:pattern", "size": 3 * BLOCK, "args": {"seed": 6},
                          "mode": "0600", "uid": 7}}
    manifest = tmp_path / f"m.{fmt}"
    if fmt == "json":
        manifest.write_text(json.dumps(doc))
    else:
        manifest.write_text(
            f'["/gen/a.bin"]\ngenerator = "{mod}:pattern"\nsize = {size}\nargs = {{ seed = 5 }}\n'
            f'["/gen/b.bin"]\ngenerator = "{mod}:pattern"\nsize = {3 * BLOCK}\nargs = {{ seed = 6 }}\n'
            'mode = "0600"\nuid = 7\n')
    tree, options = ext4gen.load(str(manifest))
    image = ext4gen.plan(tree, options)
    calls = importlib.import_module(mod).CALLS
    assert calls == []
    _read_all_metadata(image)
    assert calls == []
    at = image_offset(image, b"/gen/a.bin", 4 * BLOCK)
    assert at is not None
    assert image.read(at, 2 * BLOCK) == pattern(4 * BLOCK, 2 * BLOCK, 5)
    assert calls == [(4 * BLOCK, 2 * BLOCK)]
    sys.modules.pop(mod, None)


@pytest.mark.root
def test_generator_files_pass_e2fsck_and_read_back_through_the_kernel(tmp_path: Path) -> None:
    mod, _ = _generator_module(tmp_path)
    doc = {
        "/g/small": {"generator": f"{mod}:pattern", "size": 100},  # inline-sized: generated into the inode
        "/g/blocks": {"generator": f"{mod}:pattern", "size": 37 * BLOCK + 5, "args": {"seed": 1}},
        "/g/empty": {"generator": f"{mod}:pattern", "size": 0},
        "/g/same_identity_1": {"generator": f"{mod}:pattern", "size": 9 * BLOCK, "identity": "s"},
        "/g/same_identity_2": {"generator": f"{mod}:pattern", "size": 9 * BLOCK, "identity": "s"},
    }
    (tmp_path / "m.json").write_text(json.dumps(doc))
    prove(tmp_path / "m.json", tmp_path)
    sys.modules.pop(mod, None)


def test_identity_dedup_shares_blocks_without_calling_the_generator() -> None:
    a, b, c = Counting(seed=4), Counting(seed=4), Counting(seed=4)
    size = 16 * BLOCK
    tree = _tree({"/a": ext4gen.CallableSource(size, a, identity="weights-v1"),
                  "/b": ext4gen.CallableSource(size, b, identity="weights-v1"),
                  "/c": ext4gen.CallableSource(size, c, identity="weights-v2")})
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="content"))
    assert a.calls == b.calls == c.calls == []
    plan = image.plan
    assert plan.shared_blocks
    extents = {p: plan.physical_extents(ip) for p, ip in plan.paths() if p in (b"/a", b"/b", b"/c")}
    assert extents[b"/a"] == extents[b"/b"], "equal identities must share their blocks"
    assert {x[2] for x in extents[b"/c"]}.isdisjoint({x[2] for x in extents[b"/a"]})
    assert image.block_counts()["data"] == 2 * 16
    # reading /b's block is served from the shared blocks, still lazily
    at = image_offset(image, b"/b", 3 * BLOCK)
    assert at is not None and image.read(at, BLOCK) == pattern(3 * BLOCK, BLOCK, 4)
    assert len(a.calls) + len(b.calls) == 1 and c.calls == []
    # without an identity nothing is shared (and still nothing is read at plan time)
    d, e = Counting(seed=4), Counting(seed=4)
    tree2 = _tree({"/d": ext4gen.CallableSource(size, d), "/e": ext4gen.CallableSource(size, e)})
    image2 = ext4gen.plan(tree2, ext4gen.ImageOptions(dedup="content"))
    assert d.calls == e.calls == [] and not image2.plan.shared_blocks


def test_manifest_identity_shares_blocks(tmp_path: Path) -> None:
    mod, _ = _generator_module(tmp_path)
    doc = {f"/{n}": {"generator": f"{mod}:pattern", "size": 8 * BLOCK, "identity": ident}
           for n, ident in (("x", "same"), ("y", "same"), ("z", "other"))}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    tree, options = ext4gen.load(str(tmp_path / "m.json"))
    image = ext4gen.plan(tree, options)
    assert importlib.import_module(mod).CALLS == []
    assert image.plan.shared_blocks and image.block_counts()["data"] == 16
    sys.modules.pop(mod, None)


@pytest.mark.parametrize("result", [None, lambda o, n: b"x" * (n - 1), lambda o, n: b"x" * (n + 1),
                                    lambda o, n: "text"], ids=["raises", "short", "long", "not-bytes"])
def test_a_failing_generator_costs_only_its_own_reads(result: Callable[[int, int], object] | None) -> None:
    bad = Counting(seed=1, fail_at=5 * BLOCK + 10, result=result)
    good = Counting(seed=2)
    image = ext4gen.plan(_tree({"/bad": ext4gen.CallableSource(8 * BLOCK, bad),
                                "/good": ext4gen.CallableSource(8 * BLOCK, good)}))
    _read_all_metadata(image)
    at = image_offset(image, b"/bad", 5 * BLOCK)
    assert at is not None
    with pytest.raises(ext4gen.SourceError):
        image.read(at, BLOCK)
    # everything else still serves: other blocks of the same file, other files, metadata
    ok = image_offset(image, b"/bad", 2 * BLOCK)
    assert ok is not None and image.read(ok, BLOCK) == pattern(2 * BLOCK, BLOCK, 1)
    g = image_offset(image, b"/good", 5 * BLOCK)
    assert g is not None and image.read(g, BLOCK) == pattern(5 * BLOCK, BLOCK, 2)
    assert image.read(1024 + 56, 2) == b"\x53\xef"  # s_magic
    with pytest.raises(ext4gen.SourceError):  # and the bad block fails again, never stale bytes
        image.read(at, BLOCK)


def test_manifest_generator_errors_surface_as_source_errors_on_read(tmp_path: Path) -> None:
    mod, _ = _generator_module(tmp_path)
    doc = {"/broken": {"generator": f"{mod}:broken", "size": 2 * BLOCK},
           "/short": {"generator": f"{mod}:short", "size": 2 * BLOCK},
           "/fine": {"generator": f"{mod}:pattern", "size": 2 * BLOCK}}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    tree, options = ext4gen.load(str(tmp_path / "m.json"))
    image = ext4gen.plan(tree, options)
    for path in (b"/broken", b"/short"):
        at = image_offset(image, path, 0)
        assert at is not None
        with pytest.raises(ext4gen.SourceError, match=r"broken|short"):
            image.read(at, BLOCK)
    at = image_offset(image, b"/fine", BLOCK)
    assert at is not None and image.read(at, BLOCK) == pattern(BLOCK, BLOCK)
    sys.modules.pop(mod, None)


# -- bad input: one line naming the key, exit 2 (through the CLI) ---------------------


def _bad_generator_cases(mod: str) -> dict[str, tuple[dict[str, object], str]]:
    return {
        "missing-module": ({"/f": {"generator": "no_such_module_xyz:fn", "size": 1}}, '"/f".generator'),
        "missing-function": ({"/f": {"generator": f"{mod}:nope", "size": 1}}, '"/f".generator'),
        "not-callable": ({"/f": {"generator": f"{mod}:NOT_CALLABLE", "size": 1}}, '"/f".generator'),
        "no-colon": ({"/f": {"generator": mod, "size": 1}}, '"/f".generator'),
        "no-size": ({"/f": {"generator": f"{mod}:pattern"}}, '"/f".size'),
        "negative-size": ({"/f": {"generator": f"{mod}:pattern", "size": -1}}, '"/f".size'),
        "with-text": ({"/f": {"generator": f"{mod}:pattern", "size": 1, "text": "x"}}, '"/f".text'),
        "args-without-generator": ({"/f": {"size": 1, "args": {"a": 1}}}, '"/f".args'),
        "identity-not-string": ({"/f": {"generator": f"{mod}:pattern", "size": 1, "identity": 5}},
                                '"/f".identity'),
        "args-not-table": ({"/f": {"generator": f"{mod}:pattern", "size": 1, "args": [1]}}, '"/f".args'),
    }


@pytest.mark.parametrize("case", list(_bad_generator_cases("m")))
def test_bad_generator_keys_are_one_line_exit_2(tmp_path: Path, case: str) -> None:
    mod, _ = _generator_module(tmp_path)
    doc, key = _bad_generator_cases(mod)[case]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    image = tmp_path / "out.img"
    proc = run_cli("build", manifest, "-o", image)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ext4gen: "), proc.stderr
    assert key in lines[0], f"{key} not named in: {lines[0]}"
    assert "Traceback" not in proc.stderr and not image.exists()


def test_generators_are_refused_under_source_root(tmp_path: Path) -> None:
    mod, _ = _generator_module(tmp_path)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"/f": {"generator": f"{mod}:pattern", "size": 10}}))
    proc = run_cli("build", manifest, "-o", tmp_path / "o.img", "--source-root", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ext4gen: ") and '"/f".generator' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / f"{mod}.py.imported").exists(), "the generator module must not be imported"
