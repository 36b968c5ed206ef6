//! Domains: a guest-physical address space (EPT), memory accounting, one
//! vCPU and its statistics.

use abi::info::{DomainInfo, DomainState, EXIT_REASON_SLOTS};
use abi::{DomainId, Error};
use hvcore::paging::{Access, Ept, PageTable};

use crate::arch::memory as physical;
use crate::arch::vmx::Vcpu;
use crate::memory::HvTables;

/// Most refused-port reports logged per domain (the rest are only counted).
const REFUSAL_REPORTS: u32 = 8;

/// A domain.
pub struct Domain {
    pub id: DomainId,
    pub state: DomainState,
    /// dom0: may use dom0-only hypercalls and owns the devices.
    pub privileged: bool,
    /// Guest-physical to host-physical translation.
    pub ept: PageTable<Ept>,
    /// Pages of RAM the domain owns now and at most.
    pub current_pages: u64,
    pub max_pages: u64,
    pub vcpu: Vcpu,
    /// TSC ticks spent in non-root mode.
    pub cpu_time_tsc: u64,
    pub exit_total: u64,
    pub exit_counts: [u64; EXIT_REASON_SLOTS],
    /// How many refused I/O or MSR accesses were logged so far.
    pub refusals_logged: u32,
}

impl Domain {
    /// Counts one VM exit by its basic reason.
    #[inline(always)]
    pub fn count_exit(&mut self, reason: u32) {
        self.exit_total += 1;
        let slot = (reason as usize).min(EXIT_REASON_SLOTS - 1);
        self.exit_counts[slot] += 1;
    }

    /// Whether one more refusal should be logged (rate limit).
    pub fn should_report_refusal(&mut self) -> bool {
        self.refusals_logged += 1;
        self.refusals_logged <= REFUSAL_REPORTS
    }

    /// Stops the domain for good because it misbehaved, with one log line.
    pub fn crash(&mut self, why: core::fmt::Arguments) {
        crate::error!("d{} crashed: {}", self.id, why);
        self.state = DomainState::Crashed;
    }

    /// Fills the ABI information structure.
    pub fn info(&self) -> DomainInfo {
        DomainInfo {
            domain_id: self.id,
            state: self.state as u32,
            current_pages: self.current_pages,
            max_pages: self.max_pages,
            vcpu_count: 1,
            _reserved0: 0,
            cpu_time_tsc: self.cpu_time_tsc,
            exit_total: self.exit_total,
            exit_counts: self.exit_counts,
        }
    }

    /// Copies a guest buffer into `out`.
    pub fn read_guest(&self, guest_physical: u64, out: &mut [u8]) -> Result<(), Error> {
        for chunk in hvcore::guest::page_chunks(guest_physical, out.len() as u64, u64::MAX)? {
            let host = translate(&self.ept, chunk.guest_physical, Access::READ)?;
            if !physical::copy_from(host, &mut out[chunk.offset..chunk.offset + chunk.length]) {
                return Err(Error::BadAddress);
            }
        }
        Ok(())
    }

    /// Copies `bytes` into the guest. On error some leading chunks may
    /// already have been written (the guest's own memory; no hv state changes).
    pub fn write_guest(&self, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
        write_through(&self.ept, guest_physical, bytes)
    }
}

/// Translates a guest-physical address the domain may access with `access`.
fn translate(ept: &PageTable<Ept>, guest_physical: u64, access: Access) -> Result<u64, Error> {
    match ept.translate(&HvTables, guest_physical) {
        Some((host, allowed, _)) if allowed.contains(access) => Ok(host),
        _ => Err(Error::BadAddress),
    }
}

/// Copies `bytes` to guest-physical memory mapped writable by `ept`.
pub fn write_through(ept: &PageTable<Ept>, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
    for chunk in hvcore::guest::page_chunks(guest_physical, bytes.len() as u64, u64::MAX)? {
        let host = translate(ept, chunk.guest_physical, Access::WRITE)?;
        if !physical::copy_to(host, &bytes[chunk.offset..chunk.offset + chunk.length]) {
            return Err(Error::BadAddress);
        }
    }
    Ok(())
}

/// The byte image of a `#[repr(C)]` ABI structure, for copying to a guest.
pub fn bytes_of<T: AbiStruct>(value: &T) -> &[u8] {
    // SAFETY: AbiStruct is only implemented for padding-free #[repr(C)]
    // structures of integers (their layouts are asserted in `abi`), so every
    // byte is initialised; the slice borrows `value`.
    unsafe { core::slice::from_raw_parts(value as *const T as *const u8, core::mem::size_of::<T>()) }
}

/// Marker for ABI structures that are plain bytes (no padding, no pointers).
///
/// # Safety
/// Implement only for `#[repr(C)]` types whose fields are integers or arrays
/// of integers with no implicit padding.
pub unsafe trait AbiStruct {}

// SAFETY: layouts asserted padding-free in abi::info and abi::start_info.
unsafe impl AbiStruct for abi::info::HvInfo {}
// SAFETY: as above.
unsafe impl AbiStruct for abi::info::DomainInfo {}
// SAFETY: as above.
unsafe impl AbiStruct for abi::start_info::StartInfo {}
