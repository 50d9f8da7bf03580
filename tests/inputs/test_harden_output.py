"""Issue 11 item 12 (and the output half of item 11): where ``build -o`` writes.

A regular file is replaced only by a complete image (a failed build leaves the
previous one as it was); a pipe and a block device get the image streamed, byte
for byte; impossible destinations are one line, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import CLI

from ext4gen.cli import main
from ext4gen.verify import is_root

GOOD = '["/a"]\ntext = "hello"\n["/b"]\nsize = 100000\n["/c"]\nbase64 = "' + "QUJD" * 3000 + '"\n'


def _manifests(tmp_path: Path) -> tuple[Path, Path]:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    # the generator fails only while the image is written: planning succeeds
    (tmp_path / "gen.py").write_text("def bad(o, n):\n    raise OSError('disk on fire')\n")
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD + '["/g"]\ngenerator = "gen:bad"\nsize = 9000\n')
    return good, bad


def test_a_failed_build_leaves_the_previous_image_intact(tmp_path: Path, capsys):
    good, bad = _manifests(tmp_path)
    out = tmp_path / "x.img"
    assert main(["build", str(good), "-o", str(out), "-q"]) == 0
    before = out.read_bytes()
    assert main(["build", str(bad), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gen:bad" in err, err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".x.img")) == []


def test_a_new_image_file_gets_the_usual_mode(tmp_path: Path):
    good, _bad = _manifests(tmp_path)
    out = tmp_path / "new.img"
    assert main(["build", str(good), "-o", str(out), "-q"]) == 0
    assert out.stat().st_mode & 0o777 == 0o644 or out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m


@pytest.mark.parametrize("where", ["/nonexistent/x.img", "DIR"])
def test_impossible_outputs_are_one_line(tmp_path: Path, capsys, where: str):
    good, _bad = _manifests(tmp_path)
    target = str(tmp_path) if where == "DIR" else where
    assert main(["build", str(good), "-o", target, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ext4gen: {target}: cannot write the image"), err


def test_stdout_pipe_gets_the_same_bytes_as_a_file(tmp_path: Path):
    good, _bad = _manifests(tmp_path)
    ref = tmp_path / "ref.img"
    assert main(["build", str(good), "-o", str(ref), "-q"]) == 0
    proc = subprocess.run([*CLI, "build", str(good), "-o", "/dev/stdout", "-q"], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ref.read_bytes()
    # stdout redirected to an existing, longer file: it ends up exactly the image
    redirected = tmp_path / "redir.img"
    redirected.write_bytes(b"\xff" * (len(proc.stdout) + 50000))
    with open(redirected, "r+b") as f:
        proc = subprocess.run([*CLI, "build", str(good), "-o", "/dev/stdout", "-q"], stdout=f,
                              stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    assert redirected.read_bytes() == ref.read_bytes()


@pytest.mark.root
def test_a_loop_device_gets_the_image_streamed(tmp_path: Path, capsys):
    assert is_root()
    good, _bad = _manifests(tmp_path)
    ref = tmp_path / "ref.img"
    assert main(["build", str(good), "-o", str(ref), "-q"]) == 0
    backing = tmp_path / "dev.bin"
    backing.write_bytes(b"\xa5" * (ref.stat().st_size + 8192))
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        assert main(["build", str(good), "-o", dev, "-q"]) == 0
        with open(dev, "rb") as f:
            assert f.read(ref.stat().st_size) == ref.read_bytes()
        small = tmp_path / "small.bin"
        small.write_bytes(bytes(4096))
        dev2 = subprocess.run(["losetup", "-f", "--show", str(small)], capture_output=True,
                              text=True, check=True).stdout.strip()
        try:
            assert main(["build", str(good), "-o", dev2, "-q"]) == 2
            err = capsys.readouterr().err
            assert "the device holds 4096 bytes" in err and err.count("\n") == 1, err
        finally:
            subprocess.run(["losetup", "-d", dev2], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert sys.platform == "linux"
