//! Turning the machine off or resetting it.

use super::cpu::{halt_forever, outb, outw};

/// Powers the machine off. Tries the ACPI PM1a control ports that PC
/// firmware commonly uses under emulators (QEMU's PIIX4 at 0x604, Bochs's
/// at 0xb004), then Bochs's shutdown port, then halts.
// TODO(acpi): find PM1a_CNT and SLP_TYP for S5 from the FADT and DSDT, so
// real machines power off too; until then they halt with a message.
pub fn power_off() -> ! {
    crate::log::emergency(format_args!("hv: powering off\n"));
    super::serial::flush();
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

/// Resets the machine through the PCI reset control register (0xcf9), then
/// the keyboard controller.
pub fn reboot() -> ! {
    crate::log::emergency(format_args!("hv: rebooting\n"));
    super::serial::flush();
    // SAFETY: 0xcf9 bit 2 with bit 1 set requests a hard reset; 0xfe to the
    // keyboard controller pulses the reset line. Both end hv, as asked.
    unsafe {
        outb(0xcf9, 0x06);
        outb(0x64, 0xfe);
    }
    halt_forever()
}
