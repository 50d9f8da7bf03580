"""Test helpers, one module per job; imported by tests, never collected.

- ``encoders``: ACL and capability xattr values written without ext4gen's code.
- ``cli``: ``ext4gen`` run as a user runs it (subprocess): builds, errors, ``serve --foreground``.
- ``servers``: servers for tests where serving is the means (the pytest plugin's
  ``ext4_export`` and ``ext4gen.serve.commands.start_background``), NBD clients.
- ``processes``: processes by pid (alive, kill, children, subreaper).
- ``mounts``: loop mounts, scratch tmpfs, bind mounts, all undone on the way out.
- ``readers``: independent readers of what was built (superblock, dumpe2fs, debugfs, ...).
- ``compare``: two directory trees compared entry by entry through the kernel.
- ``trees``: host trees and manifests that exercise every kind of thing ext4gen stores.
- ``strategies``: hypothesis strategies for the property tests.

tests/ is on ``sys.path`` (pyproject's ``pythonpath``), so any test folder can
``from helpers.mounts import mounted``.
"""
