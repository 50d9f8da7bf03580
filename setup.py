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

# Also read by bench/bench_serve.py, which builds them in a snapshot of a commit.
EXTENSIONS = [
    Extension("ext4gen.render._fastread",
              sources=["ext4gen/render/_fastread.c", "ext4gen/render/_leases.c",
                       "ext4gen/render/_mapped.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("ext4gen.model._pincheck", sources=["ext4gen/model/_pincheck.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("ext4gen.format._dirhash", sources=["ext4gen/format/_dirhash.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("ext4gen.inputs._dirscan", sources=["ext4gen/inputs/_dirscan.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("ext4gen.layout._hashread", sources=["ext4gen/layout/_hashread.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("ext4gen.layout._identity", sources=["ext4gen/layout/_identity.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("ext4gen.serve._logfilter", sources=["ext4gen/serve/_logfilter.c"],
              extra_compile_args=FLAGS, optional=True),
    # an nbdkit filter, not a Python module (nbdkit loads it; needs nbdkit-plugin-dev)
    Extension("ext4gen.serve._nbdfilter", sources=["ext4gen/serve/_nbdfilter.c"],
              extra_compile_args=FLAGS, optional=True),
]

if __name__ == "__main__":  # how pip's build backend runs this file
    setup(ext_modules=EXTENSIONS)
