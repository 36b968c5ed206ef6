#!/usr/bin/env bash
# Build Mica (hv, dom0, ramdisk, GRUB ISO) and boot it with the serial console
# on this terminal, so you can type at the `dom0> ` shell.
#
# QEMU with KVM is used when the host offers VT-x to guests (/dev/kvm and the
# vmx flag in /proc/cpuinfo); otherwise Bochs, whose CPU emulation includes
# VT-x with EPT (Debian's Bochs 2.7). Run with --help for the flags.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./run-qemu.sh [--qemu | --bochs | --build-only | --install-deps] [--uefi] [--help]

Builds hv and dom0 (cargo, release, x86_64-unknown-none), packs the ramdisk
(every file under <target>/ramdisk/) and makes <target>/mica.iso with GRUB,
then boots it with COM1 on this terminal. The ISO boots by BIOS and by UEFI,
from a CD or written to a USB stick (see README.md).

  (no flag)       QEMU with KVM if the host offers VT-x (/dev/kvm and vmx in
                  /proc/cpuinfo), otherwise Bochs
  --qemu          use QEMU (with KVM when the host offers VT-x, else TCG
                  emulation, which has no VT-x: hv then says it cannot start)
  --bochs         use Bochs (emulates VT-x with EPT; slower)
  --uefi          boot QEMU with UEFI firmware (OVMF, installed when
                  missing) instead of its BIOS; implies --qemu, since
                  Bochs boots by BIOS only
  --build-only    build the ISO only; its path is the last line of stdout
  --install-deps  install every missing package and the Rust target, then exit
  --help          show this text

Leaving: in QEMU press Ctrl-a then x; in Bochs press Ctrl-C. Typing
`poweroff` at the dom0 prompt ends either emulator.
<target> is $CARGO_TARGET_DIR if set, else ./target. Setting MICA_ISO=<path>
boots that ISO instead of building one. The physical disk guests' disks live
on is <target>/disk.img (64 MiB, created once), or MICA_DISK=<path>.
MICA_IMAGES=<image> attaches an images disk as the second disk on that
channel (ata1-slave): an ext4 image of guest kernels and configs, made
with `mkfs.ext4 -d <folder> <image> <size>`; dom0 lists it in `ls`.
MICA_HV_ARGS="<words>" adds to hv's command line (after loglevel=info; e.g.
maxcpus=1, loglevel=debug); the ISO is then <target>/mica-<words>.iso (other characters as _).
EOF
}

say() { printf 'run-qemu.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mode=auto
uefi=no
for arg in "$@"; do
    case "$arg" in
        --qemu) mode=qemu ;;
        --bochs) mode=bochs ;;
        --build-only) mode=build ;;
        --install-deps) mode=deps ;;
        --uefi) uefi=yes ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$arg'" ;;
    esac
done
if [ "$uefi" = yes ]; then
    case "$mode" in
        bochs) die "--uefi needs QEMU: Bochs boots by BIOS only" ;;
        auto) mode=qemu ;;
    esac
fi

# Cargo resolves a relative CARGO_TARGET_DIR against the current directory.
target_dir=${CARGO_TARGET_DIR:-$root_dir/target}
case "$target_dir" in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
export CARGO_TARGET_DIR=$target_dir

# --- dependencies -----------------------------------------------------------

# Each entry: package name and a file or command whose absence means the
# package is missing (checked without dpkg so that other distributions at
# least get the package names).
# The ISO carries both GRUB platforms: BIOS (i386-pc) and UEFI (x86_64-efi).
iso_deps=(
    "grub-common:grub-mkrescue"
    "grub-pc-bin:/usr/lib/grub/i386-pc/multiboot2.mod"
    "grub-efi-amd64-bin:/usr/lib/grub/x86_64-efi/multiboot2.mod"
    "xorriso:xorriso"
    "mtools:mformat"
    # objcopy: hv, dom0 and the guests go into the ISO without debug sections.
    "binutils:objcopy"
    # The C example guest: the host's compiler and Xen's public headers.
    "gcc:gcc"
    "libxen-dev:/usr/include/xen/xen.h"
)
bochs_deps=(
    "bochs:bochs"
    "bochsbios:/usr/share/bochs/BIOS-bochs-latest"
    "vgabios:/usr/share/vgabios/vgabios.bin"
)
qemu_deps=("qemu-system-x86:qemu-system-x86_64")
# OVMF, QEMU's UEFI firmware: its code and its variable store (each boot
# writes only to a snapshot of it).
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
uefi_deps=("ovmf:$ovmf_code")
# mkfs.ext4 makes images disks (the tests make theirs at run time).
images_deps=("e2fsprogs:/sbin/mkfs.ext4")

have() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

# ensure_packages ENTRY...: install the packages whose marker is missing.
ensure_packages() {
    local missing=() entry
    for entry in "$@"; do
        have "${entry#*:}" || missing+=("${entry%%:*}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            die "missing packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}"
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        die "missing packages (Debian names): ${missing[*]}; install them with your package manager"
    fi
    say "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q >&2 \
        && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || die "could not install: ${missing[*]}; try: sudo apt-get install ${missing[*]}"
    for entry in "$@"; do
        have "${entry#*:}" || die "package ${entry%%:*} installed but ${entry#*:} is still missing"
    done
}

ensure_rust() {
    command -v cargo >/dev/null 2>&1 \
        || die "Rust is not installed: install rustup from https://rustup.rs (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)"
    if command -v rustup >/dev/null 2>&1; then
        # Inside the workspace rustup uses rust-toolchain.toml's toolchain.
        if ! (cd "$root_dir" && rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none); then
            say "adding Rust target x86_64-unknown-none"
            (cd "$root_dir" && rustup target add x86_64-unknown-none >&2) \
                || die "could not add the Rust target: rustup target add x86_64-unknown-none"
        fi
    fi
}

# --- choosing the emulator ----------------------------------------------------

host_has_vmx() { grep -qw vmx /proc/cpuinfo 2>/dev/null; }
kvm_usable() { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }

if [ "$mode" = auto ]; then
    if kvm_usable && host_has_vmx; then
        mode=qemu
        say "using QEMU with KVM: /dev/kvm is usable and the CPU has vmx (Bochs: --bochs)"
    elif ! kvm_usable; then
        mode=bochs
        say "using Bochs: /dev/kvm is missing or not accessible, so QEMU cannot offer VT-x (force QEMU with --qemu)"
    else
        mode=bochs
        say "using Bochs: this CPU offers no vmx flag to KVM guests, so QEMU cannot offer VT-x (force QEMU with --qemu)"
    fi
fi

case "$mode" in
    deps)
        ensure_packages "${iso_deps[@]}" "${bochs_deps[@]}" "${qemu_deps[@]}" "${uefi_deps[@]}" "${images_deps[@]}"
        ensure_rust
        say "all dependencies are present"
        exit 0
        ;;
    build) ensure_packages "${iso_deps[@]}" ;;
    bochs) ensure_packages "${iso_deps[@]}" "${bochs_deps[@]}" ;;
    qemu) ensure_packages "${iso_deps[@]}" "${qemu_deps[@]}" ;;
esac
if [ "$uefi" = yes ] && [ "$mode" = qemu ]; then
    ensure_packages "${uefi_deps[@]}"
fi

# --- build --------------------------------------------------------------------

kernels=$target_dir/x86_64-unknown-none/release
# hv's command line in grub.cfg; extra words make an ISO of their own.
hv_args="loglevel=info${MICA_HV_ARGS:+ $MICA_HV_ARGS}"
iso=$target_dir/mica${MICA_HV_ARGS:+-$(printf '%s' "$MICA_HV_ARGS" | tr -c 'A-Za-z0-9.-' '_')}.iso

