"""nbdkit entry point: ``nbdkit python plugins/ext4gen_nbdkit.py source=[NAME=]PATH …``.

The plugin itself is ``ext4gen/nbdkit_plugin.py``, inside the package, so an
installed (non-editable) ext4gen can serve too; this file keeps the documented
path.  nbdkit looks the callbacks up in this module's namespace.
"""

import os
import sys

try:
    from ext4gen.serve.nbdkit_plugin import *  # noqa: F403
    from ext4gen.serve.nbdkit_plugin import API_VERSION  # noqa: F401
except ImportError as _e:  # the embedded interpreter cannot see the package
    print(f"ext4gen: the nbdkit plugin cannot import the ext4gen library ({_e}); "
          "start it with `ext4gen serve` or set PYTHONPATH", file=sys.stderr, flush=True)
    os._exit(1)
