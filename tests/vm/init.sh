#!/bin/busybox sh
# /init of the cgroup v2 test VM (busybox ash), see tests/vm/__init__.py.
#
# Stage 1 (PID 1 in the initramfs): load the virtio and 9p modules, mount the host's / read-only
# with a tmpfs overlay on top as the new root, the shares listed in /xchg/vm.conf at their host
# paths, and the API filesystems a systemd host has (cgroup2 with every controller enabled for
# the children of the root), then switch_root. The new root must be a real mount: pivot_root,
# which the runtime under test does, fails in an initramfs.
#
# Stage 2 (PID 1 in the new root): run the host's command, write its exit status to the
# exchange directory and power off. busybox ash waits with waitpid(-1), so it also reaps the
# orphans that containers leave to PID 1, as systemd would.

bb=/bin/busybox
say() { echo "skiff-vm: $*" >&2; }
die() { say "$*"; $bb sync; $bb poweroff -f; }

if [ "${1:-}" = stage2 ]; then
    bb=/run/skiff-vm/busybox
    . /run/skiff-vm/xchg/vm.conf
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    export HOME=/root TERM="${SKIFF_VM_TERM:-dumb}" LANG=C.UTF-8
    cd /
    xchg=/run/skiff-vm/xchg
    if [ -e $xchg/cmd ]; then
        say "running $xchg/cmd"
        $bb setsid /bin/sh $xchg/cmd </dev/null >/dev/ttyS0 2>&1 &
    else
        # No command: an interactive shell whose controlling terminal is the serial console.
        $bb setsid -c /bin/bash -i </dev/ttyS0 >/dev/ttyS0 2>&1 &
    fi
    wait $!
    rc=$?
    echo "$rc" >$xchg/rc.tmp && $bb mv $xchg/rc.tmp $xchg/rc
    say "exit status $rc, powering off"
    $bb sync
    $bb poweroff -f
fi

$bb --install -s /bin
export PATH=/bin
say init
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r mod; do
    insmod "/modules/$mod" || die "insmod $mod failed"
done </modules/order

p9="trans=virtio,version=9p2000.L,msize=512000"
mkdir -p /xchg /lower /ovl /newroot
mount -t 9p -o "$p9" xchg /xchg || die "mount of the exchange directory failed"
. /xchg/vm.conf

# The host's / is only read (cache=loose caches its metadata); writes land in a tmpfs overlay.
mount -t 9p -o "$p9,ro,cache=loose" hostroot /lower || die "mount of the host's / failed"
mount -t tmpfs -o mode=0755 tmpfs /ovl
mkdir /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot ||
    die "overlay on the host's / failed"
r=/newroot

mount --move /proc $r/proc
mount --move /sys $r/sys
mount --move /dev $r/dev
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/tmp
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $r/run
mkdir -p $r/dev/pts $r/dev/shm $r/dev/mqueue $r/dev/hugepages $r/run/skiff-vm
mount -t devpts -o mode=0620,gid=5,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/dev/shm
mount -t mqueue mqueue $r/dev/mqueue
mount -t hugetlbfs hugetlbfs $r/dev/hugepages
ln -sf /proc/self/fd $r/dev/fd
ln -sf /proc/self/fd/0 $r/dev/stdin
ln -sf /proc/self/fd/1 $r/dev/stdout
ln -sf /proc/self/fd/2 $r/dev/stderr
ln -sf /proc/kcore $r/dev/core

# As systemd mounts it on a pure v2 host, and with every controller given to the root's
# children, so that tests see what a production host offers.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 $r/sys/fs/cgroup ||
    die "mount of cgroup2 failed"
for c in $(cat $r/sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >$r/sys/fs/cgroup/cgroup.subtree_control || say "cannot enable the $c controller"
done

echo "$SKIFF_VM_SHARES" | while read -r tag path; do
    [ -n "$tag" ] || continue
    mkdir -p "$r$path" && mount -t 9p -o "$p9" "$tag" "$r$path" || die "mount of $path failed"
done
mkdir -p $r/run/skiff-vm/xchg
mount --move /xchg $r/run/skiff-vm/xchg

# The image's module tree (visible through the host's /) at the path modprobe looks in, so
# that the kernel can load what a test needs (veth, nf_tables, ...).
release=$(uname -r)
mkdir -p "$r/lib/modules/$release"
mount --bind "$r$SKIFF_VM_MODULES" "$r/lib/modules/$release" || say "no module tree"

hostname skiff-vm
ip link set lo up
cp $bb /init $r/run/skiff-vm/
exec switch_root $r /run/skiff-vm/busybox sh /run/skiff-vm/init stage2
