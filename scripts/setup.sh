#!/usr/bin/env bash
# Set up a fresh Debian 12 (bookworm) or 13 (trixie) machine for ext4gen: Debian
# packages + the project venv.
#
#   scripts/setup.sh              # what the library, the CLI, the demo and the tests use
#   scripts/setup.sh --bootdisk   # also what the boot-disk example boots with (qemu, a
#                                 # kernel, busybox: ~400 MB); scripts/test.sh passes it
#
# Idempotent and fast on a second run: it installs only what is missing, and
# re-runs `pip install` only when pyproject.toml (or the interpreter) changed
# since the last successful run, or the venv no longer works.  Run as root
# (apt-get needs it); without root it still works when every Debian package is there.
#
# Why Debian's /usr/bin/python3 and --system-site-packages: nbdkit's python
# plugin embeds Debian's libpython (3.11 on Debian 12, 3.13 on Debian 13), so the
# compiled wheels (xxhash, crc32c) must be built for that interpreter; and the NBD
# client bindings (`import nbd`) and libselinux's matcher (`import selinux`) exist
# only as Debian packages in /usr/lib/python3/dist-packages.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY=/usr/bin/python3
STAMP="$VENV/.ext4gen-setup"

# Debian packages the library, the CLI, the plugin and the test suite use.
PACKAGES=(
    python3 python3-venv python3-pip  # the interpreter nbdkit embeds, and venv/pip for it
    e2fsprogs                         # e2fsck -fn (ext4gen check, tests), mkfs.ext4 (bench)
    nbdkit nbdkit-plugin-python       # the NBD server and its embedded Python
    libnbd-bin python3-libnbd         # nbdfuse, nbdcopy, nbdinfo; `import nbd`
    fuse3                             # nbdfuse needs fusermount3 and /dev/fuse
    util-linux mount procps           # mount, losetup, findmnt, flock; pgrep
    python3-selinux                   # --file-contexts: libselinux's own file_contexts matcher
    ca-certificates                   # pip over https
    # tools the test suite runs
    tar gzip xz-utils bzip2           # GNU tar archives, compressed three ways
    file                              # nbdinfo runs file(1) on the export
    attr acl selinux-utils            # getfattr/setfattr, getfacl/setfacl, matchpathcon
    coreutils findutils               # stat --printf %W, du, sha256sum, find
    umoci skopeo                      # container images for the OCI tests (made by real tools)
    nginx-light                       # the HTTP origin of the remote-content tests
    gcc python3-dev                   # build the compiled read path (ext4gen/render/_fastread.c)
    nbdkit-plugin-dev                 # nbdkit-filter.h: ext4gen's nbdkit filter (ext4gen/serve/_nbdfilter.c)
    libxxhash-dev                     # xxhash.h: content dedup's file reader (ext4gen/layout/_hashread.c)
)

# Packages only the boot-disk example (examples/bootdisk, tests/e2e/test_bootdisk.py)
# needs, installed with --bootdisk only.  Installed when possible; if they cannot
# be, set-up still succeeds and the boot test skips, saying which one is missing.
BOOTDISK_PACKAGES=(
    qemu-system-x86                   # qemu-system-x86_64 (TCG)
    linux-image-amd64                 # /boot/vmlinuz-* and its initrd (virtio_blk, ext4)
    busybox-static                    # /bin/busybox: the guest's userland
)

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

missing_packages() {
    local p status
    local -n list=${1:-PACKAGES}
    for p in "${list[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
        [[ $status == ii* ]] || printf '%s\n' "$p"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} > 0)) || return 0
    [[ $(id -u) -eq 0 ]] || die "missing Debian packages (${missing[*]}); run this script as root"
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-q -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
    apt-get "${apt_opts[@]}" update </dev/null
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" </dev/null
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) || die "Debian packages still missing after apt-get: ${missing[*]}"
}

