"""pytest fixtures for tests that need an ext4 image or a live NBD export of one.

Registered through the ``pytest11`` entry point, so installing ext4gen is all a
test suite needs::

    def test_reads_config(ext4_image, ext4_export):
        image = ext4_image("fixtures/rootfs.toml")          # pathlib.Path of a sparse image
        uri = ext4_export({"/etc/motd": {"text": "hi\\n"}})  # nbd+unix:///?socket=...

What a fixture accepts as ``manifest``: a SOURCE path as ``ext4gen build``
takes it (manifest file, host directory, tar archive), an in-memory manifest
document (a dict with the manifest schema; relative ``source`` and
``[[import]]`` paths resolve against the current directory, like a manifest
read from stdin), or for ``ext4_image`` only an :class:`ext4gen.Tree` (or a
``(Tree, ImageOptions)`` pair).  Keyword options are the build options both
``ext4gen build`` and ``ext4gen serve`` take: ``dedup`` and ``inline_data``.

Bad input fails the test with the library's one-line message
(``ext4gen: <key>: <problem>``), not a traceback: the test's author needs the
manifest key to fix, and the stack through the planner says nothing to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

import ext4gen
from ext4gen.errors import Ext4genError
from ext4gen.inputs.source import BuildChoices, plan_loaded, plan_source
from ext4gen.model.options import ImageOptions
from ext4gen.model.tree import Tree
from ext4gen.render.image import Image

Manifest = str | os.PathLike[str] | dict[str, Any] | Tree | tuple[Tree, ImageOptions]
KEY_VERSION = b"ext4gen-pytest-1\0"  # bump when what goes into an image's cache key changes


def fail(error: Ext4genError) -> NoReturn:
    """Fail the running test with the CLI's one line; ``pytrace=False`` drops the stack."""
    pytest.fail(f"ext4gen: {error}", pytrace=False)


def _overrides(dedup: str | None, inline_data: bool | None) -> dict[str, object]:
    """Build options the caller set; None leaves the manifest's own choice."""
    choices = BuildChoices(dedup=dedup, inline_data=None if inline_data is None else bool(inline_data))
    return choices.overrides()


def plan_manifest(manifest: Manifest, *, dedup: str | None = None,
                  inline_data: bool | None = None) -> Image:
    """Load and plan ``manifest`` exactly as ``ext4gen build`` would; raises Ext4genError."""
    overrides = _overrides(dedup, inline_data)
    if isinstance(manifest, tuple):
        tree, options = manifest
        return plan_loaded(tree, dataclasses.replace(options, **overrides), "<tree>")
    if isinstance(manifest, Tree):
        return plan_loaded(manifest, ImageOptions(**overrides), "<tree>")  # type: ignore[arg-type]
    if isinstance(manifest, dict):
        tree, options = ext4gen.parse_manifest(manifest, base_dir=os.getcwd())
        return plan_loaded(tree, dataclasses.replace(options, **overrides), "<manifest dict>")
    if isinstance(manifest, str | os.PathLike):
        choices = BuildChoices(dedup=dedup, inline_data=inline_data)
        image, _tree = plan_source(os.fspath(manifest), choices)
        return image
    raise TypeError(f"ext4gen fixtures take a manifest path, a manifest dict or an ext4gen.Tree, "
                    f"not {type(manifest).__name__}")


# -- cache keys -------------------------------------------------------------------


