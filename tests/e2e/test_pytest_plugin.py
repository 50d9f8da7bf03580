"""The pytest plugin (``ext4_image``, ``ext4_export``) as a third-party suite meets it.

Each test writes a throwaway suite with ``pytester`` and runs it in a fresh
``python -m pytest`` subprocess: the fixtures must arrive through the
``pytest11`` entry point alone, exactly as after ``pip install ext4gen``.  The
inner tests check images with independent readers (the superblock bytes,
e2fsck, the kernel as root) and exports with libnbd and nbdinfo; the outer
test then checks what only it can see: that every server the inner run
started is gone, whether its test passed or failed.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ext4gen.serve import pid_alive
from ext4gen.verify import is_root

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ci-fixture"
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"

MANIFEST = """\
[image]
label = "plugin-test"

[defaults]
mtime = 1600000000

["/etc/hostname"]
text = "pytester\\n"

["/data/payload.bin"]
source = "payload.bin"

["/data/copy.bin"]
source = "payload.bin"

["/data/hole"]
size = 3000000
"""

# Shared by the inner suites: record every server an export started, so the
# outer test can look for them after the inner run ended.
INNER_HELPERS = f"""
import json, os, subprocess, sys
from pathlib import Path

import pytest

import ext4gen
from ext4gen.verify import e2fsck, is_root, loop_mount

HERE = Path(__file__).parent
MANIFEST = HERE / "m.toml"
RECORD = HERE / "servers.jsonl"
if {DEBIAN_DIST_PACKAGES!r} not in sys.path:
    sys.path.append({DEBIAN_DIST_PACKAGES!r})  # python3-libnbd, when the venv does not see it
import nbd


def record(exports):
    with RECORD.open("a") as f:
        for s in exports.servers:
            f.write(json.dumps({{"pid": s.pid, "nbdkit_pid": s.nbdkit_pid, "socket": s.socket,
                                "workdir": s.workdir, "uri": s.uri}}) + "\\n")


