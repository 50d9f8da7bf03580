"""Issue 11 item 6: ``--source-root`` checks what is opened, not what a name meant earlier.

A thread swaps ``target`` between a regular file and a symlink to a secret
outside the root while the manifest is built again and again: no image may
ever hold the secret, and a lost race is a one-line error, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest
from helpers.deadline import within

import ext4gen
from ext4gen.cli import main

MARK = b"SECRET-MARKER-0123456789"


_DWELLS = (0.002, 0.012, 0.05, 0.25, 1.0)


def _swapper(root: Path, secret: Path, stop: threading.Event) -> None:
    target = root / "target"
    i = 0
    while not stop.is_set():
        i += 1
        tmp = root / f".swap{i % 2}"
        if i % 2:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(secret, tmp)
        else:
            tmp.write_bytes(b"p" * 3000)
        os.replace(tmp, target)
        if not i % 2:
            # Dwell on the regular file for a while: a build takes a few GIL switch
            # intervals (planning, the digest cache, writing), and with a swap at every
            # switch almost none would see one file throughout and build at all. The
            # dwell cycles from short (swaps land mid-build) to long (a build fits even
            # on a loaded machine, where a fixed short dwell let almost none through).
            stop.wait(_DWELLS[(i // 2) % len(_DWELLS)])


def _race(tmp_path: Path, body: str, seconds: float, *, want_built: int = 0,
          want_refused: int = 0, limit: float = 90.0) -> tuple[int, int, list[str]]:
    """Build again and again for ``seconds``, and on (up to ``limit``) until at least
    ``want_built`` builds and ``want_refused`` refusals happened: how often a build wins
    the race depends on the machine's load, what must hold for every build does not."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(MARK * 120)
    root = tmp_path / "root"
    root.mkdir()
    (root / "target").write_bytes(b"p" * 3000)
    m = root / "m.toml"
    m.write_text(body)
    out = tmp_path / "x.img"
    stop = threading.Event()
    swapper = threading.Thread(target=_swapper, args=(root, secret, stop), daemon=True)
    swapper.start()
    built = refused = 0
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    try:
        start = time.monotonic()
        while time.monotonic() < deadline or (
                (built < want_built or refused < want_refused) and time.monotonic() - start < limit):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(["build", str(m), "-o", str(out), "--source-root", str(root), "-q"])
            if rc == 0:
                built += 1
                assert MARK not in out.read_bytes(), "the secret outside the root was imported"
            else:
                refused += 1
                text = err.getvalue()
                assert rc == 2 and text.count("\n") == 1 and text.startswith("ext4gen: "), text
                errors.append(text)
    finally:
        stop.set()
        swapper.join()
    return built, refused, errors


def test_swapping_a_source_for_a_symlink_never_imports_the_secret(tmp_path: Path):
    built, refused, _errors = _race(tmp_path, '["/x"]\nsource = "target"\n', 4.0,
                                    want_built=21, want_refused=1)
    assert built > 20 and refused > 0, (built, refused)


def test_a_small_inline_source_is_confined_too(tmp_path: Path):
    """Tiny sources are read at plan time (inline data): the same pin applies."""
    (tmp_path / "small").mkdir()
    built, refused, _errors = _race(tmp_path / "small", '["/x"]\nsource = "target"\n'
                                    '["/y"]\ntext = "y"\n[image]\ndedup = "none"\n', 2.0,
                                    want_built=11)
    assert built > 10, (built, refused)


def test_a_symlink_inside_the_root_is_still_followed(tmp_path: Path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "real").write_bytes(b"inside")
    os.symlink("d/real", root / "link")
    os.symlink(str(tmp_path / "elsewhere"), root / "abs")
    (tmp_path / "elsewhere").write_bytes(MARK)
    m = root / "m.toml"
    m.write_text('["/x"]\nsource = "link"\n')
    tree, _opts = ext4gen.load(str(m), source_root=str(root))
    buf = bytearray(6)
    tree.lookup([b"x"]).source.readinto(memoryview(buf), 0)
    assert bytes(buf) == b"inside"
    m.write_text('["/x"]\nsource = "abs"\n')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["build", str(m), "-o", str(tmp_path / "x.img"), "--source-root", str(root)]) == 2
    assert "outside the source root" in err.getvalue()


