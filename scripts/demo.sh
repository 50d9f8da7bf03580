#!/usr/bin/env bash
# The ext4gen demo: set up, then synthesize examples/demo/manifest.toml as an ext4
# filesystem, prove it with e2fsck and the kernel, serve it over NBD, and mount it.
#
#   ./scripts/demo.sh          # as root
#   sudo ./scripts/demo.sh     # as a normal user who may use sudo
#
# Set-up installs what the demo uses (e2fsprogs, nbdkit, libnbd, fuse3, ...), not
# the boot-disk example's qemu, kernel and busybox.
# Everything it starts (nbdkit, nbdfuse, the loop mount) is torn down on exit,
# also when a step fails or the script is interrupted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MANIFEST=examples/demo/manifest.toml

bash scripts/setup.sh
EXT4GEN="$ROOT/.venv/bin/ext4gen"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ext4gen-demo.XXXXXX")
MNT="$WORK/mnt"
IMG="$WORK/demo.img"
SERVE_PID=
mounted=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    cd "$ROOT"  # never keep the mount busy ourselves
    if ((mounted)) || mountpoint -q "$MNT" 2>/dev/null; then
        "$EXT4GEN" umount "$MNT" || "$EXT4GEN" umount --lazy "$MNT" || rc=1
    fi
    if [[ -n $SERVE_PID ]]; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    # Never delete through a live mount.
    if mountpoint -q "$MNT" 2>/dev/null; then
        echo "demo: $MNT is still mounted; leaving $WORK in place" >&2
        rc=1
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Show a command (quoting the arguments that need it), then run it.
step() {
    local shown=() a
    for a in "$@"; do
        if [[ $a =~ ^[][A-Za-z0-9_./:=@%+,?-]+$ ]]; then shown+=("$a"); else shown+=("'$a'"); fi
    done
    printf '\n\033[1m$ %s\033[0m\n' "${shown[*]}"
    "$@"
}

step "$EXT4GEN" build "$MANIFEST" -o "$IMG"
echo "apparent size $(stat -c %s "$IMG") bytes, allocated on disk $(du -k "$IMG" | cut -f1) KiB (holes are not written)"

step "$EXT4GEN" inspect "$MANIFEST"

# e2fsck -fn, then (as root) a read-only loop mount compared with the manifest.
step "$EXT4GEN" check "$MANIFEST"

if [[ $(id -u) -ne 0 ]]; then
    echo
    echo "demo: serving over NBD and mounting need root: run it as root, or as sudo ./scripts/demo.sh" >&2
    exit 1
fi
if ! "$EXT4GEN" mount --help >/dev/null 2>&1; then
    echo
    echo "demo: this ext4gen has no 'serve'/'mount' commands yet (ext4gen/serve_cli.py is missing);" >&2
    echo "demo: build and check passed, but the NBD part of the demo could not run." >&2
    exit 1
fi

# Serve over NBD (stopped below with SIGTERM, like Ctrl-C) and copy the whole export:
# it must equal the built file byte for byte.
SOCK="$WORK/nbd.sock"
printf '\n\033[1m$ %s &\033[0m\n' "$EXT4GEN serve $MANIFEST --socket $SOCK --foreground"
"$EXT4GEN" serve "$MANIFEST" --socket "$SOCK" --foreground >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
for _ in $(seq 600); do
    [[ -s $WORK/serve.out ]] && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.err" >&2; echo "demo: ext4gen serve exited" >&2; exit 1; }
    sleep 0.1
done
URI=$(head -n1 "$WORK/serve.out")
echo "$URI"
step nbdinfo "$URI"
step nbdcopy "$URI" "$WORK/copy.img"
step cmp "$IMG" "$WORK/copy.img"
echo "the NBD export is byte-identical to the built image"
kill -TERM "$SERVE_PID"
wait "$SERVE_PID" || true
SERVE_PID=
echo "ext4gen serve stopped; its summary:"
cat "$WORK/serve.err"
rm -f "$WORK/copy.img"

# serve + nbdfuse + a read-only loop mount, in one command.
mkdir "$MNT"
step "$EXT4GEN" mount "$MANIFEST" "$MNT"
mounted=1
step findmnt "$MNT"
printf '\n\033[1m$ find %s -printf ...\033[0m\n' "$MNT"
cd "$MNT"
find . -mindepth 1 \( -type l -printf '%M %5U %5G %8s %TY-%Tm-%Td %TT  %P -> %l\n' \) \
    -o -printf '%M %5U %5G %8s %TY-%Tm-%Td %TT  %P\n' | sort -k7
step cat etc/motd
step stat -c '%n: inode %i, %h links, mode %A' usr/bin/hello usr/bin/hello-again
step sha256sum srv/data/dataset.csv srv/shared/dataset-copy.csv
step du -k --apparent-size var/lib/demo/disk.raw
step du -k var/lib/demo/disk.raw
printf '\n\033[1m$ touch %s/new-file\033[0m\n' "$MNT"
if touch new-file 2>&1; then
    echo "demo: the mount accepted a write!" >&2
    exit 1
fi
echo "(refused: the filesystem is read-only)"
cd "$ROOT"

step "$EXT4GEN" umount "$MNT"
mounted=0
echo
echo "demo: done; everything it started has been stopped"
