//! Which physical ranges dom0 may map as device memory
//! (`abi::physdev::PhysdevOp::MapMmio`): inside the device window, never RAM
//! and never hv's interrupt controllers.
//!
//! hv keeps only the forbidden ranges that meet the device window, so the
//! list is short whatever the firmware's memory map holds; if even that
//! overflows, the policy refuses every request rather than forget a range.

use abi::physdev::{DEVICE_WINDOW_BASE, DEVICE_WINDOW_END, MMIO_PAGES_MAX};
use arrayvec::ArrayVec;

use crate::frame::PhysRange;
use crate::multiboot2::MemoryMapEntry;

/// Most forbidden ranges kept inside the device window.
pub const FORBIDDEN_MAX: usize = 32;

/// Memory map kind 2: reserved (Multiboot2 spec 3.6.8). Every other kind is
/// RAM of some sort (available, ACPI reclaimable, ACPI NVS, defective) and
/// never device memory.
const KIND_RESERVED: u32 = 2;

/// Why a mapping request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address is not page aligned.
    Misaligned,
    /// Zero pages, more than `MMIO_PAGES_MAX`, or the range wraps.
    BadLength,
    /// Some of the range lies outside the device window.
    OutsideWindow,
    /// The range touches RAM or an interrupt controller.
    Forbidden,
}

