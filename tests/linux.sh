#!/usr/bin/env bash
# Gets the images for the Linux PVH guest (issue 11): Debian 12's stock kernel
# (package linux-image-amd64) and a busybox initramfs, with the system's
# package tools. Idempotent: everything is cached under target/linux/ (or
# $CARGO_TARGET_DIR/linux), and a second run only prints the sizes.
#
# Produces, in that directory:
#   vmlinux        the kernel's ELF, taken out of the bzImage's xz payload,
#                  each PT_LOAD's trailing zero bytes dropped from p_filesz
#                  (p_memsz kept: the domain builder zero-fills them)
#   initramfs.gz   a gzip'd cpio (newc) archive: /init (a busybox sh script),
#                  /bin/busybox, /dev/console, and the Xen front ends
#                  /lib/modules/xen-blkfront.ko and xen-netfront.ko (from the
#                  kernel's package; modules without dependencies, loaded
#                  with insmod); built without root
#   linux.cfg      the guest's configuration for dom0 (type, kernel, ramdisk,
#                  command line, 256 MiB, two vCPUs)
#   images.img     an images disk for dom0 (ata1-slave): an ext4 filesystem
#                  made with `mkfs.ext4 -d` holding the three files above, so
#                  `create linux` finds them there (too big for the ramdisk)
# Exits 0 with the images in place, or non-zero saying what it could not get
# (no network, no apt): callers must treat that as "not tested", never as a pass.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
out=$target/linux
mkdir -p "$out"
cd "$out"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The versioned package behind linux-image-amd64, e.g. linux-image-6.1.0-57-amd64.
resolve_kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

kernel_package=$(resolve_kernel_package || true)
if [ -z "$kernel_package" ] || ! apt-cache show busybox-static >/dev/null 2>&1; then
    echo "linux.sh: package lists do not know the kernel or busybox: apt-get update" >&2
    as_root apt-get update -qq
    kernel_package=$(resolve_kernel_package || true)
fi
if [ -z "$kernel_package" ]; then
    echo "linux.sh: cannot resolve linux-image-amd64 to a kernel package" >&2
    exit 1
fi

download() { # package
    local package=$1
    if ! ls "${package}"_*.deb >/dev/null 2>&1; then
        apt-get download -q "$package" >&2
    fi
    ls "${package}"_*.deb | head -n 1
}

if [ ! -s vmlinux ] || [ ! -s vmlinux.package ] || [ "$(cat vmlinux.package)" != "$kernel_package" ]; then
    deb=$(download "$kernel_package")
    rm -rf kernel-deb
    dpkg-deb -x "$deb" kernel-deb
    bzimage=$(ls kernel-deb/boot/vmlinuz-* | head -n 1)
    python3 - "$bzimage" vmlinux <<'PYTHON'
# bzImage -> ELF vmlinux with PT_LOAD trailing zeros dropped from p_filesz
# (p_memsz kept), packed, without section headers.
import lzma, struct, sys

bzimage = open(sys.argv[1], "rb").read()
if bzimage[0x202:0x206] != b"HdrS":
    sys.exit("not a bzImage: no HdrS setup header")
setup_sects = bzimage[0x1f1] or 4
payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
start = (setup_sects + 1) * 512 + payload_offset
payload = bzimage[start:start + payload_length]
if not payload.startswith(b"\xfd7zXZ"):
    sys.exit("the payload is not xz (starts with %r)" % payload[:6])
# The payload ends with the decompressed size (4 bytes, little endian).
elf = bytearray(lzma.decompress(payload[:-4], format=lzma.FORMAT_XZ))
if elf[:4] != b"\x7fELF" or elf[4] != 2:
    sys.exit("the payload is not an ELF64")

phoff, = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
headers = [struct.unpack_from("<IIQQQQQQ", elf, phoff + index * phentsize) for index in range(phnum)]

# A new file: the ELF header, the program headers, then each PT_LOAD's bytes
# without its trailing zeros, packed at page-aligned offsets (the physical
# addresses are page-aligned, so offset and address stay congruent mod 4 KiB).
out = bytearray(elf[:0x40])
table = len(out)
out += bytes(phnum * phentsize)
moved = []  # (old offset, old end, new offset) of each PT_LOAD's bytes
new_headers = []
for p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align in headers:
    if p_type == 1:
        size = p_filesz
        while size > 0 and elf[p_offset + size - 1] == 0:
            size -= 1
        out += bytes(-len(out) % 4096)
        moved.append((p_offset, p_offset + size, len(out)))
        new_offset = len(out)
        out += elf[p_offset:p_offset + size]
        new_headers.append((p_type, p_flags, new_offset, p_vaddr, p_paddr, size, p_memsz, 4096))
    else:
        new_headers.append((p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align))
# Other headers (the Xen notes) point into a PT_LOAD's bytes: move them along.
for index, header in enumerate(new_headers):
    p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = header
    if p_type != 1 and p_filesz > 0:
        for old, old_end, new in moved:
            if old <= p_offset and p_offset + p_filesz <= old_end:
                header = (p_type, p_flags, p_offset - old + new, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)
                break
        else:
            sys.exit("program header %d (type %d) lies outside every PT_LOAD" % (index, p_type))
    struct.pack_into("<IIQQQQQQ", out, table + index * phentsize, *header)
