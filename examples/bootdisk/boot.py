"""Serve the boot-disk example with ``ext4gen serve`` and boot it in qemu (TCG).

    examples/bootdisk/run.sh [--timeout 180] [--console FILE]

One ``ext4gen serve`` process serves two exports from one socket: ``rootfs``
(rootfs.toml, the VM's root disk, /dev/vda) and ``data`` (data.toml, /dev/vdb).
qemu connects to both over NBD, boots Debian's kernel and initrd from /boot
with ``root=/dev/vda ro``, and the guest's /init prints ``bootdisk: …`` lines
on the serial console, then powers off.  Afterwards the server's shutdown
summary says how many distinct blocks of each export the guest read.

The test (tests/e2e/test_bootdisk.py) drives the same functions, so what
``run.sh`` shows is what CI proves.  Every process started here is stopped by
pid in a ``finally``, whatever happened.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT_MANIFEST = HERE / "rootfs.toml"
DATA_MANIFEST = HERE / "data.toml"
PREFIX = "bootdisk: "
MARKER = "EXT4GEN-BOOTDISK-OK"
KERNEL_ARGS = ("root=/dev/vda ro rootfstype=ext4 init=/init console=ttyS0 panic=-1 "
               "fsck.mode=skip noresume quiet")
BOOT_TIMEOUT = 180.0
SERVE_TIMEOUT = 120.0
BLOCK = 4096
# Terminal control in the console (SeaBIOS turns line wrap off and clears the screen):
# CSI sequences, OSC strings, two-byte escapes, and other C0 controls but tab.
_TERMINAL_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[0-~]"
                               r"|[\x00-\x08\x0b-\x1f\x7f]")


def printable(line: str) -> str:
    """A console line as text: without its line end or terminal control, which would
    otherwise reach (and reconfigure) the terminal of whoever runs the example."""
    return _TERMINAL_CONTROL.sub("", line.rstrip("\r\n").replace("\r", ""))


def dedup_summary(stats: object) -> str:
    """``DedupStats`` in words, as ``ext4gen inspect`` says it."""
    ref = getattr(stats, "data_blocks_referenced", 0)
    unique = getattr(stats, "unique_blocks", 0)
    shared = getattr(stats, "shared_references", 0)
    return (f"{ref} data blocks referenced, {unique} stored, {shared} shared "
            f"({shared * BLOCK // 2**20} MiB saved)")


# -- what the host needs ------------------------------------------------------------


def find_kernel() -> tuple[str, str] | None:
    """The newest /boot/vmlinuz-V that has a readable /boot/initrd.img-V."""
    def version_key(path: str) -> list[object]:
        v = path.removeprefix("/boot/vmlinuz-")
        return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", v)]

    for kernel in sorted(glob.glob("/boot/vmlinuz-*"), key=version_key, reverse=True):
        initrd = kernel.replace("/vmlinuz-", "/initrd.img-")
        if os.access(kernel, os.R_OK) and os.access(initrd, os.R_OK):
            return kernel, initrd
    return None


def missing() -> list[str]:
    """What this host lacks to boot the example, as Debian package hints."""
    out = []
    if shutil.which("qemu-system-x86_64") is None:
        out.append("qemu-system-x86_64 (Debian package qemu-system-x86)")
    if find_kernel() is None:
        out.append("a kernel and initrd in /boot (Debian package linux-image-amd64)")
    if not os.access("/bin/busybox", os.X_OK):
        out.append("/bin/busybox (Debian package busybox-static)")
    if shutil.which("nbdkit") is None:
        out.append("nbdkit (Debian packages nbdkit nbdkit-plugin-python)")
    return out


# -- the server ------------------------------------------------------------------------


@dataclass
class Server:
    """``ext4gen serve rootfs=… data=… --foreground``, our child; stop() always by pid."""

    proc: subprocess.Popen[bytes]
    sock: str
    log: str
    started: float  # time.monotonic() just before the process was started
    uris: list[str] = field(default_factory=list)
    ready: float = 0.0
    nbdkit_pid: int | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.nbdkit_pid is not None:  # only alive if the supervisor was killed hard
            _kill_pid(self.nbdkit_pid, "nbdkit")
        if self.proc.stdout:
            self.proc.stdout.close()

    def summary(self) -> dict[str, dict[str, int]]:
        """Per export: reads, distinct blocks read and the export's blocks (after stop())."""
        out: dict[str, dict[str, int]] = {}
        text = Path(self.log).read_text(errors="replace") if os.path.exists(self.log) else ""
        for line in text.splitlines():
            m = re.match(r"ext4gen: served .* as export '([^']+)' for .*?(\d+) reads.*"
                         r"distinct blocks read (\d+) of (\d+)", line)
            if m:
                out[m.group(1)] = {"reads": int(m.group(2)), "distinct": int(m.group(3)),
                                   "blocks": int(m.group(4))}
        return out


