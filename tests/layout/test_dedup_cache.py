"""Saved digests (issue 10 item 2): a re-plan of an unchanged tree reads no file data, and no
saved entry, stale or poisoned, ever changes the bytes of the image.

Bytes read from host files are counted where every source read ends
(``HostFile.read_parts``); images are compared with one planned without the
cache (``EXT4GEN_NO_DIGEST_CACHE``), which is today's first-run behaviour.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import prove

import ext4gen
import ext4gen.layout.dedup
from ext4gen import cache
from ext4gen.format.ondisk import BLOCK_SIZE
from ext4gen.layout.digest_cache import AREA
from ext4gen.layout.read_ahead import ReadAhead
from ext4gen.model import sources

pytestmark = pytest.mark.root

_rnd = random.Random(7)
U1, U2, U3, U4, X = (_rnd.randbytes(BLOCK_SIZE) for _ in range(5))
BIG = _rnd.randbytes(40 * BLOCK_SIZE)
Z = bytes(BLOCK_SIZE)
TAIL = b"t" * 100
FILES = {
    "a": U1 + U2 + X + X,
    "b": X + U3 + Z + U1 + TAIL,
    "dup/a_copy": U1 + U2 + X + X,
    "zeros": Z * 3,
    "unique": U4 + b"u" * 10,
    "big": BIG,
    "sub/big_copy": BIG,
    "sub/big_shifted": U4 + BIG,
    "tail_only": TAIL * 2,
}


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EXT4GEN_NO_DIGEST_CACHE", raising=False)
    root = tmp_path / "tree"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A one-element list counting bytes read from host files since the last reset: by the
    planner (``HostFile.read_parts``) and by content dedup's read-ahead (C, in a thread)."""
    count = [0]
    original = sources.HostFile.read_parts
    original_ahead = ReadAhead._read

    def counting(self: sources.HostFile, parts: list[tuple[memoryview, int, int]], **kw: bool) -> None:
        count[0] += sum(min(len(buf), n) for buf, _off, n in parts)
        original(self, parts, **kw)

    def counting_ahead(self: ReadAhead, batch: list[sources.HostFileSource]) -> list:
        got = original_ahead(self, batch)
        count[0] += sum(s.size for s, r in zip(batch, got, strict=True) if r is not None)
        return got

    monkeypatch.setattr(sources.HostFile, "read_parts", counting)
    monkeypatch.setattr(ReadAhead, "_read", counting_ahead)
    yield count


def _plan(root: Path) -> ext4gen.Image:
    tree, options = ext4gen.load(str(root), dedup="content")
    return ext4gen.plan(tree, options)


def _digest(image: ext4gen.Image) -> str:
    return hashlib.sha256(image.read(0, image.size)).hexdigest()


