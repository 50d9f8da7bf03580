"""JSON manifests refuse an object with a key twice, and parse without the duplicate hook
whenever the text proves no key was dropped (``manifest.json_unique_keys``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext4gen.errors import ManifestError
from ext4gen.inputs import manifest
from ext4gen.inputs.manifest import json_unique_keys


def _reference(raw: bytes) -> Any:
    """What the hook alone gives: the definition the quick path must match."""
    return json.loads(raw, object_pairs_hook=manifest._unique_keys)


def _hook_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = manifest._unique_keys
    monkeypatch.setattr(manifest, "_unique_keys", lambda pairs: calls.append(1) or real(pairs))
    return calls


def test_a_flat_manifest_is_parsed_once_without_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _hook_calls(monkeypatch)
    raw = json.dumps({"image": {"label": "x"}, **{f"/d/f{i}": {"text": f"{i}", "mode": "0644"}
                                                 for i in range(100)}}).encode()
    assert json_unique_keys(raw) == json.loads(raw)
    assert calls == []


@pytest.mark.parametrize("raw", [
    b'{"/a": {"text": "1"}, "/a": {"text": "2"}}',  # a path twice
    b'{"/a": {"text": "1", "text": "2"}}',  # a key twice in an entry
    b'{"/a": {"xattrs": {"user.x": "1", "user.x": "2"}}}',  # nested
    b'{"import": [{"source": "a", "source": "b"}]}',  # in an array
    b'{"/a": {"text": "a:b:c"}, "/a": {"text": "{"}}',  # colons and braces in strings besides
    b'{"/a": {"text": "1"}, "/b": {"text": "::"}, "/a": {"text": "1"}}',  # as many colons as lost
])
def test_every_duplicate_is_refused(raw: bytes) -> None:
    with pytest.raises(ManifestError, match="duplicate key"):
        json_unique_keys(raw)


def test_colons_in_strings_take_the_hook_and_parse_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _hook_calls(monkeypatch)
    raw = b'{"/a": {"url": "https://example.com/x"}, "/b": {"text": "{[:]}"}}'
    assert json_unique_keys(raw) == json.loads(raw)
    assert calls  # not provable from the text: parsed again with the hook


KEYS = st.sampled_from(["a", "b", "/x", "/y", "text", ":", "{", "[", "a:b"])
SCALARS = st.none() | st.booleans() | st.integers() | st.text(alphabet="ab:{}[] \"\\", max_size=6)


def _objects(children: st.SearchStrategy) -> st.SearchStrategy:
    """Objects as lists of pairs, so that a key may come twice."""
    return st.lists(st.tuples(KEYS, children), max_size=5)


JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | _objects(inner), max_leaves=20)


def _text(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(p, tuple) for p in value) and value:
        return "{" + ", ".join(f"{json.dumps(k)}: {_text(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=400, deadline=None)
@given(pairs=_objects(JSON), separators=st.booleans())
def test_the_same_result_or_the_same_refusal_as_the_hook(pairs: list, separators: bool) -> None:
    raw = _text(pairs) if pairs else "{}"
    if separators:
        raw = raw.replace(": ", " :")
    data = raw.encode()
    try:
        want = _reference(data)
    except ManifestError as e:
        with pytest.raises(ManifestError) as got:
            json_unique_keys(data)
        assert (got.value.key, got.value.message) == (e.key, e.message)
        return
    assert json_unique_keys(data) == want


# -- plain_json: orjson where it takes the text, json for the rest --------------------------

def test_orjson_is_installed() -> None:
    """A dependency of the project: its absence (a broken install) would slow every JSON read."""
    assert manifest._orjson is not None


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (1 is not 1.0, NaN is NaN), in equal order."""
    return json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)


FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.1, 1e308, 5e-324, -0.0, 1.7976931348623157e308, 2.2250738585072014e-308, 123456789.123456789])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | FLOATS | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=25)


@settings(max_examples=500, deadline=None)
@given(value=VALUES, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_plain_json_builds_what_json_builds(value: Any, ascii_only: bool, indent: int | None) -> None:
    """Text of every value kind (floats at their extremes, integers beyond 64 bits, any
    Unicode, escaped or not) reads as ``json.loads`` reads it, whichever parser took it."""
    raw = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    assert _same(manifest.plain_json(raw), json.loads(raw))


@pytest.mark.parametrize("raw", [
    b'{"a": 18446744073709551616}',  # beyond 64 bits
    b'{"a": -9223372036854775809}',
    b'{"a": [1.5, 123456789012345678901234567890]}',  # orjson would read it as a float
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',
    b'{"a": 1e400}',  # json: inf
    b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte-order mark
    '{"a": "\u00e9"}'.encode("utf-16"),
    '{"a": "\u00e9"}'.encode("utf-32-le"),
    b'{"a": "\\ud800"}',  # an escaped lone surrogate (refused later, with its key)
    b'{"a": "\\udc80\\ud800x"}',
    b"[" * 2000 + b"]" * 2000,  # deeper than orjson's limit
])
def test_what_orjson_refuses_json_reads_alike(raw: bytes) -> None:
    try:
        want = json.loads(raw)
    except RecursionError:
        with pytest.raises(RecursionError):
            manifest.plain_json(raw)
        return
    assert _same(manifest.plain_json(raw), want)


@pytest.mark.parametrize("raw", [b'{"a": 9223372036854775807, "b": -9223372036854775808}',
                                 b'{"a": 18446744073709551615, "b": 1.5}'])
def test_integers_within_64_bits_are_exact_either_way(raw: bytes) -> None:
    assert _same(manifest.plain_json(raw), json.loads(raw))


@pytest.mark.parametrize("raw", [b'{"a": }', b'{"a": 1', b"", b'{"a": "\xff"}', b"[1,]", b"{'a': 1}"])
def test_invalid_text_gets_json_s_own_error(raw: bytes) -> None:
    with pytest.raises(ValueError) as want:
        json.loads(raw)
    with pytest.raises(ValueError) as got:
        manifest.plain_json(raw)
    assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))
