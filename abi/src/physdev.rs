//! Physical device access for dom0 ([`crate::Hypercall::Physdev`], since ABI
//! 0.5): the memory-mapped registers of the devices dom0 drives, and the
//! machine addresses its devices need for DMA, and the I/O ports of the
//! devices it finds on the PCI bus.
//!
//! hv owns the local APIC and the I/O APIC and every byte of RAM; dom0 may
//! map any other physical range (a PCI BAR it read from configuration
//! space). hv does not parse PCI: dom0 names the range.
//!
//! dom0's initial page tables map the PCI hole `[DEVICE_WINDOW_BASE, 4 GiB)`
//! identity, uncached; the EPT backs a page of it only once
//! [`PhysdevOp::MapMmio`] mapped it. Touching an unmapped page of the window
//! is an EPT violation and stops dom0, like any other stray access.
//!
//! DMA: dom0's guest-physical addresses are not machine addresses. A device
//! is given the machine address [`PhysdevOp::Translate`] returns for the
//! page; dom0's RAM is contiguous in machine memory within each 4 KiB page
//! only (in practice often 2 MiB), so a DMA buffer must not cross a page
//! unless each page is translated. A guest page dom0 mapped into its
//! foreign window (a grant mapping or `DomCtlOp::MapForeign`) translates
//! too, while it stays mapped, so a device can move a guest's data in
//! place; dom0 must stop the transfer before it unmaps the page. Mica has no
//! IOMMU support yet: a device dom0 drives can reach all of memory, as in
//! Xen without one.
//!
//! I/O ports: dom0's I/O bitmap passes through COM1, PCI configuration
//! mechanism #1 and the legacy ATA ports from the start. An I/O BAR the
//! firmware assigned (an IDE controller's bus-master registers) is reached
//! after [`PhysdevOp::AllowIoPorts`]; hv's own ports (timers, interrupt
//! controllers, reset and power-off, the firmware's debug ports) stay
//! intercepted whatever dom0 asks.

/// Lowest address of dom0's device window (3 GiB).
pub const DEVICE_WINDOW_BASE: u64 = 0xc000_0000;
/// End (exclusive) of dom0's device window (4 GiB).
pub const DEVICE_WINDOW_END: u64 = 0x1_0000_0000;

/// Operations of [`crate::Hypercall::Physdev`] (`a0`). dom0 only: any other
/// caller gets `Permission`.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysdevOp {
    /// Maps device memory into dom0's EPT at the same address, uncached:
    /// `a1` the machine address (page aligned), `a2` the number of pages
    /// (1..=[`MMIO_PAGES_MAX`]). The range must lie inside the device window
    /// and must not touch RAM (any range of the firmware's memory map that
    /// is not marked reserved), the local APIC or the I/O APIC; otherwise
    /// `InvalidArgument` and nothing is mapped. Mapping a page again is
    /// harmless. Returns 0.
    MapMmio = 0,
    /// Returns the machine address backing dom0's guest-physical address
    /// `a1`, for a device's DMA: any byte of dom0's RAM, or of a page of its
    /// foreign window that is mapped now (valid only until dom0 unmaps it).
    /// `a2`: flags, [`TRANSLATE_DEVICE_WRITES`] or 0. `InvalidArgument` when
    /// `a1` is neither (the ramdisk, device memory, an unmapped window page,
    /// anything past the window), when the device would write a window page
    /// dom0 may only read, or for an unknown flag.
    Translate = 1,
    /// Lets dom0 reach `a2` I/O ports from port `a1`
    /// (1..=[`IO_PORTS_MAX`] ports, ending at or below 0x10000) directly:
    /// they are cleared in dom0's I/O bitmap for good. `InvalidArgument`,
    /// with nothing changed, when the range wraps or passes 0xFFFF, or
    /// touches a port hv keeps: the PICs (0x20-0x21, 0xA0-0xA1) and their
    /// ELCR (0x4D0-0x4D1), the PIT (0x40-0x43) and its gate (0x61), the
    /// keyboard controller (0x60, 0x64), CMOS (0x70-0x71), system control
    /// port A (0x92), the reset control register (0xCF9), the ACPI PM1
    /// control ports (the FADT's, and 0x604 and 0xB004 that emulators use),
    /// and the emulators' debug ports (0xE9, 0x400-0x403, 0x8900). Allowing
    /// a port dom0 already reaches is harmless. Returns 0. (Since ABI 0.5.)
    AllowIoPorts = 2,
}

/// [`PhysdevOp::Translate`] flag (`a2`): the device will write the page, so
/// a window page dom0 mapped read-only (a read-only grant) is refused. RAM
/// is always writable.
pub const TRANSLATE_DEVICE_WRITES: u64 = 1 << 0;

/// Most ports one [`PhysdevOp::AllowIoPorts`] call opens (the largest I/O
/// BAR PCI allows).
pub const IO_PORTS_MAX: u64 = 256;

/// Most pages one [`PhysdevOp::MapMmio`] call maps (16 MiB).
pub const MMIO_PAGES_MAX: u64 = 4096;

impl PhysdevOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<PhysdevOp> {
        match number {
            0 => Some(PhysdevOp::MapMmio),
            1 => Some(PhysdevOp::Translate),
            2 => Some(PhysdevOp::AllowIoPorts),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip() {
        for operation in [PhysdevOp::MapMmio, PhysdevOp::Translate, PhysdevOp::AllowIoPorts] {
            assert_eq!(PhysdevOp::from_number(operation as u64), Some(operation));
        }
        assert_eq!(PhysdevOp::from_number(3), None);
        assert!(DEVICE_WINDOW_BASE.is_multiple_of(2 << 20) && DEVICE_WINDOW_END.is_multiple_of(2 << 20));
    }
}
