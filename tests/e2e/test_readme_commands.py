"""The README's two commands, run exactly as it writes them: as root, with no ``sudo``.

A fresh Debian server where one is root often has no sudo at all, so the
commands must not need it.  The commands are read from the README's "Two
commands" block, not restated here, so the README cannot drift from what is
tested.  ``demo.sh`` runs for real (set-up, build, check, serve, mount, list,
clean-up); ``test.sh`` runs with an argument selecting one small test, since
running the whole suite inside the suite would recurse.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the README's commands are run as root")


def readme_commands() -> dict[str, list[str]]:
    """The commands of the README's "Two commands" code block, by script name."""
    text = README.read_text()
    section = text[text.index("## Two commands"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README: no sh block under 'Two commands'"
    out = {}
    for line in block.group(1).splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out[Path(argv[0]).name] = argv
    return out


def path_without(tool: str, tmp_path: Path) -> str:
    """This PATH, minus ``tool``: directories holding it are replaced by a directory of
    links to everything else in them."""
    dirs = []
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not d or not os.path.isdir(d):
            continue
        if not os.path.exists(os.path.join(d, tool)):
            dirs.append(d)
            continue
        shadow = tmp_path / f"path{len(dirs)}"
        shadow.mkdir()
        for name in os.listdir(d):
            if name != tool:
                (shadow / name).symlink_to(os.path.join(d, name))
        dirs.append(str(shadow))
    path = os.pathsep.join(dirs)
    assert shutil.which(tool, path=path) is None
    return path


def run_as_written(argv: list[str], tmp_path: Path, *extra: str,
                   timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "CI"))}
    env.update(PATH=path_without("sudo", tmp_path), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert argv[0] != "sudo", f"the README runs {argv} with sudo: it must work as root without it"
    return subprocess.run([*argv, *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)


def test_readme_names_both_commands_without_sudo() -> None:
    commands = readme_commands()
    assert commands == {"demo.sh": ["./scripts/demo.sh"], "test.sh": ["./scripts/test.sh"]}


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.mark.slow
def test_demo_as_written_as_root_without_sudo(tmp_path: Path) -> None:
    mounts_before = _mounts()
    proc = run_as_written(readme_commands()["demo.sh"], tmp_path, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for expected in ("e2fsck -fn: exit 0", "kernel mount: tree matches the source",
                     "the NBD export is byte-identical to the built image", "etc/motd",
                     "(refused: the filesystem is read-only)",
                     "demo: done; everything it started has been stopped"):
        assert expected in out, f"demo output lacks {expected!r}:\n{out[-4000:]}"
    assert "sudo" not in proc.stderr
    # it cleaned up: its work directory is gone and nothing of it is mounted
    assert list((tmp_path / "tmp").iterdir()) == []
    assert str(tmp_path) not in _mounts()
    assert _mounts().count("fuse") <= mounts_before.count("fuse")


@pytest.mark.slow
def test_test_script_as_written_as_root_without_sudo(tmp_path: Path) -> None:
    """Set-up, ruff and pytest with the README's command line; one small test selected."""
    argv = readme_commands()["test.sh"]
    proc = run_as_written(argv, tmp_path, "-q", "-p", "no:cacheprovider",
                          "tests/model/test_times.py::test_toml_datetime_values", timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "== ruff check" in out and "All checks passed!" in out
    assert re.search(r"^\d+ passed", out, re.M), out[-2000:]
    assert "sudo" not in proc.stderr
