"""Generator modules are resolved per manifest: same-named modules in different dirs don't mix."""

from __future__ import annotations

from pathlib import Path

import ext4gen


def _manifest(tmp_path: Path, sub: str, letter: str) -> Path:
    d = tmp_path / sub
    d.mkdir()
    (d / "gen.py").write_text(f"def fill(offset, length):\n    return b'{letter}' * length\n")
    (d / "m.toml").write_text('["/f"]\ngenerator = "gen:fill"\nsize = 5000\n')
    return d / "m.toml"


def test_two_manifests_with_a_gen_py_each_get_their_own(tmp_path: Path) -> None:
    images = {}
    for sub, letter in (("a", "a"), ("b", "b")):
        tree, options = ext4gen.load(str(_manifest(tmp_path, sub, letter)))
        node = tree.lookup([b"f"])
        assert node is not None and node.source is not None
        buf = bytearray(5000)
        node.source.readinto(memoryview(buf), 0)
        assert bytes(buf) == letter.encode() * 5000
        images[sub] = ext4gen.plan(tree, options)
    data = {}
    for sub, image in images.items():
        run = image.plan.runs[0]
        start = (image.plan.geometry.data_start + run.block) * 4096
        data[sub] = image.read(start, 5000)
    assert data == {"a": b"a" * 5000, "b": b"b" * 5000}
