"""``ext4gen serve``, ``ext4gen mount`` and ``ext4gen umount``: the image as a live disk.

``serve`` runs nbdkit with ``plugins/ext4gen_nbdkit.py``.  nbdkit embeds the
system python3, not the interpreter running this CLI, so the child gets a
PYTHONPATH naming the project and this interpreter's site-packages.

``mount`` stacks serve → nbdfuse (a FUSE file backed by the NBD export) → a
read-only loop mount, because kernels without the nbd module (this project's
CI) can still mount that way.  Every piece it starts is recorded by pid in a
state directory keyed by the mountpoint, so ``umount`` (or a failed ``mount``)
can stop exactly those processes, in reverse order.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import Ext4genError
from ..inputs.oci import absolute_any  # os.path.abspath that keeps oci:PATH[:REF] forms intact
from .exports import ExportSpec, parse_export_arg, resolve_exports

# Worker threads per connection.  One, because nbdkit 1.32.4 to 1.33.2 (Debian
# 12 ships 1.32.5) abort()s when a client hangs up while two threads of its
# connection hold replies (RHBZ#2173054, fixed upstream by 9d82aa4f), and because
# the plugin holds the GIL anyway: measured figures in docs/SERVING.md.
# Connections are still served in parallel, one thread each.
DEFAULT_THREADS = 1
HANGUP_BUG = ((1, 32, 4), (1, 33, 3))  # [first affected, first fixed)
READY_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
STOP_GRACE = 3.0  # seconds connected clients get after SIGTERM before nbdkit is killed
PLUGIN_ENV = "EXT4GEN_NBDKIT_PLUGIN"


class ServeError(Ext4genError):
    """The serving stack could not be started or stopped (environment, not input)."""


# -- locating the plugin and its interpreter environment ------------------------

def plugin_path() -> str:
    """The plugin file: $EXT4GEN_NBDKIT_PLUGIN, else ``plugins/`` next to the package."""
    env = os.environ.get(PLUGIN_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "plugins" / "ext4gen_nbdkit.py")
    candidates.append(Path(__file__).resolve().parent / "nbdkit_plugin.py")  # installed package
    for p in candidates:
        if p.is_file():
            return str(p)
    raise ServeError(f"cannot find the nbdkit plugin (looked at {', '.join(map(str, candidates))}); "
                     f"set {PLUGIN_ENV}")


def python_path() -> list[str]:
    """Directories the embedded interpreter needs: the project, then our site-packages.

    PYTHONPATH entries do not process ``.pth`` files, so an editable install is
    reached through the project root itself, not its site-packages finder.
    """
    dirs = [str(Path(__file__).resolve().parents[2])]
    paths = sysconfig.get_paths()
    dirs += [paths["purelib"], paths["platlib"]]
    with contextlib.suppress(AttributeError):
        dirs += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    old = os.environ.get("PYTHONPATH")
    if old:
        dirs += old.split(os.pathsep)
    seen: list[str] = []
    for d in dirs:
        if d and d not in seen and os.path.isdir(d):
            seen.append(d)
    return seen


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(python_path())
    env.pop("PYTHONHOME", None)  # a venv's PYTHONHOME would break the embedded interpreter
    return env


def runtime_dir() -> Path:
    """Where ext4gen keeps sockets, pidfiles and mount state: /run/ext4gen as root."""
    if os.geteuid() == 0:
        base = Path("/run/ext4gen")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "ext4gen"
    else:
        base = Path(tempfile.gettempdir()) / f"ext4gen-{os.geteuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


# -- processes by pid ------------------------------------------------------------

def pid_alive(pid: int, name: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when ``name`` is given, is that program.

    ``name`` matches the program's basename or any argument (``ext4gen.cli`` for
    ``python -m ext4gen.cli``).  The check keeps a recycled pid from a stale
    state file from being signalled.
    """
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
        if name is None:
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        return os.path.basename(argv[0]) == name or name in argv[1:]
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout: float, name: str | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_pid(pid: int, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM ``pid`` if it is still ``name``; SIGKILL if it does not exit in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid, name):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, timeout, name):
            return
    raise ServeError(f"{name} (pid {pid}) did not exit after SIGKILL")


def read_pidfile(path: str) -> int | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


