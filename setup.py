"""Build configuration beyond pyproject.toml: seven small plain CPython extensions and a filter.

``ext4gen.render._fastread`` is the compiled read path; ``ext4gen.model._pincheck``
checks a saved plan's host paths (a restart); ``ext4gen.layout._hashread`` reads and
hashes small host files for content dedup (xxhash.h, from libxxhash-dev, header only);
``ext4gen.layout._identity`` is the per-inode loop of the image's identity digest;
``ext4gen.inputs._dirscan`` lists a host directory tree ahead of its import;
``ext4gen.format._dirhash`` is the htree name hash (dirhash.py is its definition);
``ext4gen.serve._logfilter`` keeps
nbdkit's per-request error lines out of the server log.  ``ext4gen.serve._nbdfilter``
is an nbdkit filter (built like an extension, loaded by nbdkit) that answers reads
through the compiled path before they enter Python.

``optional=True``: without a C compiler or Python headers the install still
succeeds and ext4gen serves with its pure-Python read path (it says so once in
the server log).  ``scripts/setup.sh`` installs gcc and python3-dev, so the
normal ``pip install -e .`` builds it next to its source.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
         "-Wno-missing-field-initializers", "-Wno-cast-function-type"]


def _extension(name: str, *sources: str) -> Extension:
    """One of ours: optional (no compiler, no extension: the pure-Python path serves)."""
    return Extension(name, sources=list(sources), extra_compile_args=FLAGS, optional=True)


# Also read by bench/bench_serve.py, which builds them in a snapshot of a commit.
EXTENSIONS = [
    _extension("ext4gen.render._fastread", "ext4gen/render/_fastread.c", "ext4gen/render/_leases.c",
               "ext4gen/render/_mapped.c"),
    _extension("ext4gen.model._pincheck", "ext4gen/model/_pincheck.c"),
    _extension("ext4gen.format._dirhash", "ext4gen/format/_dirhash.c"),
    _extension("ext4gen.inputs._dirscan", "ext4gen/inputs/_dirscan.c"),
    _extension("ext4gen.layout._hashread", "ext4gen/layout/_hashread.c"),
    _extension("ext4gen.layout._identity", "ext4gen/layout/_identity.c"),
    _extension("ext4gen.serve._logfilter", "ext4gen/serve/_logfilter.c"),
    # an nbdkit filter, not a Python module (nbdkit loads it; needs nbdkit-plugin-dev)
    _extension("ext4gen.serve._nbdfilter", "ext4gen/serve/_nbdfilter.c"),
]

if __name__ == "__main__":  # how pip's build backend runs this file
    setup(ext_modules=EXTENSIONS)
