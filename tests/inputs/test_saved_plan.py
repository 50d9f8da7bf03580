"""Issue 10 item 1: a restart over an unchanged SOURCE reuses the saved plan; any change
re-plans, and what is served is always what planning the current input gives.

Each test writes its tree, then waits past the racy window (a pin whose ctime is
too close to the start of the recording is not trusted, so nothing would be saved).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import ext4gen
from ext4gen import cache, saved_plan
from ext4gen.inputs.source import PLAN_LOG_ENV, BuildChoices, plan_source, plan_source_saved
from ext4gen.model import host_reads
from ext4gen.model.sources import CallableSource
from ext4gen.render.image import Image

SETTLE = host_reads.RACY_NS / 1e9 + 0.05


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EXT4GEN_CACHE", str(root))
    monkeypatch.setenv(PLAN_LOG_ENV, str(tmp_path / "plans.log"))
    return root


def _tree(base: Path) -> Path:
    src = base / "tree"
    (src / "sub" / "deep").mkdir(parents=True)
    shared = os.urandom(20_000)
    (src / "a.bin").write_bytes(shared)
    (src / "sub" / "b.bin").write_bytes(shared)  # a duplicate: content dedup reads both
    (src / "sub" / "deep" / "c.txt").write_text("small, inline\n")
    (src / "big.bin").write_bytes(os.urandom(300_000))
    os.symlink("sub/b.bin", src / "link")
    os.link(src / "a.bin", src / "hard")
    os.setxattr(src / "sub" / "deep" / "c.txt", "user.note", b"one")
    time.sleep(SETTLE)
    return src


def _plans(tmp_path: Path) -> int:
    log = tmp_path / "plans.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _image_bytes(image: Image) -> bytes:
    return image.read(0, image.size)


def _serve_twice(source: str, choices: BuildChoices | None = None) -> tuple[Image, Image]:
    choices = choices or BuildChoices()
    first, tree, save = plan_source_saved(source, choices)
    assert tree is not None and save is not None
    assert save() is True, "the plan of an unchanged, settled tree is saved"
    again, tree2, save2 = plan_source_saved(source, choices)
    assert tree2 is None and save2 is None, "the restart did not take the saved plan"
    return first, again


def test_a_restart_reuses_the_plan_and_serves_the_same_bytes(tmp_path: Path):
    src = _tree(tmp_path)
    first, again = _serve_twice(str(src))
    assert _plans(tmp_path) == 1, "the restart planned again"
    assert _image_bytes(again) == _image_bytes(first)
    assert again.plan.dedup_stats.shared_references == first.plan.dedup_stats.shared_references > 0


def test_the_saved_plan_is_what_planning_gives(tmp_path: Path):
    """Not just equal to the first serve: equal to a plan made now, without the cache."""
    src = _tree(tmp_path)
    _first, again = _serve_twice(str(src))
    fresh, _tree_now = plan_source(str(src))
    assert _image_bytes(again) == _image_bytes(fresh)


def _rewrite_same_size_and_mtime(src: Path) -> None:
    p = src / "big.bin"
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[1000] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime shows it


def _add_file(src: Path) -> None:
    (src / "sub" / "deep" / "new.txt").write_text("new")


def _remove_file(src: Path) -> None:
    (src / "sub" / "b.bin").unlink()


def _chmod(src: Path) -> None:
    (src / "sub" / "deep" / "c.txt").chmod(0o600)


def _xattr(src: Path) -> None:
    os.setxattr(src / "sub" / "deep" / "c.txt", "user.note", b"two")


def _retarget_symlink(src: Path) -> None:
    (src / "link").unlink()
    os.symlink("big.bin", src / "link")


def _rename(src: Path) -> None:
    (src / "sub" / "deep" / "c.txt").rename(src / "sub" / "deep" / "d.txt")


def _inline_content(src: Path) -> None:
    p = src / "sub" / "deep" / "c.txt"
    st = p.stat()
    p.write_text("SMALL, inline\n")  # same size, mtime put back: inline bytes are in the plan
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


CHANGES: dict[str, Callable[[Path], None]] = {
    "content, same size and mtime": _rewrite_same_size_and_mtime, "a file added": _add_file,
    "a file removed": _remove_file, "chmod": _chmod, "an xattr": _xattr,
    "a symlink retargeted": _retarget_symlink, "a rename": _rename, "inline content": _inline_content,
}


@pytest.mark.parametrize("change", CHANGES)
def test_any_change_replans_and_serves_the_new_state(tmp_path: Path, change: str):
    src = _tree(tmp_path)
    _serve_twice(str(src))
    CHANGES[change](src)
    time.sleep(SETTLE)
    image, tree, save = plan_source_saved(str(src))
    assert tree is not None, "a changed tree was served from the saved plan"
    assert _plans(tmp_path) == 2
    fresh, _t = plan_source(str(src))
    assert _image_bytes(image) == _image_bytes(fresh)
    assert save is not None and save() is True  # and the new state is saved in turn
    again, tree2, _save = plan_source_saved(str(src))
    assert tree2 is None and _image_bytes(again) == _image_bytes(fresh)


def test_a_manifest_edit_replans(tmp_path: Path):
    src = _tree(tmp_path)
    m = tmp_path / "m.toml"
    m.write_text(f'["/x"]\nsource = "{src / "big.bin"}"\n["/y"]\ntext = "one"\n')
    time.sleep(SETTLE)
    _serve_twice(str(m))
    assert _plans(tmp_path) == 1
    m.write_text(f'["/x"]\nsource = "{src / "big.bin"}"\n["/y"]\ntext = "two"\n')
    time.sleep(SETTLE)
    image, tree, _save = plan_source_saved(str(m))
    assert tree is not None
    assert _image_bytes(image) == _image_bytes(plan_source(str(m))[0])


def test_options_are_part_of_the_key(tmp_path: Path):
    src = _tree(tmp_path)
    content = BuildChoices(dedup="content")
    none = BuildChoices(dedup="none")
    _serve_twice(str(src), content)
    image, tree, save = plan_source_saved(str(src), none)
    assert tree is not None and image.plan.options.dedup == "none"
    assert save is not None and save()
    assert plan_source_saved(str(src), content)[1] is None
    assert plan_source_saved(str(src), none)[1] is None
    assert _plans(tmp_path) == 2


def test_a_file_changed_just_before_planning_is_not_saved(tmp_path: Path):
    """Its ctime is inside the racy window: a second change could share the timestamp."""
    src = _tree(tmp_path)
    (src / "a.bin").write_bytes(b"fresh")
    _image, tree, save = plan_source_saved(str(src))
    assert tree is not None and save is not None
    assert save() is False
    assert plan_source_saved(str(src))[1] is not None  # nothing was saved: planned again


def test_sources_without_a_host_pin_are_not_saved(tmp_path: Path):
    """A generator's (or callable's) bytes could change with no pin to show it."""
    mod = tmp_path / "gen.py"
    mod.write_text("def fill(offset, length):\n    return bytes(length)\n")
    m = tmp_path / "m.toml"
    m.write_text('["/g"]\ngenerator = "gen:fill"\nsize = 100000\n')
    time.sleep(SETTLE)
    image, tree, save = plan_source_saved(str(m))
    assert tree is not None and save is not None and save() is False
    assert saved_plan.unsaveable(image.plan) is not None
    assert isinstance(next(ip.source for ip in image.plan.inodes if ip is not None and ip.source is not None
                           and not ip.source.restartable), CallableSource)


def test_standard_input_is_never_saved():
    assert saved_plan.key_for("-", BuildChoices()) is None


def test_a_damaged_entry_is_a_miss_never_an_error(tmp_path: Path, cache_dir: Path):
    src = _tree(tmp_path)
    first, _again = _serve_twice(str(src))
    (entry,) = (cache_dir / saved_plan.AREA).glob("*.plan")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 1  # inside the plan's body: its seal fails
    entry.write_bytes(bytes(data))
    image, tree, _save = plan_source_saved(str(src))
    assert tree is not None and _image_bytes(image) == _image_bytes(first)
    entry.write_bytes(b"short")
    assert plan_source_saved(str(src))[1] is not None


def test_a_different_ext4gen_does_not_reuse_a_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = _tree(tmp_path)
    _serve_twice(str(src))
    monkeypatch.setattr(saved_plan, "_code", "another version of the code")
    assert plan_source_saved(str(src))[1] is not None


def test_the_switch_turns_saved_plans_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = _tree(tmp_path)
    monkeypatch.setenv(saved_plan.DISABLE_ENV, "1")
    _image, tree, save = plan_source_saved(str(src))
    assert tree is not None and save is None
    assert plan_source_saved(str(src))[1] is not None
    assert _plans(tmp_path) == 2


def test_under_a_source_root_a_swapped_source_is_refused_not_reused(tmp_path: Path):
    """Sources opened beneath the root (openat2, no audit event) are pinned all the same."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "target").write_bytes(b"inside" * 1000)
    (tmp_path / "secret").write_bytes(b"SECRET" * 1000)
    m = root / "m.toml"
    m.write_text('["/x"]\nsource = "target"\n')
    time.sleep(SETTLE)
    choices = BuildChoices(source_root=str(root))
    _serve_twice(str(m), choices)
    (root / "target").unlink()
    os.symlink(tmp_path / "secret", root / "target")
    with pytest.raises(ext4gen.ManifestError, match="outside the source root"):
        plan_source_saved(str(m), choices)