def _json_default(value: object) -> object:
    """TOML documents carry datetimes; the manifest accepts them as RFC 3339 strings."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)  # not a valid manifest value: parsing will say which key


def canonical_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_json_default)


def _file_digest(path: str) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _dir_digest(path: str) -> bytes:
    """Names, types, sizes, modes, owners and mtimes under a directory.

    What ``ext4gen build DIR`` copies, short of reading every file: hashing the
    bytes would cost as much as the build the cache is there to save.
    """
    h = hashlib.sha256()
    for top, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(top, name)
            st = os.lstat(p)
            h.update(os.fsencode(os.path.relpath(p, path)) + b"\0")
            h.update(f"{st.st_mode:o} {st.st_uid} {st.st_gid} {st.st_size} {st.st_mtime_ns} "
                     f"{st.st_ino}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.fsencode(os.readlink(p)) + b"\0")
    return h.digest()


def cache_key(manifest: Manifest, overrides: dict[str, object]) -> str | None:
    """The session cache key of ``manifest`` under ``overrides``, or None: do not cache.

    A file's key covers its absolute path (relative ``source`` paths resolve
    against it) and its bytes; a directory's, its path and a stat walk; a
    dict's, its canonical JSON and the current directory (its relative paths
    resolve there).  All keys cover ``SOURCE_DATE_EPOCH``, which changes the image.
    None of them covers the bytes of host files a manifest
    names: like ``make``, the cache trusts those not to change during the
    session, and a test that rewrites them passes ``cache=False``.

    Trees are never cached: their only digest (the derived UUID and hash seed)
    covers a generator's name but not its output, so two different trees
    could share a key; and a tree is usually built by the one test using it.
    """
    h = hashlib.sha256(KEY_VERSION)
    h.update(json.dumps(overrides, sort_keys=True).encode() + b"\0")
    # SOURCE_DATE_EPOCH stamps the superblock and default times: part of the image
    h.update(b"epoch\0" + os.environ.get("SOURCE_DATE_EPOCH", "").encode() + b"\0")
    if isinstance(manifest, dict):
        h.update(b"dict\0" + os.fsencode(os.getcwd()) + b"\0" + canonical_json(manifest).encode())
    elif isinstance(manifest, str | os.PathLike):
        path = os.path.abspath(os.fspath(manifest))
        h.update(b"path\0" + os.fsencode(path) + b"\0")
        try:
            h.update(_dir_digest(path) if os.path.isdir(path) else _file_digest(path))
        except OSError:
            return None  # unreadable: building it reports the one-line error
    else:
        return None
    return h.hexdigest()


# -- ext4_image ---------------------------------------------------------------------


class ImageBuilder:
    """The ``ext4_image`` callable: build (or reuse) a sparse image file for a manifest.

    Session-wide, so a module- or session-scoped fixture can use it too, and
    the suites that build one fixture image in many tests pay for it once.
    A cached file is shared by every test asking for the same manifest: a test
    that writes to its image (fsck -y, a rw mount) copies it first.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.builds = 0  # images actually written this session (cache hits do not count)
        self._paths: dict[str, Path] = {}

    def __call__(self, manifest: Manifest, *, dedup: str | None = None,
                 inline_data: bool | None = None, cache: bool = True) -> Path:
        overrides = _overrides(dedup, inline_data)
        key = cache_key(manifest, overrides) if cache else None
        if key is not None:
            cached = self._paths.get(key)
            if cached is not None and cached.exists():
                return cached
        error: Ext4genError | None = None
        try:
            image = plan_manifest(manifest, dedup=dedup, inline_data=inline_data)
            self.builds += 1
            path = self.directory / (f"{key[:32]}.ext4" if key else f"uncached-{self.builds}.ext4")
            partial = path.with_name(path.name + ".partial")
            # Written aside and renamed: a build that fails half-way leaves no cache entry.
            image.write(str(partial))
        except Ext4genError as e:
            error = e
        if error is not None:
            fail(error)  # outside the except block, or pytest shows the chained exception too
        os.replace(partial, path)
        if key is not None:
            self._paths[key] = path
        return path


@pytest.fixture(scope="session")
def ext4_image(tmp_path_factory: pytest.TempPathFactory) -> ImageBuilder:
    """``ext4_image(manifest, dedup=None, inline_data=None, cache=True) -> Path`` of a sparse image.

    Cached per session by :func:`cache_key`; ``ext4_image.builds`` counts real builds.
    """
    return ImageBuilder(tmp_path_factory.mktemp("ext4gen-images"))


# -- ext4_export ----------------------------------------------------------------------


def _absolute_sources(doc: dict[str, Any], base_dir: str) -> dict[str, Any]:
    """A copy of ``doc`` whose relative host paths are absolute from ``base_dir``.

    The served copy lives in a temporary directory, while the dict's relative
    paths were meant from the current directory.
    """
    out = json.loads(canonical_json(doc))
    for key, entry in out.items():
        if key.startswith("/") and isinstance(entry, dict) and isinstance(entry.get("source"), str):
            entry["source"] = os.path.join(base_dir, entry["source"])
    imports = out.get("import")
    if isinstance(imports, list):
        for imp in imports:
            if isinstance(imp, dict) and isinstance(imp.get("source"), str):
                imp["source"] = os.path.join(base_dir, imp["source"])
    return out


