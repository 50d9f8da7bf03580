"""The C directory scanner (``ext4gen/inputs/_dirscan.c``) that lists a host tree ahead of
its import: the same stat results, the walk's own order, the same tree and image as
the import's own listings, and a fall-back whenever it and the walk disagree."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest
from conftest import requires_root

from ext4gen.inputs import hostdir, listings
from ext4gen.inputs.choices import BuildChoices
from ext4gen.inputs.source import plan_source

pytestmark = pytest.mark.skipif(listings._dirscan is None, reason="ext4gen.inputs._dirscan is not built")


def _tree(root: Path) -> Path:
    src = root / "src"
    for d in ("a/b/c", "a/B", "z", "\u00e9t\u00e9", "empty"):
        (src / d).mkdir(parents=True)
    raw = os.fsencode(src) + b"/odd-\xff-name"  # not UTF-8: surrogate-escaped in keys
    os.mkdir(raw)
    with open(raw + b"/f", "wb") as f:
        f.write(b"x" * 5000)
    for i, d in enumerate(("", "a", "a/b", "a/b/c", "a/B", "z")):
        (src / d / f"f{i}").write_bytes(bytes([i]) * (100 + 3000 * i))
        (src / d / f"g{i}.txt").write_text("same\n")
    os.symlink("a/b", src / "link-to-dir")  # never followed
    os.link(src / "z" / "f5", src / "hard")
    os.mkfifo(src / "fifo")
    os.utime(src / "a" / "f1", ns=(-(2**31) * 10**9 + 5, 1_700_000_000_123_456_789))  # 1901, ns
    os.utime(src / "z" / "f5", ns=(15_000_000_000 * 10**9, 1))  # 2445: past int64 ns
    try:
        os.setxattr(src / "a" / "f1", "user.note", b"kept")
        os.setxattr(src / "z", "user.dir", b"too")
    except OSError:
        pass  # no user xattrs on this filesystem: the rest still holds
    return src


def test_stat_results_are_os_lstat_s(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    paths = [os.fsencode(p) for p in (src, src / "a" / "f1", src / "z" / "f5", src / "link-to-dir",
                                      src / "fifo", "/dev/null", "/")]
    for p in paths:
        ours, theirs = listings._dirscan.lstat(p), os.lstat(p)
        assert type(ours) is os.stat_result
        assert ours == theirs
        for f in listings.STAT_FIELDS:
            assert getattr(ours, f) == getattr(theirs, f), (p, f)
    assert listings.dirscan_usable()


def _walk_order(top: bytes) -> list[bytes]:
    """The order hostdir._walk lists directories in: pop the last, push subdirectories by name."""
    order, stack = [], [top]
    while stack:
        d = stack.pop()
        order.append(d)
        for name in sorted(os.fsencode(n) for n in os.listdir(d)):
            if stat.S_ISDIR(os.lstat(d + b"/" + name).st_mode):
                stack.append(d + b"/" + name)
    return order


@pytest.fixture(params=["listxattrat", "by path"])
def xattr_probe(request):
    """Both ways the scanner probes for xattrs: relative to the directory (Linux 6.13's
    listxattrat, where the kernel has it) and by full path (llistxattr, before it)."""
    was = listings._dirscan.probe_by_path(request.param == "by path")
    yield request.param
    listings._dirscan.probe_by_path(was)


def test_the_scanner_lists_in_the_walks_order_what_the_walk_lists(tmp_path: Path, xattr_probe) -> None:
    top = os.fsencode(_tree(tmp_path))
    scanner = listings._dirscan.Scanner(top)
    listed = []
    while batch := scanner.next(3):  # small batches: the walk's order across batch boundaries
        listed.extend(batch)
    assert [got[0] for got in listed] == _walk_order(top)
    for path, st, names, stats, flags in listed:
        assert st is not None and (st.st_dev, st.st_ino) == (os.lstat(path).st_dev, os.lstat(path).st_ino)
        assert list(zip(names, stats, strict=True)) == hostdir._list_dir(path, st)
        for name, each, flag in zip(names, stats, flags, strict=True):
            assert each.st_mtime_ns == os.lstat(path + b"/" + name).st_mtime_ns
            has = bool(os.listxattr(path + b"/" + name, follow_symlinks=False))
            assert flag == (1 if has else 0), (path, name)


def _image_digest(src: Path) -> str:
    image, _tree = plan_source(str(src), BuildChoices(dedup="content"))
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    for off in range(0, image.size, len(buf)):
        view = memoryview(buf)[: min(len(buf), image.size - off)]
        image.readinto(view, off)
        h.update(view)
    return h.hexdigest()


@requires_root
def test_the_image_is_the_same_with_and_without_the_scanner(tmp_path: Path, monkeypatch) -> None:
    src = _tree(tmp_path)
    os.mknod(src / "a" / "tty", 0o620 | stat.S_IFCHR, os.makedev(4, 1))
    os.chown(src / "a" / "B" / "f4", 1234, 5678)
    calls = []
    real = hostdir._list_dir
    monkeypatch.setattr(hostdir, "_list_dir", lambda *a: calls.append(a[0]) or real(*a))
    ahead = _image_digest(src)
    assert calls == [], "the walk listed directories itself while the scanner ran"
    monkeypatch.setattr(listings, "dirscan_usable", lambda: False)
    assert _image_digest(src) == ahead
    assert len(calls) == len(_walk_order(os.fsencode(src)))


def test_a_listing_the_walk_did_not_ask_for_ends_the_look_ahead(tmp_path: Path) -> None:
    top = os.fsencode(_tree(tmp_path))
    ahead = listings.Listings.start(top, False)
    assert ahead is not None
    try:
        st = os.lstat(top)
        order = _walk_order(top)
        first = ahead.take(order[0], st)
        assert first is not None and first[1] == sorted(os.fsencode(n) for n in os.listdir(top))
        second = os.lstat(order[1])
        assert ahead.take(order[2], os.lstat(order[2])) is None  # skipped one: off from here
        assert ahead.take(order[1], second) is None
    finally:
        ahead.close()


def test_a_directory_the_scanner_cannot_list_is_left_to_the_walk(tmp_path: Path) -> None:
    top = os.fsencode(_tree(tmp_path))
    scanner = listings._dirscan.Scanner(top)
    first = scanner.next(1)  # the top alone: its subdirectories are pushed, not yet listed
    assert [got[0] for got in first] == [top]
    next_up = _walk_order(top)[1]
    os.rename(next_up, top + b"/gone")  # gone before the scanner lists it
    got = scanner.next(1)
    assert got[0][0] == next_up and got[0][1:] == (None, None, None, None)


def _counting_list_dir(monkeypatch) -> list[bytes]:
    calls: list[bytes] = []
    real = hostdir._list_dir
    monkeypatch.setattr(hostdir, "_list_dir", lambda *a: calls.append(a[0]) or real(*a))
    return calls


@requires_root
def test_a_listing_started_ahead_is_the_one_the_import_takes(tmp_path: Path, monkeypatch) -> None:
    """``ext4gen serve``'s plugin starts listing a directory before it loads the planner."""
    src = _tree(tmp_path)
    without = _image_digest(src)
    calls = _counting_list_dir(monkeypatch)
    started = []
    real_init = listings.Listings.__init__
    monkeypatch.setattr(listings.Listings, "__init__",
                        lambda self, *a: started.append(a) or real_init(self, *a))
    listings.list_ahead(os.fsencode(src), False)
    listings.list_ahead(os.fsencode(src), False)  # the same walk to come: one listing
    assert len(started) == 1 and listings._early
    assert _image_digest(src) == without
    assert len(started) == 1, "the import started a listing of its own"
    assert calls == [] and not listings._early