def read_export(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        assert h.is_read_only()
        size = h.get_size()
        out = bytearray()
        while len(out) < size:
            out += h.pread(min(1 << 20, size - len(out)), len(out))
        return bytes(out)
    finally:
        h.shutdown()
"""


def _write_inner(pytester: pytest.Pytester, tests: str) -> None:
    (pytester.path / "m.toml").write_text(MANIFEST)
    (pytester.path / "payload.bin").write_bytes(os.urandom(50_000))
    pytester.makepyfile(test_inner=INNER_HELPERS + tests)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A fresh interpreter: the plugin must come from the entry point, not from this process."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=600)


def _assert_servers_gone(pytester: pytest.Pytester, expected: int) -> None:
    """Every recorded server stopped and cleaned up; no process still names our files."""
    record = pytester.path / "servers.jsonl"
    servers = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    assert len(servers) == expected, servers
    for s in servers:
        assert not pid_alive(s["pid"]), f"serve supervisor {s['pid']} still runs after the test"
        assert not pid_alive(s["nbdkit_pid"]), f"nbdkit {s['nbdkit_pid']} still runs after the test"
        assert not os.path.exists(s["socket"]), f"socket {s['socket']} left behind"
        assert not os.path.exists(s["workdir"]), f"work dir {s['workdir']} left behind"
    # Like `pgrep -f <dir>`, but immune to other sessions' servers on this machine.
    mine = str(pytester.path)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        assert mine not in cmdline or int(pid) == os.getpid(), f"pid {pid} left running: {cmdline}"


def test_entry_point_registers_the_plugin() -> None:
    found = [ep for ep in entry_points(group="pytest11") if ep.name == "ext4gen"]
    assert [ep.value for ep in found] == ["ext4gen.pytest_plugin"]


def test_both_fixtures_in_a_throwaway_suite(pytester: pytest.Pytester,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    _write_inner(pytester, """
def superblock_magic(path):
    with open(path, "rb") as f:
        f.seek(1024 + 0x38)
        return f.read(2)


def test_image_from_a_path(ext4_image):
    image = ext4_image(MANIFEST)
    assert superblock_magic(image) == b"\\x53\\xef"
    assert e2fsck(str(image)) == (0, [])
    builds = ext4_image.builds
    assert ext4_image(MANIFEST) == image and ext4_image(str(MANIFEST)) == image
    assert ext4_image.builds == builds  # cached
    assert ext4_image(MANIFEST, dedup="none") != image  # other options, other image
    assert ext4_image.builds == builds + 1
    if is_root():
        with loop_mount(str(image)) as mnt:
            assert Path(mnt, "etc/hostname").read_text() == "pytester\\n"
            payload = (HERE / "payload.bin").read_bytes()
            assert Path(mnt, "data/payload.bin").read_bytes() == payload
            assert Path(mnt, "data/copy.bin").read_bytes() == payload


def test_cache_spans_the_session(ext4_image):
    builds = ext4_image.builds
    assert builds >= 2  # the previous test's builds
    ext4_image(MANIFEST)
    assert ext4_image.builds == builds


def test_cache_sees_the_manifest_change(ext4_image, tmp_path):
    m = tmp_path / "m.toml"
    m.write_text('["/a"]\\ntext = "one"\\n')
    first = ext4_image(m)
    m.write_text('["/a"]\\ntext = "two"\\n')
    assert ext4_image(m) != first


def test_image_from_a_dict(ext4_image):
    doc = {"/etc/hostname": {"text": "from a dict\\n"}, "/data/p.bin": {"source": "payload.bin"}}
    image = ext4_image(doc)  # the relative source resolves against the current directory
    assert e2fsck(str(image)) == (0, [])
    assert ext4_image(dict(doc)) == image
    assert ext4_image({**doc, "/x": {"text": "x"}}) != image
    if is_root():
        with loop_mount(str(image)) as mnt:
            assert Path(mnt, "data/p.bin").read_bytes() == (HERE / "payload.bin").read_bytes()


def test_image_from_a_tree(ext4_image):
    meta = lambda: ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0)
    tree = ext4gen.Tree(meta())
    tree.add("/gen.bin", ext4gen.Node("file", meta(), source=ext4gen.CallableSource(
        10000, lambda off, n: bytes((off + i) % 251 for i in range(n)))))
    builds = ext4_image.builds
    image = ext4_image(tree, inline_data=False)
    assert e2fsck(str(image)) == (0, [])
    assert ext4_image(tree, inline_data=False) != image  # trees are not cached
    assert ext4_image.builds == builds + 2
    if is_root():
        with loop_mount(str(image)) as mnt:
            assert Path(mnt, "gen.bin").read_bytes() == bytes(i % 251 for i in range(10000))


def test_export_is_the_built_image(ext4_image, ext4_export):
    uri = ext4_export(MANIFEST)
    dict_uri = ext4_export({"/p.bin": {"source": "payload.bin"}}, dedup="none")
    record(ext4_export)
    assert uri.startswith("nbd+unix:///?socket=")
    info = json.loads(subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True,
                                     check=True).stdout)
    image = ext4_image(MANIFEST)
    assert info["exports"][0]["export-size"] == image.stat().st_size
    assert read_export(uri) == image.read_bytes()
    built = ext4_image({"/p.bin": {"source": "payload.bin"}}, dedup="none")
    assert read_export(dict_uri) == built.read_bytes()


def test_export_of_a_dict_with_relative_imports(ext4_image, ext4_export):
    (HERE / "tree" / "sub").mkdir(parents=True)
    (HERE / "tree" / "sub" / "f.txt").write_text("imported\\n")
    doc = {"import": [{"source": "tree", "target": "/opt"}], "/opt/extra": {"source": "payload.bin"}}
    uri = ext4_export(doc)  # served from a copy in a temp dir: relative paths made absolute
    record(ext4_export)
    assert read_export(uri) == ext4_image(doc).read_bytes()