# -- nbdkit under a supervisor ------------------------------------------------------
#
# nbdkit 1.32 as packaged here arms PR_SET_PDEATHSIG whenever it runs in the
# foreground, so it dies with its parent; and in its own daemon mode it sends
# stderr (our error lines and the stats summary) to /dev/null.  So nbdkit
# always runs as the child of an ext4gen process that stays for its lifetime:
# the CLI itself with --foreground, or in background mode a detached
# `python -m ext4gen.cli serve --foreground` whose stderr is the log file.
# Stopping that supervisor (SIGTERM) stops nbdkit and removes its socket.

@dataclass
class ServeOptions:
    """What to serve and how.  ``source`` alone serves one export; ``sources`` (each
    ``[NAME=]SOURCE``) serves one export per entry, the first being the default."""

    source: str
    socket: str | None = None
    port: int | None = None
    bind: str = "localhost"
    filters: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    threads: int = DEFAULT_THREADS
    dedup: str | None = None
    no_inline_data: bool = False
    base_map: str | None = None
    source_root: str | None = None
    verbose: bool = False
    pidfile: str | None = None
    log: str | None = None
    workdir: str | None = None
    sources: list[str] = field(default_factory=list)
    exports: list[ExportSpec] = field(default_factory=list)  # set by check()

    def check(self) -> None:
        """Refuse what cannot work, name the exports, and make paths absolute: nbdkit
        runs from another cwd."""
        raw = self.sources or [self.source]
        if any(parse_export_arg(a)[1] == "-" for a in raw):
            raise ServeError("serve and mount need a SOURCE file, not stdin: nbdkit reads it "
                             "itself (save the manifest to a file first)")
        self.exports = [ExportSpec(e.name, absolute_any(e.source))
                        for e in resolve_exports(raw)]
        self.source = self.exports[0].source
        if self.base_map and len(self.exports) > 1:
            raise ServeError("--base-map applies to one SOURCE; serve sources with base maps "
                             "separately")
        if self.base_map:
            self.base_map = os.path.abspath(self.base_map)
        if self.source_root:
            self.source_root = os.path.abspath(self.source_root)
        if self.threads < 1:
            raise ServeError("--threads must be at least 1")
        for p in self.params:
            if "=" not in p:
                raise ServeError(f"--param {p}: expected KEY=VALUE")
        if self.port is not None and not 0 < self.port < 65536:
            raise ServeError(f"--port {self.port}: not a TCP port")

    def uri(self, sock: str | None, export: str = "") -> str:
        """The URI of ``export`` ("" is the default export: the first SOURCE)."""
        if sock is not None:
            return f"nbd+unix:///{export}?socket={sock}"
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"nbd://{host}:{self.port}" + (f"/{export}" if export else "")

    def uris(self, sock: str | None) -> list[str]:
        """What serve prints: the default export's URI for one SOURCE, else one per export
        by name (the first line is then the default export's)."""
        if len(self.exports) <= 1:
            return [self.uri(sock)]
        return [self.uri(sock, e.name) for e in self.exports]