@pytest.mark.parametrize("lister", ["python", "ahead"])
def test_a_subdirectory_swapped_for_a_symlink_during_an_import_is_refused(tmp_path: Path, monkeypatch,
                                                                          lister: str):
    """The walk opens each directory without following links and checks it is the one listed.

    "ahead": the listings come from the C scanner on another thread (listings.Listings),
    which listed the real subdirectory before the swap; its file, read through the
    swapped name, then fails its pin, so the outside bytes are still never imported.
    """
    from ext4gen.inputs import hostdir, listings

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(MARK)

    def swap() -> None:  # the race, made deterministic: after the parent's listing
        os.rename(src / "sub", tmp_path / "moved")
        os.symlink(outside, src / "sub")

    if lister == "python":
        monkeypatch.setattr(listings, "dirscan_usable", lambda: False)
        real = hostdir._list_dir

        def list_then_swap(path: bytes, *rest):
            entries = real(path, *rest)
            if path == os.fsencode(src):
                swap()
            return entries

        monkeypatch.setattr(hostdir, "_list_dir", list_then_swap)
    else:
        assert listings.dirscan_usable(), "the C directory scanner is not built"
        real_take = listings.Listings.take

        def take_then_swap(self, path: bytes, expect):
            got = real_take(self, path, expect)
            if path == os.fsencode(src):
                assert got is not None  # the scanner's listing, not the walk's own
                swap()
            return got

        monkeypatch.setattr(listings.Listings, "take", take_then_swap)
    out = tmp_path / "x.img"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["build", str(src), "-o", str(out), "-q"])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "sub" in err.getvalue(), err.getvalue()
    assert not out.exists() or MARK not in out.read_bytes()


@pytest.mark.parametrize("kind", ["directory", "tar"])
@pytest.mark.parametrize("via", ["import", "source"])
def test_an_import_swapped_after_its_check_beneath_the_root_is_refused(tmp_path: Path, monkeypatch,
                                                                       kind: str, via: str):
    """Directory and archive imports are opened by name: what they open must be what was
    found beneath the root.  The race made deterministic: right after the check, a parent
    directory of the import is swapped for a symlink to a look-alike outside the root."""
    from ext4gen.inputs.host_paths import HostPaths

    root = tmp_path / "root"
    outside = tmp_path / "outside"
    name = "tree" if kind == "directory" else "tree.tar"
    for base, data in ((root / "a", b"inside"), (outside, MARK)):
        base.mkdir(parents=True)
        if kind == "directory":
            (base / name).mkdir()
            (base / name / "f").write_bytes(data)
        else:
            with tarfile.open(base / name, "w") as tf:
                info = tarfile.TarInfo("f")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    real = HostPaths.identity

    def identity_then_swap(self: HostPaths, path: str, key: str):
        found = real(self, path, key)
        os.rename(root / "a", tmp_path / "moved")
        os.symlink(outside, root / "a")
        return found

    monkeypatch.setattr(HostPaths, "identity", identity_then_swap)
    if via == "import":
        m = root / "m.toml"
        m.write_text(f'[[import]]\nsource = "a/{name}"\n')
        argv = [str(m)]
    else:
        argv = [str(root / "a" / name)]
    out = tmp_path / "x.img"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["build", *argv, "-o", str(out), "--source-root", str(root), "-q"])
    assert rc == 2 and err.getvalue().count("\n") == 1, err.getvalue()
    assert "changed while it was being imported" in err.getvalue(), err.getvalue()
    assert not out.exists()


def test_a_fifo_named_as_a_source_is_refused_not_waited_for(tmp_path: Path):
    """A FIFO with no writer blocks a plain open(2): beneath the source root it is opened
    non-blocking, so the build refuses it in one line instead of hanging."""
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "pipe")
    m = root / "m.toml"
    m.write_text('["/x"]\nsource = "pipe"\n')

    def build() -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["build", str(m), "-o", str(tmp_path / "x.img"), "--source-root", str(root), "-q"])
        return rc, err.getvalue()

    rc, text = within(20, build, "a build opening the FIFO")
    assert rc == 2 and text.count("\n") == 1 and "not a regular file" in text, text
