"""Container images made by real tools (umoci, skopeo, GNU tar) for the OCI tests, and a
comparison of two directory trees entry by entry (a mount against ``umoci unpack``)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("umoci", "skopeo", "tar", "setfattr")
BIG_RANDOM = 12 << 20  # several gzip index spans (2 MiB compressed each)
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")
    if os.geteuid() != 0:
        pytest.skip("umoci unpack keeps owners, device files and security.* xattrs only as root")


def run(*cmd: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    proc = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                          check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@dataclass
class Images:
    """One scenario in several containers: ``layout`` (oci:, gzip, tags v1 v2 v3), and copies."""

    root: Path
    layout: Path
    zstd_layout: Path
    oci_archive: Path
    docker_archive: Path

    def unpacked(self, tag: str) -> Path:
        """``umoci unpack`` of the gzip layout's ``tag`` (made once): the reference tree."""
        bundle = self.root / f"unpacked-{tag}"
        if not bundle.exists():
            run("umoci", "unpack", "--image", f"{self.layout}:{tag}", bundle)
        return bundle / "rootfs"


def _edit(layout: Path, work: Path, base: str, tag: str, change) -> None:  # type: ignore[no-untyped-def]
    bundle = work / f"bundle-{tag}"
    run("umoci", "unpack", "--image", f"{layout}:{base}", bundle)
    change(bundle / "rootfs")
    run("umoci", "repack", "--image", f"{layout}:{tag}", bundle)
    shutil.rmtree(bundle)