def test_directory_source_is_cached_until_it_changes(ext4_image):
    (HERE / "d").mkdir()
    (HERE / "d" / "a").write_text("a")
    first = ext4_image(HERE / "d")
    assert ext4_image(HERE / "d") == first
    (HERE / "d" / "b").write_text("b")
    assert ext4_image(HERE / "d") != first


def test_export_refuses_a_tree(ext4_export):
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    with pytest.raises(TypeError, match="not an ext4gen.Tree"):
        ext4_export(tree)
""")
    result = _run(pytester)
    result.assert_outcomes(passed=9)
    _assert_servers_gone(pytester, expected=3)


def test_export_is_torn_down_when_the_test_fails(pytester: pytest.Pytester) -> None:
    _write_inner(pytester, """
def test_fails_while_serving(ext4_export):
    ext4_export(MANIFEST)
    record(ext4_export)
    assert read_export(ext4_export.servers[0].uri)
    assert False, "deliberate failure with an export running"
""")
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*deliberate failure with an export running*"])
    _assert_servers_gone(pytester, expected=1)


BAD_CASES = {
    "test_bad_mode_in_a_dict":
        ('ext4_image({"/etc/motd": {"text": "x", "mode": "bogus"}})',
         'ext4gen: "/etc/motd".mode: must be an octal string like "0755" or an integer'),
    "test_missing_source_in_a_file":
        ('ext4_image(write("m1.toml", \'["/a"]\\nsource = "nope.bin"\\n\'))',
         'ext4gen: */m1.toml: "/a".source: source file */nope.bin does not exist'),
    "test_bad_toml":
        ('ext4_image(write("m2.toml", "[image\\n"))',
         "ext4gen: */m2.toml: not valid TOML: *"),
    "test_bad_export":
        ('ext4_export(write("m3.toml", \'["/a"]\\ntype = "pipe"\\n\'))',
         'ext4gen: */m3.toml: "/a".type: *'),
    "test_bad_export_dict":
        ('ext4_export({"/a": {"text": "x", "uid": -1}})',
         'ext4gen: "/a".uid: *'),
}


def test_bad_manifest_fails_with_one_line(pytester: pytest.Pytester) -> None:
    tests = "\n\ndef write(name, text):\n    (HERE / name).write_text(text)\n    return HERE / name\n"
    for name, (call, _line) in BAD_CASES.items():
        tests += f"\n\ndef {name}(ext4_image, ext4_export):\n    {call}\n    record(ext4_export)\n"
    _write_inner(pytester, tests)
    result = _run(pytester)
    result.assert_outcomes(failed=len(BAD_CASES))
    out = result.stdout.str()
    assert "Traceback" not in out and "pytest_plugin.py" not in out and "manifest.py" not in out, out
    for name, (_call, line) in BAD_CASES.items():
        # The failure section holds exactly the one line, then the next section starts.
        result.stdout.fnmatch_lines([f"_* {name} _*", line, "[_=]*"], consecutive=True)
    _assert_servers_gone(pytester, expected=0)  # bad input never starts a server


def test_the_example_suite_passes(pytester: pytest.Pytester) -> None:
    """examples/ci-fixture is documentation that must keep working."""
    result = _run(pytester, str(EXAMPLE))
    if is_root():
        result.assert_outcomes(passed=4)
    else:
        result.assert_outcomes(passed=2, skipped=2)



def test_cache_key_follows_source_date_epoch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SOURCE_DATE_EPOCH changes the image, so it must change the cache key."""
    from ext4gen.pytest_plugin import cache_key

    doc = {"/f": {"text": "x"}}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")
    first = cache_key(doc, {})
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "2000000000")
    assert cache_key(doc, {}) != first
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")
    assert cache_key(doc, {}) == first
