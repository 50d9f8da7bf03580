"""Bad input through the command line: exit code 2, one line naming the key, no traceback.

Every case in helpers.bad_manifests.BAD_MANIFESTS runs through ``ext4gen.cli.main``
in-process (fast; an unexpected exception would surface as a test error, as a
traceback would for a user), and a representative subset runs as a real
subprocess, where the exit code and stderr are exactly what a user sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.bad_manifests import BAD_MANIFESTS, Bad, write_bad

from ext4gen.cli import main

BY_ID = {c.id: c for c in BAD_MANIFESTS}
SUBPROCESS_CASES = ["unknown-entry-key", "duplicate-trailing-slash", "dotdot", "name-256-utf8",
                    "missing-source", "hardlink-to-dir", "symlink-4096", "invalid-toml"]


def _check_stderr(err: str, case: Bad) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("ext4gen: "), lines[0]
    assert case.key in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", BAD_MANIFESTS, ids=lambda c: c.id)
def test_build_rejects_bad_manifest(case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_bad(case, tmp_path)
    out = tmp_path / "out.img"
    assert main(["build", str(manifest), "-o", str(out), "-q"]) == 2
    captured = capsys.readouterr()
    _check_stderr(captured.err, case)
    assert captured.out == ""
    assert not out.exists(), "no image may be written from a bad manifest"


@pytest.mark.parametrize("command", ["check", "inspect"])
@pytest.mark.parametrize("case_id", ["unknown-top-level", "hardlink-to-nothing", "invalid-toml"])
def test_other_commands_reject_bad_manifest(command: str, case_id: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    case = BY_ID[case_id]
    manifest = write_bad(case, tmp_path)
    assert main([command, str(manifest)]) == 2
    _check_stderr(capsys.readouterr().err, case)


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_build_subprocess_exit_code_and_stderr(case_id: str, tmp_path: Path) -> None:
    case = BY_ID[case_id]
    manifest = write_bad(case, tmp_path)
    out = tmp_path / "out.img"
    proc = subprocess.run([sys.executable, "-m", "ext4gen.cli", "build", str(manifest), "-o", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    _check_stderr(proc.stderr, case)
    assert proc.stdout == ""
    assert not out.exists()


def test_missing_manifest_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = subprocess.run([sys.executable, "-m", "ext4gen.cli", "build", str(missing), "-o",
                           str(tmp_path / "o.img")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    _check_stderr(proc.stderr, Bad("missing", "nope.toml"))


def test_bad_source_date_epoch(tmp_path: Path) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text('["/a"]\ntext = "x"\n')
    env = {"PATH": "/usr/bin:/bin", "SOURCE_DATE_EPOCH": "tomorrow"}
    proc = subprocess.run([sys.executable, "-m", "ext4gen.cli", "build", str(manifest), "-o",
                           str(tmp_path / "o.img")], capture_output=True, text=True, check=False,
                          env=env)
    assert proc.returncode == 2
    _check_stderr(proc.stderr, Bad("epoch", "SOURCE_DATE_EPOCH"))
