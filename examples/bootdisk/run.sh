#!/usr/bin/env bash
# One command for the boot-disk example: serve rootfs.toml and data.toml with
# `ext4gen serve`, boot them in qemu (TCG), print the guest's console and the
# server's statistics, then stop everything.  Extra arguments go to boot.py
# (--timeout SECONDS, --console FILE).  Root is not needed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [[ ! -x $ROOT/.venv/bin/python ]]; then
    bash "$ROOT/scripts/setup.sh"
fi
exec "$ROOT/.venv/bin/python" "$HERE/boot.py" "$@"
