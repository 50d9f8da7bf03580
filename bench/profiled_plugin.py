"""Wrap an nbdkit Python plugin so every ``pread`` runs under cProfile.

    PROFILED_PLUGIN=plugins/ext4gen_nbdkit.py PROFILE_OUT=/tmp/p.prof \\
        nbdkit --threads 1 python bench/profiled_plugin.py manifest=...

The wrapped plugin's callbacks are re-exported unchanged; only ``pread`` is
timed (wall time per call, the total and mean printed on shutdown) and, when
PROFILE_OUT is set, profiled, the profile being dumped by ``cleanup``.
cProfile hooks one thread at a time, so run nbdkit with ``--threads 1`` and
one client connection.  A 1-byte read at offset 0 resets the counters and the
profile, so a client can warm caches first and measure afterwards.
"""

import cProfile
import importlib.util
import os
import sys
import time

_spec = importlib.util.spec_from_file_location("_wrapped_plugin", os.environ["PROFILED_PLUGIN"])
_mod = importlib.util.module_from_spec(_spec)
sys.modules["_wrapped_plugin"] = _mod
_spec.loader.exec_module(_mod)
globals().update({k: v for k, v in vars(_mod).items() if not k.startswith("__")})

_prof = cProfile.Profile() if os.environ.get("PROFILE_OUT") else None
_calls = 0
_spent = 0.0


def pread(h, buf, offset, flags):
    global _calls, _spent, _prof
    if offset == 0 and len(buf) == 1:  # the benchmark's "warm-up done" mark: start counting
        _calls, _spent = 0, 0.0
        if _prof is not None:
            _prof = cProfile.Profile()
    t0 = time.perf_counter()
    if _prof is None:
        try:
            _mod.pread(h, buf, offset, flags)
        finally:
            _spent += time.perf_counter() - t0
            _calls += 1
        return
    _prof.enable()
    try:
        _mod.pread(h, buf, offset, flags)
    finally:
        _prof.disable()
        _spent += time.perf_counter() - t0
        _calls += 1


def cleanup():
    if hasattr(_mod, "cleanup"):
        _mod.cleanup()
    if _prof is not None:
        _prof.dump_stats(os.environ["PROFILE_OUT"])
    mean = _spent / _calls * 1e6 if _calls else 0.0
    print(f"profiled_plugin: {_calls} preads, {_spent:.3f} s in pread, {mean:.1f} us each "
          f"(profiler {'on' if _prof else 'off'})", file=sys.stderr, flush=True)
