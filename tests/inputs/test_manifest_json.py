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
