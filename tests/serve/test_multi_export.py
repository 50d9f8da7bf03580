"""Issue 5: one ``ext4gen serve`` process, several sources, one NBD export each.

Each export must be byte for byte its own ``ext4gen build`` (nbdcopy per
export), ``nbdinfo --list`` must show them all with their descriptions, the
default export ("") must be the first source, and the statistics must be kept
per export.  Real nbdkit, real clients: nothing is mocked.  Servers of several
SOURCEs come from ``helpers.servers.serving_sources`` (ext4gen's background serve
API); tests of the CLI's own output and refusals run ``ext4gen serve`` itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from helpers.cli import CLI, build_image
from helpers.processes import kill_pid, pid_running, stop_process, subreaper
from helpers.servers import connect, import_nbd, serving_sources
from helpers.trees import make_source_tree

from ext4gen.serve import child_env, plugin_path
from ext4gen.serve.blockset import CHUNK, BlockSet
from ext4gen.serve.exports import default_name, parse_export_arg

BLOCK = 4096


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    """Two different trees: alpha.toml (named by default) and a manifest.toml served as beta."""
    out = {}
    for name, seed in (("alpha", 3), ("beta", 11)):
        base = tmp_path_factory.mktemp(name)
        manifest = make_source_tree(base, seed=seed)
        if name == "alpha":
            manifest = manifest.rename(base / "alpha.toml")
        out[name] = (manifest, build_image(manifest, base / "reference.img"))
    assert out["alpha"][1] != out["beta"][1]
    return out


def _served(sources: dict[str, tuple[Path, bytes]], tmp_path: Path):
    """alpha and beta from one background server (stopped at the end of the ``with``)."""
    alpha, beta = sources["alpha"][0], sources["beta"][0]
    return serving_sources(tmp_path / "serve.log", alpha, f"beta={beta}")


def _summaries(stderr: str) -> dict[str, dict[str, int]]:
    """The shutdown lines, one per export, as {export: {counter: value}}."""
    out = {}
    for line in stderr.splitlines():
        m = re.match(r"ext4gen: served (\S+) as export '([^']+)' for [\d.]+ s: (.*)", line)
        if m:
            nums = {"reads": int(re.search(r"(\d+) reads", line).group(1))}
            for key in ("metadata", "data", "zero", "connections", "source errors"):
                nums[key] = int(re.search(rf"\b{key} (\d+)", m.group(3)).group(1))
            d = re.search(r"distinct blocks read (\d+) of (\d+)", line)
            nums["distinct"], nums["blocks"] = int(d.group(1)), int(d.group(2))
            out[m.group(2)] = nums
    return out


def test_two_sources_at_once_each_export_is_its_own_build(sources, tmp_path: Path):
    alpha_ref, beta_ref = sources["alpha"][1], sources["beta"][1]
    with _served(sources, tmp_path) as server:
        sock = server.sock
        assert server.uris == [f"nbd+unix:///alpha?socket={sock}", f"nbd+unix:///beta?socket={sock}"]

        listing = json.loads(subprocess.run(["nbdinfo", "--list", "--json", server.uri],
                                            capture_output=True, text=True, check=True).stdout)
        exports = {e["export-name"]: e for e in listing["exports"]}
        assert list(exports) == ["alpha", "beta"]
        for name, ref in (("alpha", alpha_ref), ("beta", beta_ref)):
            assert exports[name]["export-size"] == len(ref)
            assert exports[name]["description"].startswith("ext4gen servetest: "), exports[name]
            assert exports[name]["is_read_only"] is True
        assert "alpha.toml" in exports["alpha"]["description"]
        assert "manifest.toml" in exports["beta"]["description"]
        text = subprocess.run(["nbdinfo", "--list", server.uri], capture_output=True, text=True,
                              check=True).stdout
        assert 'export="alpha"' in text and 'export="beta"' in text

        for uri, ref, name in ((server.uris[0], alpha_ref, "alpha"), (server.uris[1], beta_ref, "beta")):
            out = tmp_path / f"{name}.img"
            subprocess.run(["nbdcopy", uri, str(out)], check=True)
            assert out.read_bytes() == ref, f"export {name} differs from its ext4gen build"
        # beta once more without extents: every block read, so distinct == all.
        subprocess.run(["nbdcopy", "--no-extents", server.uris[1], "null:"], check=True)

        # The default export ("") is the first source; its canonical name says so.
        nbd = import_nbd()
        h = nbd.NBD()
        h.set_full_info(True)
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        assert h.get_canonical_export_name() == "alpha"
        assert h.get_size() == len(alpha_ref)
        assert h.pread(BLOCK, 0) == alpha_ref[:BLOCK]
        h.shutdown()
        info = json.loads(subprocess.run(["nbdinfo", "--json", server.uris[1]], capture_output=True,
                                         text=True, check=True).stdout)
        assert info["exports"][0]["description"].startswith("ext4gen servetest: manifest.toml")
    assert not server.alive()
    s = _summaries(server.stderr())
    assert set(s) == {"alpha", "beta"}, server.stderr()
    assert s["beta"]["blocks"] == len(beta_ref) // BLOCK
    assert s["beta"]["distinct"] == s["beta"]["blocks"]
    assert s["alpha"]["blocks"] == len(alpha_ref) // BLOCK
    assert s["alpha"]["connections"] >= 3 and s["beta"]["connections"] >= 3, s  # nbdcopy: multi-conn
    assert s["beta"]["metadata"] + s["beta"]["data"] + s["beta"]["zero"] >= len(beta_ref)


def test_distinct_blocks_read_are_counted_per_export(sources, tmp_path: Path):
    """Exactly the blocks a client touched, on the export it touched them on."""
    alpha_ref = sources["alpha"][1]
    reads = [(0, 1), (10 * BLOCK, 3 * BLOCK), (11 * BLOCK + 5, 10), (40 * BLOCK - 1, 2),
             (len(alpha_ref) - 100, 100), (0, 1024)]
    expected: set[int] = set()
    with _served(sources, tmp_path) as server:
        h = connect(server.uris[0])
        for off, n in reads:
            assert h.pread(n, off) == alpha_ref[off : off + n]
            expected.update(range(off // BLOCK, (off + n - 1) // BLOCK + 1))
        h.shutdown()
    s = _summaries(server.stderr())
    assert s["alpha"]["distinct"] == len(expected) == 7, (s, sorted(expected))
    assert s["alpha"]["reads"] == len(reads)
    assert s["beta"]["distinct"] == 0 and s["beta"]["reads"] == 0 and s["beta"]["connections"] == 0


def test_connections_to_both_exports_interleave(sources, tmp_path: Path):
    """Several connections per export, reads alternating between them: each sees its own image."""
    (_a, alpha_ref), (_b, beta_ref) = sources["alpha"], sources["beta"]
    with _served(sources, tmp_path) as server:
        handles = [(connect(server.uris[i % 2]), (alpha_ref, beta_ref)[i % 2]) for i in range(6)]
        size = min(len(alpha_ref), len(beta_ref))
        for k in range(200):
            off = (k * 7919 * BLOCK + k) % (size - 3 * BLOCK)
            for h, ref in handles:
                assert h.pread(3 * BLOCK, off) == ref[off : off + 3 * BLOCK]
        for h, _ref in handles:
            h.shutdown()
        assert server.alive()


def test_an_unknown_export_name_is_refused_and_the_server_keeps_serving(sources, tmp_path: Path):
    with _served(sources, tmp_path) as server:
        proc = subprocess.run(["nbdinfo", f"nbd+unix:///gamma?socket={server.sock}"],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        assert "gamma" in proc.stderr
        assert "no export named 'gamma'" in server.stderr()
        assert connect(server.uris[1]).pread(BLOCK, 0) == sources["beta"][1][:BLOCK]
        assert server.alive()


def test_the_plugin_serves_several_sources_when_nbdkit_runs_it_directly(sources, tmp_path: Path):
    """nbdkit python plugin source=… source=NAME=…: names from the files, or as given."""
    (alpha, alpha_ref), (beta, beta_ref) = sources["alpha"], sources["beta"]
    sock = tmp_path / "direct.sock"
    proc = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", "--threads", "1", "-U", str(sock),
                             "python", plugin_path(), f"source={alpha}", f"manifest=second={beta}"],
                            env=child_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        listing = json.loads(subprocess.run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={sock}"],
                                            capture_output=True, text=True, check=True).stdout)
        assert [e["export-name"] for e in listing["exports"]] == ["alpha", "second"]
        for name, ref in (("alpha", alpha_ref), ("second", beta_ref)):
            out = tmp_path / f"{name}.img"
            subprocess.run(["nbdcopy", f"nbd+unix:///{name}?socket={sock}", str(out)], check=True)
            assert out.read_bytes() == ref
    finally:
        stop_process(proc)
    assert proc.stderr.read().decode().count("ext4gen: served ") == 2


def test_background_serve_prints_one_uri_per_export(sources, tmp_path: Path):
    (alpha, alpha_ref), (beta, beta_ref) = sources["alpha"], sources["beta"]
    sock, pidfile = tmp_path / "bg.sock", tmp_path / "bg.pid"
    with subreaper():
        # SOURCEs and options may mix: the second SOURCE comes after --socket.
        proc = subprocess.run([*CLI, "serve", f"one={alpha}", "--socket", str(sock), f"two={beta}",
                               "--pidfile", str(pidfile), "--log", str(tmp_path / "bg.log")],
                              capture_output=True, text=True, timeout=120)
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        try:
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.split() == [f"nbd+unix:///one?socket={sock}",
                                           f"nbd+unix:///two?socket={sock}"]
            assert connect(f"nbd+unix:///two?socket={sock}").pread(BLOCK, 0) == beta_ref[:BLOCK]
            assert connect(f"nbd+unix:///one?socket={sock}").pread(BLOCK, 0) == alpha_ref[:BLOCK]
        finally:
            if pid:
                kill_pid(pid)
        assert pid and not pid_running(pid)
    assert not sock.exists()


# -- bad input: one line, exit 2, before nbdkit starts -------------------------------------


def test_duplicate_export_names_are_one_line_and_exit_2(sources, tmp_path: Path):
    alpha = sources["alpha"][0]
    for args in ([str(alpha), str(alpha)], [f"x={alpha}", f"x={sources['beta'][0]}"]):
        proc = subprocess.run([*CLI, "serve", *args, "--socket", str(tmp_path / "s"), "--foreground"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "NAME=SOURCE" in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_bad_second_source_names_its_file_and_key(sources, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('["/x"]\ntext = "a"\ncolour = "red"\n')
    proc = subprocess.run([*CLI, "serve", str(sources["alpha"][0]), str(bad), "--foreground",
                           "--socket", str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bad.toml" in proc.stderr and "colour" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_base_map_with_several_sources_is_refused(sources, tmp_path: Path):
    (tmp_path / "map.json").write_text("{}")
    proc = subprocess.run([*CLI, "serve", str(sources["alpha"][0]), str(sources["beta"][0]),
                           "--base-map", str(tmp_path / "map.json"), "--foreground"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--base-map" in proc.stderr and proc.stderr.count("\n") == 1


# -- names ---------------------------------------------------------------------------------


def test_default_export_names(tmp_path: Path):
    (tmp_path / "tree.d").mkdir()
    assert default_name("site.toml") == "site"
    assert default_name("/x/rootfs.tar.gz") == "rootfs"
    assert default_name("data.json") == "data"
    assert default_name(str(tmp_path / "tree.d") + "/") == "tree.d"
    assert default_name("my tree (1).tar") == "my-tree-1"
    assert default_name(".toml") == "toml"  # a dot file: its name is all there is
    assert default_name("(&).toml") == "export"  # nothing usable left


def test_name_equals_source_syntax(tmp_path: Path):
    odd = tmp_path / "a=b.toml"
    odd.write_text("")
    assert parse_export_arg("root=/srv/root.toml") == ("root", "/srv/root.toml")
    assert parse_export_arg(str(odd)) == (None, str(odd))  # an existing path wins
    assert parse_export_arg("./x=y.toml") == (None, "./x=y.toml")  # "./x" is not a name
    assert parse_export_arg("plain.toml") == (None, "plain.toml")


def test_blockset_counts_distinct_blocks():
    b = BlockSet()
    ref: set[int] = set()
    for first, n in ((0, 1), (5, 3), (6, 10), (CHUNK - 3, 10), (3 * CHUNK + 1, 2 * CHUNK + 7),
                     (100, 0), (9, 1)):
        b.add(first, first + n)
        ref.update(range(first, first + n))
    assert len(b) == len(ref)
    assert all(x in b for x in ref) and 4 not in b and 2 * CHUNK not in b
    b.add_bytes(4 * BLOCK - 1, 2)  # straddles blocks 3 and 4
    assert 3 in b and 4 in b and len(b) == len(ref) + 2