def servable_source(manifest: Manifest, directory: Path) -> str:
    """A SOURCE path ``ext4gen serve`` can load: paths as given, dicts written as JSON.

    Trees are refused: nbdkit plans the image in its own embedded interpreter
    from a SOURCE it can read, and an in-memory Tree (with its generator
    callables) cannot be handed across.  Serving a built image instead would
    test nbdkit's file plugin, not ext4gen's.
    """
    if isinstance(manifest, str | os.PathLike):
        from ext4gen.inputs.oci_names import absolute_any  # keeps oci:PATH[:REF] forms intact

        return absolute_any(os.fspath(manifest))
    if isinstance(manifest, dict):
        digest = hashlib.sha256(canonical_json(manifest).encode()).hexdigest()[:16]
        path = directory / f"manifest-{digest}.json"
        path.write_text(json.dumps(_absolute_sources(manifest, os.getcwd()), indent=1))
        return str(path)
    if isinstance(manifest, Tree | tuple):
        raise TypeError("ext4_export serves manifests (path or dict), not an ext4gen.Tree: the "
                        "server plans the image in nbdkit's own interpreter from a file; use "
                        "ext4_image for a Tree, or describe it as a manifest dict")
    raise TypeError(f"ext4_export takes a manifest path or a manifest dict, not "
                    f"{type(manifest).__name__}")


@contextlib.contextmanager
def serving(manifest: Manifest, directory: Path, *, dedup: str | None = None,
            inline_data: bool | None = None) -> Iterator[Any]:
    """Serve ``manifest`` with ``ext4gen serve`` in the background; always stop it.

    Yields the :class:`ext4gen.serve.Background` (``.uri``, ``.pid``,
    ``.nbdkit_pid``, ``.log``).  The server plans the manifest once; bad input
    fails with its one line before anything serves.  Raises Ext4genError.
    For a server outliving one test (a module-scoped fixture), use this directly.
    """
    from ext4gen.serve import ServeOptions, start_background

    source = servable_source(manifest, directory)
    fd, log = tempfile.mkstemp(prefix="serve-", suffix=".log", dir=directory)
    os.close(fd)
    opts = ServeOptions(source=source, dedup=dedup, log=log,
                        inline_data=None if inline_data is None else bool(inline_data))
    try:
        opts.check()
        server = start_background(opts)
    except Ext4genError as e:
        # A dict is served from a temporary copy: name its keys, not that file.
        prefix = f"{source}: "
        if isinstance(manifest, dict) and str(e).startswith(prefix):
            raise Ext4genError(str(e)[len(prefix):]) from None
        raise
    try:
        yield server
    finally:
        server.stop()


class ExportFactory:
    """The ``ext4_export`` callable; every export it starts stops when the test ends."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._factory = tmp_path_factory
        self._stack = contextlib.ExitStack()
        self._directory: Path | None = None
        self.servers: list[Any] = []  # Background records, for tests that need the pids or log

    def __call__(self, manifest: Manifest, *, dedup: str | None = None,
                 inline_data: bool | None = None) -> str:
        if self._directory is None:
            self._directory = self._factory.mktemp("ext4gen-export")
        error: Ext4genError | None = None
        try:
            server = self._stack.enter_context(
                serving(manifest, self._directory, dedup=dedup, inline_data=inline_data))
        except Ext4genError as e:
            error = e
        if error is not None:
            fail(error)
        self.servers.append(server)
        return str(server.uri)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def ext4_export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExportFactory]:
    """``ext4_export(manifest, dedup=None, inline_data=None) -> str`` NBD URI for this test.

    Each export is a real ``ext4gen serve`` (nbdkit) on a private Unix socket,
    stopped at teardown whether the test passed or failed.
    """
    exports = ExportFactory(tmp_path_factory)
    try:
        yield exports
    finally:
        exports.close()
