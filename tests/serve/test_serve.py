"""Issue 3: the image served by nbdkit is the built image, through every client.

Each test starts the real ``ext4gen serve`` (the CLI running nbdkit with the
plugin) and reads it with real NBD clients: nbdinfo, nbdcopy, libnbd, and the
kernel through nbdfuse and a loop mount.  Tests of what is served take their
server from the ``ext4_export`` fixture (``served``); tests of the CLI itself
(signals, exit codes, its log, flags, defaults) run it with ``CliServer``, and
the reference stays ``ext4gen build``'s own output, which nbdcopy must match.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import CLI, CliServer, build_image, cli_serving
from helpers.mounts import nbdfuse_loop_mount
from helpers.processes import kill_pid, pid_running, subreaper
from helpers.servers import Export, connect, export, import_nbd, nbdinfo_json
from helpers.trees import make_source_tree

import ext4gen
from ext4gen.serve import child_env, plugin_path
from ext4gen.serve.environment import ext4gen_filter
from ext4gen.verify import compare_tree, is_root

BLOCK = 4096


@pytest.fixture(scope="module")
def tree_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def manifest(tree_dir: Path) -> Path:
    return make_source_tree(tree_dir)


@pytest.fixture(scope="module")
def reference(manifest: Path, tree_dir: Path) -> bytes:
    return build_image(manifest, tree_dir / "reference.img")


@pytest.fixture
def server(manifest: Path, tmp_path: Path) -> Iterator[CliServer]:
    """``ext4gen serve --foreground`` itself, for tests of what the CLI does."""
    with cli_serving(manifest, tmp_path / "nbd.sock") as s:
        yield s


@pytest.fixture
def served(manifest: Path, ext4_export) -> Export:
    """An export of the test tree, for tests of what is served (stopped by the fixture)."""
    return export(ext4_export, manifest)


def test_nbdinfo_reports_a_read_only_multi_conn_disk_with_extents(served: Export, reference: bytes):
    info = nbdinfo_json(served.uri)
    (export,) = info["exports"]
    assert export["export-size"] == len(reference)
    assert export["is_read_only"] is True
    assert export["can_multi_conn"] is True
    assert "base:allocation" in export["contexts"]
    assert export["is_rotational"] is False
    assert export["can_cache"] is True
    assert (export["block_size_minimum"], export["block_size_preferred"]) == (1, BLOCK)
    assert export["block_size_maximum"] >= 1 << 20
    assert export["description"].startswith("ext4gen servetest: manifest.toml")
    assert export["can_zero"] is False and export["can_trim"] is False


def test_nbdcopy_of_the_export_equals_ext4gen_build(served: Export, reference: bytes, tmp_path: Path):
    for name, flags in (("extents.img", []), ("plain.img", ["--no-extents"])):
        out = tmp_path / name
        subprocess.run(["nbdcopy", *flags, served.uri, str(out)], check=True)
        assert out.read_bytes() == reference, f"nbdcopy {' '.join(flags)} differs from ext4gen build"


def test_writes_are_refused(served: Export):
    nbd = import_nbd()
    h = connect(served.uri)
    assert h.is_read_only()
    with pytest.raises(nbd.Error):
        h.pwrite(b"x" * BLOCK, 0)
    assert h.pread(BLOCK, 0) == h.pread(BLOCK, 0)
    h.shutdown()


def test_reads_of_every_alignment_match_the_built_image(served: Export, reference: bytes):
    """Unaligned reads that straddle region boundaries (metadata/data/zero) and the end."""
    h = connect(served.uri)
    size = len(reference)
    offsets = [0, 1, 1023, 1024, BLOCK - 1, BLOCK, 3 * BLOCK + 17, size // 2 - 5, size - BLOCK - 3]
    lengths = [1, 2, 511, BLOCK, BLOCK + 1, 3 * BLOCK - 7, 70_001]
    for off in offsets:
        for n in lengths:
            n = min(n, size - off)
            assert h.pread(n, off) == reference[off : off + n], (off, n)
    h.shutdown()


def test_read_past_the_end_is_an_error_not_a_crash(served: Export, reference: bytes):
    nbd = import_nbd()
    h = connect(served.uri)
    size = h.get_size()
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_BOUNDS)  # let the request reach the server
    for off, n in ((size, 1), (size - 100, BLOCK), (size + (1 << 30), BLOCK), ((1 << 63) - BLOCK, BLOCK)):
        with pytest.raises(nbd.Error) as e:
            h.pread(n, off)
        assert e.value.errnum == errno.EINVAL, e.value
    assert h.pread(BLOCK, size - BLOCK) == reference[-BLOCK:]
    h.shutdown()
    assert served.alive()
    assert connect(served.uri).pread(100, 1024) == reference[1024:1124]


def test_extents_report_holes_only_where_the_image_is_zero(served: Export, reference: bytes):
    nbd = import_nbd()
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(served.uri)
    size = h.get_size()
    seen: list[tuple[int, int, int]] = []

    def cb(metacontext: str, offset: int, entries: list[int], err: int) -> int:
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            for i in range(0, len(entries), 2):
                seen.append((offset, entries[i], entries[i + 1]))
                offset += entries[i]
        return 0

    pos = 0
    while pos < size:
        before = len(seen)
        h.block_status(min(size - pos, 1 << 30), pos, cb)
        assert len(seen) > before
        pos = seen[-1][0] + seen[-1][1]
    assert pos == size
    holes = [(o, n) for o, n, t in seen if t & nbd.STATE_HOLE]
    assert all(t in (0, nbd.STATE_HOLE | nbd.STATE_ZERO) for _o, _n, t in seen)
    for o, n in holes:
        assert reference[o : o + n].count(0) == n, f"extent {o}+{n} reported as a hole is not zero"
    assert holes, "the tree has partial blocks; some zero extents must be reported"
    # REQ_ONE: a single extent, the first one, starting where asked.
    o, n, t = holes[0][0], holes[0][1], nbd.STATE_HOLE | nbd.STATE_ZERO
    one: list[tuple[int, int, int]] = []
    h.block_status(size - o, o, lambda _c, off, e, _err: one.extend(
        (off, e[i], e[i + 1]) for i in range(0, len(e), 2)) or 0, nbd.CMD_FLAG_REQ_ONE)
    assert one == [(o, n, t)]
    h.shutdown()


@pytest.mark.slow
def test_nbdcopy_with_extents_writes_a_sparse_file(tmp_path: Path, ext4_image, ext4_export):
    """Over 32768 inodes force a second block group whose tail is free: a large hole.

    Only the extents let nbdcopy skip it without reading it, which the server's
    stats prove (almost no zero bytes served: the summary it logs when stopped),
    and the copy is allocated exactly where the server reported data.
    """
    lines = ['[image]', 'dedup = "none"']
    for d in range(33):
        for i in range(1000):
            lines += [f'["/d{d:02d}/f{i:04d}"]', 'text = "x"']
    manifest = tmp_path / "many.toml"
    manifest.write_text("\n".join(lines) + "\n")
    reference = ext4_image(manifest).read_bytes()
    out = tmp_path / "copy.img"
    server = export(ext4_export, manifest)
    subprocess.run(["nbdcopy", server.uri, str(out)], check=True)
    extents = json.loads(subprocess.run(["nbdinfo", "--map", "--json", server.uri],
                                        capture_output=True, text=True, check=True).stdout)
    server.stop()  # the summary is logged when serving stops
    data_blocks: set[int] = set()
    hole_bytes = 0
    for e in extents:
        if e["type"] & 1:
            hole_bytes += e["length"]
            assert reference[e["offset"] : e["offset"] + e["length"]].count(0) == e["length"]
        else:
            data_blocks.update(range(e["offset"] // BLOCK, -(-(e["offset"] + e["length"]) // BLOCK)))
    assert hole_bytes > len(reference) // 2, "the test tree must have a large hole"
    assert out.read_bytes() == reference
    assert out.stat().st_blocks * 512 == len(data_blocks) * BLOCK
    summary = _summary(server.stderr())
    assert summary["extents calls"] >= 1
    assert summary["zero"] < 1 << 20, f"nbdcopy read the holes instead of skipping them: {summary}"


def _summary(stderr: str) -> dict[str, int]:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("ext4gen: served ")]
    assert len(lines) == 1, f"expected one shutdown summary, got:\n{stderr}"
    nums = {k: int(v) for v, k in re.findall(r"(\d+) (reads|extents calls)", lines[0])}
    for key in ("metadata", "data", "zero", "generated", "cache hits", "source errors",
                "connections"):
        nums[key] = int(re.search(rf"\b{key} (\d+)", lines[0]).group(1))
    return nums


def test_shutdown_summary_counts_requests_and_bytes_by_kind(manifest: Path, reference: bytes,
                                                             tmp_path: Path):
    with cli_serving(manifest, tmp_path / "nbd.sock", "--verbose") as server:
        h = connect(server.uri)
        h.pread(BLOCK, 0)  # superblock: metadata
        h.pread(BLOCK, 0)  # again: a cache hit
        h.pread(100, len(reference) - 100)
        h.shutdown()
        subprocess.run(["nbdcopy", "--no-extents", server.uri, "null:"], check=True)
        deadline = time.monotonic() + 10
        while "connection 2 closed" not in server.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.returncode == 0
    err = server.stderr()
    s = _summary(err)
    size = len(reference)
    assert s["metadata"] + s["data"] + s["zero"] == 2 * BLOCK + 100 + size
    assert s["metadata"] > 0 and s["data"] > 0
    assert s["generated"] > 0 and s["cache hits"] > 0
    assert s["reads"] >= 4 and s["connections"] >= 2 and s["source errors"] == 0
    # -v: nbdkit's debug output carries a line per closed connection with its own counts:
    # the plugin's (reads through Python) and, on the compiled path, ext4gen filter's.
    py = re.search(r"ext4gen: connection 1 closed after [\d.]+ s: (\d+) reads through Python, "
                   r"(\d+) bytes, 0 errors", err)
    in_c = re.search(r"\[1\]: debug: ext4gen filter: (\d+) reads \((\d+) bytes\) answered in C, "
                     r"(\d+) passed to the plugin", err)
    assert py, err
    reads, nbytes = int(py.group(1)), int(py.group(2))
    if ext4gen_filter() is not None:  # None on the pure-Python path too
        assert in_c, err
        # only metadata the pre-rendering thread has not reached yet goes to Python
        assert int(in_c.group(3)) == reads
        reads, nbytes = reads + int(in_c.group(1)), nbytes + int(in_c.group(2))
    else:
        assert not in_c, err
    assert (reads, nbytes) == (3, 8292), err


def test_sigint_and_sigterm_stop_cleanly(manifest: Path, tmp_path: Path):
    for sig in (signal.SIGINT, signal.SIGTERM):
        sock = tmp_path / f"{sig.name}.sock"
        server = CliServer(manifest, sock)
        try:
            assert connect(server.uri).pread(10, 0) is not None
            server.proc.send_signal(sig)
            assert server.proc.wait(30) == 0
            assert not pid_running(server.nbdkit_pid), "nbdkit outlived ext4gen serve"
            assert not sock.exists(), "the socket was left behind"
            assert "ext4gen: served " in server.stderr()
        finally:
            server.stop()


def test_an_idle_client_does_not_keep_the_server_alive_after_sigterm(manifest: Path, tmp_path: Path):
    """nbdkit 1.32 waits for clients after SIGTERM; serve kills it after a short grace."""
    server = CliServer(manifest, tmp_path / "nbd.sock")
    try:
        idle = connect(server.uri)
        assert idle.pread(10, 0) is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert time.monotonic() - started < 15
        assert not pid_running(server.nbdkit_pid)
        assert not server.sock.exists()
        del idle
    finally:
        server.stop()


def test_a_killed_server_leaves_no_nbdkit_and_its_leftovers_are_collected(manifest: Path,
                                                                         tmp_path: Path):
    """SIGKILL gives ext4gen serve no chance to clean up: nbdkit must still die with it."""
    from ext4gen.serve import runtime_dir

    server = CliServer(manifest, tmp_path / "nbd.sock")
    try:
        (workdir,) = [d for d in runtime_dir().glob("serve-*/")
                      if _server_json(d).get("socket") == str(server.sock)]
        server.proc.kill()
        server.proc.wait(30)
        deadline = time.monotonic() + 30
        while pid_running(server.nbdkit_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_running(server.nbdkit_pid), "nbdkit outlived its killed supervisor"
        assert workdir.exists()
        with cli_serving(manifest, tmp_path / "again.sock") as again:  # binds over the stale socket's dir
            assert connect(again.uri).pread(10, 0) is not None
        assert not workdir.exists(), "the dead server's work directory was not collected"
    finally:
        server.stop()


def _server_json(d: Path) -> dict:
    try:
        return json.loads((d / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def test_filters_are_forwarded_to_nbdkit(manifest: Path, reference: bytes, tmp_path: Path):
    extra = ("--filter", "cache", "--filter", "readahead", "--param", "cache-max-size=16M")
    with cli_serving(manifest, tmp_path / "nbd.sock", *extra) as server:
        argv = Path(f"/proc/{server.nbdkit_pid}/cmdline").read_bytes().split(b"\0")
        assert b"--filter=cache" in argv and b"--filter=readahead" in argv
        assert b"cache-max-size=16M" in argv
        out = tmp_path / "copy.img"
        subprocess.run(["nbdcopy", server.uri, str(out)], check=True)
        assert out.read_bytes() == reference


def test_default_is_one_thread_per_connection(server: CliServer):
    argv = Path(f"/proc/{server.nbdkit_pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--threads") + 1] == b"1"


def test_background_serve_prints_uri_and_pid_then_stops_on_kill(manifest: Path, reference: bytes,
                                                                tmp_path: Path):
    """No --foreground: the CLI returns; a detached supervisor keeps nbdkit running.

    Run from / with no PYTHONPATH: the embedded interpreter must still find
    the project and its dependencies.
    """
    sock, pidfile, log = tmp_path / "bg.sock", tmp_path / "bg.pid", tmp_path / "bg.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with subreaper():
        proc = subprocess.run([*CLI, "serve", str(manifest), "--socket", str(sock), "--pidfile",
                               str(pidfile), "--log", str(log)], capture_output=True, text=True,
                              cwd="/", env=env, timeout=120)
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        try:
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == f"nbd+unix:///?socket={sock}"
            assert f"pid {pid}" in proc.stderr
            nbdkit = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            assert len(nbdkit) == 1
            h = connect(proc.stdout.strip())
            assert h.pread(len(reference), 0) == reference
            h.shutdown()
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while (pid_running(pid) or pid_running(nbdkit[0])) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not pid_running(pid) and not pid_running(nbdkit[0])
            assert not sock.exists() and not pidfile.exists()
            assert "ext4gen: served " in log.read_text()
        finally:
            if pid:
                kill_pid(pid)


@pytest.mark.parametrize("kind", ["directory", "tar"])
def test_every_build_source_and_option_is_served_as_built(kind: str, manifest: Path, tmp_path: Path):
    """serve takes what build takes (host directory, tar archive, --no-inline-data, --dedup)."""
    src = manifest.parent / "src"
    if kind == "tar":
        source = tmp_path / "tree.tar"
        subprocess.run(["tar", "-C", str(src), "-cf", str(source), "."], check=True)
    else:
        source = src
        # Importing a directory copies host atimes, and the first read after a write
        # moves them (relatime): read everything once so build and serve see one tree.
        for f in src.iterdir():
            f.read_bytes()
    options = ["--no-inline-data", "--dedup", "none"]
    subprocess.run([*CLI, "build", str(source), *options, "-o", str(tmp_path / "ref.img"), "-q"],
                   check=True)
    reference = (tmp_path / "ref.img").read_bytes()
    with cli_serving(source, tmp_path / "nbd.sock", *options) as server:
        argv = Path(f"/proc/{server.nbdkit_pid}/cmdline").read_bytes().split(b"\0")
        assert b"inline_data=false" in argv and b"dedup=none" in argv
        out = tmp_path / "copy.img"
        subprocess.run(["nbdcopy", server.uri, str(out)], check=True)
        assert out.read_bytes() == reference


def test_serve_refuses_a_manifest_on_stdin(manifest: Path):
    proc = subprocess.run([*CLI, "serve", "-", "--foreground"], input=manifest.read_text(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "stdin" in proc.stderr, proc.stderr


# -- bad input -----------------------------------------------------------------------------


BAD_MANIFESTS = {
    "unknown_key.toml": ('["/etc/x"]\ntext = "a"\ncolour = "red"\n', "colour"),
    "bad_mode.toml": ('["/etc/x"]\ntext = "a"\nmode = "0999"\n', "mode"),
    "missing_source.toml": ('["/etc/x"]\nsource = "does/not/exist"\n', "/etc/x"),
    "not_toml.toml": ("this is [ not toml", "TOML"),
}


@pytest.mark.parametrize("name", sorted(BAD_MANIFESTS))
def test_serve_with_a_bad_manifest_is_one_line_and_exit_2(name: str, tmp_path: Path):
    text, key = BAD_MANIFESTS[name]
    bad = tmp_path / name
    bad.write_text(text)
    sock = tmp_path / "never.sock"
    for mode in (["--foreground"], []):
        proc = subprocess.run([*CLI, "serve", str(bad), "--socket", str(sock), *mode],
                              capture_output=True, text=True, timeout=60)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("ext4gen: ") and key in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert not sock.exists()


@pytest.mark.parametrize("args, key", [
    (["manifest={bad}"], "colour"),
    ([], "manifest=PATH is required"),
    (["manifest={good}", "dedup=maybe"], "dedup"),
    (["manifest={good}", "colour=red"], "colour"),
])
def test_nbdkit_with_a_bad_manifest_prints_one_line_and_exits_non_zero(
        args: list[str], key: str, manifest: Path, tmp_path: Path):
    """The plugin run by nbdkit directly (no CLI in front) fails the same way, before serving."""
    bad = tmp_path / "bad.toml"
    bad.write_text('["/x"]\ntext = "a"\ncolour = "red"\n')
    sock = tmp_path / "nbd.sock"
    params = [a.format(bad=bad, good=manifest) for a in args]
    proc = subprocess.run(["nbdkit", "-f", "-U", str(sock), "python", plugin_path(), *params],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("ext4gen: ") and key in lines[0], proc.stderr
    assert not sock.exists()


# -- the kernel's view -------------------------------------------------------------------------


@pytest.mark.root
def test_kernel_mount_through_nbdfuse_and_loop_equals_the_manifest(manifest: Path, served: Export,
                                                                   tmp_path: Path):
    """ext4gen serve → nbdfuse → mount -o loop,ro: the tree equals the manifest, bytes and metadata."""
    assert is_root()
    with nbdfuse_loop_mount(served.sock, tmp_path) as mnt:
        tree, _options = ext4gen.load(str(manifest))
        assert compare_tree(tree, str(mnt)) == []
        with pytest.raises(OSError):
            (mnt / "new-file").write_text("no")
    assert served.alive()


def test_the_cli_is_importable_without_nbd_bindings():
    """serve.commands must not need python3-libnbd: only the tests use it."""
    code = "import sys; sys.modules['nbd'] = None; import ext4gen.serve.commands, ext4gen.cli"
    subprocess.run([sys.executable, "-c", code], check=True)
