"""Serving images as NBD exports with nbdkit.

``options``      what to serve and how; the codec to and from the plugin's key=value arguments
``environment``  the plugin file, the embedded interpreter's path, the runtime directory
``processes``    processes by pid, pidfiles, stale sockets
``supervisor``   nbdkit as a supervised child, in the foreground or the background
``mountstack``   serve → nbdfuse → read-only loop mount, and its teardown
``commands``     the ``serve``/``mount``/``umount`` command lines
``nbdkit_plugin`` the plugin nbdkit runs (plans each source once, then serves it)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .environment import child_env, plugin_path, runtime_dir
    from .mountstack import is_mountpoint, mount_state_dir
    from .options import ServeError, ServeOptions
    from .processes import pid_alive
    from .supervisor import Background, start_background, supervise

__all__ = [
    "Background", "ServeError", "ServeOptions", "child_env", "is_mountpoint", "mount_state_dir",
    "pid_alive", "plugin_path", "runtime_dir", "start_background", "supervise",
]

# Imported on first use: the plugin inside nbdkit imports ``ext4gen.serve.nbdkit_plugin``,
# which must not pull in the supervisor and the mount stack before its first answer.
_LAZY = {
    "child_env": ".environment", "plugin_path": ".environment", "runtime_dir": ".environment",
    "is_mountpoint": ".mountstack", "mount_state_dir": ".mountstack", "ServeError": ".options",
    "ServeOptions": ".options", "pid_alive": ".processes", "Background": ".supervisor",
    "start_background": ".supervisor", "supervise": ".supervisor",
}


__getattr__ = lazy_names(__name__, _LAZY, globals())
