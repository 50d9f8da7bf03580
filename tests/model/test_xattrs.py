"""Extended attributes and POSIX ACLs: placement, sharing, limits, kernel semantics, bad input.

The kernel read-back (``prove``) checks values as getxattr returns them;
the on-disk layout (in-inode vs one external block, shared blocks with the
right ``h_refcount``) is read from the image with debugfs and the raw block;
ACLs are also checked by what the kernel *does* with them: a process with a
named uid may read a file that its mode alone would refuse.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import prove
from helpers.cli import run_cli
from helpers.encoders import vfs_acl
from helpers.mounts import mounted
from helpers.readers import debugfs

pytestmark = pytest.mark.root

EPOCH = 1_700_000_000
BLOCK = 4096
BIG = "b" * 3000
CAP = "AQAAAgAgAAAAAAAAAAAAAAAAAAA="  # VFS_CAP_REVISION_2, effective, CAP_KILL
VALID_ACL_HEX = "02000000" "01000700ffffffff" "04000500ffffffff" "20000000ffffffff"  # u::rwx,g::r-x,o::---


def _file_acl_block(image: Path, path: str) -> int:
    m = re.search(r"File ACL: (\d+)", debugfs(image, f'stat "{path}"'))
    assert m, path
    return int(m.group(1))


def _xattr_block_header(image: Path, block: int) -> tuple[int, int, int]:
    """(h_magic, h_refcount, h_blocks) of an external xattr block, read raw from the image."""
    with open(image, "rb") as f:
        f.seek(block * BLOCK)
        return struct.unpack("<III", f.read(12))


@pytest.mark.parametrize("inline_data", [True, False])
def test_every_namespace_in_inode_and_shared_external_blocks(tmp_path: Path, inline_data: bool) -> None:
    big = {"user.big": BIG, "trusted.t": {"hex": "00ff00ff"}}
    doc: dict[str, Any] = {
        "image": {"inline_data": inline_data},
        "defaults": {"mtime": EPOCH},
        "/x/small": {"text": "s", "xattrs": {"user.mime": "text/plain", "user.empty": ""}},
        "/x/binary": {"text": "b", "xattrs": {"trusted.overlay.opaque": "y",
                                              "security.selinux": {"hex": "73797374656d5f753a00"},
                                              "security.capability": {"base64": CAP}}},
        "/x/share1": {"text": "1", "xattrs": big},
        "/x/share2": {"size": 3 * BLOCK, "xattrs": big},
        "/x/share3": {"type": "dir", "xattrs": big},
        "/x/other": {"text": "o", "xattrs": {"user.big": BIG + "!"}},
        "/x/acl": {"text": "acl", "mode": "0640", "acl": "u::rw-,u:1001:r--,g::r--,g:2000:rw-,m::rw-,o::---"},
        "/x/dir": {"type": "dir", "acl": "u::rwx,u:1000:r-x,g::r-x,m::r-x,o::---",
                   "default_acl": "user::rwx,user:1000:rwx,group::r-x,mask::rwx,other::---"},
        "/x/default_only": {"type": "dir", "default_acl": "u::rwx,g::r-x,o::---"},
        "/x/sym": {"type": "symlink", "target": "small", "xattrs": {"security.selinux": "lnk\u0000"}},
        "/x/fifo": {"type": "fifo", "xattrs": {"trusted.f": "F"}},
        "/x/dev": {"type": "chardev", "major": 1, "minor": 3, "xattrs": {"security.selinux": "null\u0000"}},
        "/x/inline_with_xattrs": {"text": "i" * 100, "xattrs": {"user.a": "1", "user.b": "x" * 50}},
    }
    proof = prove(doc, tmp_path)
    image = proof.path
    assert _file_acl_block(image, "/x/small") == 0, "small sets stay in the inode"
    shared = {_file_acl_block(image, p) for p in ("/x/share1", "/x/share2", "/x/share3")}
    assert len(shared) == 1 and 0 not in shared, "identical sets share one external block"
    (block,) = shared
    assert _xattr_block_header(image, block) == (0xEA020000, 3, 1), "h_magic, h_refcount = 3, h_blocks"
    other = _file_acl_block(image, "/x/other")
    assert other not in (0, block)
    assert _xattr_block_header(image, other)[1] == 1
    # i_blocks counts the external block (8 sectors); the size-only file itself is one hole
    with mounted(image) as mnt:
        assert os.stat(os.path.join(mnt, "x/share2")).st_blocks == 8


@pytest.mark.parametrize("size, ok", [(68, True), (69, True), (4040, True), (4041, False)])
def test_single_value_limit_is_exactly_inode_plus_one_block(tmp_path: Path, size: int, ok: bool) -> None:
    """user.v: 20-byte entry; 88 bytes of inode room, 4060 in a block after header and end marker."""
    doc = {"/f": {"text": "f" * 200, "xattrs": {"user.v": "v" * size}}}  # not inline: no system.data
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    if ok:
        proof = prove(manifest, tmp_path, check_rw=False)
        assert (_file_acl_block(proof.path, "/f") == 0) == (size <= 68)
    else:
        proc = run_cli("build", manifest, "-o", tmp_path / "o.img")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith('ext4gen: ') and '"/f".xattrs' in proc.stderr, proc.stderr


def test_a_set_real_ext4_holds_is_accepted(tmp_path: Path) -> None:
    """user.b (4040 bytes) fills the block and user.aa (60 bytes) fits the inode: ext4 itself
    stores exactly this on the host disk (one more attribute gets ENOSPC there)."""
    src = tmp_path / "src"
    src.mkdir()
    host = src / "f"
    host.write_bytes(b"f")
    try:
        os.setxattr(host, "user.b", b"b" * 4040)
        os.setxattr(host, "user.aa", b"a" * 60)
    except OSError as e:  # pragma: no cover - depends on the host filesystem
        pytest.skip(f"host filesystem cannot hold the set: {e}")
    prove(str(src), tmp_path, check_rw=False)


def _run_as(uid: int, gid: int, fn: Any) -> int:
    """Run ``fn()`` in a child with only ``uid``/``gid``; its return value is the exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os._exit(fn())
        except BaseException:
            os._exit(99)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_kernel_enforces_the_stored_acls(tmp_path: Path) -> None:
    doc = {
        # the mode's group bits are the mask, as the kernel keeps them (chmod/setfacl)
        "/secret": {"text": "named users only\n", "mode": "0640", "uid": 0, "gid": 0,
                    "acl": "u::rw-,u:1001:r--,g::---,g:2002:r--,m::r--,o::---"},
        "/d": {"type": "dir", "mode": "0750", "acl": "u::rwx,u:1001:r-x,g::---,m::r-x,o::---"},
        "/d/inside": {"text": "in\n", "mode": "0644"},
    }
    proof = prove(doc, tmp_path, check_rw=False)
    with mounted(proof.path) as mnt:
        def can_read(path: str) -> Any:
            def probe() -> int:
                try:
                    with open(os.path.join(mnt, path), "rb") as f:
                        f.read()
                    return 0
                except PermissionError:
                    return 13
            return probe

        assert _run_as(1001, 1001, can_read("secret")) == 0, "u:1001:r-- grants read"
        assert _run_as(1003, 2002, can_read("secret")) == 0, "g:2002:r-- grants read"
        assert _run_as(1002, 1002, can_read("secret")) == 13, "others are refused"
        assert _run_as(1001, 1001, can_read("d/inside")) == 0, "u:1001:r-x grants search"
        assert _run_as(1002, 1002, can_read("d/inside")) == 13