_CHILD = """
import sys
from ext4gen.inputs.source import plan_source_saved
image, tree, save = plan_source_saved(sys.argv[1])
saved = save() if save is not None else None
print(tree is None, saved, flush=True)
sys.stdin.read()  # serve until told to stop
"""


def test_a_restart_from_a_compressed_tar_keeps_its_decompressed_copy_held(tmp_path: Path,
                                                                          cache_dir: Path):
    """The copy a saved plan serves from is held against eviction, as loading holds it."""
    src = _tree(tmp_path)
    archive = tmp_path / "t.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=".")
    time.sleep(SETTLE)

    def serve() -> tuple[subprocess.Popen[str], str]:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(archive)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        return child, child.stdout.readline().strip()

    for _ in range(2):  # the first decompresses (a fresh copy is racy); the second saves
        child, _line = serve()
        child.communicate("")
        time.sleep(SETTLE)
    child, line = serve()
    try:
        assert line == "True None", line  # the third took the saved plan
        (entry,) = [e for e in cache.entries("tar") if any(p.suffix == ".tar" for p in e.paths)]
        assert cache._in_use(entry), "the decompressed copy served from is not held"
    finally:
        child.communicate("")
    assert not cache._in_use(entry)


def test_block_digests_are_written_by_save_not_before_the_first_answer(tmp_path: Path,
                                                                        cache_dir: Path):
    """A serve answers before it writes the digest cache (a file per source directory): the
    writes wait for save(), which also keeps them for a plan of a changed tree."""
    from ext4gen.layout.digest_cache import AREA

    src = _tree(tmp_path)
    digests = cache_dir / AREA

    def groups() -> list[str]:
        return sorted(p.name for p in digests.glob("*.json")) if digests.exists() else []

    _image, tree, save = plan_source_saved(str(src), BuildChoices(dedup="content"))
    assert tree is not None and save is not None
    assert groups() == [], "digests were written before save()"
    assert save() is True
    written = groups()
    assert len(written) == 2  # tree/ and tree/sub/ hold the host files dedup read
    (src / "big.bin").write_bytes(os.urandom(300_000))  # the saved plan no longer holds
    time.sleep(SETTLE)
    read: list[int] = []
    original = ext4gen.model.sources.HostFile.read_parts

    def counting(self, parts, **kw):  # type: ignore[no-untyped-def]
        read.append(sum(n for _b, _o, n in parts))
        return original(self, parts, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ext4gen.model.sources.HostFile, "read_parts", counting)
        _image, tree, _save = plan_source_saved(str(src), BuildChoices(dedup="content"))
    assert tree is not None
    assert sum(read) == 300_000, "only the changed file is read; the others' digests were saved"