/// The ranges of the device window dom0 must not map.
#[derive(Clone, Debug)]
pub struct DevicePolicy {
    forbidden: ArrayVec<PhysRange, FORBIDDEN_MAX>,
    /// More forbidden ranges than fit: refuse everything.
    overflowed: bool,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl DevicePolicy {
    /// A policy that forbids nothing yet (add the ranges before use).
    pub const fn new() -> DevicePolicy {
        DevicePolicy { forbidden: ArrayVec::new_const(), overflowed: false }
    }

    /// Forbids `[start, end)` (the part inside the device window).
    pub fn forbid(&mut self, start: u64, end: u64) {
        let start = start.max(DEVICE_WINDOW_BASE);
        let end = end.min(DEVICE_WINDOW_END);
        if start >= end {
            return;
        }
        if self.forbidden.try_push(PhysRange { start, end }).is_err() {
            self.overflowed = true;
        }
    }

    /// Forbids every range of the firmware's memory map not marked reserved.
    pub fn forbid_ram(&mut self, memory_map: &[MemoryMapEntry]) {
        for entry in memory_map.iter().filter(|entry| entry.kind != KIND_RESERVED) {
            self.forbid(entry.base, entry.end());
        }
    }

    /// Checks a request to map `pages` pages from `address`; returns the
    /// range to map.
    pub fn check(&self, address: u64, pages: u64) -> Result<PhysRange, Refusal> {
        if !address.is_multiple_of(abi::PAGE_SIZE) {
            return Err(Refusal::Misaligned);
        }
        if pages == 0 || pages > MMIO_PAGES_MAX {
            return Err(Refusal::BadLength);
        }
        // pages <= MMIO_PAGES_MAX, so the product cannot overflow.
        let end = address.checked_add(pages * abi::PAGE_SIZE).ok_or(Refusal::BadLength)?;
        if address < DEVICE_WINDOW_BASE || end > DEVICE_WINDOW_END {
            return Err(Refusal::OutsideWindow);
        }
        if self.overflowed || self.forbidden.iter().any(|range| range.start < end && address < range.end) {
            return Err(Refusal::Forbidden);
        }
        Ok(PhysRange { start: address, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAPIC: u64 = 0xfee0_0000;
    const IOAPIC: u64 = 0xfec0_0000;

    fn bochs_policy() -> DevicePolicy {
        let mut policy = DevicePolicy::new();
        policy.forbid_ram(&[
            MemoryMapEntry { base: 0, length: 0x9f000, kind: 1 },
            MemoryMapEntry { base: 0x9f000, length: 0x1000, kind: 2 },
            MemoryMapEntry { base: 0x100000, length: 0x7fef_0000, kind: 1 },
            MemoryMapEntry { base: 0x7fff_0000, length: 0x10000, kind: 3 },
            MemoryMapEntry { base: 0xfffc_0000, length: 0x40000, kind: 2 },
            MemoryMapEntry { base: 0x1_0000_0000, length: 0x4000_0000, kind: 1 },
        ]);
        policy.forbid(LAPIC, LAPIC + 0x1000);
        policy.forbid(IOAPIC, IOAPIC + 0x1000);
        policy
    }

    #[test]
    fn device_memory_is_allowed() {
        let policy = bochs_policy();
        assert_eq!(policy.check(0xc000_0000, 32), Ok(PhysRange { start: 0xc000_0000, end: 0xc002_0000 }));
        assert!(policy.check(0xc000_0000, MMIO_PAGES_MAX).is_ok());
        // Right up to the APICs and the end of the window; reserved firmware ranges too.
        assert!(policy.check(IOAPIC - 0x1000, 1).is_ok());
        assert!(policy.check(IOAPIC + 0x1000, 1).is_ok());
        assert!(policy.check(LAPIC + 0x1000, 1).is_ok());
        assert!(policy.check(DEVICE_WINDOW_END - 0x1000, 1).is_ok());
        assert!(policy.check(0xfffc_0000, 0x40).is_ok());
    }

    #[test]
    fn bad_arguments_are_refused() {
        let policy = bochs_policy();
        assert_eq!(policy.check(0xc000_0800, 1), Err(Refusal::Misaligned));
        assert_eq!(policy.check(0xc000_0000, 0), Err(Refusal::BadLength));
        assert_eq!(policy.check(0xc000_0000, MMIO_PAGES_MAX + 1), Err(Refusal::BadLength));
        assert_eq!(policy.check(0xc000_0000, u64::MAX), Err(Refusal::BadLength));
        assert_eq!(policy.check(!0xfff, 2), Err(Refusal::BadLength));
        assert_eq!(policy.check(DEVICE_WINDOW_BASE - 0x1000, 2), Err(Refusal::OutsideWindow));
        assert_eq!(policy.check(0x10_0000, 1), Err(Refusal::OutsideWindow));
        assert_eq!(policy.check(DEVICE_WINDOW_END - 0x1000, 2), Err(Refusal::OutsideWindow));
        assert_eq!(policy.check(DEVICE_WINDOW_END, 1), Err(Refusal::OutsideWindow));
    }

    #[test]
    fn ram_and_interrupt_controllers_are_refused() {
        let policy = bochs_policy();
        assert_eq!(policy.check(LAPIC, 1), Err(Refusal::Forbidden));
        assert_eq!(policy.check(IOAPIC, 1), Err(Refusal::Forbidden));
        assert_eq!(policy.check(IOAPIC - 0x1000, 2), Err(Refusal::Forbidden));
        assert_eq!(policy.check(0xfe00_0000, 4096), Err(Refusal::Forbidden));
        let mut low_ram = DevicePolicy::new();
        low_ram.forbid_ram(&[MemoryMapEntry { base: 0, length: 0xd000_0000, kind: 4 }]);
        assert_eq!(low_ram.check(0xc000_0000, 1), Err(Refusal::Forbidden));
        assert_eq!(low_ram.check(0xcfff_f000, 2), Err(Refusal::Forbidden));
        assert!(low_ram.check(0xd000_0000, 1).is_ok());
    }

    #[test]
    fn an_overflowing_list_refuses_everything() {
        let mut policy = DevicePolicy::new();
        for index in 0..FORBIDDEN_MAX as u64 + 1 {
            policy.forbid(0xc000_0000 + index * 0x10_0000, 0xc000_1000 + index * 0x10_0000);
        }
        assert_eq!(policy.check(0xf000_0000, 1), Err(Refusal::Forbidden));
        // Ranges wholly outside the window take no room.
        let mut outside = DevicePolicy::new();
        for index in 0..100 {
            outside.forbid(index << 32, (index << 32) + 0x1000 + (index == 0) as u64 * 0x1000);
        }
        assert!(outside.check(0xf000_0000, 1).is_ok());
    }
}
