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

from .errors import Ext4genError
from .options import DEDUP_MODES

# nbdkit's default of 16 threads only adds GIL contention for a Python plugin
# (measured in docs/SERVING.md); two keeps one request in Python while another
# waits in preadv.
DEFAULT_THREADS = 2
READY_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
PLUGIN_ENV = "EXT4GEN_NBDKIT_PLUGIN"


class ServeError(Ext4genError):
    """The serving stack could not be started or stopped (environment, not input)."""


# -- locating the plugin and its interpreter environment ------------------------

def plugin_path() -> str:
    """The plugin file: $EXT4GEN_NBDKIT_PLUGIN, else ``plugins/`` next to the package."""
    env = os.environ.get(PLUGIN_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "plugins" / "ext4gen_nbdkit.py")
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
    dirs = [str(Path(__file__).resolve().parent.parent)]
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

    The name check keeps a recycled pid from a stale state file from being killed.
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
            argv0 = f.read().split(b"\0", 1)[0]
        return os.path.basename(argv0).decode(errors="replace") == name
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
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


# -- nbdkit ------------------------------------------------------------------------

@dataclass
class Server:
    """A running nbdkit and the files it owns."""

    pid: int
    uri: str
    pidfile: str
    socket: str | None = None
    port: int | None = None
    log: str | None = None
    private_dir: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("proc")
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Server:
        return cls(**{k: v for k, v in d.items() if k in _SERVER_FIELDS})  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop nbdkit and remove what it leaves behind (nbdkit keeps its socket)."""
        stop_pid(self.pid, "nbdkit")
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=1)
        for p in (self.socket, self.pidfile):
            if p:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        if self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)


_SERVER_FIELDS = ("pid", "uri", "pidfile", "socket", "port", "log", "private_dir")


@dataclass
class ServeOptions:
    source: str
    socket: str | None = None
    port: int | None = None
    bind: str = "localhost"
    filters: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    threads: int = DEFAULT_THREADS
    dedup: str | None = None
    verbose: bool = False
    pidfile: str | None = None
    log: str | None = None


def validate_source(source: str, dedup: str | None) -> None:
    """Plan the manifest here, so bad input is one line and exit 2 before nbdkit runs."""
    from . import load, plan

    tree, options = load(source, dedup=dedup)
    plan(tree, options)


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


def nbdkit_command(opts: ServeOptions, sock: str | None, pidfile: str, foreground_child: bool) -> list[str]:
    cmd = ["nbdkit", "--foreground", "--log=stderr", "--pidfile", pidfile,
           "--threads", str(opts.threads)]
    if foreground_child:
        cmd.append("--exit-with-parent")
    if opts.verbose:
        cmd.append("--verbose")
    for f in opts.filters:
        cmd.append(f"--filter={f}")
    if sock is not None:
        cmd += ["--unix", sock]
    else:
        cmd += ["--port", str(opts.port), "--ipaddr", opts.bind]
    cmd += ["python", plugin_path(), f"manifest={os.path.abspath(opts.source)}"]
    if opts.dedup:
        cmd.append(f"dedup={opts.dedup}")
    cmd += opts.params
    return cmd


def start_server(opts: ServeOptions, *, foreground: bool, timeout: float = READY_TIMEOUT) -> Server:
    """Start nbdkit and return once it accepts connections.

    nbdkit always runs with --foreground under us: in background mode we
    detach it ourselves (new session, stderr to a log file) so we know its pid
    and keep its messages, which nbdkit's own daemon mode would send to syslog.
    """
    if shutil.which("nbdkit") is None:
        raise ServeError("nbdkit is not installed (Debian: apt install nbdkit nbdkit-plugin-python)")
    for p in opts.params:
        if "=" not in p:
            raise ServeError(f"--param {p}: expected KEY=VALUE")
    private = None
    if opts.socket is None and opts.port is None:
        private = tempfile.mkdtemp(prefix="serve-", dir=runtime_dir())
        sock: str | None = os.path.join(private, "nbd.sock")
    else:
        sock = os.path.abspath(opts.socket) if opts.socket else None
    if sock is not None:
        remove_stale_socket(sock)
    base = private or str(runtime_dir())
    tag = "" if private else "-" + hashlib.sha256((sock or str(opts.port)).encode()).hexdigest()[:12]
    pidfile = os.path.abspath(opts.pidfile) if opts.pidfile else os.path.join(base, f"nbdkit{tag}.pid")
    log = None
    if not foreground:
        log = os.path.abspath(opts.log) if opts.log else os.path.join(base, f"nbdkit{tag}.log")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    cmd = nbdkit_command(opts, sock, pidfile, foreground)
    uri = f"nbd+unix:///?socket={sock}" if sock else f"nbd://{_uri_host(opts.bind)}:{opts.port}"
    logf = open(log, "ab") if log else None
    try:
        proc = subprocess.Popen(cmd, env=child_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL if logf else None,
                                stderr=logf, start_new_session=not foreground)
    finally:
        if logf:
            logf.close()
    server = Server(pid=proc.pid, uri=uri, pidfile=pidfile, socket=sock, port=opts.port,
                    log=log, private_dir=private, proc=proc)
    try:
        _wait_ready(server, proc, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _uri_host(bind: str) -> str:
    return f"[{bind}]" if ":" in bind else bind


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while read_pidfile(server.pidfile) is None:
        rc = proc.poll()
        if rc is not None:
            detail = ""
            if server.log:
                lines = [ln for ln in Path(server.log).read_text(errors="replace").splitlines()
                         if ln.strip()]
                detail = ": " + lines[-1].removeprefix("ext4gen: ") if lines else ""
            raise ServeError(f"nbdkit exited with status {rc} before serving{detail}")
        if time.monotonic() > deadline:
            raise ServeError(f"nbdkit did not start serving within {timeout:.0f} s")
        time.sleep(0.02)


# -- ext4gen serve -----------------------------------------------------------------

def _serve_options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(source=args.source, socket=args.socket, port=args.port, bind=args.bind,
                        filters=list(args.filter or []), params=list(args.param or []),
                        threads=args.threads, dedup=args.dedup, verbose=args.verbose,
                        pidfile=args.pidfile, log=args.log)


def cmd_serve(args: argparse.Namespace) -> int:
    opts = _serve_options(args)
    if opts.threads < 1:
        raise ServeError("--threads must be at least 1")
    validate_source(opts.source, opts.dedup)
    if not args.foreground:
        server = start_server(opts, foreground=False)
        print(server.uri, flush=True)
        print(f"pid {server.pid} (pidfile {server.pidfile}, log {server.log}); "
              f"stop with: kill {server.pid}", file=sys.stderr)
        return 0
    running: list[Server] = []
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if not running:
            raise KeyboardInterrupt  # still starting: start_server stops nbdkit
        with contextlib.suppress(ProcessLookupError):
            os.kill(running[0].pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        running.append(start_server(opts, foreground=True))
        print(running[0].uri, flush=True)
        proc = running[0].proc
        assert proc is not None
        rc = proc.wait()
    except KeyboardInterrupt:
        return 130 if stopping and stopping[0] == signal.SIGINT else 143
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if running:
            running[0].stop()
    if stopping:
        return 0
    return rc if rc >= 0 else 1


def _add_serve_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dedup", choices=DEDUP_MODES, help="override the manifest's image.dedup")
    sp.add_argument("--filter", action="append", metavar="NAME",
                    help="nbdkit filter to stack (repeatable), e.g. cache, readahead")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="extra nbdkit parameter, e.g. for a filter: cache-max-size=1G")
    sp.add_argument("-t", "--threads", type=int, default=DEFAULT_THREADS,
                    help=f"nbdkit worker threads per connection (default {DEFAULT_THREADS}; "
                    "more only adds GIL contention)")
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="nbdkit -v: debug output, including per-connection read statistics")


def register_serve(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("serve", help="serve the image over NBD with nbdkit")
    sp.add_argument("source", metavar="SOURCE", help="a manifest (.toml or .json)")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="Unix socket to listen on "
                       "(default: a private one under the runtime directory)")
    where.add_argument("--port", type=int, metavar="N", help="TCP port to listen on")
    sp.add_argument("--bind", default="localhost", metavar="ADDR",
                    help="address for --port (default localhost)")
    sp.add_argument("--foreground", action="store_true",
                    help="stay attached; stop nbdkit on SIGINT/SIGTERM")
    sp.add_argument("--pidfile", metavar="PATH", help="where nbdkit writes its pid")
    sp.add_argument("--log", metavar="PATH", help="nbdkit's stderr in background mode")
    _add_serve_args(sp)
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
    opts.socket, opts.port, opts.pidfile, opts.log = None, None, None, None
    validate_source(opts.source, opts.dedup)
    shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(mode=0o700, parents=True)
    fuse_dir = sdir / "fuse"
    fuse_dir.mkdir()
    opts.socket = str(sdir / "nbd.sock")
    opts.pidfile = str(sdir / "nbdkit.pid")
    opts.log = str(sdir / "nbdkit.log")
    state = MountState(mountpoint=mnt, source=os.path.abspath(opts.source), dir=str(sdir),
                       disk=str(fuse_dir / "disk"), server={})
    try:
        server = start_server(opts, foreground=False)
        state.server = server.to_json()
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


def teardown(state: MountState, *, lazy: bool = False) -> None:
    """Undo a mount in reverse order: filesystem, loop device, nbdfuse, nbdkit, files.

    Each step runs only if its piece exists, so this also cleans up after a
    ``mount`` that failed halfway.  A busy filesystem stops the teardown
    (unless ``lazy``), because the layers under it must outlive its users.
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
    if state.server:
        Server.from_json(state.server).stop()
    shutil.rmtree(state.dir, ignore_errors=True)


def cmd_umount(args: argparse.Namespace) -> int:
    state = load_state(args.mountpoint)
    teardown(state, lazy=args.lazy)
    print(f"{state.mountpoint}: unmounted; nbdfuse and nbdkit stopped")
    return 0


def register_mount(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("mount", help="serve + nbdfuse + read-only loop mount (root)")
    sp.add_argument("source", metavar="SOURCE", help="a manifest (.toml or .json)")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_serve_args(sp)
    sp.set_defaults(func=cmd_mount, socket=None, port=None, bind="localhost", pidfile=None, log=None)


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
