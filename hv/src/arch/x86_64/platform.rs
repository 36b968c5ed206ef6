//! Turning the machine off or resetting it.

use super::cpu::{halt_forever, outb, outw};

/// What the firmware's ACPI tables say about powering off (set at boot).
static ACPI: spin::Once<hvcore::acpi::AcpiInfo> = spin::Once::new();

/// Records the ACPI facts found at boot.
pub fn set_acpi(info: hvcore::acpi::AcpiInfo) {
    ACPI.call_once(|| info);
}

/// The ACPI facts found at boot, if any.
pub fn acpi() -> Option<&'static hvcore::acpi::AcpiInfo> {
    ACPI.get()
}

/// SLP_EN, PM1 control register bit 13 (ACPI 4.8.4.2.1).
const SLEEP_ENABLE: u16 = 1 << 13;

/// Powers the machine off: ACPI S5 through the FADT's PM1 control ports with
/// the DSDT's `\_S5` sleep types; if that did not stop the CPU, the PM1a
/// ports emulators commonly use (QEMU's PIIX4 at 0x604, Bochs's at 0xb004)
/// and Bochs's shutdown port; then it halts.
pub fn power_off() -> ! {
    crate::log::emergency(format_args!("hv: powering off\n"));
    super::serial::flush();
    if let Some(info) = ACPI.get()
        && let Some((type_a, type_b)) = info.s5_sleep_types
        && info.pm1a_control != 0
    {
        // SAFETY: the firmware describes these as the PM1 control ports;
        // writing SLP_TYP|SLP_EN there enters S5, which is what was asked.
        unsafe {
            outw(info.pm1a_control, (type_a as u16) << 10 | SLEEP_ENABLE);
            if info.pm1b_control != 0 {
                outw(info.pm1b_control, (type_b as u16) << 10 | SLEEP_ENABLE);
            }
        }
    }
    // SAFETY: writing SLP_EN|SLP_TYP=0 to a PM1a control register turns an
    // emulated PC off; on other machines these ports are unused.
    unsafe {
        outw(0x604, 0x2000);
        outw(0xb004, 0x2000);
        for byte in b"Shutdown" {
            outb(0x8900, *byte);
        }
    }
    crate::log::emergency(format_args!("hv: halted; it is now safe to turn the machine off\n"));
    halt_forever()
}

/// Resets the machine through the FADT's reset register when the firmware
/// has one, then the PCI reset control register (0xcf9), then the keyboard
/// controller.
pub fn reboot() -> ! {
    crate::log::emergency(format_args!("hv: rebooting\n"));
    super::serial::flush();
    if let Some(reset) = ACPI.get().and_then(|info| info.reset) {
        match reset.space {
            // SAFETY: the firmware describes this port as its reset register;
            // writing RESET_VALUE resets the machine, as asked.
            hvcore::acpi::ResetSpace::Io(port) => unsafe { outb(port, reset.value) },
            hvcore::acpi::ResetSpace::Memory(address) => {
                if address < super::memory::identity_limit() {
                    // SAFETY: as above, a byte register in identity-mapped
                    // physical memory the firmware names for this purpose.
                    unsafe { core::ptr::write_volatile(address as *mut u8, reset.value) }
                }
            }
        }
    }
    // SAFETY: 0xcf9 bit 2 with bit 1 set requests a hard reset; 0xfe to the
    // keyboard controller pulses the reset line. Both end hv, as asked.
    unsafe {
        outb(0xcf9, 0x06);
        outb(0x64, 0xfe);
    }
    halt_forever()
}
