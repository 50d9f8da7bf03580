"""--file-contexts (SELinux) and --fs-config (Android): labels, owners, modes, capabilities.

The proof of a label is libselinux's own answer: ``matchpathcon -f FILE`` (selinux-utils)
on the same file_contexts must give, for every inode of the kernel mount, what
``getfattr -n security.selinux`` reads back.  fs_config is read back with
stat and ``getfattr -n security.capability``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import mounted, requires_root
from helpers.cli import build_cli, run_cli
from helpers.encoders import capability_v2

import ext4gen
from ext4gen.cli import build_parser
from ext4gen.inputs.arguments import image_flags
from ext4gen.inputs.fs_config import FsConfigEntry, FsConfigError, parse_fs_config
from ext4gen.verify import compare_tree, e2fsck

pytestmark = [requires_root,
              pytest.mark.skipif(shutil.which("matchpathcon") is None or shutil.which("getfattr") is None,
                                 reason="needs matchpathcon and getfattr (selinux-utils, attr: "
                                 "scripts/setup.sh installs them)")]

FILE_CONTEXTS = r"""
/.*                     system_u:object_r:default_t:s0
/bin(/.*)?              system_u:object_r:bin_t:s0
/etc(/.*)?              system_u:object_r:etc_t:s0
/etc/shadow     --      system_u:object_r:shadow_t:s0
/etc/run        -p      system_u:object_r:fifo_t:s0
/etc/sock       -s      system_u:object_r:sock_t:s0
/etc/link       -l      system_u:object_r:link_t:s0
/lost\+found    -d      system_u:object_r:lost_found_t:s0
/nolabel                <<none>>
/srv/www(/.*)?          system_u:object_r:httpd_sys_content_t:s0
"""
MATCHPATHCON_TYPE = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "lnk_file",
                     stat.S_IFIFO: "pipe", stat.S_IFSOCK: "sock_file", stat.S_IFCHR: "chr_file",
                     stat.S_IFBLK: "blk_file"}


def _manifest(tmp_path: Path, image: dict | None = None) -> Path:
    doc = {
        "/bin/sh": {"text": "#!/bin/sh\n", "mode": "0755"},
        "/etc/shadow": {"text": "root:*:1::::::\n"},
        "/etc/shadow.d": {"type": "dir"},
        "/etc/run": {"type": "fifo"},
        "/etc/sock": {"type": "socket"},
        "/etc/link": {"type": "symlink", "target": "shadow"},
        "/etc/null": {"type": "chardev", "major": 1, "minor": 3},
        "/nolabel": {"text": "x", "xattrs": {"security.selinux": "system_u:object_r:old_t:s0"}},
        "/www/index.html": {"text": "<p>hi</p>\n"},
    }
    if image:
        doc["image"] = image
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    return path


def _expected(fc: Path, path: str, mode: int) -> bytes | None:
    out = subprocess.run(["matchpathcon", "-f", str(fc), "-m", MATCHPATHCON_TYPE[stat.S_IFMT(mode)],
                          path], capture_output=True, text=True, check=True).stdout
    context = out.rstrip("\n").split("\t")[1]
    return None if context == "<<none>>" else context.encode()


def _read_label(path: str) -> bytes | None:
    proc = subprocess.run(["getfattr", "-h", "--only-values", "-n", "security.selinux", path],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        assert b"No such attribute" in proc.stderr, proc.stderr
        return None
    return proc.stdout.rstrip(b"\0")


def _check_labels(mnt: str, fc: Path, mount_point: str = "/") -> int:
    checked = 0
    for top, dirs, files in os.walk(mnt):
        for name in [".", *dirs, *files] if top == mnt else [*dirs, *files]:
            path = os.path.normpath(os.path.join(top, name))
            rel = os.path.relpath(path, mnt)
            lookup = os.path.normpath(os.path.join(mount_point, "" if rel == "." else rel))
            want = _expected(fc, lookup, os.lstat(path).st_mode)
            assert _read_label(path) == want, (lookup, _read_label(path), want)
            checked += 1
    return checked


def _build(tmp_path: Path, source: Path, *flags: str) -> tuple[Path, object]:
    image = tmp_path / "x.img"
    build_cli(source, image, *flags)
    rc, complaints = e2fsck(str(image))
    assert rc == 0 and complaints == [], complaints
    args = build_parser().parse_args(["build", str(source), "-o", str(image), *flags])
    flags = image_flags(args)
    tree, _options = ext4gen.load(str(source), source_options=flags.source, **flags.image_overrides())
    return image, tree


def test_every_inode_gets_the_label_matchpathcon_gives(tmp_path: Path) -> None:
    fc = tmp_path / "file_contexts"
    fc.write_text(FILE_CONTEXTS)
    image, tree = _build(tmp_path, _manifest(tmp_path), "--file-contexts", str(fc))
    with mounted(image) as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        assert _check_labels(mnt, fc) == 14
        # the premise: the rules really distinguish types and paths here
        assert _read_label(f"{mnt}/etc/shadow") == b"system_u:object_r:shadow_t:s0"
        assert _read_label(f"{mnt}/etc/shadow.d") == b"system_u:object_r:etc_t:s0"
        assert _read_label(f"{mnt}/etc/link") == b"system_u:object_r:link_t:s0"
        assert _read_label(f"{mnt}/etc/run") == b"system_u:object_r:fifo_t:s0"
        assert _read_label(f"{mnt}/etc/sock") == b"system_u:object_r:sock_t:s0"
        assert _read_label(f"{mnt}/lost+found") == b"system_u:object_r:lost_found_t:s0"
        assert _read_label(f"{mnt}/nolabel") is None  # <<none>>: the source's label is dropped
        assert os.getxattr(f"{mnt}/bin/sh", "security.selinux") == b"system_u:object_r:bin_t:s0\0"


def test_mount_point_prefixes_the_lookup_and_the_manifest_keys_work(tmp_path: Path) -> None:
    fc = tmp_path / "file_contexts"
    fc.write_text(FILE_CONTEXTS)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("hi\n")
    manifest = tmp_path / "site.json"
    manifest.write_text(json.dumps({"image": {"file_contexts": "file_contexts", "mount_point": "/srv"},
                                    "import": [{"source": "www", "target": "/www"}]}))
    image, tree = _build(tmp_path, manifest)
    with mounted(image) as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        assert _check_labels(mnt, fc, "/srv") == 4
        assert _read_label(f"{mnt}/www/index.html") == b"system_u:object_r:httpd_sys_content_t:s0"
    image, _tree = _build(tmp_path, manifest, "--mount-point", "/")  # the flag wins
    with mounted(image) as mnt:
        assert _read_label(f"{mnt}/www/index.html") == b"system_u:object_r:default_t:s0"


FS_CONFIG = """\
 0 0 0750
