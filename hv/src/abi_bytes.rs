//! Byte views of ABI structures, for copying them to and from guests.

use abi::Error;

use crate::hypervisor::Domain;

/// The byte image of a `#[repr(C)]` ABI structure, for copying to a guest.
pub fn bytes_of<T: AbiStruct>(value: &T) -> &[u8] {
    // SAFETY: AbiStruct is only implemented for padding-free #[repr(C)]
    // structures of integers (their layouts are asserted in `abi`), so every
    // byte is initialised; the slice borrows `value`.
    unsafe { core::slice::from_raw_parts(value as *const T as *const u8, core::mem::size_of::<T>()) }
}

/// Reads an ABI structure out of guest memory (a copy; the guest may change
/// its memory at any time, so the copy is what gets validated and used).
pub fn read_struct<T: AbiStruct + Default>(domain: &Domain, guest_physical: u64) -> Result<T, Error> {
    let mut value = T::default();
    // SAFETY: AbiStruct types are plain integers without padding, so any
    // byte pattern is a valid value; the slice covers exactly `value`.
    let bytes = unsafe { core::slice::from_raw_parts_mut(&mut value as *mut T as *mut u8, core::mem::size_of::<T>()) };
    domain.read_guest(guest_physical, bytes)?;
    Ok(value)
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
// SAFETY: layout asserted padding-free in abi::domctl (explicit _reserved0).
unsafe impl AbiStruct for abi::domctl::VcpuContext {}
// SAFETY: layout asserted padding-free in abi::domctl (explicit _reserved0).
unsafe impl AbiStruct for abi::domctl::VcpuInfo {}