def test_mode_and_acl_cannot_disagree(tmp_path: Path) -> None:
    """The kernel consults an access ACL only when the mode has group bits, and keeps those bits
    equal to the ACL mask (posix_acl_update_mode, posix_acl_chmod).  A manifest giving mode 0600
    with ``m::r--`` would store an ACL the kernel silently ignores: it must be refused (naming the
    key) or reconciled (group bits = mask, as setfacl does)."""
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"/secret": {"text": "x\n", "mode": "0600",
                                                "acl": "u::rw-,u:1001:r--,g::---,m::r--,o::---"}}))
    image = tmp_path / "o.img"
    proc = run_cli("build", manifest, "-o", image)
    if proc.returncode == 2:
        assert '"/secret".' in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    with mounted(image) as mnt:
        mode = os.stat(os.path.join(mnt, "secret")).st_mode & 0o777
        assert mode == 0o640, f"mode {mode:o} disagrees with the ACL mask r--: the ACL is dead"


def test_host_directory_acls_and_xattrs_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f").write_bytes(b"f")
    os.setxattr(src / "f", "system.posix_acl_access", vfs_acl("u::rw-,u:1000:r--,g::r--,m::r--,o::---"))
    os.setxattr(src / "d", "system.posix_acl_default", vfs_acl("u::rwx,g::r-x,g:50:r-x,m::r-x,o::---"))
    os.setxattr(src / "f", "user.k", b"\0\1\2")
    os.setxattr(src / "f", "security.selinux", b"unconfined_u:object_r:user_home_t:s0\0")
    (src / "d" / "child").write_bytes(b"inherits the default ACL")
    os.mkdir(src / "d" / "sub")
    prove(str(src), tmp_path, check_rw=False)


