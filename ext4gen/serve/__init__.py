"""Serving images as NBD exports with nbdkit.

``options``      what to serve and how; the codec to and from the plugin's key=value arguments
``environment``  the plugin file, the embedded interpreter's path, the runtime directory
``processes``    processes by pid, pidfiles, stale sockets
``supervisor``   nbdkit as a supervised child, in the foreground or the background
``mountstack``   serve → nbdfuse → read-only loop mount, and its teardown
``commands``     the ``serve``/``mount``/``umount`` command lines
``nbdkit_plugin`` the plugin nbdkit runs (plans each source once, then serves it)
"""

from .environment import child_env, plugin_path, runtime_dir
from .mountstack import is_mountpoint, mount_state_dir
from .options import ServeError, ServeOptions
from .processes import pid_alive
from .supervisor import Background, start_background, supervise

__all__ = [
    "Background", "ServeError", "ServeOptions", "child_env", "is_mountpoint", "mount_state_dir",
    "pid_alive", "plugin_path", "runtime_dir", "start_background", "supervise",
]
