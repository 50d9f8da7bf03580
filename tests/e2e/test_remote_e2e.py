"""Remote content end to end: a manifest mixing local, HTTP (nginx) and S3 (moto) files,
and `ext4gen publish` to S3 followed by two independent servers planning from the
published manifest alone.  Real e2fsck, real kernel mounts, real nbdkit and nbdcopy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.cli import build_cli, run_cli
from helpers.compare import compare_dirs
from helpers.mounts import mounted
from helpers.origins import AWS_ENV, moto_serving, nginx_serving
from helpers.servers import serving_sources
from helpers.trees import make_source_tree

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20


@pytest.fixture
def remote_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EXT4GEN_REMOTE_TIMEOUT", "10")


def nbdcopy(uri: str, out: Path) -> bytes:
    subprocess.run(["nbdcopy", uri, str(out)], check=True)
    return out.read_bytes()


def test_manifest_mixing_local_http_and_s3(tmp_path, remote_env, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    files = {"web.bin": os.urandom(2 * MiB + 4321), "web.txt": b"served by nginx\n" * 500,
             "s3.bin": os.urandom(3 * MiB + 1), "s3-digest.bin": os.urandom(MiB + 99),
             "local.bin": os.urandom(300_000)}
    for name in ("web.bin", "web.txt"):
        (www / name).write_bytes(files[name])
    (tmp_path / "local.bin").write_bytes(files["local.bin"])
    with nginx_serving(tmp_path / "nginx", www) as web, moto_serving(tmp_path) as s3:
        monkeypatch.setenv("EXT4GEN_S3_ENDPOINT", s3.endpoint)
        client = s3.client()
        client.create_bucket(Bucket="objs")
        client.put_object(Bucket="objs", Key="data/s3.bin", Body=files["s3.bin"])
        client.put_object(Bucket="objs", Key="data/s3-digest.bin", Body=files["s3-digest.bin"])
        digest = hashlib.sha256(files["s3-digest.bin"]).hexdigest()
        n = len(files["s3-digest.bin"])
        manifest = tmp_path / "mixed.toml"
        manifest.write_text(f"""
"/local.bin" = {{ source = "local.bin" }}
"/etc/motd" = {{ text = "inline\\n" }}
"/web/web.bin" = {{ url = "{web.url('web.bin')}", mode = "0600", uid = 7 }}
"/web/web.txt" = {{ url = "{web.url('web.txt')}" }}
"/web/copy.txt" = {{ url = "{web.url('web.txt')}" }}
"/s3/s3.bin" = {{ s3 = "s3://objs/data/s3.bin" }}
"/s3/s3-digest.bin" = {{ s3 = "s3://objs/data/s3-digest.bin", size = {n}, sha256 = "{digest}" }}
"/link" = {{ type = "symlink", target = "web/web.txt" }}
[image]
label = "mixed"
""")
        proc = run_cli("check", manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "e2fsck -fn: exit 0\n" in proc.stdout and "tree matches the source" in proc.stdout
        built = tmp_path / "built.img"
        build_cli(manifest, built)
        with mounted(built) as mnt:  # kernel read-back equals the origin's bytes
            m = Path(mnt)
            assert (m / "local.bin").read_bytes() == files["local.bin"]
            assert (m / "web/web.bin").read_bytes() == files["web.bin"]
            assert (m / "web/copy.txt").read_bytes() == files["web.txt"]
            assert (m / "s3/s3.bin").read_bytes() == files["s3.bin"]
            assert (m / "s3/s3-digest.bin").read_bytes() == files["s3-digest.bin"]
            assert os.stat(m / "web/web.bin").st_mode & 0o777 == 0o600
        with serving_sources(tmp_path / "serve.log", manifest) as srv:
            served = nbdcopy(srv.uri, tmp_path / "served.img")
        assert served == built.read_bytes()


def test_publish_to_s3_then_two_hosts_serve_it(tmp_path, remote_env, monkeypatch):
    original = make_source_tree(tmp_path / "orig")
    reference = tmp_path / "reference.img"
    build_cli(original, reference)
    with moto_serving(tmp_path) as s3:
        monkeypatch.setenv("EXT4GEN_S3_ENDPOINT", s3.endpoint)
        s3.client().create_bucket(Bucket="images")
        published = tmp_path / "published.json"
        proc = run_cli("publish", original, "s3://images/objs", "-o", published, "--chunk-size",
                       str(256 << 10))
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(published.read_text())
        remote = [e for e in doc.values() if "s3" in e]
        assert remote and all(e["s3"].endswith(e["sha256"]) for e in remote)
        assert any("chunks" in e for e in remote)
        shutil.rmtree(tmp_path / "orig")  # the hosts have the manifest and the store only
        uploaded = s3.gets("images")
        assert uploaded == 0  # publishing only PUTs
        images = []
        for host in ("host1", "host2"):  # two processes, each with its own cache
            monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / host / "cache"))
            with serving_sources(tmp_path / f"{host}.log", published) as srv:
                images.append(nbdcopy(srv.uri, tmp_path / f"{host}.img"))
        assert images[0] == images[1]
        assert s3.gets("images") > 0
    proc = subprocess.run(["e2fsck", "-fn", str(tmp_path / "host1.img")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    with mounted(reference) as a, mounted(tmp_path / "host1.img") as b:
        diffs, count = compare_dirs(a, b)
        assert not diffs, diffs
        assert count > 10


def test_publish_to_a_directory_served_by_nginx(tmp_path, remote_env):
    original = make_source_tree(tmp_path / "orig")
    reference = tmp_path / "reference.img"
    build_cli(original, reference)
    objects = tmp_path / "www" / "objs"
    with nginx_serving(tmp_path / "nginx", tmp_path / "www") as web:
        published = tmp_path / "published.json"
        proc = run_cli("publish", original, objects, "--base-url", web.url("objs"), "-o", published)
        assert proc.returncode == 0, proc.stderr
        again = run_cli("publish", original, objects, "--base-url", web.url("objs"), "-o", published)
        assert "0 uploaded" in again.stderr  # content-addressed: nothing new to store
        shutil.rmtree(tmp_path / "orig")
        proc = run_cli("check", published)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "tree matches the source" in proc.stdout
        served = tmp_path / "served.img"
        build_cli(published, served)
        assert all(ln.split()[3] in ("200", "206") for ln in web.requests())
    with mounted(reference) as a, mounted(served) as b:
        diffs, _count = compare_dirs(a, b)
        assert not diffs, diffs