def test_a_listing_ahead_of_a_replaced_directory_is_not_used(tmp_path: Path, monkeypatch) -> None:
    src = _tree(tmp_path)
    listings.list_ahead(os.fsencode(src), False)
    ahead = listings._early[os.fsencode(src), False]
    while not ahead._ready and not ahead._done:  # the old directory's listing is made
        time.sleep(0.001)
    os.rename(src, tmp_path / "old")
    (src / "new").mkdir(parents=True)
    (src / "new" / "only").write_bytes(b"what is there now")
    calls = _counting_list_dir(monkeypatch)
    _image, tree = plan_source(str(src), BuildChoices(dedup="none"))
    assert sorted(tree.root.children) == [b"new"]  # (lost+found is planned, not in the tree)
    assert calls == [os.fsencode(src), os.fsencode(src / "new")], "the old listing was used"
    assert not listings._early


def test_listings_no_import_took_are_stopped(tmp_path: Path) -> None:
    top = os.fsencode(_tree(tmp_path))
    listings.list_ahead(top, True)
    ahead = listings._early[top, True]
    listings.close_unclaimed()
    assert not listings._early and not ahead._thread.is_alive()
    fresh = listings.Listings.start(top, True)  # a later import lists anew
    assert fresh is not None and fresh is not ahead
    fresh.close()
