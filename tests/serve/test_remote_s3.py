"""S3 content from moto's standalone server, served by nbdkit: boto3 exactly as against AWS.

Laziness (GETs counted in moto's request log), throttling (503 SlowDown and 500s
injected by the test proxy in front of moto are retried), and a replaced object
(a new ETag) is EIO.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from helpers.origins import AWS_ENV, FaultProxy, file_bytes_over_nbd, moto_serving
from helpers.servers import connect, import_nbd, serving_sources

import ext4gen

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EXT4GEN_REMOTE_TIMEOUT", "10")
    with moto_serving(tmp_path) as server:
        monkeypatch.setenv("EXT4GEN_S3_ENDPOINT", server.endpoint)
        server.client().create_bucket(Bucket="bkt")
        yield server


def put(s3, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket="bkt", Key=key, Body=data)


def manifest(tmp_path: Path, entries: dict) -> Path:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(entries))
    return path


def test_s3_reads_are_lazy_and_cached(tmp_path, s3):
    one, two = os.urandom(2 * MiB + 1), os.urandom(3 * MiB)
    put(s3, "one", one)
    put(s3, "two", two)
    m = manifest(tmp_path, {"/one": {"s3": "s3://bkt/one"}, "/two": {"s3": "s3://bkt/two"}})
    image = ext4gen.plan(*ext4gen.load(str(m)))
    with serving_sources(tmp_path / "serve.log", m) as srv:
        h = connect(srv.uri)
        assert file_bytes_over_nbd(h, image, "/one") == one
        assert s3.gets("bkt", "one") == 3 and s3.gets("bkt", "two") == 0
        assert file_bytes_over_nbd(h, image, "/one") == one
        assert s3.gets("bkt", "one") == 3
        h.shutdown()


def test_s3_throttling_and_errors_are_retried(tmp_path, s3, monkeypatch):
    data = os.urandom(2 * MiB)
    put(s3, "obj", data)
    proxy = FaultProxy(s3.port)
    try:
        monkeypatch.setenv("EXT4GEN_S3_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
        m = manifest(tmp_path, {"/obj": {"s3": "s3://bkt/obj"}})
        image = ext4gen.plan(*ext4gen.load(str(m)))
        with serving_sources(tmp_path / "serve.log", m) as srv:
            proxy.faults = ["503", "503", "500", "reset", "503"]
            h = connect(srv.uri)
            assert file_bytes_over_nbd(h, image, "/obj") == data
            assert not proxy.faults
            h.shutdown()
    finally:
        proxy.close()


def test_replaced_s3_object_is_eio(tmp_path, s3):
    data = os.urandom(2 * MiB)
    put(s3, "obj", data)
    m = manifest(tmp_path, {"/obj": {"s3": "s3://bkt/obj"}, "/other": {"text": "fine\n"}})
    image = ext4gen.plan(*ext4gen.load(str(m)))
    with serving_sources(tmp_path / "serve.log", m) as srv:
        put(s3, "obj", os.urandom(2 * MiB))  # same key and size, new content and ETag
        h = connect(srv.uri)
        nbd = import_nbd()
        with pytest.raises(nbd.Error) as info:
            file_bytes_over_nbd(h, image, "/obj")
        assert info.value.errno in ("EIO", errno.EIO)
        assert srv.alive()
        h.shutdown()
    assert "changed since the image was planned" in srv.stderr()
