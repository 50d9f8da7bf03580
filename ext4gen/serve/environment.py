"""Where the serving stack's pieces are: the plugin file, the interpreter path nbdkit's
embedded Python needs, the runtime directory, and what the installed nbdkit can do.

nbdkit embeds the system python3, not the interpreter running this CLI, so the
child gets a PYTHONPATH naming the project and this interpreter's site-packages.
"""

from __future__ import annotations

import contextlib
import functools
import os
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ..switches import NO_FILTER_ENV, env_flag, pure_python_requested
from .options import ServeError

PLUGIN_ENV = "EXT4GEN_NBDKIT_PLUGIN"
HANGUP_BUG = ((1, 32, 4), (1, 33, 3))  # RHBZ#2173054: [first affected, first fixed)
_PACKAGE = Path(__file__).resolve().parents[1]  # ext4gen/


def plugin_path() -> str:
    """The plugin file: $EXT4GEN_NBDKIT_PLUGIN, else ``plugins/`` next to the package."""
    env = os.environ.get(PLUGIN_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(_PACKAGE.parent / "plugins" / "ext4gen_nbdkit.py")
    candidates.append(_PACKAGE / "serve" / "nbdkit_plugin.py")  # installed package
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
    dirs = [str(_PACKAGE.parent)]
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


@functools.cache
def nbdkit_version() -> tuple[int, ...] | None:
    try:
        out = subprocess.run(["nbdkit", "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
        return tuple(int(x) for x in out.split()[1].split(".")[:3])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


@functools.cache
def nbdkit_config() -> dict[str, str]:
    """``nbdkit --dump-config`` as a mapping (empty when nbdkit cannot run)."""
    try:
        out = subprocess.run(["nbdkit", "--dump-config"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


FILTER_MARKER = b"ext4gen-nbdkit-filter-for="


def ext4gen_filter() -> str | None:
    """ext4gen's nbdkit filter (ext4gen/serve/_nbdfilter.c), when built for the installed
    nbdkit and not turned off (``EXT4GEN_NO_FILTER=1``, or ``EXT4GEN_PURE_PYTHON=1``: no
    compiled path to answer with)."""
    if env_flag(NO_FILTER_ENV) or pure_python_requested():
        return None
    return built_filter()


@functools.cache
def built_filter() -> str | None:
    """The filter built next to this module, if built for the installed nbdkit."""
    import importlib.machinery

    here = Path(__file__).resolve().parent
    return filter_for([here / f"_nbdfilter{s}" for s in importlib.machinery.EXTENSION_SUFFIXES],
                      nbdkit_config().get("version", ""))


def filter_for(paths: list[Path], version: str) -> str | None:
    """The first of ``paths`` built for nbdkit ``version``.

    nbdkit refuses a filter built against another version, so the version the
    filter was built for (a marker in the file) must equal ``nbdkit --dump-config``'s;
    after an nbdkit upgrade without a rebuild, serve simply goes without it.
    """
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        at = data.find(FILTER_MARKER)
        if version and at >= 0 and data[at + len(FILTER_MARKER):].split(b";", 1)[0] == version.encode():
            return str(path)
    return None


def has_filter(name: str) -> bool:
    filterdir = nbdkit_config().get("filterdir")
    return bool(filterdir) and os.path.exists(os.path.join(filterdir, f"nbdkit-{name}-filter.so"))


def warn_threads(threads: int) -> None:
    """More than one thread per connection lets a hanging-up client crash buggy nbdkits."""
    if threads <= 1:
        return
    v = nbdkit_version()
    if v is not None and HANGUP_BUG[0] <= v < HANGUP_BUG[1]:
        print(f"ext4gen: warning: --threads {threads} with nbdkit {'.'.join(map(str, v))}: "
              "a client that disconnects with requests in flight can crash nbdkit "
              "(RHBZ#2173054); use --threads 1 for a server others rely on", file=sys.stderr)
