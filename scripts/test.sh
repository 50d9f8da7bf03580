#!/usr/bin/env bash
# The full test suite, as CI runs it: set-up, lint, then pytest over tests/.
#
#   ./scripts/test.sh                 # everything (as root; a normal user: sudo ./scripts/test.sh)
#   ./scripts/test.sh -k manifest -x  # extra arguments go to pytest
#
# Run it as root: the kernel mount, loop device and NBD tests need root and skip
# (with a visible reason) otherwise.  Set-up includes the boot-disk example's
# packages (qemu, a kernel, busybox), because the suite boots it.  Exits non-zero when lint fails, any test
# fails, pytest collects no test at all (its exit code 5), or (under CI) the run
# left a mount, loop device, nbdkit or nbdfuse behind.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh --bootdisk

if [[ $(id -u) -ne 0 ]]; then
    printf '\n*** WARNING: not running as root: every test that mounts, loops or serves will SKIP. ***\n' >&2
    printf '*** Run it as root (sudo ./scripts/test.sh) for the real suite; CI runs as root.    ***\n\n' >&2
fi

echo "== ruff check"
.venv/bin/ruff check --no-cache --output-format=concise .

# Kernel-side state that tests must not leave behind.
leftovers() {
    findmnt -rn -o TARGET,SOURCE,FSTYPE 2>/dev/null | grep -E ' (ext4|fuse[^ ]*)$' || true
    losetup -n -l -O NAME,BACK-FILE 2>/dev/null || true
    # Live nbdkit/nbdfuse processes; zombies (already exited, waiting for init to reap them) are not leaks.
    ps -eo stat=,comm=,pid=,args= | awk '$1 !~ /^Z/ && ($2 == "nbdkit" || $2 == "nbdfuse") {
        sub(/^[^ ]+ +[^ ]+ +/, ""); print }' || true
}
before=$(leftovers | sort)

echo "== pytest"
rc=0
# No path given: pytest runs pyproject's testpaths (tests/); paths and options pass through.
.venv/bin/python -m pytest "$@" </dev/null || rc=$?
case $rc in
    0) ;;
    5) echo "test.sh: pytest collected no tests: that is a failure" >&2 ;;
    *) echo "test.sh: pytest failed (exit $rc)" >&2 ;;
esac

# A server a test has just signalled may take a moment to exit: allow it 5 s.
for _ in $(seq 10); do
    leaked=$(comm -13 <(printf '%s\n' "$before") <(leftovers | sort) | sed '/^$/d')
    [[ -z $leaked ]] && break
    sleep 0.5
done
if [[ -n $leaked ]]; then
    printf 'test.sh: the test run left these behind (mounts, loop devices, processes):\n%s\n' "$leaked" >&2
    if [[ -n ${CI:-} && $rc -eq 0 ]]; then
        rc=1
    fi
fi
exit "$rc"