bin 0 2000 0751
bin/sh 0 2000 0755 capabilities=0x1000000c0
etc/shadow 1000 1001 0640 capabilities=0
www 33 33 0700
"""


def test_fs_config_sets_owners_modes_and_capabilities(tmp_path: Path) -> None:
    config = tmp_path / "fs_config"
    config.write_text(FS_CONFIG)
    manifest = _manifest(tmp_path)
    image, tree = _build(tmp_path, manifest, "--fs-config", str(config))
    with mounted(image) as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]

        def owner_mode(rel: str) -> tuple[int, int, int]:
            st = os.lstat(os.path.join(mnt, rel))
            return st.st_uid, st.st_gid, st.st_mode & 0o7777

        assert owner_mode(".") == (0, 0, 0o750)
        assert owner_mode("bin") == (0, 2000, 0o751)
        assert owner_mode("bin/sh") == (0, 2000, 0o755)
        assert owner_mode("etc/shadow") == (1000, 1001, 0o640)
        assert owner_mode("etc/null") == (0, 0, 0o644)  # not listed: as the manifest says
        got = subprocess.run(["getfattr", "--only-values", "-n", "security.capability",
                              f"{mnt}/bin/sh"], capture_output=True, check=True).stdout
        assert got == capability_v2(0x1000000C0)
        assert "security.capability" not in os.listxattr(f"{mnt}/etc/shadow")
    # the same through [image].fs_config with a mount point: paths are then "system/…"
    (tmp_path / "system.cfg").write_text(FS_CONFIG.replace("bin", "system/bin").replace(" 0 0 0750",
                                                                                       "system 0 0 0750"))
    manifest = _manifest(tmp_path, {"fs_config": "system.cfg", "mount_point": "/system"})
    image, tree = _build(tmp_path, manifest)
    with mounted(image) as mnt:
        assert compare_tree(tree, mnt) == []  # type: ignore[arg-type]
        assert os.stat(f"{mnt}/bin").st_gid == 2000 and os.stat(mnt).st_mode & 0o777 == 0o750


def test_fs_config_format_errors() -> None:
    assert parse_fs_config(" 0 0 0755\nsystem/ 1 2 0700 capabilities=0x10\n", "f") == {
        "": FsConfigEntry(0, 0, 0o755, None), "system": FsConfigEntry(1, 2, 0o700, 0x10)}
    for text, message in (("a 0 0", "f:1: expected PATH UID GID MODE"),
                          ("a 0 0 0999", "f:1: mode '0999' is not an octal number"),
                          ("a x 0 0644", "f:1: uid 'x' is not a decimal number"),
                          ("a 0 0 0644 capabilities=zz", "f:1: capabilities 'zz' is not a number"),
                          ("a 0 0 0644 caps=1", "f:1: expected capabilities=0x"),
                          ("a 0 0 0644\na 1 1 0644", "f:2: a is listed twice")):
        with pytest.raises(FsConfigError, match=message):
            parse_fs_config(text, "f")


@pytest.mark.parametrize(("flags", "message"), [
    (["--file-contexts", "/nonexistent/fc"], "file_contexts: /nonexistent/fc is not a readable file"),
    (["--fs-config", "/nonexistent/cfg"], "fs_config: cannot read /nonexistent/cfg"),
])
def test_missing_files_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = run_cli("build", _manifest(tmp_path), "-o", tmp_path / "x.img", *flags)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
