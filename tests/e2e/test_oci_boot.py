"""Issue 13: a VM (qemu TCG) boots with an OCI image, served by `ext4gen serve oci:…`, as its root.

The image is made by umoci: layer 1 holds busybox, /init, /etc/twice and /etc/gone;
layer 2 replaces /etc/twice and deletes /etc/gone (a whiteout).  The guest prints
a marker, the sha256 of /etc/twice (the file that exists in both layers: it must
be layer 2's) and whether /etc/gone exists.  Host kernel and initrd, as in
tests/test_bootdisk.py; qemu and the server are stopped by pid whatever happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from helpers.oci import _edit, need_tools, run
from helpers.processes import pid_running, stop_process

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bootdisk"
TWICE_V2 = b"the second layer's /etc/twice\n" * 50
MARKER = "EXT4GEN-OCI-BOOT-OK"
INIT = f"""#!/bin/busybox sh
B=/bin/busybox
$B echo "ocitest: marker {MARKER}"
$B echo "ocitest: twice $($B sha256sum /etc/twice | $B cut -d ' ' -f 1)"
if [ -e /etc/gone ]; then $B echo "ocitest: gone present"; else $B echo "ocitest: gone absent"; fi
$B echo "ocitest: root $($B grep ' / ' /proc/mounts | $B tail -n 1)"
$B poweroff -f
"""


def _boot_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bootdisk_boot_for_oci", EXAMPLE / "boot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


boot = _boot_module()
pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(bool(boot.missing()), reason="cannot boot a VM here, missing: "
                                 + "; ".join(boot.missing()))]


def _layer1(r: Path) -> None:
    for d in ("bin", "etc", "proc", "sys", "dev", "mnt"):
        (r / d).mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", r / "bin/busybox")
    os.symlink("busybox", r / "bin/sh")
    (r / "init").write_text(INIT)
    os.chmod(r / "init", 0o755)
    (r / "etc/twice").write_text("the first layer's /etc/twice\n")
    (r / "etc/gone").write_text("deleted by layer 2\n")


def _layer2(r: Path) -> None:
    (r / "etc/twice").write_bytes(TWICE_V2)
    (r / "etc/gone").unlink()


def test_vm_boots_from_an_oci_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_tools()
    monkeypatch.setenv("EXT4GEN_CACHE", str(tmp_path / "cache"))
    layout = tmp_path / "img"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:v0")
    _edit(layout, tmp_path, "v0", "v1", _layer1)
    _edit(layout, tmp_path, "v1", "v2", _layer2)
    kernel, initrd = boot.find_kernel()
    sock = str(tmp_path / "nbd.sock")
    log = open(tmp_path / "serve.log", "wb")  # closed in the finally below
    server = subprocess.Popen([sys.executable, "-m", "ext4gen.cli", "serve", f"root=oci:{layout}:v2",
                               "--socket", sock, "--foreground"], stdout=subprocess.PIPE, stderr=log,
                              stdin=subprocess.DEVNULL)
    qemu = None
    try:
        assert server.stdout is not None
        uri = server.stdout.readline().decode().strip()
        assert uri.startswith("nbd+unix://"), (tmp_path / "serve.log").read_text()
        cmd = boot.qemu_command(sock, kernel, initrd, root="root", data="root")
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            out, _ = qemu.communicate(timeout=boot.BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            qemu.kill()
            out, _ = qemu.communicate()
        console = out.decode(errors="replace").replace("\r", "")
        said = dict(line[len("ocitest: "):].partition(" ")[::2] for line in console.splitlines()
                    if line.startswith("ocitest: "))
        assert said.get("marker") == MARKER, console[-3000:]
        assert said.get("twice") == hashlib.sha256(TWICE_V2).hexdigest()
        assert said.get("gone") == "absent"
        assert said.get("root", "").split()[1:3] == ["/", "ext4"] and " ro" in " " + said["root"]
    finally:
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait(30)
        stop_process(server)
        if server.stdout:
            server.stdout.close()
        log.close()
    deadline = time.monotonic() + 10
    while pid_running(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_running(server.pid)
    assert _processes_naming(sock) == []  # nbdkit went with its supervisor


def _processes_naming(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and pid_running(int(pid)):
                found.append(int(pid))
    return found
