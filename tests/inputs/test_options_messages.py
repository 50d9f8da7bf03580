"""Messages in the user's terms, progress on a terminal only, help text that tells the truth."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from conftest import requires_root
from helpers.cli import build_cli, run_cli

from ext4gen import cli, progress


@pytest.mark.parametrize(("args", "message"), [
    (["build", "{zeros}", "-o", "{tmp}/x.img"],
     "{zeros}: binary data (67108864 bytes), not a manifest (.toml/.json), a directory or a tar archive"),
    (["check", "{tmp}/nope.img"], "{tmp}/nope.img: no such file or directory"),
    (["inspect", "/dev/null"], "/dev/null: is a character device, not a manifest (.toml/.json), a "
                               "directory, a tar archive or an ext4 image"),
    (["build", "{image}", "-o", "{tmp}/y.img"],
     "{image}: this is an ext4 image; give it to check or inspect, not here"),
])
def test_sources_that_are_not_sources(tmp_path: Path, args: list[str], message: str) -> None:
    zeros = tmp_path / "zeros"
    with open(zeros, "wb") as f:
        f.truncate(64 << 20)
    (tmp_path / "t").mkdir()
    build_cli(tmp_path / "t", tmp_path / "image.img")
    names = {"zeros": str(zeros), "tmp": str(tmp_path), "image": str(tmp_path / "image.img")}
    proc = run_cli(*[a.format(**names) for a in args])
    assert proc.returncode == 2
    assert proc.stderr == f"ext4gen: {message.format(**names)}\n"


def test_help_tells_the_truth() -> None:
    def help_of(*command: str) -> str:
        return run_cli(*command, "--help").stdout

    assert "or - for stdin" in help_of("build")
    for command in ("serve", "mount"):
        text = help_of(command)
        assert "for stdin" not in text and "--no-inline-data" in text and "--all-root" in text
    build = " ".join(help_of("build").split())
    assert "-o IMAGE, --output IMAGE the image file to write" in build
    assert "-q, --quiet no progress bars" in build


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _main_on(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(progress, "DELAY", 0.0)
    try:
        return cli.main(list(argv))
    finally:
        progress.enable(False)


def test_progress_on_a_terminal_and_not_with_q_or_a_pipe(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(os.urandom(64 << 10))
    term = _Terminal()
    assert _main_on(term, monkeypatch, "build", str(src), "-o", str(tmp_path / "a.img")) == 0
    shown = term.getvalue()
    assert "importing" in shown and "hashing" in shown and "writing" in shown, shown
    quiet = _Terminal()
    assert _main_on(quiet, monkeypatch, "build", str(src), "-o", str(tmp_path / "b.img"), "-q") == 0
    assert quiet.getvalue() == ""
    piped = io.StringIO()
    assert _main_on(piped, monkeypatch, "build", str(src), "-o", str(tmp_path / "c.img")) == 0
    assert "importing" not in piped.getvalue() and "hashing" not in piped.getvalue()
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "c.img").read_bytes()


def test_check_says_where_it_writes_before_writing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(3 << 20))
    proc = run_cli("check", tmp_path / "src", env=dict(os.environ, TMPDIR=str(tmp_path)))
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"check: writing the image to {tmp_path}/ext4gen-check-")
    assert "3 MiB of data" in first and "removed afterwards" in first, first
    assert list(tmp_path.glob("ext4gen-check-*")) == []
    assert "e2fsck -fn: exit 0" in proc.stdout
    quiet = run_cli("check", tmp_path / "src", "-q", env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert "check: writing" not in quiet.stderr


@requires_root
def test_mount_point_messages(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    proc = run_cli("mount", tmp_path / "src", tmp_path / "missing")
    assert proc.returncode == 2
    assert proc.stderr == (f"ext4gen: {tmp_path}/missing: the mount point does not exist "
                           f"(mkdir -p {tmp_path}/missing)\n")
    (tmp_path / "file").write_text("")
    proc = run_cli("mount", tmp_path / "src", tmp_path / "file")
    assert proc.stderr == f"ext4gen: {tmp_path}/file: the mount point is not a directory\n"


@requires_root
@pytest.mark.slow
def test_a_busy_umount_names_lazy(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert run_cli("mount", tmp_path / "src", mnt).returncode == 0
    holder = subprocess.Popen(["sleep", "60"], cwd=mnt)
    try:
        proc = run_cli("umount", mnt)
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"ext4gen: umount {mnt} failed: ")
        assert proc.stderr.rstrip().endswith(f"(stop what uses it, or detach it now: ext4gen umount "
                                             f"--lazy {mnt})")
    finally:
        holder.kill()
        holder.wait()
        done = run_cli("umount", mnt)
        if done.returncode != 0:
            run_cli("umount", "--lazy", mnt)
        assert done.returncode == 0, done.stderr


@requires_root
def test_a_failed_serve_leaves_no_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('["/x"]\nsource = "nope"\n')
    logs = set(Path("/run/ext4gen").glob("serve-*.log"))
    proc = run_cli("serve", bad)  # the bad input reaches nbdkit (it alone plans), which fails
    assert proc.returncode != 0
    assert "source file" in proc.stderr and "does not exist" in proc.stderr, proc.stderr
    ours = [p for p in set(Path("/run/ext4gen").glob("serve-*.log")) - logs
            if str(bad) in p.read_text(errors="replace")]
    assert ours == []
