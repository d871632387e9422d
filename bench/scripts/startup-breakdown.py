#!/usr/bin/env python3
"""Where utsuwa's time to the guest's first line goes.

Runs `utsuwa run` under `perf trace` (syscall tracepoints: far less
overhead than strace) several times, cuts each trace into phases at the
syscalls that mark them, and prints the median of each phase.

usage: startup-breakdown.py UTSUWA KERNEL [CPUS] [RUNS] [MARKER]

MARKER is the guest's first line (default "PROBE boot entry=pvh"); the
guest writes COM1 a byte at a time, so the line is complete at the
len(MARKER)+1-th write to stdout.
"""
import re
import statistics
import subprocess
import sys
import tempfile

LINE = re.compile(r"\s*([\d.]+|\?) \(\s*([\d.]*)\s*(?:ms)?\): (\S+)/(\d+) (.*)")


def trace(utsuwa, kernel, cpus):
    with tempfile.NamedTemporaryFile("r", suffix=".trace") as out:
        cmd = ["perf", "trace", "-o", out.name, utsuwa, "run", "--kernel", kernel,
               "--cpus", str(cpus), "--memory", "256M",
               "--cmdline", "probe.checks=none probe.exit=poweroff"]
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=True)
        events = []
        for line in out.read().splitlines():
            m = LINE.match(line)
            if m and m.group(1) != "?":
                t, dur, comm, tid, rest = m.groups()
                events.append((float(t), float(dur or 0), comm, int(tid), rest))
        events.sort(key=lambda e: e[0])
        return events


def phases(ev, marker_len):
    def first(pred, after=0.0):
        return next(e for e in ev if e[0] >= after and pred(e))

    def last(pred):
        return [e for e in ev if pred(e)][-1]

    main_tid = ev[0][3]
    kvm = first(lambda e: "openat" in e[4] and "RDWR" in e[4])
    create = first(lambda e: "KVM_CREATE_VM" in e[4])
    cap = first(lambda e: "KVM_ENABLE_CAP" in e[4])
    slot = last(lambda e: "KVM_SET_USER_MEMORY_REGION" in e[4])
    kopen = first(lambda e: "openat" in e[4], after=slot[0])
    kclose = first(lambda e: e[4].startswith("close(fd: %s" % kopen[4].split("= ")[-1].strip()), after=kopen[0])
    cpuid = first(lambda e: "KVM_GET_SUPPORTED_CPUID" in e[4])
    regs = last(lambda e: "KVM_SET_REGS" in e[4])
    clone = first(lambda e: "clone3" in e[4] and e[3] == main_tid)
    run = first(lambda e: "KVM_RUN" in e[4])
    writes = [e for e in ev if e[4].startswith("write(fd: 1")]
    out1, marker = writes[0], writes[marker_len - 1]
    outn = last(lambda e: e[4].startswith("write(fd: 1"))
    vmclose = first(lambda e: "anon_inode:kvm-vm>)" in e[4] and e[4].startswith("close"))
    if "= " in vmclose[4]:
        vmclosed = vmclose
    else:
        vmclosed = first(lambda e: "[continued]: close()" in e[4] and e[3] == main_tid, after=vmclose[0])
    end = ev[-1]
    runs = sum(1 for e in ev if "KVM_RUN" in e[4] and e[0] < out1[0])
    # Contiguous phases: each ends where the next begins, so they add up.
    cuts = [
        ("process start, runtime, arguments, host checks", kvm[0]),
        ("KVM capability checks + KVM_CREATE_VM", create[0] + create[1]),
        ("irqchip: TSS, IRQCHIP, GSI routing, PIT2, caps", cap[0] + cap[1]),
        ("guest memory: mmap + KVM_SET_USER_MEMORY_REGION", slot[0] + slot[1]),
        ("kernel load (open..close)", kclose[0] + kclose[1]),
        ("cmdline, ACPI tables, boot params, devices", cpuid[0]),
        ("vCPU creation and setup (CPUID, MSRs, regs)", regs[0] + regs[1]),
        ("warning line, threads spawned, to first KVM_RUN", run[0]),
        ("guest: first KVM_RUN to first byte on stdout (%d KVM_RUNs)" % runs, out1[0]),
        ("rest of the marker line (one UART exit per byte)", marker[0]),
        ("guest after the marker (prints, PIT calibration, power-off)", outn[0]),
        ("after power-off, before closing the VM fd", vmclose[0]),
        ("closing the VM fd (KVM VM teardown)", vmclosed[0] + vmclosed[1]),
        ("exit line, exit_group", end[0]),
    ]
    out, prev = [], 0.0
    for name, at in cuts:
        out.append((name, at - prev))
        prev = at
        if name.startswith("rest of the marker"):
            out.append(("= total to marker", at))
    out.append(("= total to exit", end[0]))
    return out


def main():
    utsuwa, kernel = sys.argv[1], sys.argv[2]
    cpus = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    marker_len = len(sys.argv[5] if len(sys.argv) > 5 else "PROBE boot entry=pvh") + 1
    table = {}
    order = []
    for _ in range(n):
        for name, ms in phases(trace(utsuwa, kernel, cpus), marker_len):
            if name not in table:
                order.append(name)
            table.setdefault(name, []).append(ms)
    print(f"| phase ({n} runs under perf trace, {cpus} vCPU) | median ms | min | max |")
    print("|---|---|---|---|")
    for name in order:
        v = table[name]
        print(f"| {name} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")


if __name__ == "__main__":
    main()