def nbdkit_version() -> tuple[int, ...] | None:
    try:
        out = subprocess.run(["nbdkit", "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
        return tuple(int(x) for x in out.split()[1].split(".")[:3])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def warn_threads(threads: int) -> None:
    """More than one thread per connection lets a hanging-up client crash buggy nbdkits."""
    if threads <= 1:
        return
    v = nbdkit_version()
    if v is not None and HANGUP_BUG[0] <= v < HANGUP_BUG[1]:
        print(f"ext4gen: warning: --threads {threads} with nbdkit {'.'.join(map(str, v))}: "
              "a client that disconnects with requests in flight can crash nbdkit "
              "(RHBZ#2173054); use --threads 1 for a server others rely on", file=sys.stderr)


def validate_source(opts: ServeOptions) -> None:
    """Plan every SOURCE here, exactly as `ext4gen build` would, so bad input is one line
    and exit 2 before nbdkit runs."""
    from ..cli import load_image

    for export in opts.exports or [ExportSpec("", opts.source)]:
        load_image(argparse.Namespace(source=export.source, dedup=opts.dedup,
                                      base_map=opts.base_map, source_root=opts.source_root,
                                      no_inline_data=opts.no_inline_data))


def remove_stale_socket(path: str) -> None:
    """Delete a socket nobody listens on (nbdkit refuses to bind over it); keep live ones."""
    if not os.path.exists(path):
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        s.close()
    raise ServeError(f"{path}: a server is already listening on this socket")


def nbdkit_command(opts: ServeOptions, sock: str | None, pidfile: str) -> list[str]:
    cmd = ["nbdkit", "--foreground", "--exit-with-parent", "--log=stderr",
           "--pidfile", pidfile, "--threads", str(opts.threads)]
    if opts.verbose:
        cmd.append("--verbose")
    for f in opts.filters:
        cmd.append(f"--filter={f}")
    if sock is not None:
        cmd += ["--unix", sock]
    else:
        cmd += ["--port", str(opts.port), "--ipaddr", opts.bind]
    cmd += ["python", plugin_path()]
    # Always NAME=PATH: the plugin then names exports exactly as we print them.
    cmd += [f"source={e.name}={e.source}" for e in opts.exports]
    if opts.dedup:
        cmd.append(f"dedup={opts.dedup}")
    if opts.no_inline_data:
        cmd.append("inline_data=false")
    if opts.base_map:
        cmd.append(f"base_map={opts.base_map}")
    if opts.source_root:
        cmd.append(f"source_root={opts.source_root}")
    cmd += opts.params
    return cmd


def _wait_for_pid(pidfile: str, proc: subprocess.Popen[bytes], what: str, timeout: float,
                  log: str | None = None) -> int:
    """Wait until ``pidfile`` names a pid (the program's 'ready' signal) or ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        pid = read_pidfile(pidfile)
        if pid is not None:
            return pid
        rc = proc.poll()
        if rc is not None:
            raise ServeError(f"{what} exited with status {rc} before serving{_first_error(log)}")
        if time.monotonic() > deadline:
            raise ServeError(f"{what} did not start serving within {timeout:.0f} s")
        time.sleep(0.02)


def _first_error(log: str | None) -> str:
    """The root cause from a log: its first ext4gen/nbdkit message, else its last line."""
    if not log:
        return ""
    try:
        lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in lines:
        if ln.startswith(("ext4gen: ", "nbdkit: ")) and ": debug: " not in ln:
            return ": " + ln.removeprefix("ext4gen: ")
    return ": " + lines[-1] if lines else ""


def supervise(opts: ServeOptions, *, ready: Callable[[str, int], None] | None = None,
              timeout: float = READY_TIMEOUT) -> int:
    """Run nbdkit as our child until it exits or we get SIGINT/SIGTERM/SIGHUP.

    Prints the URI on stdout once nbdkit accepts connections, then writes
    ``opts.pidfile`` (our pid: the process to signal).  Always removes the
    socket, the pidfile and the work directory on the way out.
    """
    if shutil.which("nbdkit") is None:
        raise ServeError("nbdkit is not installed (Debian: apt install nbdkit nbdkit-plugin-python)")
    remove_dead_workdirs()
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
        cmd = nbdkit_command(opts, sock, nbdkit_pidfile)
        proc = subprocess.Popen(cmd, env=child_env(), stdin=subprocess.DEVNULL)
        nbdkit_pid = _wait_for_pid(nbdkit_pidfile, proc, "nbdkit", timeout)
        serving = True
        uris = opts.uris(sock)
        uri = uris[0]
        _write_atomic(os.path.join(workdir, "server.json"), json.dumps(
            {"uri": uri, "uris": uris, "socket": sock, "port": opts.port,
             "supervisor_pid": os.getpid(), "nbdkit_pid": nbdkit_pid,
             "source": absolute_any(opts.source),
             "exports": {e.name: e.source for e in opts.exports}}))
        if opts.pidfile:
            _write_atomic(opts.pidfile, f"{os.getpid()}\n")
        with contextlib.suppress(BrokenPipeError):
            print("\n".join(uris), flush=True)
        if ready:
            ready(uri, nbdkit_pid)
        rc = _wait_stopping(proc, stopping)
    except KeyboardInterrupt:
        return 130 if stopping and stopping[0] == signal.SIGINT else 143
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in (sock, opts.pidfile):
            if p:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        shutil.rmtree(workdir, ignore_errors=True)
    if stopping:
        return 0
    return rc if rc >= 0 else 1


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


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


SUPERVISOR = "ext4gen.cli"


def start_background(opts: ServeOptions, timeout: float = READY_TIMEOUT) -> Background:
    """Start a detached supervisor; return once nbdkit serves (or raise with its last log line)."""
    workdir = tempfile.mkdtemp(prefix="serve-", dir=runtime_dir())
    # The work directory goes when serving stops; the log stays for its summary.
    pidfile = os.path.abspath(opts.pidfile) if opts.pidfile else workdir + ".pid"
    log = os.path.abspath(opts.log) if opts.log else workdir + ".log"
    sock = None
    if opts.port is None:
        sock = os.path.abspath(opts.socket) if opts.socket else os.path.join(workdir, "nbd.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    if not opts.exports:
        opts.check()
    cmd = [sys.executable, "-m", SUPERVISOR, "serve", *[f"{e.name}={e.source}" for e in opts.exports],
           "--foreground",
           "--no-validate", "--workdir", workdir, "--pidfile", pidfile,
           "--threads", str(opts.threads), "--bind", opts.bind]
    cmd += ["--socket", sock] if sock else ["--port", str(opts.port)]
    for f in opts.filters:
        cmd += ["--filter", f]
    for p in opts.params:
        cmd += ["--param", p]
    if opts.dedup:
        cmd += ["--dedup", opts.dedup]
    if opts.no_inline_data:
        cmd.append("--no-inline-data")
    if opts.base_map:
        cmd += ["--base-map", opts.base_map]
    if opts.source_root:
        cmd += ["--source-root", opts.source_root]
    if opts.verbose:
        cmd.append("--verbose")
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=logf, start_new_session=True, cwd="/")
    try:
        pid = _wait_for_pid(pidfile, proc, "ext4gen serve", timeout, log)
        info = json.loads(Path(workdir, "server.json").read_text())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Background(pid=pid, nbdkit_pid=int(info["nbdkit_pid"]), uri=str(info["uri"]),
                      pidfile=pidfile, log=log, workdir=workdir, socket=sock,
                      uris=[str(u) for u in info.get("uris", [info["uri"]])])


# -- ext4gen serve -----------------------------------------------------------------

def _serve_options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(source=args.source, socket=args.socket, port=args.port, bind=args.bind,
                        filters=list(args.filter or []), params=list(args.param or []),
                        threads=args.threads, dedup=args.dedup, no_inline_data=args.no_inline_data,
                        base_map=args.base_map, source_root=args.source_root, verbose=args.verbose,
                        pidfile=args.pidfile, log=args.log, workdir=args.workdir,
                        sources=[args.source, *getattr(args, "more_sources", [])])


def cmd_serve(args: argparse.Namespace) -> int:
    opts = _serve_options(args)
    opts.check()
    if not args.no_validate:
        validate_source(opts)
        warn_threads(opts.threads)
    if args.foreground:
        if opts.log:
            raise ServeError("--log is for background mode; in the foreground nbdkit logs to stderr")
        return supervise(opts)
    bg = start_background(opts)
    print("\n".join(bg.uris or [bg.uri]), flush=True)
    print(f"ext4gen: serving in the background: pid {bg.pid} (pidfile {bg.pidfile}, "
          f"log {bg.log}); stop with: kill {bg.pid}", file=sys.stderr)
    return 0


def _add_serve_args(sp: argparse.ArgumentParser) -> None:
    from ..cli import add_source_arguments

    add_source_arguments(sp)
    sp.add_argument("--filter", action="append", metavar="NAME",
                    help="nbdkit filter to stack (repeatable), e.g. cache, readahead")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="extra nbdkit parameter, e.g. for a filter: cache-max-size=1G")
    sp.add_argument("-t", "--threads", type=int, default=DEFAULT_THREADS,
                    help=f"nbdkit worker threads per connection (default {DEFAULT_THREADS}: "
                    "the plugin holds the GIL, and nbdkit 1.32.4+ before 1.33.3 can crash "
                    "with more when a client hangs up)")
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="nbdkit -v: debug output, including per-connection read statistics")


class _IntermixedParser(argparse.ArgumentParser):
    """Lets SOURCEs and options mix (``serve a.toml --socket S b.toml``).

    Plain argparse stops filling a ``nargs="*"`` positional at the first
    option, and then calls the later SOURCEs unrecognized arguments.
    """

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        if self._inside:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register_serve(sub: argparse._SubParsersAction) -> None:
    parser_class, sub._parser_class = sub._parser_class, _IntermixedParser
    try:
        _register_serve(sub)
    finally:
        sub._parser_class = parser_class


def _register_serve(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("serve", help="serve images over NBD with nbdkit, one export per SOURCE",
                        description="Serve each SOURCE as a read-only NBD export. A SOURCE "
                        "may be written NAME=SOURCE; otherwise its export is named after the "
                        "file (site.toml -> site). The first SOURCE is also the default export "
                        "(\"\"). One SOURCE prints nbd+unix:///?socket=...; several print one "
                        "URI per export, by name.")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="Unix socket to listen on "
                       "(default: a private one under the runtime directory)")
    where.add_argument("--port", type=int, metavar="N", help="TCP port to listen on")
    sp.add_argument("--bind", default="localhost", metavar="ADDR",
                    help="address for --port (default localhost)")
    sp.add_argument("--foreground", action="store_true",
                    help="stay attached; stop nbdkit on SIGINT/SIGTERM")
    sp.add_argument("--pidfile", metavar="PATH",
                    help="write the pid to signal (SIGTERM stops serving) once ready")
    sp.add_argument("--log", metavar="PATH", help="background mode: where stderr goes "
                    "(default: next to the socket in the runtime directory)")
    sp.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)
    sp.add_argument("--workdir", help=argparse.SUPPRESS)
    _add_serve_args(sp)
    sp.add_argument("more_sources", nargs="*", metavar="[NAME=]SOURCE",
                    help="more sources, one NBD export each (NAME=SOURCE names the export)")
    sp.set_defaults(func=cmd_serve)


# -- ext4gen mount / umount -----------------------------------------------------------

@dataclass
class MountState:
    """Everything ``umount`` needs, saved as JSON next to the pieces it names."""

    mountpoint: str
    source: str
    dir: str
    disk: str
    server: dict[str, object]
    nbdfuse_pid: int | None = None
    mounted: bool = False

    @property
    def fuse_dir(self) -> str:
        return os.path.dirname(self.disk)


def mount_state_dir(mountpoint: str) -> Path:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return runtime_dir() / "mounts" / key


def _save_state(state: MountState) -> None:
    path = Path(state.dir) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    os.replace(tmp, path)


def load_state(mountpoint: str) -> MountState:
    path = mount_state_dir(mountpoint) / "state.json"
    try:
        return MountState(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise ServeError(f"{mountpoint}: not mounted by ext4gen (no {path})") from None
    except (ValueError, TypeError) as e:
        raise ServeError(f"{path}: unreadable mount state: {e}") from None


def is_mountpoint(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == real:
                return True
    return False


def _unescape(s: str) -> str:
    return s.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def _check_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ServeError(f"needed but not installed: {', '.join(missing)}")


def cmd_mount(args: argparse.Namespace) -> int:
    mnt = os.path.realpath(args.mountpoint)
    if os.geteuid() != 0:
        raise ServeError("mount needs root (loop devices)")
    if not os.path.isdir(mnt):
        raise ServeError(f"{args.mountpoint}: mountpoint is not a directory")
    _check_tools("nbdkit", "nbdfuse", "fusermount3", "mount", "umount")
    sdir = mount_state_dir(mnt)
    if (sdir / "state.json").exists():
        raise ServeError(f"{mnt}: already mounted by ext4gen (run `ext4gen umount {mnt}` first)")
    if is_mountpoint(mnt):
        raise ServeError(f"{mnt}: something is already mounted there")
    opts = _serve_options(args)
    opts.check()
    validate_source(opts)
    warn_threads(opts.threads)
    shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(mode=0o700, parents=True)
    fuse_dir = sdir / "fuse"
    fuse_dir.mkdir()
    opts.socket = str(sdir / "nbd.sock")
    opts.pidfile = str(sdir / "serve.pid")
    opts.log = str(sdir / "serve.log")
    state = MountState(mountpoint=mnt, source=absolute_any(opts.source), dir=str(sdir),
                       disk=str(fuse_dir / "disk"), server={})
    try:
        server = start_background(opts)
        state.server = asdict(server)
        _save_state(state)
        state.nbdfuse_pid = _start_nbdfuse(state, opts.socket)
        _save_state(state)
        r = _run(["mount", "-t", "ext4", "-o", "loop,ro", state.disk, mnt])
        if r.returncode != 0:
            raise ServeError(f"mount {mnt} failed: {r.stderr.strip() or r.stdout.strip()}")
        state.mounted = True
        _save_state(state)
    except BaseException:
        with contextlib.suppress(Exception):
            teardown(state, lazy=True)
        raise
    print(f"{mnt}: mounted read-only from {server.uri} (state in {sdir})")
    return 0


def _start_nbdfuse(state: MountState, sock: str) -> int:
    pidfile = os.path.join(state.dir, "nbdfuse.pid")
    with open(os.path.join(state.dir, "nbdfuse.log"), "ab") as logf:
        proc = subprocess.Popen(["nbdfuse", "-r", "-P", pidfile, state.disk, "--unix", sock],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)
    state.nbdfuse_pid = proc.pid
    deadline = time.monotonic() + 30
    while read_pidfile(pidfile) is None:
        if proc.poll() is not None:
            tail = Path(state.dir, "nbdfuse.log").read_text(errors="replace").strip().splitlines()
            raise ServeError(f"nbdfuse exited with status {proc.returncode}"
                             + (f": {tail[-1]}" if tail else ""))
        if time.monotonic() > deadline:
            raise ServeError("nbdfuse did not become ready within 30 s")
        time.sleep(0.02)
    return proc.pid


def teardown(state: MountState, *, lazy: bool = False) -> list[str]:
    """Undo a mount in reverse order: filesystem, loop device, nbdfuse, nbdkit, files.

    Each step runs only if its piece exists, so this also cleans up after a
    ``mount`` that failed halfway.  A busy filesystem stops the teardown
    (unless ``lazy``), because the layers under it must outlive its users.
    Returns the server's shutdown summary lines (its log goes with the state).
    """
    if is_mountpoint(state.mountpoint):
        r = _run(["umount", state.mountpoint])
        if r.returncode != 0:
            if not lazy:
                raise ServeError(f"umount {state.mountpoint} failed: {r.stderr.strip()}")
            _run(["umount", "-l", state.mountpoint])
    state.mounted = False
    # mount(8) set up the loop device with autoclear; detach any left behind.
    if os.path.exists(state.disk) or state.nbdfuse_pid:
        r = _run(["losetup", "-n", "-O", "NAME", "-j", state.disk])
        for dev in r.stdout.split():
            _run(["losetup", "-d", dev])
    deadline = time.monotonic() + 5
    while is_mountpoint(state.fuse_dir):
        # Busy while the kernel is still releasing the loop device: retry, then detach lazily.
        lazy_fuse = time.monotonic() > deadline
        _run(["fusermount3", "-u", *(["-z"] if lazy_fuse else []), state.fuse_dir])
        if lazy_fuse:
            break
        if is_mountpoint(state.fuse_dir):
            time.sleep(0.1)
    if state.nbdfuse_pid and not wait_gone(state.nbdfuse_pid, STOP_TIMEOUT, "nbdfuse"):
        stop_pid(state.nbdfuse_pid, "nbdfuse")
    summary: list[str] = []
    if state.server:
        bg = Background(**state.server)  # type: ignore[arg-type]
        bg.stop()
        with contextlib.suppress(OSError):
            summary = [ln for ln in Path(bg.log).read_text(errors="replace").splitlines()
                       if ln.startswith("ext4gen: served ")]
    shutil.rmtree(state.dir, ignore_errors=True)
    return summary


def cmd_umount(args: argparse.Namespace) -> int:
    state = load_state(args.mountpoint)
    for line in teardown(state, lazy=args.lazy):
        print(line, file=sys.stderr)
    print(f"{state.mountpoint}: unmounted; nbdfuse and nbdkit stopped")
    return 0


def register_mount(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("mount", help="serve + nbdfuse + read-only loop mount (root)")
    _add_serve_args(sp)
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.set_defaults(func=cmd_mount, socket=None, port=None, bind="localhost", pidfile=None, log=None,
                    workdir=None)


def register_umount(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("umount", help="unmount and stop what `ext4gen mount` started")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.add_argument("--lazy", action="store_true",
                    help="detach a busy filesystem (umount -l) instead of failing")
    sp.set_defaults(func=cmd_umount)


COMMANDS: list[tuple[str, Callable[[argparse._SubParsersAction], None]]] = [
    ("serve", register_serve),
    ("mount", register_mount),
    ("umount", register_umount),
]