# -- bad input: one line naming the key, exit 2 -----------------------------------------

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-namespace": ({"/f": {"text": "x", "xattrs": {"foo.bar": "x"}}}, '"/f".xattrs."foo.bar"'),
    "bare-prefix": ({"/f": {"text": "x", "xattrs": {"user.": "x"}}}, '"/f".xattrs."user."'),
    "system-data-reserved": ({"/f": {"text": "x", "xattrs": {"system.data": "x"}}},
                             '"/f".xattrs."system.data"'),
    "name-too-long": ({"/f": {"text": "x", "xattrs": {"user." + "n" * 256: "x"}}}, '"/f".xattrs.'),
    "bad-value-type": ({"/f": {"text": "x", "xattrs": {"user.a": 5}}}, '"/f".xattrs."user.a"'),
    "bad-base64": ({"/f": {"text": "x", "xattrs": {"user.a": {"base64": "!!"}}}}, '"/f".xattrs."user.a"'),
    "bad-hex": ({"/f": {"text": "x", "xattrs": {"user.a": {"hex": "zz"}}}}, '"/f".xattrs."user.a"'),
    "xattrs-not-table": ({"/f": {"text": "x", "xattrs": "user.a=1"}}, '"/f".xattrs'),
    "too-large": ({"/f": {"text": "x", "xattrs": {"user.a": "a" * 3000, "user.b": "b" * 3000}}},
                  '"/f".xattrs'),
    "acl-named-without-mask": ({"/f": {"text": "x", "acl": "u::rw-,u:1000:r--,g::r--,o::---"}}, '"/f".acl'),
    "acl-missing-other": ({"/f": {"text": "x", "acl": "u::rw-,g::r--"}}, '"/f".acl'),
    "acl-bad-perms": ({"/f": {"text": "x", "acl": "u::rwz,g::r--,o::---"}}, '"/f".acl'),
    "acl-user-name": ({"/f": {"text": "x", "acl": "u::rw-,u:alice:r--,g::r--,m::r--,o::---"}}, '"/f".acl'),
    "acl-duplicate": ({"/f": {"text": "x", "acl": "u::rw-,u:5:r--,u:5:rw-,g::r--,m::rw-,o::---"}},
                      '"/f".acl'),
    "acl-bad-tag": ({"/f": {"text": "x", "acl": "u::rw-,g::r--,o::---,x::r--"}}, '"/f".acl'),
    "default-acl-on-file": ({"/f": {"text": "x", "default_acl": "u::rwx,g::r-x,o::---"}}, '"/f".default_acl'),
    "acl-conflicts-with-xattr": ({"/d": {"type": "dir", "acl": "u::rwx,g::r-x,o::---",
                                         "xattrs": {"system.posix_acl_access": {"hex": VALID_ACL_HEX}}}},
                                 '"/d".acl'),
    "raw-acl-xattr-invalid": ({"/f": {"text": "x", "xattrs": {"system.posix_acl_access": {"hex": "01"}}}},
                              '"/f".xattrs."system.posix_acl_access"'),
    "acl-not-string": ({"/f": {"text": "x", "acl": ["u::rw-"]}}, '"/f".acl'),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_xattr_and_acl_keys_are_one_line_exit_2(tmp_path: Path, case: str) -> None:
    doc, key = BAD[case]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    image = tmp_path / "out.img"
    proc = run_cli("build", manifest, "-o", image)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ext4gen: "), proc.stderr
    assert key in lines[0], f"{key} not named in: {lines[0]}"
    assert "Traceback" not in proc.stderr and not image.exists()


def test_toml_xattr_forms(tmp_path: Path) -> None:
    """The documented TOML spelling: strings, {base64=…}, {hex=…}, acl/default_acl text."""
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        '["/etc/shadow"]\ntext = "x"\nmode = "0640"\n'
        'xattrs = { "user.x" = "text", "security.capability" = { base64 = "AQAAAgAgAAAAAAAAAAAAAAAAAAA=" },'
        ' "trusted.t" = { hex = "00ff" } }\n'
        'acl = "u::rw-,u:1000:r--,g::r--,m::r--,o::---"\n'
        '["/srv"]\ntype = "dir"\ndefault_acl = "u::rwx,g::r-x,g:33:rwx,m::rwx,o::---"\n')
    proof = prove(manifest, tmp_path, check_rw=False)
    node = proof.tree.lookup([b"etc", b"shadow"])
    assert node is not None and node.xattrs[b"trusted.t"] == b"\x00\xff"
    assert node.xattrs[b"security.capability"][:4] == b"\x01\x00\x00\x02"
