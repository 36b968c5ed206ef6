//! Physical device access for dom0 ([`crate::Hypercall::Physdev`], since ABI
//! 0.5): the memory-mapped registers of the devices dom0 drives, and the
//! machine addresses its devices need for DMA.
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
//! unless each page is translated. Mica has no IOMMU support yet: a device
//! dom0 drives can reach all of memory, as in Xen without one.

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
    /// `a1` (any byte of its RAM), for a device's DMA. `InvalidArgument`
    /// when `a1` is not dom0's RAM (the ramdisk, the foreign window and
    /// device memory are refused).
    Translate = 1,
}

/// Most pages one [`PhysdevOp::MapMmio`] call maps (16 MiB).
pub const MMIO_PAGES_MAX: u64 = 4096;

impl PhysdevOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<PhysdevOp> {
        match number {
            0 => Some(PhysdevOp::MapMmio),
            1 => Some(PhysdevOp::Translate),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip() {
        for operation in [PhysdevOp::MapMmio, PhysdevOp::Translate] {
            assert_eq!(PhysdevOp::from_number(operation as u64), Some(operation));
        }
        assert_eq!(PhysdevOp::from_number(2), None);
        assert!(DEVICE_WINDOW_BASE.is_multiple_of(2 << 20) && DEVICE_WINDOW_END.is_multiple_of(2 << 20));
    }
}
