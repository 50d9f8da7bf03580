"""``ext4gen`` as users run it: a subprocess with its real exit codes, stdout and stderr.

For tests of the command line itself (errors, flags, signals, its log).  A
test where serving is only the means takes its server from ``helpers.servers``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.processes import children, kill_pid, pid_running, program, stop_process

CLI = [sys.executable, "-m", "ext4gen.cli"]
START_TIMEOUT = 120.0


def run_cli(*args: str | os.PathLike[str], stdin: bytes | None = None,
            env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """``ext4gen ARGS`` in a subprocess: the real entry point, exit codes and stderr."""
    proc = subprocess.run([*CLI, *map(str, args)], input=stdin,
                          capture_output=True, env=env, cwd=cwd, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def build_cli(source: str | os.PathLike[str], image: Path, *extra: str | os.PathLike[str]) -> None:
    proc = run_cli("build", source, "-o", image, "-q", *extra)
    assert proc.returncode == 0, f"ext4gen build failed ({proc.returncode}): {proc.stderr}"


def build_image(manifest: Path, out: Path) -> bytes:
    """``ext4gen build`` the manifest; return the image's bytes.

    For references that must be the CLI's own build ("byte-identical to
    ``ext4gen build``"); any other test takes its image from ``ext4_image``.
    """
    subprocess.run([*CLI, "build", str(manifest), "-o", str(out), "-q"], check=True)
    return out.read_bytes()


# -- ext4gen serve --foreground ----------------------------------------------------------------


class CliServer:
    """``ext4gen serve SOURCE --socket SOCK --foreground``: the CLI as users run it.

    Only for tests of what the CLI itself does (signals, exit code, its log,
    flags and their defaults); elsewhere ``helpers.servers`` starts the server.
    ``more`` are further SOURCE arguments (``[NAME=]PATH``), one export each;
    ``uris`` then holds the URI serve printed for each export, in order.
    """

    def __init__(self, manifest: Path | str, sock: Path, *extra: str, log: Path | None = None,
                 more: tuple[str, ...] = ()) -> None:
        self.sock = sock
        self.log = log or sock.with_suffix(".log")
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [*CLI, "serve", str(manifest), *more, "--socket", str(sock), "--foreground", *extra],
            stdout=subprocess.PIPE, stderr=self._logf, stdin=subprocess.DEVNULL)
        self.uris = [self._read_uri() for _ in range(1 + len(more))]
        self.uri = self.uris[0]
        nbdkits = [p for p in children(self.proc.pid) if program(p) == "nbdkit"]
        assert len(nbdkits) == 1, f"expected one nbdkit child, found {nbdkits}"
        self.nbdkit_pid = nbdkits[0]
        self.returncode: int | None = None

    def _read_uri(self) -> str:
        box: list[bytes] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(START_TIMEOUT)
        if not box or not box[0]:
            self.stop()
            raise AssertionError(f"ext4gen serve did not print a URI; its stderr:\n{self.stderr()}")
        return box[0].decode().strip()

    def stderr(self) -> str:
        if not self._logf.closed:
            self._logf.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None and pid_running(self.nbdkit_pid)

    def stop(self) -> int:
        """SIGTERM the CLI (as Ctrl-C or a service manager would); kill by pid if it lingers."""
        stop_process(self.proc)
        if hasattr(self, "nbdkit_pid"):
            kill_pid(self.nbdkit_pid)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._logf.close()
        self.returncode = self.proc.returncode
        return self.returncode


@contextmanager
def cli_serving(manifest: Path | str, sock: Path, *extra: str,
                more: tuple[str, ...] = ()) -> Iterator[CliServer]:
    """A :class:`CliServer` stopped (by pid if need be) when the block ends, whatever happened."""
    server = CliServer(manifest, sock, *extra, more=more)
    try:
        yield server
    finally:
        server.stop()

