#!/usr/bin/env python3
"""Writes the seed corpus (corpus/TARGET/NAME): a few tiny valid inputs per
target, the unit tests' cases in each target's byte format (see the
targets' doc comments and src/lib.rs). Run from fuzz/; output committed."""
import os
import struct

DATA = 0x8000
NEXT, WRITE, INDIRECT = 1, 2, 4


def desc(flags, next_, addr, length):
    """One FuzzQueue descriptor: DATA-relative address (multiple of 4)."""
    assert addr % 4 == 0 and addr // 4 < 0x10000 and length < 0x10000
    return struct.pack("<BBHH", flags, next_, addr // 4, length)


def queue(descs, heads, log2size=4):
    out = bytes([log2size, len(descs)]) + b"".join(descs)
    out += bytes([0, len(heads)]) + bytes(heads) + bytes([0])
    return out


def blk_header(req_type, sector):
    return struct.pack("<IIQ", req_type, 0, sector)


def put(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)


def payload(parts):
    """(DATA-relative offset, bytes) pieces laid into one payload."""
    buf = bytearray(max(o + len(b) for o, b in parts))
    for o, b in parts:
        buf[o:o + len(b)] = b
    return bytes(buf)


# virtio-blk: header at DATA, data at +0x400, status at +0x800.
blk = {
    "read": (0, [desc(NEXT, 1, 0, 16), desc(NEXT | WRITE, 2, 0x400, 512), desc(WRITE, 0, 0x800, 1)], blk_header(0, 1)),
    "write": (0, [desc(NEXT, 1, 0, 16), desc(NEXT, 2, 0x400, 1024), desc(WRITE, 0, 0x800, 1)], blk_header(1, 4)),
    "flush": (4, [desc(NEXT, 1, 0, 16), desc(WRITE, 0, 0x800, 1)], blk_header(4, 0)),
    "get_id": (0, [desc(NEXT, 1, 0, 16), desc(NEXT | WRITE, 2, 0x400, 20), desc(WRITE, 0, 0x800, 1)], blk_header(8, 0)),
    "discard": (0, [desc(NEXT, 1, 0, 32), desc(WRITE, 0, 0x800, 1)],
                blk_header(11, 0) + struct.pack("<QII", 8, 8, 0)),
    "write_zeroes_ro": (1, [desc(NEXT, 1, 0, 32), desc(WRITE, 0, 0x800, 1)],
                        blk_header(13, 0) + struct.pack("<QII", 16, 4, 1)),
}
for name, (mode, descs, header) in blk.items():
    put("virtio_blk", name, bytes([mode]) + queue(descs, [0]) + header)
# Two requests at once, the second through an indirect table at +0x1000.
table = b"".join(struct.pack("<QIHH", DATA + a, l, f, n) for a, l, f, n in [
    (0x40, 16, NEXT, 1), (0x400, 512, NEXT | WRITE, 2), (0x801, 1, WRITE, 0)])
descs = [desc(NEXT, 1, 0, 16), desc(WRITE, 0, 0x800, 1), desc(INDIRECT, 0, 0x1000, 48)]
put("virtio_blk", "two_with_indirect", bytes([2]) + queue(descs, [0, 2]) +
    payload([(0, blk_header(4, 0)), (0x40, blk_header(0, 2)), (0x1000, table)]))
put("virtio_queue", "indirect", bytes([0]) + queue(descs, [0, 2]) +
    payload([(0, blk_header(4, 0)), (0x40, blk_header(0, 2)), (0x1000, table)]))
put("virtio_queue", "loop", bytes([0]) + queue([desc(NEXT, 1, 0, 16), desc(NEXT | WRITE, 0, 0x800, 1)], [0]))
put("virtio_queue", "rng", bytes([1]) + queue([desc(NEXT | WRITE, 1, 0, 64), desc(WRITE, 0, 0x400, 64)], [0]))

# virtio-net: an RX buffer of 2 KiB at +0x4000, a 60-byte TX frame at DATA.
eth = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(range(46))
frame = bytes(12) + eth
rx = queue([desc(WRITE, 0, 0x4000, 2048)], [0], 2)
tx = queue([desc(0, 0, 0, 60)], [0], 2)
host = bytes([1]) + struct.pack("<H", len(frame)) + frame
for name, bits in [("plain", 0), ("offloads_mrg", 0x1ff), ("event_idx", 0x200)]:
    put("virtio_net", name, struct.pack("<H", bits) + rx + tx + host + frame)
# A TSO frame with NEEDS_CSUM, header split from the frame.
tso_hdr = bytes([1, 1]) + struct.pack("<HHHH", 54, 1448, 34, 16) + bytes(2)
tx2 = queue([desc(NEXT, 1, 0, 12), desc(0, 0, 0x40, 60)], [0], 2)
put("virtio_net", "tso_split", struct.pack("<H", 0x1ff) + rx + tx2 + bytes([0]) +
    payload([(0, tso_hdr), (0x40, eth)]))

# virtio-vsock (see virtio_vsock.rs): actions, port, service bytes, the
# receive queue (four 4 KiB buffers at +0x4000), the transmit queue.
def vsock_hdr(op, src_port, dst_port, length=0, flags=0, src_cid=3, dst_cid=2, type_=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length,
                       type_, op, flags, 256 << 10, 0)

vrx = queue([desc(WRITE, 0, 0x4000 + 0x1000 * i, 4096) for i in range(4)], [0, 1, 2, 3], 2)
REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = range(1, 8)
vtx = queue([desc(0, 0, 0, 44), desc(0, 0, 0x40, 60), desc(0, 0, 0x100, 44), desc(0, 0, 0x140, 44)],
            [0, 1, 2, 3], 2)
put("virtio_vsock", "guest_connects", bytes([10]) + struct.pack("<HH", 0, 100) + vrx + vtx +
    payload([(0, vsock_hdr(REQUEST, 1000, 5000)), (0x40, vsock_hdr(RW, 1000, 5000, 16) + b"hello, host 5000"),
             (0x100, vsock_hdr(CREDIT_REQUEST, 1000, 5000)),
             (0x140, vsock_hdr(SHUTDOWN, 1000, 5000, flags=3))]))
put("virtio_vsock", "host_connects", bytes([1]) + struct.pack("<HH", 1234, 0) + vrx +
    queue([desc(0, 0, 0, 44)], [0], 2) + payload([(0, vsock_hdr(RESPONSE, 1234, 1 << 30))]))
put("virtio_vsock", "lying_and_strange", bytes([14]) + struct.pack("<HH", 0, 4000) + vrx + vtx +
    payload([(0, vsock_hdr(REQUEST, 7, 5000)), (0x40, vsock_hdr(RW, 7, 5000, 60000) + bytes(16)),
             (0x100, vsock_hdr(REQUEST, 8, 5000, dst_cid=9)), (0x140, vsock_hdr(RW, 9, 5000, type_=2))]))

# PCI: ops (see pci_config.rs): 0 write, 1 read, 2 size BAR, 3 table write,
# 4 table read, 5 PBA, 6 trigger, 7 reset.
def cw(reg, off, lenidx, data):
    return bytes([0]) + struct.pack("<HBB", reg, off, lenidx) + data

ops = (cw(1, 0, 2, b"\x06\x00\x00\x00") + bytes([2, 1]) + bytes([2, 0]) +
       bytes([3]) + struct.pack("<HB", 0, 0) + struct.pack("<I", 0xfee00000) +
       bytes([3]) + struct.pack("<HB", 8, 0) + struct.pack("<I", 0x31) +
       bytes([6]) + struct.pack("<H", 0) +
       cw(0x14, 2, 1, b"\x00\x80") +
       bytes([3]) + struct.pack("<HB", 12, 0) + struct.pack("<I", 0) +
       bytes([5]) + struct.pack("<HB", 0, 1) +
       bytes([4]) + struct.pack("<HB", 0, 1) +
       cw(4, 0, 2, struct.pack("<I", 0xd0000000)) + cw(5, 0, 2, struct.pack("<I", 1)) +
       cw(6, 0, 2, struct.pack("<I", 0xc0010000)) + bytes([7]))
put("pci_config", "virtio_like", bytes([2]) + ops)
put("pci_config", "sizing", bytes([70]) + bytes([2, 0, 2, 1]) + cw(4, 0, 2, b"\xff\xff\xff\xff") + bytes([1, 4, 0]))

# API over HTTP: the README's session, pipelined.
def req(method, path, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body

session = [
    ("PUT", "/machine-config", b'{"vcpu_count": 2, "mem_size_mib": 256}'),
    ("PUT", "/boot-source", b'{"kernel_image_path": "/etc/hostname", "boot_args": "console=ttyS0 reboot=k panic=1"}'),
    ("PUT", "/drives/rootfs", b'{"drive_id": "rootfs", "path_on_host": "/etc/hostname", "is_root_device": true, "is_read_only": true}'),
    ("PUT", "/network-interfaces/eth0", b'{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "52:54:00:12:34:56"}'),
    ("PUT", "/entropy", b"{}"),
    ("PATCH", "/machine-config", b'{"vcpu_count": 1}'),
    ("GET", "/vm/config", b""),
    ("PUT", "/actions", b'{"action_type": "InstanceStart"}'),
]
put("api_http", "session", b"".join(req(*r) for r in session))
put("api_http", "info", req("GET", "/") + req("GET", "/version") + req("GET", "/metrics"))
put("api_http", "expect_close",
    b"PUT http://localhost/vm HTTP/1.0\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 19\r\n\r\n{\"state\": \"Paused\"}")
put("api_http", "bad", b"GET /vm/config?x=1#f HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")

ROUTES = ["/", "/actions", "/boot-source", "/drives/{drive_id}", "/entropy", "/logger", "/machine-config",
          "/metrics", "/network-interfaces/{iface_id}", "/version", "/vm", "/vm/config", "/vsock"]
METHODS = {"GET": 0, "PUT": 1, "PATCH": 2}

def rreq(method, path, body=b""):
    for i, r in enumerate(ROUTES):
        if "{" in r and path.startswith(r[:r.index("{")]):
            param = path[r.index("{"):].encode()
            return bytes([i, METHODS[method]]) + struct.pack("<H", len(body)) + bytes([len(param)]) + param + body
        if r == path:
            return bytes([i, METHODS[method]]) + struct.pack("<H", len(body)) + body
    raise ValueError(path)

put("api_routes", "session", b"".join(rreq(*r) for r in session))
put("api_routes", "vsock_logger", rreq("PUT", "/vsock", b'{"guest_cid": 3, "uds_path": "/tmp/v.sock"}') +
    rreq("PUT", "/logger", b'{"level": "Info", "show_level": true}') + rreq("PATCH", "/vm", b'{"state": "Resumed"}'))

put("config_file", "full", b"""{
  "boot-source": {"kernel_image_path": "/etc/hostname", "initrd_path": "/etc/hostname", "boot_args": "console=ttyS0"},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
  "drives": [{"drive_id": "rootfs", "path_on_host": "/etc/hostname", "is_root_device": true, "is_read_only": true,
              "partuuid": "0eaa91a0-01", "cache_type": "Unsafe", "io_engine": "Sync"}],
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "52:54:00:12:34:56"}],
  "vsock": null, "entropy": {}, "logger": null, "metrics": null, "balloon": null
}""")
put("config_file", "minimal", b'{"boot-source": {"kernel_image_path": "/etc/hostname"}}')

put("cli_args", "run", b"\0".join([b"run", b"--kernel", b"vmlinux", b"--initrd", b"initrd.cpio", b"--cmdline",
    b"console=ttyS0", b"--cpus", b"2", b"--memory", b"1G", b"--cpu-template", b"baseline", b"--disk",
    b"path=a.img,readonly=on,serial=disk0,cache=none", b"--net", b"tap=tap0,mac=52:54:00:12:34:56", b"--rng",
    b"--log-level", b"debug", b"--no-seccomp"]))
put("cli_args", "api", b"\0".join([b"api", b"--api-sock", b"/tmp/u.sock", b"--id", b"vm1", b"--config-file", b"vm.json"]))
put("cli_args", "ctl", b"\0".join([b"ctl", b"--api-sock", b"/tmp/u.sock", b"pause"]))
put("cli_args", "config_run", b"\0".join([b"run", b"--config-file", b"vm.json", b"--no-api"]))

# Kernels: a minimal ELF64 (one PT_LOAD at 1 MiB), the same with a PVH note
# and a Linux note, and a minimal bzImage header.
def elf(notes=b""):
    code = b"\xf4" * 16
    phnum = 2 if notes else 1
    phoff = 64
    data_off = phoff + 56 * phnum
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, 0x3e, 1, 0x100000, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, data_off, 0x100000, 0x100000, len(code), len(code), 0x1000)
    phdrs = load
    if notes:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, data_off + len(code), 0, 0, len(notes), len(notes), 4)
    return ehdr + phdrs + code + notes

def note(name, typ, desc):
    n = struct.pack("<III", len(name) + 1, len(desc), typ) + name + b"\0"
    n += bytes(-len(n) % 4) + desc
    return n + bytes(-len(n) % 4)

put("boot_loader", "elf", elf())
put("boot_loader", "elf_pvh_linux", elf(note(b"Xen", 18, struct.pack("<I", 0x100000)) + note(b"Linux", 1, b"salt")))
bz = bytearray(0x400 + 64)
bz[0x1f1] = 1                                   # setup_sects
struct.pack_into("<H", bz, 0x1fe, 0xaa55)       # boot_flag
bz[0x202:0x206] = b"HdrS"
struct.pack_into("<H", bz, 0x206, 0x020f)       # version
bz[0x211] = 1                                   # loadflags: LOADED_HIGH
struct.pack_into("<I", bz, 0x214, 0x100000)     # code32_start
struct.pack_into("<I", bz, 0x22c, 0x37ffffff)   # initrd_addr_max
struct.pack_into("<H", bz, 0x236, 1)            # xloadflags: XLF_KERNEL_64
struct.pack_into("<I", bz, 0x238, 2048)         # cmdline_size
put("boot_loader", "bzimage", bytes(bz))
