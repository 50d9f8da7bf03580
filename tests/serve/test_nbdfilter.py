"""ext4gen's nbdkit filter (ext4gen/serve/_nbdfilter.c): reads answered in C, never other bytes.

``ext4gen serve`` puts the filter right in front of the plugin.  It answers a
read through the compiled path without entering Python, or hands the whole
request to the plugin, which then reads and reports it as without the filter.
These tests prove that it is built for the installed nbdkit (CI installs
nbdkit-plugin-dev), that serve uses it only when it matches, that it answers
reads, and that those reads are the image's bytes and turn to EIO when a
source changes, with the server staying up.  The 16-connection stress test
(test_serve_concurrency.py) and every serving test also run through it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from helpers.cli import CLI, cli_serving
from helpers.servers import connect, import_nbd

from ext4gen.serve.environment import FILTER_MARKER, built_filter, ext4gen_filter, filter_for, nbdkit_config
from ext4gen.serve.options import ServeOptions
from ext4gen.serve.supervisor import nbdkit_command

BLOCK = 4096


def test_the_filter_is_built_for_the_installed_nbdkit() -> None:
    """scripts/setup.sh installs nbdkit-plugin-dev, so in CI its absence is a failure."""
    path = built_filter()
    assert path is not None, f"ext4gen/serve/_nbdfilter*.so missing or not for nbdkit {nbdkit_config()}"
    out = subprocess.run(["nbdkit", f"--filter={path}", "null", "--dump-plugin"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr  # nbdkit itself accepts it


def test_a_filter_built_for_another_nbdkit_is_not_used(tmp_path: Path) -> None:
    version = nbdkit_config()["version"]
    good = tmp_path / "good.so"
    good.write_bytes(b"\x7fELF..." + FILTER_MARKER + version.encode() + b";...")
    other = tmp_path / "other.so"
    other.write_bytes(b"\x7fELF..." + FILTER_MARKER + b"1.2.3;...")
    assert filter_for([other, good], version) == str(good)
    assert filter_for([other], version) is None
    assert filter_for([tmp_path / "missing.so", good], version) == str(good)
    assert filter_for([good], "") is None  # nbdkit did not say its version


def test_serve_puts_the_filter_innermost_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    path = built_filter()
    assert path is not None
    opts = ServeOptions(source="/srv/tree", filters=["readahead"], cache="64M")
    opts.check()

    def filters() -> list[str]:
        cmd = nbdkit_command(opts, "/run/s.sock", "/run/p.pid")
        return [a.removeprefix("--filter=") for a in cmd if a.startswith("--filter=")]

    got = filters()
    assert got[-1] == path and got.index("cache") < got.index("readahead") < len(got) - 1, got
    monkeypatch.setenv("EXT4GEN_NO_FILTER", "1")
    assert path not in filters() and ext4gen_filter() is None
    monkeypatch.delenv("EXT4GEN_NO_FILTER")
    monkeypatch.setenv("EXT4GEN_PURE_PYTHON", "1")  # no compiled path: nothing to answer with
    assert path not in filters()


def _tree(root: Path) -> dict[str, bytes]:
    files = {}
    for i in range(40):
        data = os.urandom(1000 + 7919 * i)
        (root / f"f{i:02}").write_bytes(data)
        files[f"f{i:02}"] = data
    return files


@pytest.mark.root  # nbdfuse is not needed, but a source swapped under a live server is
def test_reads_answered_in_c_are_the_image_and_a_changed_source_is_eio(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    old = time.time() - 60  # not racy for the saved plan, not that it matters here
    for p in src.iterdir():
        os.utime(p, (old, old))
    image = tmp_path / "ref.img"
    subprocess.run([*CLI, "build", str(src), "-o", str(image)], check=True, capture_output=True)
    want = hashlib.sha256(image.read_bytes()).hexdigest()
    with cli_serving(src, tmp_path / "s.sock", "--verbose") as server:
        got = subprocess.run(["nbdcopy", "--no-extents", server.uri, "-"], check=True,
                             capture_output=True).stdout
        assert hashlib.sha256(got).hexdigest() == want
        size = len(got)
        h = connect(server.uri)
        time.sleep(1.1)  # sources open for over a second are leased at their next read
        for _ in range(3):  # metadata now rendered: answered in C as well
            assert h.pread(size, 0) == got
        (src / "f07").write_bytes(b"x" * 8919)  # same size, new bytes and times
        nbd = import_nbd()
        failed = 0
        for off in range(0, size, 64 * BLOCK):
            try:
                data = h.pread(min(64 * BLOCK, size - off), off)
            except nbd.Error as e:  # EIO for the range holding f07's data
                assert e.errnum == errno.EIO, e
                failed += 1
            else:
                assert data == got[off:off + 64 * BLOCK], off  # never the new bytes
        assert failed >= 1
        assert h.pread(BLOCK, 0) == got[:BLOCK]  # still up, still the image
        h.shutdown()
        deadline = time.monotonic() + 10
        while "reads (" not in server.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
    err = server.stderr()
    counts = [int(m) for m in re.findall(r"ext4gen filter: (\d+) reads \(\d+ bytes\) answered in C", err)]
    assert counts and max(counts) >= 3, err
    assert "source changed since the image was planned" in err, err
    # nbdkit's process leased the sources it read again (ext4gen/render/_leases.c), and f07's
    # rewrite, by this process, was caught all the same (above).
    leased = [int(m) for m in re.findall(r"source reads checked by a lease (\d+),", err)]
    assert leased and max(leased) > 0, err
