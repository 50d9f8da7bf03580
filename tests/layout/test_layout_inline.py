"""layout/inline: what fits in the inode, and how an inline directory splits i_block / system.data.

An inline directory's content is the parent's inode number, entries filling
i_block's remaining 56 bytes, then entries filling the system.data value; each
part's last rec_len reaches its end, an empty i_block part is one empty entry.
Read back with construct's ``ext4_dir_entry_2``.
"""

from __future__ import annotations

import struct

from ext4gen.format.definitions import ext4_dir_entry_2
from ext4gen.format.directory import FT_DIR, FT_REG_FILE
from ext4gen.format.xattr import EXT4_XATTR_INDEX_SYSTEM
from ext4gen.layout import inline
from ext4gen.layout.dirents import rec_len


def read_entries(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    out, pos = [], start
    while pos < end:
        h = ext4_dir_entry_2.parse(buf[pos : pos + 8])
        assert h.rec_len >= 8 and pos + h.rec_len <= end
        out.append((bytes(buf[pos + 8 : pos + 8 + h.name_len]), h.inode, h.file_type, h.rec_len))
        pos += h.rec_len
    assert pos == end
    return out


def _dir(*names: bytes, parent: int = 2) -> list[tuple[bytes, int, int]]:
    return [(b".", 50, FT_DIR), (b"..", parent, FT_DIR),
            *((n, 100 + i, FT_REG_FILE) for i, n in enumerate(names))]


def test_limits_follow_from_the_inode_layout() -> None:
    # 96 spare bytes: 4 ibody magic, 4 end marker, a 20-byte system.data entry, 68 of value
    assert inline.MAX_INLINE_VALUE == 68 and inline.MAX_INLINE_SIZE == 60 + 68
    assert inline.DIR_I_BLOCK_ENTRIES == 56
    assert inline.inline_xattr_cost(0) == inline.inline_xattr_cost(60) == 20
    assert inline.inline_xattr_cost(61) == 24 and inline.inline_xattr_cost(128) == 20 + 68


def test_system_data_is_the_system_namespace_data_attribute() -> None:
    x = inline.system_data(b"tail")
    assert (x.index, x.suffix, x.value) == (EXT4_XATTR_INDEX_SYSTEM, b"data", b"tail")


def test_empty_directory_is_one_empty_entry_after_the_parent() -> None:
    assert inline.inline_dir_size(_dir()) == 60
    content = inline.dir_content(_dir(parent=77))
    assert len(content) == 60 and struct.unpack_from("<I", content)[0] == 77
    assert read_entries(content, 4, 60) == [(b"", 0, 0, 56)]


def test_entries_fill_i_block_first_then_system_data() -> None:
    names = [b"a" * 10, b"b" * 12, b"c" * 9, b"d" * 20, b"e"]  # 20 + 20 + 20: the third spills
    entries = _dir(*names)
    size = inline.inline_dir_size(entries)
    value = rec_len(9) + rec_len(20) + rec_len(1)
    assert size == 60 + value
    content = inline.dir_content(entries)
    assert len(content) == size
    first = read_entries(content, 4, 60)
    assert [(n, i) for n, i, _, _ in first] == [(b"a" * 10, 100), (b"b" * 12, 101)]
    assert first[-1][3] == 56 - rec_len(10)  # stretched to i_block's end
    rest = read_entries(content, 60, size)
    assert [n for n, *_ in rest] == [b"c" * 9, b"d" * 20, b"e"]
    assert rest[-1][3] == rec_len(1)


def test_too_many_entries_do_not_fit() -> None:
    names = [bytes([65 + i]) * 8 for i in range(8)]  # 16 bytes each: 3 in i_block, 68 left for 4
    assert inline.inline_dir_size(_dir(*names[:7])) == 60 + 4 * 16
    assert inline.inline_dir_size(_dir(*names[:8])) is None
