"""Issue 5: a VM boots from a synthesized root disk served by ``ext4gen serve``.

The example in examples/bootdisk is built (e2fsck-clean, ``shared_blocks``),
then served as two NBD exports by one ``ext4gen serve`` and booted in
qemu (TCG) with Debian's kernel and initrd.  The guest's /init prints what it
sees on the serial console; the test checks the kernel's view of ``/``
(``ext4 ro``), the checksum of the file a Python generator produced while the
guest read it against the one computed here, the busybox copy that shares its
blocks, the second (data) disk, and that the guest read only a small part of
the root: the point of serving lazily.  qemu, ``ext4gen serve`` and nbdkit are
stopped by pid whatever happens (examples/bootdisk/boot.py does that in a
``finally``; the test then checks they are gone).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers.processes import pid_running

from ext4gen.verify import e2fsck

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bootdisk"
BLOCK = 4096


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bootdisk_{name}", EXAMPLE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


boot = _load("boot")
bootgen = _load("bootgen")

_MISSING = boot.missing()
needs_vm = pytest.mark.skipif(
    bool(_MISSING), reason="cannot boot the example VM here, missing: " + "; ".join(_MISSING)
    + " (scripts/setup.sh installs them where the packages can be installed)")
needs_busybox = pytest.mark.skipif(
    not Path("/bin/busybox").is_file(),
    reason="/bin/busybox is missing (Debian package busybox-static; scripts/setup.sh installs it "
    "where it can be installed)")


def _manifest_size(manifest: Path, path: str) -> tuple[int, str]:
    """(size, seed) of a generated file, read from the manifest itself, not restated here."""
    import tomllib

    entry = tomllib.loads(manifest.read_text())[path]
    return entry["size"], entry["args"]["seed"]


@needs_busybox
def test_the_synthesized_root_is_clean_and_shares_blocks(ext4_image):
    images = {}
    for manifest in ("rootfs.toml", "data.toml"):
        images[manifest] = image = ext4_image(EXAMPLE / manifest)
        rc, complaints = e2fsck(str(image))
        assert rc == 0 and complaints == [], complaints
    features = subprocess.run(["dumpe2fs", "-h", str(images["rootfs.toml"])], capture_output=True,
                              text=True, check=True).stdout
    line = next(ln for ln in features.splitlines() if ln.startswith("Filesystem features:"))
    assert "shared_blocks" in line.split(), line
    busybox = Path("/bin/busybox").stat().st_size
    assert busybox > 64 * BLOCK, "the shared pair must be multi-block files"


@needs_vm
@pytest.mark.slow
def test_a_vm_boots_from_the_served_disk_and_reads_what_was_planned():
    result = boot.boot(timeout=180)
    console = "\n".join(result.console[-80:])
    guest = result.guest
    for what, pid in result.pids.items():  # everything started was stopped, by pid
        assert pid is None or not pid_running(pid), f"{what} (pid {pid}) is still running"
    assert result.marker_at is not None, f"no marker line within 180 s; console:\n{console}"
    assert result.returncode == 0, f"qemu did not power off cleanly; console:\n{console}"
    assert "done" in guest, f"/init did not finish; console:\n{console}"

    # The kernel's own view of /: the served ext4, read-only.
    assert re.fullmatch(r"/dev/vda / ext4 ro(,\S*)? 0 0", guest["root-mount"]), guest["root-mount"]
    assert guest["hostname"] == "ext4gen-bootdisk"
    # The generated file: its bytes came from bootgen.lines while the guest read it.
    size, seed = _manifest_size(EXAMPLE / "rootfs.toml", "/usr/share/bootdisk/dynamic.txt")
    expected = bootgen.expected(size, seed=seed)
    assert len(expected) == size and int(guest["dynamic-size"]) == size
    assert guest["dynamic-sha256"] == hashlib.sha256(expected).hexdigest()
    assert guest["dynamic-md5"] == hashlib.md5(expected).hexdigest()
    # The two copies of busybox (shared blocks) are identical, and are the host's.
    host = hashlib.sha256(Path("/bin/busybox").read_bytes()).hexdigest()
    assert guest["rescue"] == f"identical {host}"
    # The data disk: the second export of the same server, mounted read-only.
    assert re.fullmatch(r"/dev/vdb /mnt/data ext4 ro(,\S*)? 0 0", guest["data-mount"]), guest
    assert guest["data-hello"] == "hello from the data disk"
    size, seed = _manifest_size(EXAMPLE / "data.toml", "/table.txt")
    assert guest["data-sha256"] == hashlib.sha256(bootgen.expected(size, seed=seed)).hexdigest()
    assert guest["data-files"].split() == ["README.md", "hello.txt", "lost+found", "table.txt"]

    # Per-export statistics: the guest read the root's busybox, not its 128 MiB archive.
    root, data = result.summary["rootfs"], result.summary["data"]
    assert root["blocks"] * BLOCK > 128 << 20
    assert 0 < root["distinct"] * BLOCK < 16 << 20, root
    assert data["distinct"] > 0
