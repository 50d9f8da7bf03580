"""half_md4 against e2fsprogs' own implementation (debugfs dx_hash), unsigned-char variant.

The image sets EXT2_FLAGS_UNSIGNED_HASH, so names are hashed as unsigned bytes;
debugfs's hash version 4 is DX_HASH_HALF_MD4_UNSIGNED.  A wrong hash makes the
kernel miss entries in htree directories, so this is checked byte for byte on
names that exercise every padding case, multi-chunk names and high bytes.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ext4gen
from ext4gen.format import dirhash
from ext4gen.format.dirhash import DEFAULT_SEED, half_md4, half_md4_many, seed_words

SEED = "dab96568-6461-4248-ab83-d8a8683fd219"
NAMES = [b"a", b"ab", b"abc", b"abcd", b"abcde", b"x" * 31, b"y" * 32, b"z" * 33, b"q" * 255,
         b"ab" * 40 + b"c", "ünïcödé-näme".encode(), bytes(range(160, 255)), b"\xff\x80abc",
         b"file0001234.dat"]


@pytest.fixture(scope="module")
def any_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree, options = ext4gen.parse_manifest({"/a": {"text": "x"}})
    path = tmp_path_factory.mktemp("dirhash") / "any.img"
    ext4gen.plan(tree, options).write(path)
    return path


def _debugfs_hash(image: Path, name: bytes, seed: str) -> tuple[int, int]:
    out = subprocess.run([b"debugfs", b"-R", b"dx_hash -h 4 -s " + seed.encode() + b" " + name,
                          bytes(image)], capture_output=True, check=True).stdout.decode("latin1")
    m = re.search(r"is (0x[0-9a-f]+) \(minor (0x[0-9a-f]+)\)", out)
    assert m, out
    return int(m.group(1), 16), int(m.group(2), 16)


@pytest.mark.parametrize("name", NAMES, ids=lambda n: repr(n)[:24])
def test_half_md4_matches_e2fsprogs(any_image: Path, name: bytes) -> None:
    assert half_md4(name, seed_words(uuid.UUID(SEED).bytes)) == _debugfs_hash(any_image, name, SEED)


def test_all_zero_seed_means_the_default_seed(any_image: Path) -> None:
    assert seed_words(bytes(16)) == DEFAULT_SEED
    zero = "00000000-0000-0000-0000-000000000000"
    assert half_md4(b"hello", DEFAULT_SEED) == _debugfs_hash(any_image, b"hello", zero)


# debugfs takes the name as one shell-like word (no spaces, quotes or backslashes)
# that getopt must not read as an option (no leading '-')
_WORD = st.binary(min_size=1, max_size=70).filter(
    lambda b: not b.startswith(b"-") and not any(c in b for c in b" \t\n\r\"'\\\0"))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(name=_WORD)
def test_random_names_match_e2fsprogs(any_image: Path, name: bytes) -> None:
    assert half_md4(name, seed_words(uuid.UUID(SEED).bytes)) == _debugfs_hash(any_image, name, SEED)


def test_one_batch_of_all_lengths_matches_e2fsprogs(any_image: Path) -> None:
    """Names of 1, 2 and 8 chunks share one set of lanes: finished lanes must keep their state."""
    seed = seed_words(uuid.UUID(SEED).bytes)
    assert half_md4_many(NAMES, seed) == [_debugfs_hash(any_image, n, SEED) for n in NAMES]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(names=st.lists(st.binary(min_size=1, max_size=255), min_size=1, max_size=40),
       batch=st.integers(1, 7))
def test_lanes_do_not_disturb_each_other(names: list[bytes], batch: int) -> None:
    """A batch (split at any size) hashes each name as if it were alone (the Python lanes)."""
    seed = (0x12345678, 0xFFFFFFFF, 0, 0x80000001)
    alone = [dirhash.half_md4_many_py([n], seed)[0] for n in names]
    old = dirhash.BATCH
    dirhash.BATCH = batch
    try:
        assert dirhash.half_md4_many_py(names, seed) == alone
    finally:
        dirhash.BATCH = old


def test_the_python_lanes_match_e2fsprogs(any_image: Path) -> None:
    """The definition (and the fallback) on its own: half_md4 above may be the compiled one."""
    seed = seed_words(uuid.UUID(SEED).bytes)
    assert dirhash.half_md4_many_py(NAMES, seed) == [_debugfs_hash(any_image, n, SEED) for n in NAMES]


@pytest.mark.skipif(dirhash._dirhash is None, reason="ext4gen.format._dirhash is not built")
@settings(max_examples=200, deadline=None, derandomize=True)
@given(names=st.lists(st.binary(max_size=300), max_size=50),
       seed=st.tuples(*[st.integers(0, 0xFFFFFFFF)] * 4))
def test_the_compiled_hash_is_the_python_one(names: list[bytes], seed: tuple[int, int, int, int]) -> None:
    """Every padding case, multi-piece names, and seeds with the top bits set."""
    assert dirhash._dirhash.half_md4_many(names, seed) == dirhash.half_md4_many_py(names, seed)


def test_the_compiled_hash_is_used_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    if dirhash._dirhash is None:
        pytest.skip("ext4gen.format._dirhash is not built")
    calls = []
    monkeypatch.setattr(dirhash, "half_md4_many_py", lambda *a: calls.append(a) or [])
    half_md4_many([b"a"], DEFAULT_SEED)
    assert calls == []
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")
    half_md4_many([b"a"], DEFAULT_SEED)
    assert len(calls) == 1
