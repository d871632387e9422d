#!/bin/sh
# /init of utsuwa's default guest, run by the kernel as PID 1 (busybox sh).
# Built into the initramfs by src/assets/init.rs; the protocol it speaks on
# the console (utsuwa.cmd=, UTSUWA-READY, UTSUWA-CMD-BEGIN/END) is described
# there. PID 1 must never exit: every path ends in `poweroff -f` (or
# `reboot -f`, see halt_now).

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

# `/init ctrlaltdel`: busybox init's answer to Ctrl-Alt-Del (see the end of
# this file): a clean reboot, with every process asked to stop first.
if [ "$1" = ctrlaltdel ]; then
    echo "utsuwa-init: Ctrl-Alt-Del: rebooting"
    exec reboot
fi

# `/init console <poweroff|reboot>`: the interactive session, started by
# busybox init (see the end of this file) once the set-up below is done.
if [ "$1" = console ]; then
    echo UTSUWA-READY
    export PS1='utsuwa:\w# '
    cd /root 2>/dev/null || cd /
    # A new session whose controlling terminal is the real console device,
    # so that job control and ^C work.
    setsid cttyhack sh
    cd /
    sync
    "$2" -f
    exit 0
fi

/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
hostname utsuwa
ln -s /proc/self/fd /dev/fd 2>/dev/null

say() { echo "utsuwa-init: $*"; }

# How to leave. Power off when the kernel can (ACPI with S5); otherwise
# reboot, which the VMM sees as a reset (e.g. the i8042 with reboot=k): a
# kernel that cannot power off would halt the CPU and leave the VMM waiting.
# `utsuwa.exit=poweroff|reboot` on the command line overrides the guess.
exit_with=reboot
if dmesg | grep -q 'ACPI: PM: (supports.* S5'; then
    exit_with=poweroff
fi

halt_now() {
    sync
    "$exit_with" -f
    while :; do sleep 3600; done
}

# Kernel modules, dependencies first: "<name> required|optional" per line.
while read -r name kind; do
    [ -n "$name" ] || continue
    if ! err=$(insmod "/lib/modules/$name.ko" 2>&1); then
        say "insmod $name failed ($kind): $err"
    fi
done < /etc/utsuwa/modules

# utsuwa.cmd=<base64 of the command> on the kernel command line.
set -f
cmd_b64=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        utsuwa.cmd=*) cmd_b64=${arg#utsuwa.cmd=} ;;
        utsuwa.exit=poweroff | utsuwa.exit=reboot) exit_with=${arg#utsuwa.exit=} ;;
    esac
done
set +f

if [ -n "$cmd_b64" ]; then
    # Keep kernel messages off the console and let the command's bytes
    # through unchanged (no \n -> \r\n): the host frames them exactly.
    dmesg -n 1
    stty -onlcr 2>/dev/null
    printf 'UTSUWA-CMD-BEGIN\n'
    if cmd=$(printf '%s' "$cmd_b64" | base64 -d) && [ -n "$cmd" ]; then
        cd /root 2>/dev/null || cd /
        sh -c "$cmd" 2>&1
        rc=$?
        cd /
    else
        printf 'utsuwa-init: cannot decode utsuwa.cmd' >&2
        rc=125
    fi
    printf '\nUTSUWA-CMD-END rc=%d\n' "$rc"
    halt_now
fi

# Interactive: busybox init becomes PID 1 and starts the session. It gives
# the shell default signal handling (a shell PID 1 could not: its
# background jobs ignore SIGINT for good), powers off on `poweroff` as well
# as `poweroff -f`, and turns Ctrl-Alt-Del (the kernel's SIGINT to PID 1,
# e.g. a VMM's SendCtrlAltDel on the i8042) into a clean reboot.
cat > /etc/inittab <<EOF
::once:/init console $exit_with
::ctrlaltdel:/init ctrlaltdel
EOF
exec /bin/busybox init