def _pid_program(pid: int) -> str:
    try:
        return os.path.basename(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
    except (OSError, IndexError, UnicodeDecodeError):
        return ""


def _kill_pid(pid: int, name: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if _pid_program(pid) != name:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _pid_program(pid) == name and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)


def start_server(workdir: str, serve_args: tuple[str, ...] = ()) -> Server:
    """Serve both manifests from one process; return once both URIs are printed.

    ``serve_args`` go to ``ext4gen serve`` (e.g. ``--filter log --param logfile=F``).
    """
    sock = os.path.join(workdir, "nbd.sock")
    log = os.path.join(workdir, "serve.log")
    cmd = [sys.executable, "-m", "ext4gen.cli", "serve", f"rootfs={ROOT_MANIFEST}",
           f"data={DATA_MANIFEST}", "--socket", sock, "--foreground", *serve_args]
    started = time.monotonic()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL,
                                cwd=str(HERE.parent.parent))
    server = Server(proc, sock, log, started)
    try:
        lines = _read_lines(proc, 2, SERVE_TIMEOUT)
        if len(lines) < 2:
            raise RuntimeError("ext4gen serve did not start: "
                               + Path(log).read_text(errors="replace").strip()[-2000:])
        server.uris = lines
        server.ready = time.monotonic()
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        server.nbdkit_pid = next((int(k) for k in kids if _pid_program(int(k)) == "nbdkit"), None)
    except BaseException:
        server.stop()
        raise
    return server


def _read_lines(proc: subprocess.Popen[bytes], n: int, timeout: float) -> list[str]:
    box: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for _ in range(n):
            line = proc.stdout.readline()
            if not line:
                return
            box.append(line.decode().strip())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    return list(box)


# -- the VM -----------------------------------------------------------------------------


def qemu_command(sock: str, kernel: str, initrd: str, root: str = "rootfs",
                 data: str = "data") -> list[str]:
    """TCG (KVM hangs on these machines), no network, serial console on stdout."""
    def drive(export: str) -> str:
        return f"file=nbd+unix:///{export}?socket={sock},format=raw,if=virtio,readonly=on"

    return ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
            "-nic", "none", "-kernel", kernel, "-initrd", initrd, "-append", KERNEL_ARGS,
            "-drive", drive(root), "-drive", drive(data)]


@dataclass
class Boot:
    console: list[str]  # every line qemu printed (the serial console)
    returncode: int | None  # None: killed at the timeout
    marker_at: float | None  # seconds from starting `ext4gen serve` to the marker line
    server_ready_after: float  # seconds from starting `ext4gen serve` to its URIs
    seconds: float  # qemu's run time
    summary: dict[str, dict[str, int]]  # the server's per-export statistics
    pids: dict[str, int | None] = field(default_factory=dict)  # qemu, serve, nbdkit: all stopped

    @property
    def guest(self) -> dict[str, str]:
        """``bootdisk: KEY VALUE`` lines as {KEY: VALUE} (the last one wins)."""
        out = {}
        for line in self.console:
            if line.startswith(PREFIX):
                key, _, value = line[len(PREFIX):].partition(" ")
                out[key] = value
        return out


