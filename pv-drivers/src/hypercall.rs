//! Hypercall wrappers (convention in the `abi` crate documentation).

use abi::hypercall::{Hypercall, PlatformOp};
use abi::info::{DomainInfo, HvInfo};
use abi::{DomainId, Error};

/// Issues hypercall `number` with up to five arguments and returns RAX.
/// The number is a plain word so that tests can also make calls the ABI
/// does not define.
///
/// # Safety
/// Pointer arguments must name memory the caller owns for the call's
/// duration, as the hypercall's documentation requires.
#[inline(always)]
pub unsafe fn raw(number: u64, arguments: [u64; 5]) -> i64 {
    let result: i64;
    // SAFETY: VMCALL traps to the hypervisor, which preserves every register
    // except RAX; the caller vouches for the memory the arguments name.
    unsafe {
        core::arch::asm!(
            "vmcall",
            inlateout("rax") number => result,
            in("rdi") arguments[0],
            in("rsi") arguments[1],
            in("rdx") arguments[2],
            in("r10") arguments[3],
            in("r8") arguments[4],
            options(nostack),
        );
    }
    result
}

/// The guest-physical address of a buffer in identity-mapped domain memory.
fn address_of<T: ?Sized>(value: &T) -> u64 {
    value as *const T as *const u8 as u64
}

/// The hypervisor's ABI version (`major << 16 | minor`).
pub fn version() -> u32 {
    // SAFETY: no pointer arguments.
    unsafe { raw(Hypercall::Version as u64, [0; 5]) as u32 }
}

/// The cheapest round trip to the hypervisor.
#[inline(always)]
pub fn null() -> i64 {
    // SAFETY: no pointer arguments.
    unsafe { raw(Hypercall::Null as u64, [0; 5]) }
}

/// Writes text to the hypervisor log (at most 4096 bytes per call; longer
/// text is sent in pieces).
pub fn console_write(text: &[u8]) -> Result<(), Error> {
    for piece in text.chunks(abi::hypercall::CONSOLE_WRITE_MAX as usize) {
        // SAFETY: `piece` is readable memory of the given length.
        Error::decode(unsafe { raw(Hypercall::ConsoleWrite as u64, [address_of(piece), piece.len() as u64, 0, 0, 0]) })?;
    }
    Ok(())
}

/// Copies the most recent hypervisor log into `buffer`; returns the length.
pub fn dmesg(buffer: &mut [u8]) -> Result<usize, Error> {
    // SAFETY: `buffer` is writable memory of the given length.
    let result = unsafe { raw(Hypercall::DmesgRead as u64, [address_of(buffer), buffer.len() as u64, 0, 0, 0]) };
    Error::decode(result).map(|length| length as usize)
}

/// Whole-hypervisor information.
pub fn hv_info() -> Result<HvInfo, Error> {
    let info = HvInfo::default();
    let size = core::mem::size_of::<HvInfo>() as u64;
    // SAFETY: `info` is writable and `size` bytes long.
    Error::decode(unsafe { raw(Hypercall::HvInfo as u64, [address_of(&info), size, 0, 0, 0]) })?;
    Ok(info)
}

/// Information about domain `domain`.
pub fn domain_info(domain: DomainId) -> Result<DomainInfo, Error> {
    let info = DomainInfo::default();
    let size = core::mem::size_of::<DomainInfo>() as u64;
    // SAFETY: `info` is writable and `size` bytes long.
    Error::decode(unsafe { raw(Hypercall::DomainInfo as u64, [domain as u64, address_of(&info), size, 0, 0]) })?;
    Ok(info)
}

/// Asks the hypervisor to power off or reboot the machine (dom0 only).
/// Returns only on error.
pub fn platform(operation: PlatformOp) -> Error {
    // SAFETY: no pointer arguments.
    match Error::decode(unsafe { raw(Hypercall::Platform as u64, [operation as u64, 0, 0, 0, 0]) }) {
        Err(error) => error,
        Ok(_) => Error::InvalidArgument,
    }
}
