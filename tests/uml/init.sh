#!/bin/busybox sh
# Init (pid 1) of the User-Mode Linux test guest. The root is the host's / over hostfs,
# read-only, so host binaries (qemu-ga, virtagent, busybox) run inside the guest.
#
# Kernel command-line variables (UML passes unknown NAME=VALUE words to init's environment):
#   VA_AGENT   qemu-ga | PATH of a virtagent binary        (default qemu-ga)
#   VA_PORT    virtio-serial port name for the agent       (default org.qemu.guest_agent.0)
#   VA_OUT     a host directory mounted read-write at /tmp/out (hostfs), to bring files back
#
# The agent is supervised: when it exits it is started again (the one named in /tmp/agent.next
# if that file exists), unless /tmp/hold exists (then the loop waits until it is gone) or
# /tmp/stop exists (then the guest powers off).
# /sbin/shutdown (systemctl on the host) is replaced by a script that syncs and powers off,
# so guest-shutdown ends the UML process.
bb=/bin/busybox
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev 2>/dev/null
$bb mount -t tmpfs run /run
# The guest gets its own /tmp; the host's stays reachable at /run/host-tmp, so host paths under
# /tmp (a checkout or build directory there, e.g. the agent binary) still work (see host_path).
$bb mkdir -p /run/host-tmp
$bb mount --bind /tmp /run/host-tmp
$bb mount -t tmpfs tmp /tmp
$bb ip link set lo up 2>/dev/null
$bb hostname uml-guest

# A host path as the guest sees it.
host_path() {
    case "$1" in
    /tmp/*) echo "/run/host-tmp/${1#/tmp/}" ;;
    *) echo "$1" ;;
    esac
}
AGENT=$(host_path "${VA_AGENT:-qemu-ga}")
PORT=${VA_PORT:-org.qemu.guest_agent.0}

# Power off instead of asking systemd.
$bb cat > /tmp/shutdown <<'SH'
#!/bin/busybox sh
/bin/busybox sync
exec /bin/busybox poweroff -f
SH
$bb chmod 755 /tmp/shutdown
$bb mount --bind /tmp/shutdown /usr/bin/systemctl

# virtio_console is a module in Debian's UML kernel.
if [ ! -d /sys/bus/virtio/drivers/virtio_console ]; then
    $bb insmod /usr/lib/uml/modules/$($bb uname -r)/kernel/drivers/char/virtio_console.ko
fi

# No udev: make the /dev/virtio-ports/NAME links ourselves.
$bb mkdir -p /dev/virtio-ports
i=0
while [ $i -lt 100 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] || continue
        n=$($bb cat "$p/name")
        [ -n "$n" ] && $bb ln -sf "../${p##*/}" "/dev/virtio-ports/$n"
    done
    # Ports are announced one by one: wait until the agent's is there and no more come.
    n=$($bb ls /sys/class/virtio-ports | $bb wc -l)
    [ -e "/dev/virtio-ports/$PORT" ] && [ "$n" = "$last" ] && break
    last=$n
    $bb sleep 0.1
    i=$((i + 1))
done

# A ubd disk (ubd0=IMAGE) formatted by the host is mounted read-write for fsfreeze tests.
if [ -b /dev/ubda ]; then
    $bb mkdir -p /tmp/disk
    $bb mount -t ext4 /dev/ubda /tmp/disk
fi

if [ -n "$VA_OUT" ]; then
    $bb mkdir -p /tmp/out
    $bb mount -t hostfs none /tmp/out -o "$VA_OUT"
fi

echo "uml-init: ports: $($bb ls /dev/virtio-ports)"
while :; do
    while [ -e /tmp/hold ]; do $bb sleep 0.05; done
    [ -e /tmp/stop ] && break
    # /tmp/agent.next switches the agent for the next start (benchmarks compare agents).
    [ -s /tmp/agent.next ] && AGENT=$(host_path "$($bb cat /tmp/agent.next)")
    case "$AGENT" in
    qemu-ga)
        /usr/sbin/qemu-ga -m virtio-serial -p "/dev/virtio-ports/$PORT" -f /tmp/agent.pid.qga -t /tmp &
        ;;
    *)
        "$AGENT" -m virtio-serial -p "/dev/virtio-ports/$PORT" -t /tmp &
        ;;
    esac
    echo $! > /tmp/agent.pid
    echo "uml-init: agent $AGENT started (pid $!)"
    wait $!
    echo "uml-init: agent exited ($?)"
    $bb sleep 0.1
done
$bb sync
$bb poweroff -f