def boot(timeout: float = BOOT_TIMEOUT, echo: bool = False, serve_args: tuple[str, ...] = ()) -> Boot:
    """Serve, boot until the VM powers off (or ``timeout``), stop everything, report."""
    kernel_initrd = find_kernel()
    if kernel_initrd is None:
        raise RuntimeError("no kernel and initrd in /boot (apt install linux-image-amd64)")
    workdir = tempfile.mkdtemp(prefix="ext4gen-bootdisk-")
    server: Server | None = None
    qemu: subprocess.Popen[bytes] | None = None
    console: list[str] = []
    marker_at = None
    try:
        server = start_server(workdir, serve_args)
        qemu = subprocess.Popen(qemu_command(server.sock, *kernel_initrd), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        q_started = time.monotonic()
        lines: queue.Queue[str | None] = queue.Queue()

        def reader() -> None:
            assert qemu is not None and qemu.stdout is not None
            for raw in qemu.stdout:
                lines.put(printable(raw.decode(errors="replace")))
            lines.put(None)

        threading.Thread(target=reader, daemon=True).start()
        deadline = q_started + timeout
        eof = False
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break  # timed out: qemu is killed below
            if line is None:
                eof = True
                break
            console.append(line)
            if echo:
                print(line, flush=True)
            if marker_at is None and line == f"{PREFIX}marker {MARKER}":
                marker_at = time.monotonic() - server.started
        timed_out = not eof
        if eof:  # qemu closes its console before it has finished exiting
            try:
                qemu.wait(max(10.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            qemu.kill()
        rc = qemu.wait(30)
        seconds = time.monotonic() - q_started
        server.stop()
        return Boot(console, None if timed_out else rc, marker_at, server.ready - server.started,
                    seconds, server.summary(),
                    {"qemu": qemu.pid, "serve": server.proc.pid, "nbdkit": server.nbdkit_pid})
    finally:
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                qemu.wait(30)
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT, help="seconds before qemu is killed")
    p.add_argument("--console", metavar="FILE", help="also write the whole console to FILE")
    args = p.parse_args(argv)
    lacking = missing()
    if lacking:
        print("bootdisk: cannot boot here, missing: " + "; ".join(lacking), file=sys.stderr)
        return 2
    import ext4gen

    tree, options = ext4gen.load(str(ROOT_MANIFEST))
    image = ext4gen.plan(tree, options)
    print(f"== rootfs.toml: {image.size} bytes planned; dedup: {dedup_summary(image.plan.dedup_stats)}",
          flush=True)
    print(f"== serving {ROOT_MANIFEST.name} (export rootfs) and {DATA_MANIFEST.name} (export data); "
          f"booting {find_kernel()[0]} under TCG", flush=True)  # type: ignore[index]
    result = boot(args.timeout, echo=True)
    if args.console:
        Path(args.console).write_text("\n".join(result.console) + "\n")
    print("== summary", flush=True)
    print(f"ext4gen serve ready after {result.server_ready_after:.1f} s; marker line after "
          + (f"{result.marker_at:.1f} s" if result.marker_at is not None else "NEVER")
          + f"; qemu ran {result.seconds:.1f} s, exit status {result.returncode}")
    for name, s in result.summary.items():
        print(f"export {name}: {s['reads']} reads, {s['distinct']} distinct blocks of {s['blocks']} "
              f"({100 * s['distinct'] / max(1, s['blocks']):.2f}%, "
              f"{s['distinct'] * BLOCK / 2**20:.1f} MiB of {s['blocks'] * BLOCK / 2**20:.1f} MiB)")
    ok = result.marker_at is not None and result.guest.get("done") is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
