//! System tests of the UEFI boot: QEMU with OVMF, QEMU's UEFI firmware,
//! boots the same hybrid ISO as the BIOS tests, on the i440FX (`pc`) and
//! Q35 machines. QEMU's TCG emulates no VT-x, so hv gets as far as its
//! clean refusal; before it, hv must have found its memory in the memory
//! map GRUB converted from UEFI's and the ACPI tables through the RSDP GRUB
//! handed over. A missing OVMF fails the test with how to install it.

use mica_tests::{Iso, Qemu, fail, line_starting, line_where, scan, seconds};

/// Guest RAM of the QEMU runs, in KiB (`-m 256`).
const GUEST_RAM_KIB: u64 = 256 * 1024;

/// Boots `machine` by UEFI and checks hv's lines, in order: banner, memory,
/// ACPI, the refusal naming VT-x, "hv: halted"; then nothing else.
fn uefi_boot_reaches_the_clean_refusal(machine: &str) {
    let iso = Iso::get().unwrap_or_else(fail);
    // The default failure markers stop the wait at a refusal that comes
    // before the memory and ACPI lines.
    let mut qemu = Qemu::boot_uefi(iso, machine, seconds(180)).unwrap_or_else(fail);

    // boot_uefi consumed the firmware's output: hv's banner is the next line.
    let banner = qemu.expect(line_starting("hv: "), seconds(10)).unwrap_or_else(fail);
    assert!(
        banner.starts_with("hv: Mica hv "),
        "the first line after the firmware's should be hv's banner: {banner:?}"
    );

    let memory = qemu.expect(line_starting("hv: memory: "), seconds(30)).unwrap_or_else(fail);
    let memory = memory.lines().last().unwrap_or_default();
    let Some(numbers) = scan("hv: memory: {} KiB managed, {} KiB free", memory) else {
        panic!("hv's memory line should read \"hv: memory: <N> KiB managed, <N> KiB free\", got {memory:?}");
    };
    // Memory the firmware's boot services used is free once they exited:
    // most of the guest's RAM is hv's to manage.
    assert!(
        numbers[0] > GUEST_RAM_KIB * 3 / 4 && numbers[0] <= GUEST_RAM_KIB,
        "hv should manage most of the {GUEST_RAM_KIB} KiB of guest RAM under UEFI, got {memory:?}"
    );

    let acpi = qemu.expect(line_starting("hv: ACPI "), seconds(30)).unwrap_or_else(fail);
    let acpi = acpi.lines().last().unwrap_or_default();
    // OVMF hands over an ACPI 2.0 RSDP (multiboot2 tag 15) on both machines.
    assert!(
        acpi.starts_with("hv: ACPI 2.0+ RSDP: ") && acpi.contains("MADT I/O APIC at 0xfec00000, 1 CPUs"),
        "hv's ACPI line should name an ACPI 2.0+ RSDP and the MADT's I/O APIC and CPU, got {acpi:?}"
    );

    qemu.set_failure_markers(&["EXCEPTION", "panicked at"]);
    let reason = qemu.expect(line_starting("hv: cannot start: "), seconds(30)).unwrap_or_else(fail);
    let reason = reason.lines().last().unwrap_or_default().to_owned();
    assert!(reason.contains("VT-x"), "hv's reason for not starting should name VT-x, got {reason:?}");
    qemu.expect(line_where("the line \"hv: halted\"", |line| line == "hv: halted"), seconds(10)).unwrap_or_else(fail);

    // Halted means quiet: nothing after it, and no exception, for a while.
    std::thread::sleep(seconds(2));
    let transcript = qemu.transcript();
    let after_halt = &transcript[transcript.rfind("hv: halted").unwrap_or(0) + "hv: halted".len()..];
    assert!(
        after_halt.trim().is_empty(),
        "hv printed more after halting:\n{}\n--- whole console transcript ---\n{transcript}",
        after_halt.trim()
    );
}

/// The Q35 machine (PCIe, AHCI; no IDE controller) boots the ISO by UEFI.
#[test]
fn uefi_q35_reaches_the_clean_refusal() {
    uefi_boot_reaches_the_clean_refusal("q35");
}

/// The i440FX machine boots the ISO by UEFI.
#[test]
fn uefi_pc_reaches_the_clean_refusal() {
    uefi_boot_reaches_the_clean_refusal("pc");
}