def _v1(r: Path) -> None:
    """Base layer: setuid binary with a file capability, xattrs, hard links, fifo, symlink, big file."""
    for d in ("etc", "d/sub", "data", "olddir", "opq/inner"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (r / "etc/hello").write_text("hello\n")
    (r / "etc/conf").write_text("conf\n")
    (r / "d/sub/f").write_text("f\n")
    (r / "d/keep").write_text("keep\n")
    (r / "olddir/x").write_text("x\n")
    (r / "opq/old").write_text("lower\n")
    (r / "opq/inner/deep").write_text("deep\n")
    (r / "data/a").write_text("shared by two names\n")
    os.link(r / "data/a", r / "data/b")
    shutil.copyfile("/bin/true", r / "data/suid")
    os.chown(r / "data/suid", 12, 34)
    os.chmod(r / "data/suid", 0o4755)
    os.setxattr(r / "data/suid", "security.capability", CAPABILITY)
    os.setxattr(r / "etc/hello", "user.test", b"val")
    os.mkfifo(r / "data/fifo")
    os.symlink("../etc/hello", r / "data/link")
    with open(r / "data/big", "wb") as f:
        f.write(os.urandom(BIG_RANDOM))
        f.write(b"compressible line\n" * 100_000)
    (r / "data/small").write_text("the one file the laziness test reads\n" * 40)
    (r / "twice").write_text("first layer's version\n")


def _v2(r: Path) -> None:
    """Deletes a file, replaces a file by a directory and a directory by a file."""
    (r / "etc/hello").unlink()
    (r / "etc/conf").unlink()
    (r / "etc/conf").mkdir()
    (r / "etc/conf/inner").write_text("inner\n")
    shutil.rmtree(r / "olddir")
    (r / "olddir").write_text("now a file\n")
    shutil.rmtree(r / "d")
    (r / "d").mkdir()
    (r / "d/g").write_text("g\n")
    (r / "twice").write_text("second layer's version, longer\n")
    os.link(r / "twice", r / "twice-link")


def _opaque_layer(work: Path) -> Path:
    """A layer written by GNU tar: ``opq/`` made opaque (one new file), added by umoci raw."""
    src = work / "opaque-src"
    (src / "opq").mkdir(parents=True)
    (src / "opq/.wh..wh..opq").write_text("")
    (src / "opq/new").write_text("only this survives\n")
    out = work / "opaque.tar"
    run("tar", "--format=pax", "--numeric-owner", "--owner=0", "--group=0", "--no-recursion",
        "-C", src, "-cf", out, "opq", "opq/.wh..wh..opq", "opq/new")
    return out


def make_images(root: Path) -> Images:
    need_tools()
    layout = root / "img"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:base")
    _edit(layout, root, "base", "v1", _v1)
    _edit(layout, root, "v1", "v2", _v2)
    run("umoci", "raw", "add-layer", "--image", f"{layout}:v2", "--tag", "v3", _opaque_layer(root))
    run("umoci", "config", "--image", f"{layout}:v3", "--config.entrypoint", "/data/suid",
        "--config.env", "GREETING=hi", "--config.label", "org.example=yes")
    images = Images(root, layout, root / "zimg", root / "img.oci.tar", root / "img.docker.tar")
    run("skopeo", "copy", "-q", "--dest-compress-format", "zstd", f"oci:{layout}:v3",
        f"oci:{images.zstd_layout}:v3")
    run("skopeo", "copy", "-q", f"oci:{layout}:v3", f"oci-archive:{images.oci_archive}:v3")
    run("skopeo", "copy", "-q", f"oci:{layout}:v3", f"docker-archive:{images.docker_archive}:example/v3:v3")
    return images


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def _entries(root: str) -> dict[str, os.stat_result]:
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(top, name)
            out[os.path.relpath(p, root)] = os.lstat(p)
    out["."] = os.lstat(root)
    return out


def compare_trees(ours: str, reference: str, *, ignore: tuple[str, ...] = ("lost+found",)) -> list[str]:
    """Every difference between two trees: entries, types, modes, owners, sizes, bytes, link
    targets, device numbers, mtimes (ns), xattrs and link counts.  atime and ctime are not
    compared: unpacking sets ctime to now, and reading moves atimes."""
    a, b = _entries(ours), _entries(reference)
    extra_dirs = 0
    for name in ignore:
        if name in a and name not in b and stat.S_ISDIR(a.pop(name).st_mode):
            extra_dirs += 1  # its ".." link counts on the root

    diffs = [f"only in image: {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"only in reference: {p}" for p in sorted(b.keys() - a.keys())]
    for p in sorted(a.keys() & b.keys()):
        x, y = a[p], b[p]
        for field in ("st_mode", "st_uid", "st_gid", "st_nlink", "st_mtime_ns", "st_rdev"):
            mine = getattr(x, field) - (extra_dirs if (p, field) == (".", "st_nlink") else 0)
            if mine != getattr(y, field):
                diffs.append(f"{p}: {field} {mine!r} != {getattr(y, field)!r}")
        pa, pb = os.path.join(ours, p), os.path.join(reference, p)
        if stat.S_ISREG(x.st_mode) and stat.S_ISREG(y.st_mode):
            if x.st_size != y.st_size or Path(pa).read_bytes() != Path(pb).read_bytes():
                diffs.append(f"{p}: contents differ")
        if stat.S_ISLNK(x.st_mode) and os.readlink(pa) != os.readlink(pb):
            diffs.append(f"{p}: link target {os.readlink(pa)!r} != {os.readlink(pb)!r}")
        if _xattrs(pa) != _xattrs(pb):
            diffs.append(f"{p}: xattrs {_xattrs(pa)!r} != {_xattrs(pb)!r}")
    return diffs


def make_small(root: Path, layers: list[dict[str, bytes]]) -> Path:
    """An umoci layout whose tag ``vN`` has the first N layers, each adding ``files`` (path → bytes)."""
    need_tools()
    layout = root / "small"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:v0")
    for i, files in enumerate(layers, 1):
        def change(r: Path, files: dict[str, bytes] = files) -> None:
            for rel, data in files.items():
                (r / rel).parent.mkdir(parents=True, exist_ok=True)
                (r / rel).write_bytes(data)
        _edit(layout, root, f"v{i - 1}", f"v{i}", change)
    return layout


def write_blob(layout: Path, doc: dict) -> tuple[str, int]:  # type: ignore[type-arg]
    """Store a JSON document as a blob of ``layout``; returns (digest, size)."""
    import hashlib
    import json

    data = json.dumps(doc).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def read_json(path: Path) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(path.read_text())


def descriptor(layout: Path, tag: str) -> dict:  # type: ignore[type-arg]
    index = read_json(layout / "index.json")
    return next(d for d in index["manifests"]
                if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
