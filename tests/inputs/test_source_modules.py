"""A directory SOURCE is planned and read without the modules only others need.

Every module imported costs each serve's start (the plugin's interpreter is new
each time): the manifest parser, the JSON parser, the CLI's argparse and the
``--source-root`` confinement code (ctypes) have no part in planning a directory,
and construct (the on-disk definitions, 25 ms to import) none in rendering any
image: the packers come from the layouts derived from it (format/_layouts.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NOT_FOR_A_DIRECTORY = ("ext4gen.inputs.manifest", "ext4gen.inputs.manifest_entries",
                       "ext4gen.model.confine", "orjson", "argparse", "ctypes")
NOT_FOR_SERVING = ("construct", "ext4gen.format.definitions")

_PLAN = """
import json, sys
from ext4gen.inputs.source import plan_source
from ext4gen.serve.options import PluginConfig
config = PluginConfig()
config.set("source", sys.argv[1])
image, _ = plan_source(sys.argv[1], config.choices)
assert image.size > 0
block0 = image.read(0, 4096)  # the superblock and group descriptors, rendered
assert block0[1024 + 0x38 : 1024 + 0x3A] == b"\\x53\\xef"
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_planning(source: Path, tmp_path: Path) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PLAN, str(source)], capture_output=True, text=True,
                         check=True, env={"EXT4GEN_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    return set(json.loads(out.stdout))


def test_a_directory_is_planned_without_the_manifest_modules(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"x" * 5000)
    (tree / "link").symlink_to("sub/f")
    loaded = _modules_after_planning(tree, tmp_path)
    assert "ext4gen.inputs.hostdir" in loaded  # (the directory was imported by this process)
    assert not loaded & set(NOT_FOR_A_DIRECTORY), sorted(loaded & set(NOT_FOR_A_DIRECTORY))
    assert not loaded & set(NOT_FOR_SERVING), sorted(loaded & set(NOT_FOR_SERVING))


def test_a_manifest_still_loads_them(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"/f": {"text": "hello"}}))
    loaded = _modules_after_planning(manifest, tmp_path)
    assert {"ext4gen.inputs.manifest", "ext4gen.inputs.manifest_entries"} <= loaded
    assert not loaded & set(NOT_FOR_SERVING), sorted(loaded & set(NOT_FOR_SERVING))
