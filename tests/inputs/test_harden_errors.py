"""Issue 11 item 11: hostile manifests and images give one line naming the key, never a traceback."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from ext4gen.cli import main
from ext4gen.inputs import hostdir


def _run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and err.startswith("ext4gen: "), err
    assert "Traceback" not in err


SURROGATE_DOCS = {
    "path": ('{"/\\ud800": {}}', '"/\\ud800"'),
    "text": ('{"/a": {"text": "x\\udc00"}}', '"/a".text'),
    "target": ('{"/a": {"type": "symlink", "target": "\\udfff"}}', '"/a".target'),
    "xattr name": ('{"/a": {"text": "", "xattrs": {"user.\\ud800": "v"}}}', '"/a".xattrs'),
    "xattr value": ('{"/a": {"text": "", "xattrs": {"user.k": "\\ud800"}}}', '"/a".xattrs.user.k'),
    "label": ('{"image": {"label": "\\ud800"}}', "image.label"),
    "source": ('{"/a": {"source": "\\ud800"}}', '"/a".source'),
    "import": ('{"import": [{"source": "\\ud800"}]}', "import[0].source"),
    "hardlink": ('{"/a": {"text": ""}, "/b": {"type": "hardlink", "target": "/\\ud800"}}',
                 '"/b".target'),
    "raw bytes": (b'{"/a": {"text": "\xed\xa0\x80"}}', '"/a".text'),
}


@pytest.mark.parametrize("name", sorted(SURROGATE_DOCS))
def test_lone_surrogates_anywhere_are_one_line_naming_the_key(tmp_path: Path, capsys, name: str):
    doc, key = SURROGATE_DOCS[name]
    m = tmp_path / "m.json"
    if isinstance(doc, bytes):
        m.write_bytes(doc)
    else:
        m.write_text(doc)
    rc, err = _run(capsys, "build", str(m), "-o", str(tmp_path / "x.img"), "-q")
    assert rc == 2
    _one_line(err)
    assert key in err and "surrogate" in err, err


def test_a_valid_surrogate_pair_is_an_ordinary_character(tmp_path: Path, capsys):
    m = tmp_path / "m.json"
    m.write_text('{"/\\ud83d\\ude00": {"text": "\\ud83d\\ude00"}}')
    rc, err = _run(capsys, "build", str(m), "-o", str(tmp_path / "x.img"), "-q")
    assert rc == 0, err


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_deep_nesting_is_one_line(tmp_path: Path, capsys, suffix: str):
    m = tmp_path / ("m" + suffix)
    deep = "[" * 1000 + "]" * 1000
    m.write_text('{"/a": {"text": "x", "args": ' + deep + "}}" if suffix == ".json" else "a = " + deep)
    rc, err = _run(capsys, "inspect", str(m))
    assert rc == 2
    _one_line(err)


def test_a_newline_in_a_path_key_stays_on_one_line(tmp_path: Path, capsys):
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"/a\nb\x1b[31m": {"text": 5}}))
    rc, err = _run(capsys, "build", str(m), "-o", str(tmp_path / "x.img"))
    assert rc == 2
    _one_line(err)
    assert "\\n" in err and "\x1b" not in err


def _image(tmp_path: Path, capsys) -> Path:
    m = tmp_path / "ok.toml"
    m.write_text('["/a"]\ntext = "hi"\n')
    out = tmp_path / "ok.img"
    assert _run(capsys, "build", str(m), "-o", str(out), "-q")[0] == 0
    return out


@pytest.mark.parametrize("damage", ["truncated", "log_block_size", "blocks_per_group"])
def test_inspect_of_a_broken_image_is_one_line(tmp_path: Path, capsys, damage: str):
    img = _image(tmp_path, capsys)
    raw = bytearray(img.read_bytes())
    if damage == "truncated":
        raw = raw[:1100]
    elif damage == "log_block_size":
        struct.pack_into("<I", raw, 1024 + 24, 0x7FFFFFFF)
    else:
        struct.pack_into("<I", raw, 1024 + 32, 0)
    bad = tmp_path / "bad.img"
    bad.write_bytes(bytes(raw))
    rc, err = _run(capsys, "inspect", str(bad))
    assert rc == 2
    _one_line(err)


def test_a_symlink_vanishing_during_a_directory_import_is_one_line(tmp_path: Path, capsys,
                                                                   monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.symlink("f", src / "link")
    real = os.readlink

    def remove_then_read(path, *args, **kwargs):  # the race, made deterministic: the link goes
        if isinstance(path, bytes) and path.endswith(b"/link") and os.path.lexists(path):
            os.unlink(path)                       # between its lstat and its readlink
        return real(path, *args, **kwargs)

    monkeypatch.setattr(hostdir.os, "readlink", remove_then_read)
    rc, err = _run(capsys, "build", str(src), "-o", str(tmp_path / "x.img"), "-q")
    assert rc == 2
    _one_line(err)
    assert "link" in err