install_bootdisk_packages() {
    local missing p
    mapfile -t missing < <(missing_packages BOOTDISK_PACKAGES)
    ((${#missing[@]} > 0)) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "not root: not installing ${missing[*]} (the boot-disk test will skip)"
        return 0
    fi
    log "installing Debian packages for the boot-disk example: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-q -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
    apt-get "${apt_opts[@]}" update </dev/null || true
    if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" </dev/null; then
        for p in "${missing[@]}"; do  # one that cannot be installed must not stop the others
            apt-get "${apt_opts[@]}" install -y --no-install-recommends "$p" </dev/null || true
        done
    fi
    mapfile -t missing < <(missing_packages BOOTDISK_PACKAGES)
    if ((${#missing[@]} > 0)); then
        log "warning: could not install ${missing[*]}; tests/e2e/test_bootdisk.py will skip"
    fi
}

# What a successful venv set-up depended on; a change forces `pip install` again
# (e.g. a new dependency or entry point in pyproject.toml).
stamp_value() {
    {
        printf 'root=%s\n' "$ROOT"
        "$PY" -c 'import sys; print(sys.version)'
        sha256sum <"$ROOT/pyproject.toml"
        cat "$ROOT/setup.py" "$ROOT"/ext4gen/*/_*.[ch] 2>/dev/null | sha256sum  # the extensions
    } | sha256sum | cut -d' ' -f1
}

# The interpreter behind a python (a venv's python is a symlink chain to it).
base_python() {
    "$1" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))'
}

venv_interpreter_ok() {
    [[ -x $VENV/bin/python ]] && [[ $(base_python "$VENV/bin/python" 2>/dev/null) == "$(base_python "$PY")" ]]
}

venv_sees_system_packages() {
    grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null
}

# True when the venv holds everything: the editable ext4gen of this checkout, its
# dependencies, the test tools, and Debian's `nbd` module.
venv_works() {
    venv_interpreter_ok && venv_sees_system_packages || return 1
    [[ -x $VENV/bin/ext4gen && -x $VENV/bin/ruff && -x $VENV/bin/pytest ]] || return 1
    "$VENV/bin/python" - "$ROOT" >/dev/null 2>&1 <<'PYEOF'
import os, sys
import construct, crc32c, hypothesis, indexed_gzip, nbd, orjson, pytest, selinux, xxhash, zstandard  # noqa: F401
import ext4gen
assert os.path.dirname(os.path.dirname(os.path.abspath(ext4gen.__file__))) == sys.argv[1]
PYEOF
}

setup_venv() {
    local want
    want=$(stamp_value)
    if [[ -f $STAMP && $(<"$STAMP") == "$want" ]] && venv_works; then
        return 0
    fi
    rm -f "$STAMP"
    if [[ -e $VENV ]] && ! venv_interpreter_ok; then
        log "$VENV is not a venv of $PY; recreating it"
        rm -rf "$VENV"
    fi
    if [[ ! -e $VENV ]]; then
        log "creating $VENV with $PY"
        # A venv that fails half-way is removed, so the next run starts clean.
        trap 'rm -rf "$VENV"' EXIT
        "$PY" -m venv --system-site-packages "$VENV"
    elif ! venv_sees_system_packages; then
        # Same interpreter: flip the switch in place and keep what is installed
        # (other shells may be using this venv right now).
        log "enabling system site-packages in $VENV"
        "$PY" -m venv --system-site-packages "$VENV"
    fi
    log "installing ext4gen (editable) with its test dependencies into $VENV"
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" </dev/null
    venv_works || die "$VENV was installed, but ext4gen, its dependencies or nbd do not import"
    trap - EXIT
    printf '%s\n' "$want" >"$STAMP"
}

# Debian 12 (bookworm) and 13 (trixie) are what this project is tested on; others
# may work (the packages are the same names), so they get a warning, not a refusal.
check_debian_release() {
    local id="" version="" codename=""
    if [[ -r /etc/os-release ]]; then
        id=$(. /etc/os-release && printf '%s' "${ID:-}")
        version=$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")
        codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    fi
    case "$id:$version:$codename" in
        debian:12:*|debian:13:*|debian:*:bookworm|debian:*:trixie) ;;
        *) log "warning: tested on Debian 12 and 13; this is ${id:-unknown} ${version:-$codename}" ;;
    esac
}

# Byte-compile the project, as `pip install` does for a regular (non-editable) install.
# Without it, every `ext4gen serve` compiled all of its modules twice (the CLI, then nbdkit's
# embedded interpreter) wherever Python may not write __pycache__ (PYTHONDONTWRITEBYTECODE,
# a read-only checkout): about 0.1 s of each start (docs/PERFORMANCE.md).  Up-to-date files
# are skipped, so this is quick on every run; a module edited later is compiled in memory
# until the next run, as Python always does with a stale .pyc.
compile_bytecode() {
    "$VENV/bin/python" -m compileall -q "$ROOT/ext4gen" "$ROOT/plugins" >/dev/null \
        || log "warning: could not byte-compile $ROOT (every start will compile it again)"
}

main() {
    local bootdisk=0 arg
    for arg in "$@"; do
        case $arg in
            --bootdisk) bootdisk=1 ;;
            -h|--help) sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; return 0 ;;
            *) die "unknown argument $arg (expected --bootdisk)" ;;
        esac
    done
    command -v dpkg-query >/dev/null || die "this script is for Debian (dpkg-query not found)"
    check_debian_release
    # The demo and the tests may run set-up at the same time: take turns.
    local lock
    lock="/tmp/ext4gen-setup-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12).lock"
    if [[ -e $lock ]]; then exec 9<"$lock"; else exec 9>"$lock"; fi  # flock needs only an open fd
    if command -v flock >/dev/null; then
        flock 9
    fi
    install_packages
    if ((bootdisk)); then
        install_bootdisk_packages
    fi
    setup_venv
    compile_bytecode
    exec 9>&-
    log "ready: $VENV (Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"
}

main "$@"
