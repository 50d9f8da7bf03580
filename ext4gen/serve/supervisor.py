"""nbdkit under a supervisor: started, watched until ready, stopped, cleaned up after.

nbdkit always runs as the child of an ext4gen process that stays for its
lifetime: the CLI itself with ``--foreground``, or in background mode a
detached ``python -m ext4gen.serve.supervisor WORKDIR`` whose stderr is the
log file (nbdkit's own daemon mode would send stderr, with our error lines and
the statistics summary, to /dev/null).

Each source is planned once, by the plugin inside nbdkit, before nbdkit binds
its socket.  The supervisor never plans and holds no copy of the plan: it waits
for nbdkit's pidfile (written once it serves) and, if nbdkit exits first,
reports the one line the plugin left in the work directory's ``error`` file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Ext4genError
from ..inputs.oci_names import absolute_any  # os.path.abspath that keeps oci:PATH[:REF] intact
from .environment import child_env, ext4gen_filter, has_filter, plugin_path, runtime_dir
from .options import ServeError, ServeOptions, plugin_args
from .processes import (
    STOP_GRACE,
    STOP_TIMEOUT,
    pid_alive,
    read_pidfile,
    remove_stale_socket,
    stop_pid,
    write_atomic,
)

SUPERVISOR = "ext4gen.serve.supervisor"  # the background supervisor's module, as pid_alive sees it
EXIT_INPUT = 2  # the CLI's exit status for bad input, which the background supervisor keeps


def nbdkit_command(opts: ServeOptions, sock: str | None, pidfile: str,
                   error_file: str | None = None) -> list[str]:
    cmd = ["nbdkit", "--foreground", "--exit-with-parent", "--log=stderr",
           "--pidfile", pidfile, "--threads", str(opts.threads)]
    if opts.verbose:
        cmd.append("--verbose")
    limit = opts.client_limit if has_filter("limit") else 0
    if limit:
        cmd.append("--filter=limit")  # outermost: a refused client costs no plugin work
    if opts.cache:
        cmd.append("--filter=cache")
    cmd += [f"--filter={f}" for f in opts.filters]
    own = ext4gen_filter()
    if own:  # innermost, right in front of the plugin: it answers reads without Python
        cmd.append(f"--filter={own}")
    if sock is not None:
        cmd += ["--unix", sock]
    else:
        cmd += ["--port", str(opts.port), "--ipaddr", opts.bind]
    if opts.tls and opts.tls != "off":
        cmd.append(f"--tls={opts.tls}")
        if opts.tls_psk:
            cmd.append(f"--tls-psk={opts.tls_psk}")
        if opts.tls_certificates:
            cmd.append(f"--tls-certificates={opts.tls_certificates}")
    cmd += ["python", plugin_path(), *plugin_args(opts, error_file, supervisor=os.getpid())]
    if limit:
        cmd.append(f"limit={limit}")
    if opts.cache:  # 4 KiB blocks: the default 64 KiB reads 16× the data on a cold random read
        cmd += ["cache-on-read=true", "cache-min-block-size=4096", f"cache-max-size={opts.cache}"]
    return cmd + opts.params


def _wait_for_pidfile(pidfile: str, proc: subprocess.Popen[bytes], name: str, timeout: float | None,
                      exited: Callable[[int], Exception]) -> int:
    """Wait until ``pidfile`` names a pid (``proc`` serves); if ``proc`` exits first, raise
    what ``exited(status)`` makes of it.

    No deadline by default: until the pidfile is written the source is being
    planned, which takes as long as the source is big (Ctrl-C stops it).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid = read_pidfile(pidfile)
        if pid is not None:
            return pid
        rc = proc.poll()
        if rc is not None:
            raise exited(rc)
        if deadline is not None and time.monotonic() > deadline:
            raise ServeError(f"{name} did not start serving within {timeout:.0f} s")
        time.sleep(0.005)  # a missing pidfile costs an ENOENT: polling finely is cheap and
        # every millisecond here is time before the first answer


