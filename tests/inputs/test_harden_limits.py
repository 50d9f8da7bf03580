"""Issue 11 item 5: the largest file ext4 holds with 4 KiB blocks is (2^32 - 1) blocks.

The kernel's s_maxbytes for extent files is one block short of 2^44 bytes, and
an inode whose i_size passes it fails stat with EFSCORRUPTED; so anything
larger is refused, with the limit in the one-line message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ext4gen
from ext4gen.cli import main
from ext4gen.model.tree import MAX_FILE_SIZE
from ext4gen.verify import e2fsck, is_root, loop_mount

LIMIT = ((1 << 32) - 1) * 4096


def _build(tmp_path: Path, body: str, capsys) -> tuple[int, str]:
    m = tmp_path / "m.toml"
    m.write_text(body)
    rc = main(["build", str(m), "-o", str(tmp_path / "x.img"), "-q"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("size", [LIMIT + 1, 1 << 44, (1 << 44) + 4096, 1 << 60])
def test_sizes_over_the_limit_are_refused_with_the_limit(tmp_path: Path, capsys, size: int):
    rc, err = _build(tmp_path, f'["/big"]\nsize = {size}\n', capsys)
    assert rc == 2
    assert err.count("\n") == 1 and '"/big".size' in err and str(LIMIT) in err, err


def test_generator_size_over_the_limit_is_refused(tmp_path: Path, capsys):
    (tmp_path / "g.py").write_text("def f(o, n):\n    return bytes(n)\n")
    rc, err = _build(tmp_path, f'["/g"]\ngenerator = "g:f"\nsize = {1 << 44}\n', capsys)
    assert rc == 2 and str(LIMIT) in err and err.count("\n") == 1, err


def test_api_source_over_the_limit_is_refused_by_the_planner():
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    tree.add("/big", ext4gen.Node("file", ext4gen.Meta(0o644, 0, 0, 0, 0, 0, 0), key="/big",
                                  source=ext4gen.ZeroSource(1 << 44)))
    with pytest.raises(ext4gen.ManifestError, match=str(LIMIT)):
        ext4gen.plan(tree)


def test_the_limit_itself_builds_clean_and_the_kernel_reads_its_last_byte(tmp_path: Path, capsys):
    assert MAX_FILE_SIZE == LIMIT
    rc, err = _build(tmp_path, f'["/big"]\nsize = {LIMIT}\n', capsys)
    assert rc == 0, err
    assert e2fsck(str(tmp_path / "x.img")) == (0, [])
    if not is_root():
        pytest.skip("kernel half needs root")
    with loop_mount(str(tmp_path / "x.img")) as mnt, open(Path(mnt) / "big", "rb") as f:
        assert Path(mnt, "big").stat().st_size == LIMIT
        f.seek(LIMIT - 1)
        assert f.read(2) == b"\0"


@pytest.mark.parametrize("seconds,ok", [(10737418239, True), (10737418240, False),
                                        (12884901887, False), (12884901888, True),
                                        (15032385535, True), (15032385536, False)])
def test_times_e2fsck_misreads_are_refused_and_their_neighbours_build_clean(tmp_path: Path, capsys,
                                                                             seconds: int, ok: bool):
    """Epoch bits 3 with a 'negative' low word look to e2fsck like an old kernel's pre-1970 bug."""
    rc, err = _build(tmp_path, f'["/a"]\ntext = "x"\nmtime = {seconds}\n', capsys)
    if ok:
        assert rc == 0, err
        assert e2fsck(str(tmp_path / "x.img")) == (0, [])
    else:
        assert rc == 2 and err.count("\n") == 1 and '"/a".mtime' in err, err
