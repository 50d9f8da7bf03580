#!/usr/bin/env bash
# One command for the boot-disk example: serve rootfs.toml and data.toml with
# `ext4gen serve`, boot them in qemu (TCG), print the guest's console and the
# server's statistics, then stop everything.  Extra arguments go to boot.py
# (--timeout SECONDS, --console FILE).  Root is not needed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# The project's set-up plus the example's own packages (qemu, a kernel, busybox);
# fast when everything is there already.
bash "$ROOT/scripts/setup.sh" --bootdisk
exec "$ROOT/.venv/bin/python" "$HERE/boot.py" "$@"
