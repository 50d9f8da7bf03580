"""A VM boots from the boot example's root after `ext4gen publish` to S3 (moto).

The root manifest is published (every file's bytes to content-addressed S3
objects, the 128 MiB generated archive included), then examples/bootdisk/boot.py
serves the *published* manifest, not the original, and boots it in qemu: the
guest's /init prints its marker and the checksums the original test checks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.origins import AWS_ENV, moto_serving
from helpers.processes import pid_running

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bootdisk"


def _load(name: str):  # -> module
    spec = importlib.util.spec_from_file_location(f"remote_bootdisk_{name}", EXAMPLE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


boot = _load("boot")
bootgen = _load("bootgen")
_MISSING = boot.missing()
ORIGINAL = boot.ROOT_MANIFEST


@pytest.mark.skipif(bool(_MISSING), reason="cannot boot the example VM here, missing: "
                    + "; ".join(_MISSING))
@pytest.mark.slow
@pytest.mark.root
def test_vm_boots_from_a_published_root(tmp_path, monkeypatch):
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    with moto_serving(tmp_path) as s3:
        monkeypatch.setenv("EXT4GEN_S3_ENDPOINT", s3.endpoint)
        s3.client().create_bucket(Bucket="boot")
        published = tmp_path / "rootfs.json"
        proc = run_cli("publish", boot.ROOT_MANIFEST, "s3://boot/objs", "-o", published)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(published.read_text())
        assert doc["/bin/busybox"]["s3"].startswith("s3://boot/objs/")
        monkeypatch.setattr(boot, "ROOT_MANIFEST", published)
        before = s3.gets("boot")
        result = boot.boot(timeout=240)
        fetched = s3.gets("boot") - before
    console = "\n".join(result.console[-80:])
    for what, pid in result.pids.items():
        assert pid is None or not pid_running(pid), f"{what} (pid {pid}) is still running"
    assert result.marker_at is not None, f"no marker line; console:\n{console}"
    assert result.returncode == 0, console
    guest = result.guest
    assert guest["hostname"] == "ext4gen-bootdisk"
    host = hashlib.sha256(Path("/bin/busybox").read_bytes()).hexdigest()
    assert guest["rescue"] == f"identical {host}"
    import tomllib

    original = tomllib.loads(Path(ORIGINAL).read_text())["/usr/share/bootdisk/dynamic.txt"]
    expected = bootgen.expected(original["size"], seed=original["args"]["seed"])
    assert guest["dynamic-sha256"] == hashlib.sha256(expected).hexdigest()
    assert doc["/usr/share/bootdisk/dynamic.txt"]["sha256"] == guest["dynamic-sha256"]
    # the 128 MiB archive stays in the store: the guest read a few objects' chunks only
    archive = doc["/usr/share/bootdisk/archive.txt"]
    assert archive["size"] == 128 << 20
    assert 0 < fetched < 40, fetched
