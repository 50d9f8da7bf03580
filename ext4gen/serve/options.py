"""What to serve and how, and the one codec between those options and the nbdkit plugin.

:class:`ServeOptions` is what ``ext4gen serve``/``mount`` and the pytest plugin
fill in.  The plugin's part of it travels as nbdkit ``key=value`` arguments:
:func:`plugin_args` writes them, and the plugin reads them back with
:class:`PluginConfig`, the same code, so the two sides cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields

from ..errors import Ext4genError
from ..inputs.choices import BuildChoices
from ..inputs.oci_names import absolute_any  # os.path.abspath that keeps oci:PATH[:REF] intact
from ..model.options import ImageFlags, check_dedup
from ..model.sources import serving_fd_limit, source_fd_budget
from .exports import ExportSpec, parse_export_arg, resolve_exports

# Worker threads per connection.  One, because nbdkit 1.32.4 to 1.33.2 (Debian
# 12 ships 1.32.5) abort()s when a client hangs up while two threads of its
# connection hold replies (RHBZ#2173054, fixed upstream by 9d82aa4f).  Before
# ext4gen's filter answered reads in C, more threads were also slower (the plugin
# holds the GIL): figures in docs/SERVING.md.
# Connections are still served in parallel, one thread each.
DEFAULT_THREADS = 1

# Clients must fit in the descriptors the plugin's source cache leaves free (half the
# limit serving raises to: model/sources.py), or nbdkit's accept() fails with EMFILE in
# a loop that eats a core and floods the log; so serve admits at most that half, less
# FDS_RESERVED, divided by the descriptors a client costs, and refuses more at once.
FDS_RESERVED = 64  # nbdkit, the interpreter, listening sockets, a metadata render's files
TLS_MODES = ("off", "on", "require")

_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


class ServeError(Ext4genError):
    """The serving stack could not be started or stopped (environment, not input)."""


def default_max_clients(threads: int) -> int:
    """Clients that fit the descriptor budget: one socket each, plus a status pipe
    (two descriptors) per connection when it has more than one worker thread."""
    per_client = 1 if threads <= 1 else 3
    limit = serving_fd_limit()
    return max(1, (limit - source_fd_budget(limit) - FDS_RESERVED) // per_client)


def is_loopback(bind: str) -> bool:
    """True when ``bind`` (an ``--bind`` address or host name) only listens on this machine."""
    if bind in ("localhost", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it reaches the network


def psk_user(path: str) -> str:
    """``USER@`` for a URI: the first user of a PSK file (lines ``USER:HEXKEY``), or ""."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return ""
    name = first.partition(":")[0].strip()
    return f"{name}@" if name and first.count(":") == 1 and "@" not in name else ""


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
    inline_data: bool | None = None
    base_map: str | None = None
    source_root: str | None = None
    verbose: bool = False
    pidfile: str | None = None
    log: str | None = None
    workdir: str | None = None
    sources: list[str] = field(default_factory=list)
    max_clients: int | None = None  # None: default_max_clients(threads); 0: no limit
    cache: str | None = None  # nbdkit cache filter over reads, bounded to this size (e.g. 256M)
    tls: str | None = None  # off | on | require; None: require when a PSK or certificates are given
    tls_psk: str | None = None
    tls_certificates: str | None = None
    flags: str | None = None  # image options (label, owners, labels …) as ImageFlags JSON
    generator_path: list[str] = field(default_factory=list)  # more generator module directories
    exports: list[ExportSpec] = field(default_factory=list)  # set by check()

    @property
    def choices(self) -> BuildChoices:
        return BuildChoices(dedup=self.dedup, inline_data=self.inline_data,
                            base_map=self.base_map, source_root=self.source_root,
                            flags=ImageFlags.from_json(self.flags) if self.flags else ImageFlags(),
                            generator_path=tuple(self.generator_path))

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
        if self.dedup is not None:
            check_dedup(self.dedup, "--dedup")
        for name in ("base_map", "source_root", "tls_psk", "tls_certificates"):
            if getattr(self, name):
                setattr(self, name, os.path.abspath(getattr(self, name)))
        self.generator_path = [os.path.abspath(d) for d in self.generator_path]
        if self.threads < 1:
            raise ServeError("--threads must be at least 1")
        if self.max_clients is not None and self.max_clients < 0:
            raise ServeError("--max-clients must be 0 (no limit) or more")
        for p in self.params:
            if "=" not in p:
                raise ServeError(f"--param {p}: expected KEY=VALUE")
        if self.cache is not None and not re.fullmatch(r"[1-9][0-9]*[KMGT]?", self.cache):
            raise ServeError(f"--cache {self.cache}: expected a size such as 256M or 2G")
        if self.port is not None and not 0 < self.port < 65536:
            raise ServeError(f"--port {self.port}: not a TCP port")
        self._check_tls()

    def _check_tls(self) -> None:
        if self.tls_psk and self.tls_certificates:
            raise ServeError("--tls-psk and --tls-certificates exclude each other: pick one")
        if self.tls is None:
            self.tls = "require" if (self.tls_psk or self.tls_certificates) else "off"
        if self.tls not in TLS_MODES:
            raise ServeError(f"--tls: must be one of {', '.join(TLS_MODES)}, not {self.tls!r}")
        if self.tls == "off" and (self.tls_psk or self.tls_certificates):
            raise ServeError("--tls off with --tls-psk/--tls-certificates: nothing would use them")
        if self.tls_psk and not os.path.isfile(self.tls_psk):
            raise ServeError(f"--tls-psk {self.tls_psk}: no such file")
        if self.tls_certificates and not os.path.isdir(self.tls_certificates):
            raise ServeError(f"--tls-certificates {self.tls_certificates}: no such directory")

    @property
    def client_limit(self) -> int:
        return default_max_clients(self.threads) if self.max_clients is None else self.max_clients

    def exposed_without_tls(self) -> bool:
        """TCP on an address other machines can reach, and clients may skip TLS."""
        return self.port is not None and not is_loopback(self.bind) and self.tls != "require"

    def uri(self, sock: str | None, export: str = "") -> str:
        """The URI of ``export`` ("" is the default export: the first SOURCE).

        With TLS required it is an ``nbds`` URI; with a PSK it also names the PSK
        file and its first user, so ``nbdinfo URI`` works as printed.
        """
        secure = self.tls == "require"
        query = [f"socket={sock}"] if sock is not None else []
        user = ""
        if secure and self.tls_psk:
            query.append(f"tls-psk-file={self.tls_psk}")
            user = psk_user(self.tls_psk)
        tail = ("?" + "&".join(query)) if query else ""
        if sock is not None:
            return f"{'nbds+unix' if secure else 'nbd+unix'}://{user}/{export}{tail}"
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        path = f"/{export}" if export or tail else ""
        return f"{'nbds' if secure else 'nbd'}://{user}{host}:{self.port}{path}{tail}"

    def uris(self, sock: str | None) -> list[str]:
        """What serve prints: the default export's URI for one SOURCE, else one per export
        by name (the first line is then the default export's)."""
        if len(self.exports) <= 1:
            return [self.uri(sock)]
        return [self.uri(sock, e.name) for e in self.exports]

    # -- to and from the background supervisor (a JSON file in its work directory) --

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        doc = json.loads(text)
        known = {f.name for f in fields(cls)}
        opts = cls(**{k: v for k, v in doc.items() if k in known})
        opts.exports = [ExportSpec(**e) for e in doc.get("exports", [])]
        return opts