def _wait_ready(pidfile: str, proc: subprocess.Popen[bytes], error_file: str,
                timeout: float | None) -> int:
    """Wait until nbdkit serves, or report why it exited (the plugin's one line: bad input)."""
    def exited(rc: int) -> Exception:
        with contextlib.suppress(OSError):
            message = Path(error_file).read_text(errors="replace").strip()
            if message:
                return Ext4genError(message)
        return ServeError(f"nbdkit exited with status {rc} before serving")

    return _wait_for_pidfile(pidfile, proc, "nbdkit", timeout, exited)


def supervise(opts: ServeOptions, *, ready: Callable[[str, int], None] | None = None,
              timeout: float | None = None) -> int:
    """Run nbdkit as our child until it exits or we get SIGINT/SIGTERM/SIGHUP.

    Prints the URI on stdout once nbdkit accepts connections, then writes
    ``opts.pidfile`` (our pid: the process to signal).  Always removes the
    socket, the pidfile and the work directory on the way out.
    """
    if shutil.which("nbdkit") is None:
        raise ServeError("nbdkit is not installed (Debian: apt install nbdkit nbdkit-plugin-python)")
    workdir = opts.workdir or tempfile.mkdtemp(prefix="serve-", dir=runtime_dir())
    sock = None
    if opts.port is None:
        sock = os.path.abspath(opts.socket) if opts.socket else os.path.join(workdir, "nbd.sock")
    nbdkit_pidfile = os.path.join(workdir, "nbdkit.pid")
    stopping: list[int] = []
    proc: subprocess.Popen[bytes] | None = None
    serving = False

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if not serving:
            raise KeyboardInterrupt  # abandon the start-up; `finally` reaps nbdkit

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if sock is not None:
            remove_stale_socket(sock)
        error_file = os.path.join(workdir, "error")
        cmd = nbdkit_command(opts, sock, nbdkit_pidfile, error_file)
        env = child_env()
        env["TMPDIR"] = workdir  # the cache filter's file: under the (tmpfs) runtime directory
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        remove_dead_workdirs()  # housekeeping while nbdkit starts, not before it
        nbdkit_pid = _wait_ready(nbdkit_pidfile, proc, error_file, timeout)
        serving = True
        _announce(opts, workdir, sock, nbdkit_pid, ready)
        rc = _wait_stopping(proc, stopping)
    except KeyboardInterrupt:
        return 130 if stopping and stopping[0] == signal.SIGINT else 143
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _reap(proc)
        for p in (sock, opts.pidfile):
            if p:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        shutil.rmtree(workdir, ignore_errors=True)
    if stopping:
        return 0
    return rc if rc >= 0 else 1


def _announce(opts: ServeOptions, workdir: str, sock: str | None, nbdkit_pid: int,
              ready: Callable[[str, int], None] | None) -> None:
    """nbdkit serves: record it for start_background and umount, then tell the user."""
    uris = opts.uris(sock)
    write_atomic(os.path.join(workdir, "server.json"), json.dumps(
        {"uri": uris[0], "uris": uris, "socket": sock, "port": opts.port,
         "supervisor_pid": os.getpid(), "nbdkit_pid": nbdkit_pid,
         "source": absolute_any(opts.source),
         "exports": {e.name: e.source for e in opts.exports}}))
    if opts.pidfile:
        write_atomic(opts.pidfile, f"{os.getpid()}\n")
    with contextlib.suppress(BrokenPipeError):
        print("\n".join(uris), flush=True)
    if ready:
        ready(uris[0], nbdkit_pid)


