#!/bin/sh
# /init of the ext4gen boot disk: PID 1 on a read-only ext4 root served over NBD.
#
# Every line meant for the test starts with "bootdisk: "; the host side
# (examples/bootdisk/boot.py, tests/e2e/test_bootdisk.py) parses them from the
# serial console.  Nothing here writes to the root: it is mounted read-only and
# carries the shared_blocks feature, which the kernel never mounts read-write.
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

say() { echo "bootdisk: $*"; }

# initramfs-tools moves its /proc, /sys and /dev into the new root when the
# directories exist there; mount them ourselves only if it did not.
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev

say "kernel $(uname -r)"
say "hostname $(cat /etc/hostname)"
say "os $(head -n 1 /etc/os-release)"
while read -r line; do say "motd $line"; done </etc/motd
say "marker EXT4GEN-BOOTDISK-OK"

# The kernel's own view of the root filesystem: "/dev/vda / ext4 ro,relatime 0 0".
say "root-mount $(grep ' / ' /proc/mounts | tail -n 1)"

# The dynamic file: bytes made by bootgen.lines on the host, only when read here.
say "dynamic-size $(wc -c </usr/share/bootdisk/dynamic.txt)"
say "dynamic-sha256 $(sha256sum /usr/share/bootdisk/dynamic.txt | cut -d ' ' -f 1)"
say "dynamic-md5 $(md5sum /usr/share/bootdisk/dynamic.txt | cut -d ' ' -f 1)"

# /rescue/busybox is a copy of /bin/busybox: dedup stores its blocks once (shared_blocks).
if cmp -s /bin/busybox /rescue/busybox; then
    say "rescue identical $(sha256sum /rescue/busybox | cut -d ' ' -f 1)"
else
    say "rescue DIFFERS"
fi

# The second NBD export, attached as the second virtio disk.
if mount -t ext4 -o ro /dev/vdb /mnt/data; then
    say "data-mount $(grep ' /mnt/data ' /proc/mounts)"
    say "data-hello $(cat /mnt/data/hello.txt)"
    say "data-sha256 $(sha256sum /mnt/data/table.txt | cut -d ' ' -f 1)"
    say "data-files $(ls /mnt/data | tr '\n' ' ')"
    umount /mnt/data
else
    say "data-mount FAILED"
fi

say "done"
poweroff -f
# Not reached; if poweroff failed, PID 1 exiting panics the kernel, and panic=-1
# with qemu -no-reboot ends the VM all the same.
