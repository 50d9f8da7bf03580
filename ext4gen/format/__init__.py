"""The ext4 on-disk format: every structure defined once (construct), the packers derived
from those definitions, metadata_csum's crc32c and the directory hash.

One module per family of structures (superblock, features, inode, directory, extents,
xattr); :mod:`.ondisk` re-exports them all; :mod:`.packing` derives the fast packers.
"""