def _reference(root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    with monkeypatch.context() as m:
        m.setenv("EXT4GEN_NO_DIGEST_CACHE", "1")
        return _digest(_plan(root))


def _blocks_files() -> int:
    """Files that take data blocks (not stored inside their inodes)."""
    return sum(1 for d in FILES.values() if len(d) > 60)


def test_replan_of_an_unchanged_tree_reads_no_file_data(host: Path, tmp_path: Path,
                                                        bytes_read: list[int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _plan(host)
    stats = first.plan.dedup_stats
    assert bytes_read[0] >= sum(len(d) for d in FILES.values() if len(d) > 60)
    assert (stats.digest_hits, stats.digest_misses) == (0, _blocks_files())
    assert stats.shared_references > 0 and stats.zero_blocks > 0
    bytes_read[0] = 0
    tree, options = ext4gen.load(str(host), dedup="content")
    second = ext4gen.plan(tree, options)
    assert bytes_read[0] == 0, "re-planning an unchanged tree read file data"
    s2 = second.plan.dedup_stats
    assert (s2.digest_hits, s2.digest_misses) == (_blocks_files(), 0)
    assert (s2.bytes_hashed, s2.bytes_compared) == (0, 0)
    assert (s2.shared_references, s2.zero_blocks, s2.unique_blocks) == (
        stats.shared_references, stats.zero_blocks, stats.unique_blocks)
    assert _digest(second) == _digest(first) == _reference(host, monkeypatch)
    prove((tree, options), tmp_path)  # e2fsck and the kernel's view, from a plan that read nothing


def test_a_file_changed_after_caching_is_read_again(host: Path, tmp_path: Path, bytes_read: list[int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _plan(host)
    b = host / "b"
    st = b.stat()
    b.write_bytes(U2 + U3 + U4 + X + TAIL)  # same size, new bytes, mtime put back: ctime tells
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    (host / "unique").write_bytes(FILES["a"])  # now a duplicate: compared by reading
    bytes_read[0] = 0
    tree, options = ext4gen.load(str(host), dedup="content")
    image = ext4gen.plan(tree, options)
    stats = image.plan.dedup_stats
    assert (stats.digest_hits, stats.digest_misses) == (_blocks_files() - 2, 2)
    assert bytes_read[0] >= b.stat().st_size + len(FILES["a"])
    assert _digest(image) == _reference(host, monkeypatch)
    proof = prove((tree, options), tmp_path)
    assert proof.image.plan.dedup_stats.digest_misses == 0  # saved again after the change


def _group_files(root: Path) -> list[Path]:
    return sorted((root / AREA).glob("*.json"))


def test_an_edited_entry_fails_its_seal_and_is_read_again(host: Path, tmp_path: Path, bytes_read: list[int],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _plan(host)
    area_root = tmp_path / "cache"
    for group in _group_files(area_root):
        blob = group.read_bytes()
        doc = json.loads(blob[32:])
        for rec in doc["files"].values():
            rec[1] = doc["files"][next(iter(doc["files"]))][1]  # every file claims one file's keys
            rec[2] = list(range(len(rec[2]) + 3))  # and zero blocks it does not have
        group.write_bytes(blob[:32] + json.dumps(doc).encode())  # the old seal on a new body
    bytes_read[0] = 0
    tree, options = ext4gen.load(str(host), dedup="content")
    image = ext4gen.plan(tree, options)
    assert image.plan.dedup_stats.digest_hits == 0
    assert bytes_read[0] >= sum(len(d) for d in FILES.values() if len(d) > 60)
    assert _digest(image) == _reference(host, monkeypatch)
    prove((tree, options), tmp_path)


def _forge(area_root: Path, edit: Callable[[str, list], None]) -> None:
    """Rewrite every saved record through ``edit`` and seal it again, as a buggy ext4gen would."""
    for group in _group_files(area_root):
        doc = json.loads(cache.unseal(group.read_bytes()))
        for key, rec in doc["files"].items():
            edit(key, rec)
        group.write_bytes(cache.seal(json.dumps(doc).encode()))


@pytest.mark.parametrize("poison", ["keys of another file", "random keys", "keys of one block"])
def test_sealed_wrong_keys_never_give_wrong_bytes(host: Path, tmp_path: Path, poison: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong keys with the file's true pin, sealed: only verdicts are trusted, never a key match."""
    _plan(host)
    a_keys: list[str] = []

    def edit(key: str, rec: list) -> None:
        nkeys = len(base64.b64decode(rec[1])) // 16
        if poison == "random keys":
            rec[1] = base64.b64encode(os.urandom(16 * nkeys)).decode()
        elif poison == "keys of one block":
            rec[1] = base64.b64encode(b"\x42" * 16 * nkeys).decode()
        elif key.split("\0")[0].endswith("/tree/a"):
            a_keys.append(rec[1])
        rec[3], rec[4] = [], []  # no verdicts: every key match must be checked by reading

    _forge(tmp_path / "cache", edit)
    if poison == "keys of another file":
        def copy_a(key: str, rec: list) -> None:
            n = len(base64.b64decode(rec[1]))
            rec[1] = base64.b64encode((base64.b64decode(a_keys[0]) * 20)[:n]).decode()

        _forge(tmp_path / "cache", copy_a)
    tree, options = ext4gen.load(str(host), dedup="content")
    image = ext4gen.plan(tree, options)
    assert image.plan.dedup_stats.digest_hits == _blocks_files()
    if poison != "random keys":
        assert image.plan.dedup_stats.bytes_compared > 0
    prove((tree, options), tmp_path)  # every file's bytes, through the kernel


def test_crafted_collisions_stay_apart_on_a_restart(host: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block hashes alike: the saved verdicts, not the keys, decide what is shared."""
    monkeypatch.setattr(ext4gen.layout.dedup, "block_hash", lambda block: b"\x42" * 16)
    first = _plan(host)
    assert first.plan.dedup_stats.collisions > 0
    tree, options = ext4gen.load(str(host), dedup="content")
    second = ext4gen.plan(tree, options)
    assert second.plan.dedup_stats.digest_hits == _blocks_files()
    assert _digest(second) == _digest(first)
    prove((tree, options), tmp_path)


def test_an_untrusted_cache_means_planning_without_it(host: Path, tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache").mkdir(mode=0o700)
    os.chmod(tmp_path / "cache", 0o777)
    image = _plan(host)
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and "writable by group or others" in err[0] and "without saved digests" in err[0]
    assert image.plan.dedup_stats.digest_misses == 0
    assert _digest(image) == _reference(host, monkeypatch)
    assert not (tmp_path / "cache" / AREA).exists()


def test_a_tree_without_host_files_never_touches_the_cache(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline content has nothing to save: no cache directory, no warning about an untrusted one."""
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir(mode=0o700)
    os.chmod(tmp_path / "cache", 0o777)
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    for i, data in enumerate((U1 + U2, U2 + U1, Z + X)):
        tree.add(f"/f{i}", ext4gen.Node("file", ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0),
                                        source=ext4gen.InlineSource(data)))
    image = ext4gen.plan(tree, ext4gen.ImageOptions(dedup="content"))
    assert image.plan.dedup_stats.shared_references == 2
    assert capfd.readouterr().err == ""
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_host_file_named_twice_in_one_plan_uses_the_record_that_plan_stored(
        host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records are kept as objects until written: the second entry of the same host file finds
    the first one's record (a digest hit, no second read) and the image is unchanged."""
    def tree() -> ext4gen.Tree:
        t = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
        meta = ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0)
        for name in ("one", "two"):
            t.add(f"/{name}", ext4gen.Node("file", meta, source=sources.HostFileSource(str(host / "big"))))
        return t

    # Without the read-ahead, which looks both up before either is placed (then both miss).
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")
    image = ext4gen.plan(tree(), ext4gen.ImageOptions(dedup="content"))
    stats = image.plan.dedup_stats
    assert (stats.digest_hits, stats.digest_misses) == (1, 1)
    assert stats.bytes_hashed == len(FILES["big"])  # hashed once; the second entry's blocks are
    # only compared with the first's (no verdict names them yet), then shared
    assert stats.shared_references == len(FILES["big"]) // BLOCK_SIZE
    with monkeypatch.context() as m:
        m.setenv("EXT4GEN_NO_DIGEST_CACHE", "1")
        reference = ext4gen.plan(tree(), ext4gen.ImageOptions(dedup="content"))
    assert _digest(image) == _digest(reference)
