"""Remote content from a real nginx (and a fault-injecting proxy in front of it), served by nbdkit.

Proves laziness (only the chunks of the file read are fetched, once), integrity
(a declared digest that does not match is EIO for that file only), faults
(retries through resets and 5xx; a stopped origin fails uncached reads in bounded
time while cached ones and the server go on; the origin coming back heals) and
pinning (a replaced object is EIO).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from helpers.origins import FaultProxy, Nginx, file_bytes_over_nbd, nginx_serving
from helpers.servers import connect, import_nbd, serving_sources

import ext4gen

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20


@pytest.fixture
def www(tmp_path: Path) -> dict[str, bytes]:
    """Three files of pseudo-random bytes in tmp_path/www (2.5 MiB, 3 MiB, 40 KiB)."""
    root = tmp_path / "www"
    root.mkdir()
    files = {"a.bin": os.urandom(5 * MiB // 2), "b.bin": os.urandom(3 * MiB),
             "c.txt": os.urandom(40 << 10)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


@pytest.fixture
def origin(tmp_path: Path, www: dict[str, bytes], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EXT4GEN_REMOTE_TIMEOUT", "3")
    with nginx_serving(tmp_path / "nginx", tmp_path / "www") as server:
        yield server


def write_manifest(path: Path, entries: dict[str, dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def gets(server: Nginx, name: str) -> int:
    return sum(1 for ln in server.requests(name) if ln.startswith("GET "))


def nbd_errno(h, image, path: str) -> int | None:
    nbd = import_nbd()
    try:
        file_bytes_over_nbd(h, image, path)
    except nbd.Error as e:  # libnbd names the errno ("EIO")
        return getattr(errno, e.errno) if isinstance(e.errno, str) else e.errno
    return None


def test_one_file_read_fetches_only_its_chunks_once(tmp_path, origin, www):
    m = write_manifest(tmp_path / "m.json", {
        "/a.bin": {"url": origin.url("a.bin")}, "/b.bin": {"url": origin.url("b.bin")},
        "/local.txt": {"text": "here\n"}})
    image = ext4gen.plan(*ext4gen.load(str(m)))
    with serving_sources(tmp_path / "serve.log", m) as srv:
        h = connect(srv.uri)
        assert gets(origin, "a.bin") == gets(origin, "b.bin") == 0  # planning only HEADs
        assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]
        assert gets(origin, "a.bin") == 3  # 2.5 MiB in 1 MiB chunks
        assert gets(origin, "b.bin") == 0
        assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]
        assert gets(origin, "a.bin") == 3  # the second read fetched nothing
        assert all(ln.split()[2].startswith("bytes=") for ln in origin.requests("a.bin")
                   if ln.startswith("GET "))
        h.shutdown()
    with serving_sources(tmp_path / "serve2.log", m) as srv:  # a restart keeps the disk cache
        h = connect(srv.uri)
        assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]
        h.shutdown()
    assert gets(origin, "a.bin") == 3


def test_digest_mismatch_is_eio_for_that_file_only(tmp_path, origin, www):
    def declared(name: str, data: bytes) -> dict:
        chunks = [hashlib.sha256(data[i : i + MiB]).hexdigest() for i in range(0, len(data), MiB)]
        return {"url": origin.url(name), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "chunks": {"size": MiB, "sha256": chunks}}

    m = write_manifest(tmp_path / "m.json", {"/a.bin": declared("a.bin", www["a.bin"]),
                                             "/b.bin": declared("b.bin", www["b.bin"]),
                                             "/c.txt": declared("c.txt", www["c.txt"])})
    bad = bytearray(www["b.bin"])
    bad[MiB + 17] ^= 1  # the second chunk differs by one bit
    (tmp_path / "www" / "b.bin").write_bytes(bad)
    image = ext4gen.plan(*ext4gen.load(str(m)))
    assert gets(origin, "a.bin") + gets(origin, "b.bin") == 0
    assert not origin.requests()  # digests and sizes declared: planning needs no network
    with serving_sources(tmp_path / "serve.log", m) as srv:
        h = connect(srv.uri)
        assert nbd_errno(h, image, "/b.bin") == errno.EIO
        assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]
        assert file_bytes_over_nbd(h, image, "/c.txt") == www["c.txt"]
        assert nbd_errno(h, image, "/b.bin") == errno.EIO  # never cached, never served
        # the intact first chunk of b.bin is still served
        assert h.pread(4096, image.plan.physical_extents(
            next(ip for p, ip in image.plan.paths() if p == b"/b.bin"))[0][2] * 4096) == \
            www["b.bin"][:4096]
        assert srv.alive()
        h.shutdown()
    assert srv.stderr().count("integrity:") == 1  # logged once


def test_resets_and_5xx_are_retried(tmp_path, origin, www):
    proxy = FaultProxy(origin.port)
    try:
        m = write_manifest(tmp_path / "m.json", {"/a.bin": {"url": proxy.url("a.bin")},
                                                 "/c.txt": {"url": proxy.url("c.txt")}})
        image = ext4gen.plan(*ext4gen.load(str(m)))
        with serving_sources(tmp_path / "serve.log", m) as srv:
            proxy.faults = ["reset", "500", "503", "reset", "delay:0.3", "500", "reset"]
            h = connect(srv.uri)
            assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]
            assert file_bytes_over_nbd(h, image, "/c.txt") == www["c.txt"]
            assert not proxy.faults  # every injected fault was met and survived
            h.shutdown()
    finally:
        proxy.close()


def test_stopped_origin_fails_in_bounded_time_then_heals(tmp_path, origin, www):
    m = write_manifest(tmp_path / "m.json", {"/a.bin": {"url": origin.url("a.bin")},
                                             "/b.bin": {"url": origin.url("b.bin")}})
    image = ext4gen.plan(*ext4gen.load(str(m)))
    with serving_sources(tmp_path / "serve.log", m) as srv:
        h = connect(srv.uri)
        assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]  # now cached
        origin.stop()
        t0 = time.monotonic()
        assert nbd_errno(h, image, "/b.bin") == errno.EIO
        assert time.monotonic() - t0 < 3 + 5  # the 3 s budget, plus one connect attempt
        assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]  # cached: still served
        assert srv.alive()
        origin.start()
        assert file_bytes_over_nbd(h, image, "/b.bin") == www["b.bin"]  # healed, no restart
        h.shutdown()


def test_replaced_object_is_eio(tmp_path, origin, www):
    m = write_manifest(tmp_path / "m.json", {"/b.bin": {"url": origin.url("b.bin")}})
    image = ext4gen.plan(*ext4gen.load(str(m)))
    with serving_sources(tmp_path / "serve.log", m) as srv:
        h = connect(srv.uri)
        path = tmp_path / "www" / "b.bin"
        path.write_bytes(os.urandom(len(www["b.bin"])))  # same size, new ETag
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
        assert nbd_errno(h, image, "/b.bin") == errno.EIO
        assert srv.alive()
        h.shutdown()
    assert "changed since the image was planned" in srv.stderr()


def test_prefetch_hint_fetches_listed_files_after_start(tmp_path, origin, www, monkeypatch):
    hints = tmp_path / "boot-set.txt"
    hints.write_text("# the boot set\n/c.txt\n")
    monkeypatch.setenv("EXT4GEN_PREFETCH", str(hints))  # what --prefetch FILE sets
    m = write_manifest(tmp_path / "m.json", {
        "image": {"prefetch": ["/a.bin"]},
        "/a.bin": {"url": origin.url("a.bin")}, "/b.bin": {"url": origin.url("b.bin")},
        "/c.txt": {"url": origin.url("c.txt")}})
    image = ext4gen.plan(*ext4gen.load(str(m)))
    with serving_sources(tmp_path / "serve.log", m) as srv:
        deadline = time.monotonic() + 20
        while (gets(origin, "a.bin"), gets(origin, "c.txt")) != (3, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (gets(origin, "a.bin"), gets(origin, "b.bin"), gets(origin, "c.txt")) == (3, 0, 1)
        h = connect(srv.uri)
        assert file_bytes_over_nbd(h, image, "/a.bin") == www["a.bin"]
        assert gets(origin, "a.bin") == 3  # the prefetched chunks served the read
        h.shutdown()
