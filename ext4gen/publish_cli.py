"""``ext4gen publish``: its options, kept apart from the uploader so the CLI starts
without importing the tree model and the S3/HTTP stores."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .remote.settings import DEFAULT_CHUNK_SIZE

DEFAULT_INLINE_MAX = 1024


def cmd_publish(args: argparse.Namespace) -> int:
    from . import load
    from .publish import DirStore, Publisher, PublishError, S3Store, Store

    tree, options = load(args.source, source_root=args.source_root)
    if args.dest.startswith("s3://"):
        store: Store = S3Store(args.dest, os.environ.get("EXT4GEN_S3_ENDPOINT"))
    else:
        if not args.base_url:
            raise PublishError("--base-url: needed when DEST is a directory (the URL an HTTP "
                               "server publishes it at)")
        store = DirStore(args.dest, args.base_url)
    pub = Publisher(store, args.chunk_size, args.inline_max, options.dedup == "content")
    doc = pub.manifest(tree, options)
    text = json.dumps(doc, indent=1) + "\n"
    tmp = f"{args.output}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.output)
    if not args.quiet:
        print(f"{args.output}: {len(doc) - 1} entries; objects: {pub.uploaded} uploaded "
              f"({pub.bytes_uploaded} bytes), {pub.reused} already there", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .remote import settings

    sp = sub.add_parser("publish", help="upload a tree's file contents as content-addressed "
                        "objects and write a manifest that points at them",
                        description="Upload every regular file's bytes of SOURCE to DEST "
                        "(s3://BUCKET/PREFIX, or a directory served over HTTP at --base-url) "
                        "as objects named by their SHA-256, and write a JSON manifest with "
                        "every entry, pointing at them with sizes and digests.")
    sp.add_argument("source", metavar="SOURCE", help="a manifest, host directory or tar archive")
    sp.add_argument("dest", metavar="DEST", help="s3://BUCKET/PREFIX or a directory")
    sp.add_argument("-o", "--output", required=True, metavar="MANIFEST",
                    help="where to write the manifest (JSON)")
    sp.add_argument("--base-url", metavar="URL", help="for a directory DEST: its URL")
    sp.add_argument("--chunk-size", type=_chunk_size, default=DEFAULT_CHUNK_SIZE, metavar="BYTES",
                    help=f"chunk size of the declared per-chunk digests (default {DEFAULT_CHUNK_SIZE})")
    sp.add_argument("--inline-max", type=int, default=DEFAULT_INLINE_MAX, metavar="BYTES",
                    help=f"files up to this size are stored in the manifest (default "
                    f"{DEFAULT_INLINE_MAX})")
    sp.add_argument("--source-root", metavar="DIR", help="refuse host paths outside DIR")
    sp.add_argument("-q", "--quiet", action="store_true")
    settings.add_arguments(sp)
    sp.set_defaults(func=cmd_publish)


def _chunk_size(text: str) -> int:
    from .remote.settings import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

    n = int(text)
    if n % 4096 or not MIN_CHUNK_SIZE <= n <= MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(f"a multiple of 4096 from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}")
    return n