# build_iso: cargo build, pack the ramdisk, make $iso.
build_iso() {
    say "building hv, dom0 and the example guests (target dir $target_dir)"
    (cd "$root_dir" && cargo build --release --target x86_64-unknown-none -p hv -p dom0 >&2 \
        && cargo build --release --target x86_64-unknown-none -p pv-drivers --features example-guests --bins >&2) \
        || die "cargo build failed"

    local iso_root=$target_dir/iso
    local ramdisk_stage=$target_dir/ramdisk
    local ramdisk_tmp=$target_dir/ramdisk.tmp
    rm -rf "$iso_root" "$ramdisk_tmp"
    mkdir -p "$iso_root/boot/grub" "$ramdisk_stage"
    # GRUB reads every byte of hv and dom0 from the ISO (about 21
    # instructions a byte in an emulator): their debug sections, never
    # loaded, would be most of what it reads.
    for kernel in hv dom0; do
        objcopy --strip-debug "$kernels/$kernel" "$iso_root/boot/$kernel" 2>/dev/null \
            || cp "$kernels/$kernel" "$iso_root/boot/"
    done

    # The ramdisk is a ustar archive (no pax headers: simple for dom0 to
    # parse) of everything staged under <target>/ramdisk/, plus a README.txt
    # unless one is staged. Names carry no leading "./"; sorted, owner 0 and
    # mtime 0 make it reproducible.
    # The example guests and their configs (pv-drivers/guests/*.cfg), then
    # anything staged by hand or by the tests.
    mkdir -p "$ramdisk_tmp"
    # Debug sections are not loaded; dropping them keeps the ramdisk small.
    for guest in counter echo spinner smp grantmap crasher hcbench hostile disktest storetest nettest \
        attack-cpu attack-hv attack-dom0 attack-xsa hcfuzz xenhello; do
        objcopy --strip-debug "$kernels/$guest" "$ramdisk_tmp/$guest.elf" 2>/dev/null \
            || cp "$kernels/$guest" "$ramdisk_tmp/$guest.elf"
    done
    # The C guest, on Xen's own headers, freestanding: a PVH kernel (its
    # entry in pv-drivers/c/pvh.S, linked at 1 MiB by pv-drivers/c/pvh.ld).
    gcc -std=c11 -O2 -Wall -Wextra -Werror -ffreestanding -fno-stack-protector -fno-pic -no-pie \
        -mno-red-zone -mgeneral-regs-only -nostdlib -static -Wl,--build-id=none \
        -T "$root_dir/pv-drivers/c/pvh.ld" -o "$ramdisk_tmp/xenhelloc.elf" \
        "$root_dir/pv-drivers/c/pvh.S" "$root_dir/pv-drivers/c/xenhello.c" \
        || die "building the C guest (pv-drivers/c/) failed"
    cp "$root_dir"/pv-drivers/guests/*.cfg "$ramdisk_tmp/"
    cp -a "$ramdisk_stage/." "$ramdisk_tmp/"
    [ -e "$ramdisk_tmp/README.txt" ] \
        || echo "Mica initial ramdisk: guest kernels and guest configs for dom0." \
            >"$ramdisk_tmp/README.txt"
    (cd "$ramdisk_tmp" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort \
        | tar --format=ustar --no-recursion --owner=0 --group=0 --numeric-owner \
            --mtime=@0 -cf "$iso_root/boot/ramdisk.tar" -T -) \
        || die "could not make the ramdisk"
    rm -rf "$ramdisk_tmp"

    # GRUB stays off the serial port (no `serial`/`terminal_output` here), so
    # COM1 carries only what hv and dom0 print.
    cat >"$iso_root/boot/grub/grub.cfg" <<EOF
set timeout=0
set timeout_style=hidden
set default=0
menuentry "Mica" {
    multiboot2 /boot/hv $hv_args
    module2 /boot/dom0 dom0
    module2 /boot/ramdisk.tar ramdisk
    boot
}
EOF

    # One hybrid image for both GRUB platforms grub-mkrescue finds: BIOS
    # (i386-pc: El Torito and an MBR boot record) and UEFI (x86_64-efi: an
    # El Torito EFI entry and an EFI system partition), so it boots from a CD
    # and from a USB stick it was written to with dd. Each platform's core
    # image holds its disk, partition and ISO 9660 drivers; on the ISO are
    # only the modules grub.cfg needs (their dependencies come along) and the
    # partition maps GRUB probes when it searches the disks (it complains
    # about each one missing): a small ISO that Bochs reads quickly.
    say "making $iso"
    local grub_log=$target_dir/grub-mkrescue.log
    local partition_maps
    partition_maps=$(tr '\n' ' ' </usr/lib/grub/i386-pc/partmap.lst)
    if ! grub-mkrescue \
        --install-modules="normal multiboot2 iso9660 $partition_maps" \
        --locales= --fonts= --themes= \
        -o "$iso.tmp" "$iso_root" >"$grub_log" 2>&1; then
        cat "$grub_log" >&2
        die "grub-mkrescue failed"
    fi
    mv "$iso.tmp" "$iso"
}

if [ -n "${MICA_ISO:-}" ] && [ "$mode" != build ]; then
    [ -f "$MICA_ISO" ] || die "MICA_ISO=$MICA_ISO is not a file"
    iso=$(cd "$(dirname "$MICA_ISO")" && pwd)/$(basename "$MICA_ISO")
    say "booting $iso (from MICA_ISO; nothing built)"
else
    ensure_rust
    build_iso
fi
if [ "$mode" = build ]; then
    echo "$iso"
    exit 0
fi

# --- boot -----------------------------------------------------------------------

# The physical disk dom0 serves guest disks from: a 64 MiB raw image, made
# once and kept (guests' data persists across runs). It is the secondary
# channel's master (ata1-master) in both emulators; the CD is ata0-master.
disk=${MICA_DISK:-$target_dir/disk.img}
[ -e "$disk" ] || truncate -s 64M "$disk" || die "could not create the disk image $disk"
disk=$(cd "$(dirname "$disk")" && pwd)/$(basename "$disk")
say "disk image: $disk (ata1-master)"
# The images disk, if one is given: ata1-slave in both emulators.
images=${MICA_IMAGES:-}
images_qemu=()
images_bochs=
if [ -n "$images" ]; then
    [ -f "$images" ] || die "MICA_IMAGES=$images is not a file (make one with mkfs.ext4 -d <folder> <image> <size>)"
    images=$(cd "$(dirname "$images")" && pwd)/$(basename "$images")
    images_qemu=(-drive "file=$images,format=raw,if=ide,index=3")
    images_bochs="ata1-slave: type=disk, mode=flat, path=$images"
    say "images disk: $images (ata1-slave)"
fi

if [ "$mode" = qemu ]; then
    if kvm_usable && host_has_vmx; then
        accel=(-accel kvm -cpu host)
    else
        accel=(-accel tcg -cpu max)
        say "note: the host offers no VT-x to KVM guests, so QEMU runs with TCG, which emulates no VT-x: hv will say it cannot start"
    fi
    firmware=()
    if [ "$uefi" = yes ]; then
        firmware=(-drive "if=pflash,format=raw,readonly=on,file=$ovmf_code"
            -drive "if=pflash,format=raw,snapshot=on,file=$ovmf_vars")
        say "UEFI firmware: $ovmf_code (OVMF; its lines and GRUB's come before hv's)"
    fi
    say "booting QEMU; leave with Ctrl-a x"
    exec qemu-system-x86_64 "${accel[@]}" "${firmware[@]}" -m 512 \
        -drive "file=$iso,media=cdrom,if=ide,index=0" \
        -drive "file=$disk,format=raw,if=ide,index=2" "${images_qemu[@]}" \
        -nic user,model=e1000 \
        -serial mon:stdio -display none -no-reboot
fi

# Bochs: COM1 in `term` mode on this terminal. Bochs opens the terminal itself
# and makes it raw (including no signals); afterwards we turn signals back on
# so Ctrl-C reaches this script, which then stops Bochs.
[ -t 0 ] && [ -t 1 ] || die "Bochs mode needs a terminal on stdin and stdout (for tests use tests/run.sh)"
tty_path=$(tty)
work=$(mktemp -d "${TMPDIR:-/tmp}/mica-bochs.XXXXXX")
saved_tty=$(stty -g)
# Bochs leaves the terminal at speed 0 on exit; stty then restores everything
# but still reports failure once, so try twice.
restore_tty() { stty "$saved_tty" 2>/dev/null || stty "$saved_tty" 2>/dev/null || true; }
bochs_pid=
cleanup() {
    [ -n "$bochs_pid" ] && kill "$bochs_pid" 2>/dev/null || true
    restore_tty
    cp "$work/bochs.log" "$target_dir/bochs.log" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'printf "\r\n" >&2; say "Ctrl-C: stopping Bochs"; exit 130' INT TERM

# The display is Debian's only headless choice, rfb (a VNC server on port
# 5900 or the next free one); COM1 is the console that matters.
ln -s "$iso" "$work/mica.iso"
# One configuration for this script and the test harness.
sed -e "s|@MEMORY@|512|g" -e "s|@CPUS@|1|" -e "s|@DISK@|$disk|" -e "s|@ATA1_SLAVE@|$images_bochs|" \
    -e "s|@ETHMOD@|slirp|" -e "s|@COM1@|mode=term, dev=$tty_path|" \
    "$root_dir/tests/bochsrc.template" >"$work/bochsrc"
printf 'c\nquit\n' >"$work/dbg.rc"

say "booting Bochs (log: $target_dir/bochs.log); leave with Ctrl-C or 'poweroff'"
stty raw -echo
(cd "$work" && exec bochs -q -f bochsrc -rc dbg.rc </dev/null >bochs.out 2>&1) &
bochs_pid=$!
# Bochs makes the terminal raw when it sets up COM1 (its settings carry no
# speed, so the speed reads 0 from then on). Then turn signals and newline
# translation back on, so that Ctrl-C reaches this script (Bochs also clears
# the control characters, intr among them).
for _ in $(seq 300); do
    [ "$(stty speed <"$tty_path" 2>/dev/null)" = 0 ] && break
    kill -0 "$bochs_pid" 2>/dev/null || break
    sleep 0.05
done
stty isig intr '^C' opost onlcr <"$tty_path" 2>/dev/null || true
status=0
wait "$bochs_pid" || status=$?
bochs_pid=
restore_tty
printf '\n' >&2
case "$status" in
    0 | 1) say "Bochs stopped (status $status; the guest powered off or stopped it)" ;;
    *) say "Bochs failed with status $status; end of bochs.log:"
       tail -n 20 "$work/bochs.log" >&2 || true ;;
esac
exit "$status"
