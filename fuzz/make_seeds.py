#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/:
small valid inputs (a disk request, a vif request, a ring script, store
messages, the guests' configs, tar archives, a tiny ELF, boot information,
ACPI tables, switch scripts) that the fuzzers start from. `cargo fuzz run <target>
fuzz/corpus/<target> fuzz/seeds/<target>` merges what they reach into the
corpus; the seeds themselves are not replayed (the corpus is)."""
import io, os, struct, sys, tarfile
from pathlib import Path

here = Path(__file__).resolve().parent
out = here / "seeds"


def seed(target, name, data):
    folder = out / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(bytes(data))


# ---- block_request: region (start, sectors, readonly), then a 112-byte
# blkif request (x86_64 blkif_request: operation, nr_segments, handle, pad,
# id, sector_number, 11 segments of gref, first_sect, last_sect, pad).
def block(op, count, sector, segments, request_id=7):
    body = struct.pack("<BBH4xQQ", op, count, 0, request_id, sector)
    for grant, first, last in segments + [(0, 0, 0)] * (11 - len(segments)):
        body += struct.pack("<IBBH", grant, first, last, 0)
    assert len(body) == 112
    return body


def region(start, sectors, readonly):
    return struct.pack("<QQB", start, sectors, readonly)


seed("block_request", "read", region(2048, 8192, 0) + block(0, 2, 10, [(5, 0, 7), (6, 2, 3)]))
seed("block_request", "write", region(2048, 128, 0) + block(1, 11, 0, [(i + 1, 0, 7) for i in range(11)]))
seed("block_request", "flush", region(0, 1, 0) + block(3, 0, 0, []))
seed("block_request", "readonly", region(16384, 1024, 1) + block(1, 1, 1023, [(9, 7, 7)]))

# ---- net_request: 12-byte netif_tx_request slots (gref, offset, flags, id,
# size) assembled into frames; the first 8 bytes of each also as a
# netif_rx_request (id, pad, gref).
CSUM_BLANK, DATA_VALIDATED, MORE_DATA, EXTRA_INFO = 1, 2, 4, 8


def tx(request_id, grant, offset, size, flags=0):
    return struct.pack("<IHHHH", grant, offset, flags, request_id, size)


def extra(kind, flags=0):
    return struct.pack("<BB10x", kind, flags)


seed("net_request", "transmit", tx(1, 5, 0, 60) + tx(2, 6, 4096 - 1514, 1514) + tx(3, 511, 100, 14))
seed("net_request", "slots", tx(1, 5, 3996, 1514, MORE_DATA | CSUM_BLANK | DATA_VALIDATED) + tx(2, 6, 0, 1414))
seed("net_request", "gso", tx(1, 5, 0, 3000, EXTRA_INFO | MORE_DATA) + extra(1) + tx(2, 6, 0, 1500))
seed("net_request", "receive", struct.pack("<HHI", 1, 0, 3) + bytes(4) + struct.pack("<HHI", 2, 0, 300) + bytes(4))

# ---- ring: kind (0 block, 1 transmit, 2 receive), then a script of operations:
# 0 poke header word, 1 write slot, 2 set req_prod near the window, 3 pop,
# 4 push response, 5 publish, 6 arm the request event.
def script(kind, request, count):
    ops = bytes([kind])
    for slot in range(count):
        ops += bytes([1, slot]) + request
    ops += bytes([2, count])
    ops += bytes([3]) * count + bytes([4]) * count + bytes([5, 6])
    return ops


seed("ring", "block", script(0, block(0, 1, 0, [(5, 0, 7)]), 3))
seed("ring", "transmit", script(1, tx(1, 5, 0, 60), 4))
seed("ring", "receive", script(2, struct.pack("<HHI", 1, 0, 3), 4))
seed("ring", "transmit-slots", script(1, tx(1, 5, 0, 60, MORE_DATA), 4))
seed("ring", "corrupt", bytes([0, 0, 0]) + struct.pack("<I", 1000) + bytes([3, 6]))

# ---- store: steps [control = length << 1 | guest][bytes], messages framed as xs_wire has them
# (Xen's type numbers; strings NUL-terminated, a WRITE's value not).
READ, WATCH, UNWATCH, TRANSACTION_START, TRANSACTION_END = 2, 4, 5, 6, 7
GET_PERMS, WRITE, MKDIR, RM, SET_PERMS, DIRECTORY = 3, 11, 12, 13, 14, 1


def message(kind, request_id, *fields, tx=0):
    if kind == WRITE:
        payload = fields[0] + b"\0" + fields[1]
    else:
        payload = b"".join(f + b"\0" for f in fields)
    return struct.pack("<IIII", kind, request_id, tx, len(payload)) + payload


def stream(*messages, guest=0):
    data = b"".join(messages)
    steps = b""
    while data:
        chunk, data = data[:127], data[127:]
        steps += bytes([len(chunk) << 1 | guest]) + chunk
    return steps


seed("store", "device", stream(
    message(WATCH, 1, b"device/vbd", b"tok"),
    message(WRITE, 2, b"device/vbd/0/ring-ref", b"8"),
    message(WRITE, 3, b"device/vbd/0/state", b"3"),
    message(READ, 4, b"device/vbd/0/state"),
    message(DIRECTORY, 5, b"device/vbd/0"),
    message(UNWATCH, 6, b"device/vbd", b"tok"),
))
seed("store", "permissions", stream(
    message(MKDIR, 1, b"shared"),
    message(SET_PERMS, 2, b"shared", b"n1", b"r3", b"b2"),
    message(GET_PERMS, 3, b"shared"),
    message(RM, 4, b"shared"),
))
seed("store", "two-guests", stream(message(READ, 1, b"/local/domain/2/secret"))
     + stream(message(WATCH, 1, b"/local/domain/1", b"w"), guest=1) + bytes([0, 1])
     + stream(message(WRITE, 9, b"x", b"y"), guest=1))
seed("store", "transaction", stream(
    message(TRANSACTION_START, 1, b""),
    message(WRITE, 2, b"device/vbd/0/state", b"3", tx=1),
    message(READ, 3, b"device/vbd/0/state", tx=1),
    message(RM, 4, b"device/vbd/0/state"),
    message(TRANSACTION_END, 5, b"T", tx=1),
    message(TRANSACTION_START, 6, b""),
    message(MKDIR, 7, b"a/b", tx=2),
    message(DIRECTORY, 8, b"a", tx=2),
    message(TRANSACTION_END, 9, b"F", tx=2),
))

# ---- config: the guests' configs, plus one with every key.
for cfg in sorted((here.parent / "pv-drivers" / "guests").glob("*.cfg")):
    seed("config", cfg.stem, cfg.read_bytes())
seed("config", "every-key", b'''# every key
name    = "web-1"
memory  = 64
kernel  = "boot/guest.elf"
cmdline = "console=hvc0 \\"quoted\\" \\\\ x"
vcpus   = 1
on_crash = "restart"
weight  = 512
cap     = 50\r
disk    = [ "ata1-master:2048+8192,ro", "ata1-slave:0+1" ]
vif     = [ "mac=02:00:00:00:00:01", "", ]
''')

# ---- tar: small archives in ustar and GNU formats.
def archive(form, members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=form) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


seed("tar", "ustar", archive(tarfile.USTAR_FORMAT,
                             [("./", None), ("./boot/", None), ("./boot/counter.cfg", b"name = \"c\"\n"),
                              ("./" + "p" * 120 + "/k.elf", b"\x7fELF" + bytes(600))]))
seed("tar", "gnu", archive(tarfile.GNU_FORMAT, [("a.cfg", b"x" * 513), ("l" * 150, b"long"), ("a.cfg", b"second")]))

# ---- elf: tiny x86-64 executables.
def elf(entry, segments):
    header_size, phdr_size = 64, 56
    data_offset = header_size + phdr_size * len(segments)
    blob = bytearray(data_offset)
    blob[0:16] = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", blob, 16, 2, 62, 1, entry, header_size, 0, 0, header_size, phdr_size,
                     len(segments), 0, 0, 0)
    for index, (kind, flags, vaddr, paddr, code, mem_size) in enumerate(segments):
        offset = len(blob)
        blob += code
        struct.pack_into("<IIQQQQQQ", blob, header_size + index * phdr_size, kind, flags, offset, vaddr, paddr,
                         len(code), mem_size, 0x1000)
    return bytes(blob)


code = b"\xf4" * 64  # hlt
seed("elf", "one-segment", elf(0x100000, [(1, 5, 0x100000, 0x100000, code, 0x1000)]))
seed("elf", "three-segments", elf(0xffff_8000_0010_0000, [
    (1, 5, 0xffff_8000_0010_0000, 0x100000, code, 0x1000),
    (1, 4, 0xffff_8000_0010_1000, 0x101000, b"rodata", 0x1000),
    (4, 4, 0, 0, b"note", 4),
    (1, 6, 0xffff_8000_0010_2000, 0x102000, b"data", 0x3000),
]))

# ---- ACPI tables (shared by multiboot2 and acpi).
def table(signature, body):
    blob = bytearray(signature + bytes(32) + body)
    struct.pack_into("<I", blob, 4, len(blob))
    blob[9] = (-sum(blob)) & 0xff
    return bytes(blob)


def rsdp(rsdt, xsdt=None):
    blob = bytearray(b"RSD PTR " + bytes(7) + bytes([2 if xsdt else 0]) + struct.pack("<I", rsdt))
    blob[8] = (-sum(blob[:20])) & 0xff
    if xsdt:
        blob += struct.pack("<IQ", 36, xsdt) + bytes(4)
        blob[32] = (-sum(blob[:36])) & 0xff
    return bytes(blob)


def fadt(dsdt):
    body = bytearray(244 - 36)
    struct.pack_into("<I", body, 40 - 36, dsdt)
    struct.pack_into("<I", body, 64 - 36, 0xb004)
    struct.pack_into("<I", body, 112 - 36, 1 << 10)
    body[116 - 36:128 - 36] = bytes([1, 8, 0, 1]) + struct.pack("<Q", 0xcf9)
    body[128 - 36] = 6
    return table(b"FACP", bytes(body))


madt = table(b"APIC", bytes(8) + bytes([0, 8, 0, 0, 1, 0, 0, 0]) + bytes([1, 12, 1, 0]) + struct.pack("<II", 0xfec00000, 0)
             + bytes([2, 10, 0, 0, 2, 0, 0, 0, 0, 0]) + bytes([2, 10, 0, 9, 9, 0, 0, 0, 0x0f, 0]))
dsdt = table(b"DSDT", bytes([0x10, 0x20, 0x5c, 0x08]) + b"_S5_" + bytes([0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0, 0]))


def rsdt(kind, entries):
    width = "<Q" if kind == b"XSDT" else "<I"
    return table(kind, b"".join(struct.pack(width, e) for e in entries))


# Structured acpi input: flags (bit 0 set, bits 2.. = I/O APIC inputs), the
# RSDP, then tables split by %TBL, laid at 0x1000, 0x2000, ...
structured = lambda root: bytes([1 | 24 << 2]) + b"%TBL".join(
    [rsdp(0x1000)[:20] if root == b"RSDT" else rsdp(0, 0x1000), rsdt(root, [0x2000, 0x3000]), fadt(0x4000), madt, dsdt])
seed("acpi", "rsdt", structured(b"RSDT"))
seed("acpi", "xsdt", structured(b"XSDT"))
# Raw acpi input: flags (bit 0 clear, bits 1.. = RSDP length), then memory from address 0.
memory = bytearray(0x500)
tables = {0x100: rsdt(b"RSDT", [0x200, 0x400]), 0x200: fadt(0x300), 0x300: dsdt, 0x400: madt}
memory[:20] = rsdp(0x100)[:20]
for address, blob in tables.items():
    memory[address:address + len(blob)] = blob
seed("acpi", "raw", bytes([20 << 1]) + bytes(memory))

# ---- multiboot2: boot information as GRUB hands it, with ACPI tables after
# total_size (the target reads the input as physical memory for the RSDP).
def boot_info(tags, trailer=b""):
    blob = bytearray(8)
    for kind, payload in tags:
        blob += struct.pack("<II", kind, len(payload) + 8) + payload
        blob += bytes(-len(blob) % 8)
    blob += struct.pack("<II", 0, 8)
    struct.pack_into("<I", blob, 0, len(blob))
    return bytes(blob) + trailer


mmap = struct.pack("<II", 24, 0) + b"".join(struct.pack("<QQII", *entry, 0) for entry in [
    (0, 0x9f000, 1), (0x9f000, 0x1000, 2), (0x100000, 0x7fef0000, 1), (0x7fff0000, 0x10000, 3),
    (0xfffc0000, 0x40000, 2), (0x100000000, 0x40000000, 1)])
acpi_at = 0x400
tail = bytearray(0x400)
for offset, blob in {0: rsdt(b"RSDT", [acpi_at + 0x100, acpi_at + 0x300]), 0x100: fadt(acpi_at + 0x200),
                     0x200: dsdt, 0x300: madt}.items():
    tail[offset:offset + len(blob)] = blob
tags = [(1, b"console=com1\0"), (2, b"GRUB 2.12\0"), (3, struct.pack("<II", 0x200000, 0x300000) + b"dom0\0"),
        (3, struct.pack("<II", 0x300000, 0x380000) + b"ramdisk\0"), (6, mmap), (14, rsdp(acpi_at)[:20])]
info = boot_info(tags)
seed("multiboot2", "grub", info + bytes(acpi_at - len(info)) + bytes(tail))
seed("multiboot2", "minimal", boot_info([(6, mmap)]))
# ---- switch: steps [op][a][b]; op % 8: 0 lock vif a to MAC b, 1 remove port a,
# 2/3/4 a 60-byte/14-byte/runt frame from port a to MAC b from MAC op >> 3,
# 5 time moves a ticks on, 6 from port a's own MAC to MAC b, 7 to vif b's MAC.
def step(kind, a, b, source=0):
    return bytes([source << 3 | kind, a, b])


vifs = step(0, 1, 1) + step(0, 2, 2) + step(0, 3, 3)
seed("switch", "dom0", vifs + step(6, 1, 0xff) + step(7, 2, 0) + step(7, 0, 2, source=20) + step(6, 3, 20)
     + step(2, 0, 1, source=21) + step(5, 10, 0) + step(7, 1, 2) + step(1, 2, 0) + step(6, 1, 2) + step(0, 2, 2))
seed("switch", "spoof", vifs + step(2, 3, 2, source=1) + step(2, 0, 2, source=1) + step(2, 3, 0xff, source=30)
     + step(3, 2, 1, source=9) + step(4, 1, 0x21, source=1) + step(6, 2, 1))
seed("switch", "flood", vifs + b"".join(step(2, port, 0xff, source=n) for n in range(4, 24) for port in (0, 4))
     + step(7, 0, 1) + step(5, 8, 0) + step(2, 4, 5, source=25) + step(5, 1, 1) + step(7, 4, 3, source=26))
seed("switch", "full", b"".join(step(2, port, 0xff, source=port * 4 + n) for port in (0, 4) for n in range(4))
     + step(0, 1, 2) + step(1, 4, 0) + step(0, 1, 2) + step(0, 2, 2) + step(0, 3, 0x82) + step(0, 3, 0xff))
print("seeds written to", out)