def _reap(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_stopping(proc: subprocess.Popen[bytes], stopping: list[int]) -> int:
    """Wait for nbdkit; once asked to stop, give it STOP_GRACE seconds, then SIGKILL.

    nbdkit 1.32 answers SIGTERM by shutting its sockets for writing, but then
    waits for every client to hang up; an idle client would keep it forever.
    """
    asked_at: float | None = None
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        if stopping and asked_at is None:
            asked_at = time.monotonic()
        if asked_at is not None and time.monotonic() - asked_at > STOP_GRACE:
            print(f"ext4gen: nbdkit still had clients connected {STOP_GRACE:.0f} s after "
                  "SIGTERM; killed it", file=sys.stderr, flush=True)
            proc.kill()
            return proc.wait()


LOG_KEEP_S = 24 * 3600  # how long a stopped server's default log stays


def remove_dead_workdirs() -> None:
    """Delete work directories left by supervisors that were SIGKILLed (both pids gone)."""
    for d in runtime_dir().glob("serve-*"):
        try:
            info = json.loads((d / "server.json").read_text())
            pids = [int(info["supervisor_pid"]), int(info["nbdkit_pid"])]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # starting up, or not ours to judge
        if not any(pid_alive(p) for p in pids):
            shutil.rmtree(d, ignore_errors=True)
    # A stopped server's log keeps its summary for a day, then goes (they would pile up).
    for log in runtime_dir().glob("serve-*.log"):
        with contextlib.suppress(OSError):
            if not log.with_suffix("").exists() and time.time() - log.stat().st_mtime > LOG_KEEP_S:
                log.unlink()


# -- in the background -----------------------------------------------------------------


@dataclass
class Background:
    """A detached supervisor (and its nbdkit), as ``ext4gen serve`` leaves it."""

    pid: int
    nbdkit_pid: int
    uri: str
    pidfile: str
    log: str
    workdir: str
    socket: str | None = None
    uris: list[str] = field(default_factory=list)  # one per export; uris[0] == uri

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops nbdkit and cleans up); then make sure."""
        stop_pid(self.pid, SUPERVISOR)
        stop_pid(self.nbdkit_pid, "nbdkit")  # only if the supervisor was killed hard
        for p in (self.socket, self.pidfile):
            if p:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_background(opts: ServeOptions, timeout: float | None = None) -> Background:
    """Start a detached supervisor; return once nbdkit serves (or raise with its error line).

    The options reach it as JSON in its work directory, not as a second command line.
    """
    if not opts.exports:
        opts.check()
    workdir = tempfile.mkdtemp(prefix="serve-", dir=runtime_dir())
    # The work directory goes when serving stops; the log stays for its summary.
    pidfile = os.path.abspath(opts.pidfile) if opts.pidfile else workdir + ".pid"
    log = os.path.abspath(opts.log) if opts.log else workdir + ".log"
    sock = None
    if opts.port is None:
        sock = os.path.abspath(opts.socket) if opts.socket else os.path.join(workdir, "nbd.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    child = ServeOptions.from_json(opts.to_json())
    child.socket, child.pidfile, child.log, child.workdir = sock, pidfile, None, workdir
    Path(workdir, "options.json").write_text(child.to_json())
    with open(log, "ab") as logf:
        start = logf.tell()
        proc = subprocess.Popen([sys.executable, "-m", SUPERVISOR, workdir],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=logf, start_new_session=True, cwd="/")
    try:
        pid = _wait_supervisor(pidfile, proc, log, start, timeout)
        info = json.loads(Path(workdir, "server.json").read_text())
    except BaseException:
        _reap(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        if not opts.log:  # its last error is in the exception: a default log has nothing more
            with contextlib.suppress(OSError):
                os.unlink(log)
        raise
    return Background(pid=pid, nbdkit_pid=int(info["nbdkit_pid"]), uri=str(info["uri"]),
                      pidfile=pidfile, log=log, workdir=workdir, socket=sock,
                      uris=[str(u) for u in info.get("uris", [info["uri"]])])


def _wait_supervisor(pidfile: str, proc: subprocess.Popen[bytes], log: str, start: int,
                     timeout: float | None) -> int:
    def exited(rc: int) -> Exception:
        line = _first_error(log, start)
        if rc == EXIT_INPUT and line:
            return Ext4genError(line)
        return ServeError(f"ext4gen serve exited with status {rc} before serving"
                          + (f": {line}" if line else ""))

    return _wait_for_pidfile(pidfile, proc, "ext4gen serve", timeout, exited)


def _first_error(log: str, start: int) -> str:
    """The root cause from this run's part of a log: its first ext4gen/nbdkit message."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in lines:
        if ln.startswith(("ext4gen: ", "nbdkit: ")) and ": debug: " not in ln:
            return ln.removeprefix("ext4gen: ")
    return lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    """``python -m ext4gen.serve.supervisor WORKDIR``: what start_background runs."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ext4gen.serve.supervisor WORKDIR", file=sys.stderr)
        return EXIT_INPUT
    try:
        opts = ServeOptions.from_json(Path(args[0], "options.json").read_text())
        return supervise(opts)
    except Ext4genError as e:
        print(f"ext4gen: {e}", file=sys.stderr, flush=True)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