struct.pack_into("<Q", out, 0x20, table)
# No section headers.
struct.pack_into("<Q", out, 0x28, 0)
struct.pack_into("<HHH", out, 0x3a, 0, 0, 0)
open(sys.argv[2], "wb").write(out)
PYTHON
    echo "$kernel_package" >vmlinux.package
    rm -rf kernel-deb
fi

# The front ends, modules of the same kernel package.
if [ ! -s modules/xen-blkfront.ko ] || [ ! -s modules/xen-netfront.ko ] ||
    [ "$(cat modules/package 2>/dev/null)" != "$kernel_package" ]; then
    deb=$(download "$kernel_package")
    rm -rf kernel-deb modules
    dpkg-deb -x "$deb" kernel-deb
    mkdir -p modules
    for module in block/xen-blkfront net/xen-netfront; do
        cp "$(ls kernel-deb/lib/modules/*/kernel/drivers/$module.ko | head -n 1)" modules/
    done
    echo "$kernel_package" >modules/package
    rm -rf kernel-deb initramfs.gz
fi

# The archive's layout; a change here rebuilds it.
initramfs_version=2
if [ ! -s initramfs.gz ] || [ "$(cat initramfs.version 2>/dev/null)" != "$initramfs_version" ]; then
    deb=$(download busybox-static)
    rm -rf busybox-deb
    dpkg-deb -x "$deb" busybox-deb
    python3 - busybox-deb/bin/busybox initramfs.gz modules/xen-blkfront.ko modules/xen-netfront.ko <<'PYTHON'
# A cpio newc archive, written without root (device nodes included), gzip'd.
import gzip, os, sys

busybox = open(sys.argv[1], "rb").read()
modules = [(os.path.basename(path), open(path, "rb").read()) for path in sys.argv[3:]]
init = b"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "mica-linux: /init reached"
if [ -e /dev/hvc0 ]; then
    exec setsid cttyhack sh </dev/hvc0 >/dev/hvc0 2>&1
fi
exec sh </dev/console >/dev/console 2>&1
"""
entries = [
    # name, mode, content, (major, minor) of a device node
    ("bin", 0o040755, b"", None),
    ("dev", 0o040755, b"", None),
    ("proc", 0o040755, b"", None),
    ("sys", 0o040755, b"", None),
    ("tmp", 0o041777, b"", None),
    ("dev/console", 0o020600, b"", (5, 1)),
    ("bin/busybox", 0o100755, busybox, None),
    ("bin/sh", 0o120777, b"busybox", None),
    ("init", 0o100755, init, None),
    ("lib", 0o040755, b"", None),
    ("lib/modules", 0o040755, b"", None),
] + [("lib/modules/" + name, 0o100644, content, None) for name, content in modules]

def record(inode, name, mode, content, device):
    major, minor = device or (0, 0)
    name_bytes = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(content), 0, 0, major, minor,
              len(name_bytes), 0]
    header = b"070701" + b"".join(b"%08x" % field for field in fields)
    data = header + name_bytes
    data += b"\0" * (-len(data) % 4)
    data += content + b"\0" * (-len(content) % 4)
    return data

archive = b"".join(record(inode + 1, *entry) for inode, entry in enumerate(entries))
archive += record(0, "TRAILER!!!", 0, b"", None)
archive += b"\0" * (-len(archive) % 512)
open(sys.argv[2], "wb").write(gzip.compress(archive, 9))
PYTHON
    rm -rf busybox-deb
    echo "$initramfs_version" >initramfs.version
fi

# Rewritten only when it changes (the images disk is remade after it).
cat >linux.cfg.new <<'CONFIG'
# Debian 12's stock kernel as a PVH guest with a busybox initramfs
# (made by tests/linux.sh; tests/tests/linux.rs).
name = "linux"
type = "pvh"
memory = 256
vcpus = 2
kernel = "vmlinux"
disk = [ "ata1-master:4096+8192" ]
vif = [ "mac=02:00:00:00:00:0a" ]
ramdisk = "initramfs.gz"
cmdline = "console=hvc0 earlyprintk=xen cryptomgr.notests"
CONFIG
if cmp -s linux.cfg.new linux.cfg; then rm linux.cfg.new; else mv linux.cfg.new linux.cfg; fi

# The images disk: the three files, with room to spare. Remade when any is newer.
if [ ! -s images.img ] || [ vmlinux -nt images.img ] || [ initramfs.gz -nt images.img ] ||
    [ linux.cfg -nt images.img ]; then
    mkfs=$(command -v mkfs.ext4 || ls /sbin/mkfs.ext4 /usr/sbin/mkfs.ext4 2>/dev/null | head -n 1 || true)
    if [ -z "$mkfs" ]; then
        echo "linux.sh: mkfs.ext4 is missing: install e2fsprogs (./run-qemu.sh --install-deps)" >&2
        exit 1
    fi
    rm -rf images images.img
    mkdir images
    cp vmlinux initramfs.gz linux.cfg images/
    megabytes=$(( ($(du -sm images | cut -f1) * 5 / 4) + 16 ))
    "$mkfs" -q -F -L mica-images -d images images.img "${megabytes}M"
    rm -rf images
fi

echo "linux.sh: $kernel_package in $out"
for file in vmlinux initramfs.gz images.img; do
    echo "linux.sh: $file $(stat -c %s "$file") bytes"
done