# -- the plugin's key=value arguments -----------------------------------------------


def plugin_args(opts: ServeOptions, error_file: str | None = None,
                supervisor: int | None = None) -> list[str]:
    """The nbdkit plugin arguments for ``opts``: the one place they are written.

    ``error_file`` first, so that even a bad later argument reports through it;
    ``supervisor`` is the pid whose death stops the server (see PluginConfig).
    """
    out = [f"error_file={error_file}"] if error_file else []
    if supervisor is not None:
        out.append(f"supervisor={supervisor}")
    # Always NAME=PATH: the plugin then names exports exactly as serve prints them.
    out += [f"source={e.name}={e.source}" for e in opts.exports]
    c = opts.choices
    if c.dedup is not None:
        out.append(f"dedup={c.dedup}")
    if c.inline_data is not None:
        out.append(f"inline_data={'true' if c.inline_data else 'false'}")
    if c.base_map:
        out.append(f"base_map={c.base_map}")
    if c.source_root:
        out.append(f"source_root={c.source_root}")
    out += [f"generator_path={d}" for d in c.generator_path]
    if opts.flags:
        out.append(f"options={opts.flags}")
    return out


@dataclass
class PluginConfig:
    """The plugin's side of :func:`plugin_args`: nbdkit hands it one ``key=value`` at a time."""

    sources: list[str] = field(default_factory=list)  # the raw `source=` values, in order
    dedup: str | None = None
    inline_data: bool | None = None
    base_map: str | None = None
    source_root: str | None = None
    flags: ImageFlags = field(default_factory=ImageFlags)  # options=JSON: the CLI's image options
    generator_path: list[str] = field(default_factory=list)
    error_file: str | None = None  # where a start-up error goes for the supervisor to report
    # The supervisor's pid: nbdkit answers its parent's death with a SIGTERM, then waits
    # for every client to hang up, so an idle client would keep an orphan serving.
    supervisor: int | None = None

    def set(self, key: str, value: str) -> None:
        """Take one argument; raises Ext4genError naming the key."""
        if key in ("manifest", "source"):
            self.sources.append(value)
        elif key == "dedup":
            self.dedup = check_dedup(value, "dedup")
        elif key == "inline_data":
            if value.lower() not in _BOOLS:
                raise ServeError(f"inline_data: must be true or false, not {value!r}")
            self.inline_data = _BOOLS[value.lower()]
        elif key in ("base_map", "source_root", "error_file"):
            setattr(self, key, value)
        elif key == "generator_path":
            self.generator_path.append(value)
        elif key == "options":
            try:
                self.flags = ImageFlags.from_json(value)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise ServeError(f"options: not the JSON ext4gen serve passes: {e}") from None
        elif key == "supervisor":
            if not value.isdigit():
                raise ServeError(f"supervisor: expected a pid, not {value!r}")
            self.supervisor = int(value)
        else:
            raise ServeError(f"{key}: unknown plugin parameter (expected manifest=PATH or "
                             "source=[NAME=]PATH, dedup=MODE, inline_data=BOOL, base_map=FILE, "
                             "source_root=DIR, generator_path=DIR, options=JSON)")

    def exports(self) -> list[ExportSpec]:
        """The exports to plan, once every argument is in; raises Ext4genError."""
        if not self.sources:
            raise ServeError("manifest=PATH is required (or source=[NAME=]PATH, once per export)")
        if self.base_map and len(self.sources) > 1:
            raise ServeError("base_map: applies to one source; serve sources with base maps "
                             "separately")
        return resolve_exports(self.sources)

    @property
    def choices(self) -> BuildChoices:
        return BuildChoices(dedup=self.dedup, inline_data=self.inline_data,
                            base_map=self.base_map, source_root=self.source_root,
                            flags=self.flags, generator_path=tuple(self.generator_path))
