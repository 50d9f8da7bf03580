"""The ext4 on-disk format: every structure defined once (construct), the packers derived
from those definitions, metadata_csum's crc32c and the directory hash.

The definitions are in :mod:`.definitions` (construct, loaded by tests and ``inspect``
only); ``_layouts.py`` is generated from them, and :mod:`.packing` derives the fast
packers from it.  One module per family of structures (superblock, features, inode,
directory, extents, xattr) holds their constants and packers; :mod:`.ondisk`
re-exports them all.
"""
