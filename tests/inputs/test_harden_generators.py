"""Issue 11 item 8: what code a manifest may run, and when.

Only plain functions defined in a module beside the manifest (or in a
directory named with ``--generator-path``); never an installed callable, never
a path; and commands that do not read file data never import the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ext4gen
from ext4gen.cli import main

GEN = '''
open(__file__ + ".imported", "w").close()  # proves whether anything ran this module
CALLS = []

def fill(offset, length):
    CALLS.append((offset, length))
    return b"g" * length

from shutil import rmtree as not_mine  # a function, but not defined here
thing = len                               # a builtin
class Klass:
    def __call__(self, offset, length):
        return bytes(length)
obj = Klass()
'''


@pytest.fixture(autouse=True)
def _forget_gen():
    """Modules load under a per-file name and, first come, as ``gen``: forget the latter."""
    import sys

    yield
    sys.modules.pop("gen", None)


def _setup(tmp_path: Path, spec: str, *, module_dir: Path | None = None, dedup: str = "content") -> Path:
    where = module_dir or tmp_path
    where.mkdir(exist_ok=True)
    (where / "gen.py").write_text(GEN)
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"image": {"dedup": dedup},
                             "/f": {"generator": spec, "size": 10000},
                             "/g": {"generator": spec, "size": 10000, "identity": "same"},
                             "/h": {"generator": spec, "size": 10000, "identity": "same"}}))
    return m


def _imported(directory: Path) -> bool:
    return (directory / "gen.py.imported").exists()


@pytest.mark.parametrize("dedup", ["content", "none"])
def test_inspect_never_imports_the_generator_module(tmp_path: Path, capsys, dedup: str):
    m = _setup(tmp_path, "gen:fill", dedup=dedup)
    assert main(["inspect", str(m)]) == 0
    assert "blocks by kind" in capsys.readouterr().out
    assert not _imported(tmp_path)


def test_planning_with_content_dedup_never_calls_the_generator(tmp_path: Path):
    m = _setup(tmp_path, "gen:fill")
    tree, options = ext4gen.load(str(m))
    assert _imported(tmp_path)  # the API loads it (it will read data) ...
    image = ext4gen.plan(tree, options)
    import sys
    calls = sys.modules["gen"].CALLS
    assert calls == []  # ... but planning, even with dedup = "content", runs none of it
    image.read(0, image.plan.geometry.data_start * 4096)
    assert calls == []


@pytest.mark.parametrize("spec,needle", [
    ("/abs/path/evil:fill", "no paths"),
    ("../other/gen:fill", "no paths"),
    ("os:closerange", "no module os beside the manifest"),
    ("json:dumps", "no module json"),
    ("gen:not_mine", "not a function defined in gen.py"),
    ("gen:thing", "not a function defined in gen.py"),
    ("gen:obj", "not a function defined in gen.py"),
    ("gen:Klass", "not a function defined in gen.py"),
    ("gen:missing", "not a function defined in gen.py"),
])
def test_only_functions_defined_beside_the_manifest_may_run(tmp_path: Path, capsys, spec: str,
                                                           needle: str):
    m = _setup(tmp_path, spec)
    if spec.startswith("/abs"):
        spec = spec.replace("/abs/path", str(tmp_path / "elsewhere"))
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "evil.py").write_text(GEN)
        m.write_text(m.read_text().replace("/abs/path", str(tmp_path / "elsewhere")))
    rc = main(["build", str(m), "-o", str(tmp_path / "x.img"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and '"/f".generator' in err and needle in err, err
    assert not (tmp_path / "elsewhere" / "evil.py.imported").exists()
    assert not (tmp_path / "x.img").exists()


def test_generator_path_names_another_directory_explicitly(tmp_path: Path, capsys):
    lib = tmp_path / "lib"
    m = _setup(tmp_path, "gen:fill", module_dir=lib)
    rc = main(["build", str(m), "-o", str(tmp_path / "x.img"), "-q"])
    assert rc == 2 and "no module gen beside the manifest" in capsys.readouterr().err
    assert not _imported(lib)
    rc = main(["build", str(m), "-o", str(tmp_path / "x.img"), "-q", "--generator-path", str(lib)])
    assert rc == 0, capsys.readouterr().err
    assert _imported(lib)
