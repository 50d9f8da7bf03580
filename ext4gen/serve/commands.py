"""``ext4gen serve``, ``ext4gen mount`` and ``ext4gen umount``: their arguments and entry points.

The work is elsewhere in this package: options and the plugin codec in
``options``, nbdkit's supervisor in ``supervisor``, the FUSE and loop mount
stack in ``mountstack``.  This module only turns a command line into those calls.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..inputs.arguments import add_generator_arguments, add_source_arguments, image_flags
from .environment import warn_threads
from .options import DEFAULT_THREADS, TLS_MODES, ServeError, ServeOptions
from .supervisor import start_background, supervise


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(source=args.source, socket=args.socket, port=args.port, bind=args.bind,
                        filters=list(args.filter or []), params=list(args.param or []),
                        threads=args.threads, dedup=args.dedup,
                        inline_data=False if args.no_inline_data else None,
                        base_map=args.base_map, source_root=args.source_root, verbose=args.verbose,
                        pidfile=args.pidfile, log=args.log, max_clients=args.max_clients,
                        cache=args.cache,
                        tls=args.tls, tls_psk=args.tls_psk, tls_certificates=args.tls_certificates,
                        sources=[args.source, *getattr(args, "more_sources", [])],
                        flags=_image_flags_json(args),
                        generator_path=list(args.generator_path or []))


def _image_flags_json(args: argparse.Namespace) -> str | None:
    flags = image_flags(args)
    return None if flags.is_empty() else flags.to_json()


def _warn(opts: ServeOptions) -> None:
    warn_threads(opts.threads)
    if opts.exposed_without_tls():
        print(f"ext4gen: warning: serving on {opts.bind}:{opts.port} without TLS: anyone who can "
              "reach this address can read the disk (use --tls-psk FILE or --tls-certificates "
              "DIR, or --bind a loopback address)", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    opts = _serve_options(args)
    opts.check()
    _warn(opts)
    if args.foreground:
        if opts.log:
            raise ServeError("--log is for background mode; in the foreground nbdkit logs to stderr")
        return supervise(opts)
    bg = start_background(opts)
    print("\n".join(bg.uris or [bg.uri]), flush=True)
    print(f"ext4gen: serving in the background: pid {bg.pid} (pidfile {bg.pidfile}, "
          f"log {bg.log}); stop with: kill {bg.pid}", file=sys.stderr)
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from .mountstack import mount  # (and umount's below): not loaded by serve, which starts sooner

    opts = _serve_options(args)
    _warn(opts)
    sdir, server = mount(opts, args.mountpoint)
    print(f"{os.path.realpath(args.mountpoint)}: mounted read-only from {server.uri} "
          f"(state in {sdir})")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from .mountstack import load_state, teardown

    state = load_state(args.mountpoint)
    for line in teardown(state, lazy=args.lazy):
        print(line, file=sys.stderr)
    print(f"{state.mountpoint}: unmounted; nbdfuse and nbdkit stopped")
    return 0


def _add_server_args(sp: argparse.ArgumentParser) -> None:
    """What shapes nbdkit, for serve and mount alike."""
    sp.add_argument("--filter", action="append", metavar="NAME",
                    help="nbdkit filter to stack (repeatable; outside ext4gen's own filter, "
                    "which answers reads in C), e.g. readahead")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="extra nbdkit parameter, e.g. for a filter: cache-max-size=1G")
    sp.add_argument("-t", "--threads", type=int, default=DEFAULT_THREADS,
                    help=f"nbdkit worker threads per connection (default {DEFAULT_THREADS}: "
                    "nbdkit 1.32.4+ before 1.33.3 can crash with more when a client hangs up)")
    sp.add_argument("--max-clients", type=int, metavar="N",
                    help="refuse clients beyond N connected at once (default: what the "
                    "descriptor budget leaves room for; 0: no limit)")
    sp.add_argument("--cache", metavar="SIZE", help="keep up to SIZE (e.g. 256M) of read "
                    "blocks in nbdkit's cache filter: a cached block is served as planned "
                    "after its source changes instead of EIO")
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="nbdkit -v: debug output, including per-connection read statistics")


def _add_tls_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--tls", choices=TLS_MODES, help="nbdkit --tls: require (the default "
                    "with --tls-psk/--tls-certificates) refuses clients without TLS")
    sp.add_argument("--tls-psk", metavar="FILE", help="TLS with pre-shared keys (lines "
                    "USERNAME:HEXKEY, as psktool writes them)")
    sp.add_argument("--tls-certificates", metavar="DIR", help="TLS with X.509 certificates "
                    "from DIR (ca-cert.pem, server-cert.pem, server-key.pem)")


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
                    help="address for --port (default localhost; others warn without TLS)")
    sp.add_argument("--foreground", action="store_true",
                    help="stay attached; stop nbdkit on SIGINT/SIGTERM")
    sp.add_argument("--pidfile", metavar="PATH",
                    help="write the pid to signal (SIGTERM stops serving) once ready")
    sp.add_argument("--log", metavar="PATH", help="background mode: where stderr goes "
                    "(default: next to the socket in the runtime directory)")
    add_source_arguments(sp, stdin=False)
    add_generator_arguments(sp)
    _add_server_args(sp)
    _add_tls_args(sp)
    sp.add_argument("more_sources", nargs="*", metavar="[NAME=]SOURCE",
                    help="more sources, one NBD export each (NAME=SOURCE names the export)")
    sp.set_defaults(func=cmd_serve)


def register_mount(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("mount", help="serve + nbdfuse + read-only loop mount (root)")
    add_source_arguments(sp, stdin=False)
    add_generator_arguments(sp)
    _add_server_args(sp)
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.set_defaults(func=cmd_mount, socket=None, port=None, bind="localhost", pidfile=None, log=None,
                    tls=None, tls_psk=None, tls_certificates=None)


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
