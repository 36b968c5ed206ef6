//! Wrappers for Xen's guest hypercalls (`abi::xen`) as far as hv offers
//! them (issue 10: `xen_version`, `console_io`, `sched_op`). Results are
//! Xen's: a value, or an [`Errno`].
//!
//! Pointer arguments are guest-virtual addresses (hv walks the calling
//! vCPU's page tables); a reference passed here is such an address.

use abi::xen::console_io::ConsoleIoOp;
use abi::xen::sched::{SchedOp, SchedShutdown, ShutdownReason};
use abi::xen::version::{XenExtraversion, XenFeatureInfo, XenVersionOp};
use abi::xen::{Errno, Hypercall};

use crate::hypercall::raw;

/// Makes Xen hypercall `number` with `arguments` (the rest 0).
///
/// # Safety
/// Pointer arguments must name memory the caller owns for the call's
/// duration, as the call's documentation requires.
unsafe fn call(number: Hypercall, [a1, a2, a3]: [u64; 3]) -> Result<u64, Errno> {
    // SAFETY: passed on from the caller.
    Errno::decode(unsafe { raw(number.number(), [a1, a2, a3, 0, 0]) })
}

/// The Xen interface version hv reports (`major << 16 | minor`).
pub fn version() -> Result<u32, Errno> {
    // SAFETY: no pointer argument.
    unsafe { call(Hypercall::XenVersion, [u64::from(XenVersionOp::Version.number()), 0, 0]) }.map(|v| v as u32)
}

/// The version suffix (Mica's names it: `.0-mica`).
pub fn extraversion() -> Result<XenExtraversion, Errno> {
    let mut text = XenExtraversion::default();
    let address = &raw mut text as u64;
    // SAFETY: `text` is ours and as large as the call writes.
    unsafe { call(Hypercall::XenVersion, [u64::from(XenVersionOp::Extraversion.number()), address, 0]) }?;
    Ok(text)
}

/// Word `index` of the feature bitmap (`XENFEAT_*` bits).
pub fn features(index: u32) -> Result<u32, Errno> {
    let mut info = XenFeatureInfo { submap_idx: index, submap: 0 };
    let address = &raw mut info as u64;
    // SAFETY: `info` is ours; the call reads and writes it.
    unsafe { call(Hypercall::XenVersion, [u64::from(XenVersionOp::GetFeatures.number()), address, 0]) }?;
    Ok(info.submap)
}

/// Writes `text` to hv's console (`console_io`).
pub fn console_write(text: &[u8]) -> Result<(), Errno> {
    let (count, address) = (text.len() as u64, text.as_ptr() as u64);
    // SAFETY: hv reads `text`, which outlives the call.
    unsafe { call(Hypercall::ConsoleIo, [u64::from(ConsoleIoOp::Write.number()), count, address]) }.map(|_| ())
}

/// Shuts this domain down for `reason`. Once hv took it the vCPU does not
/// run again, so this returns only hv's refusal.
pub fn shutdown(reason: ShutdownReason) -> Result<(), Errno> {
    let request = SchedShutdown { reason: reason.number() };
    let address = &raw const request as u64;
    // SAFETY: hv reads `request`, which outlives the call.
    unsafe { call(Hypercall::SchedOp, [u64::from(SchedOp::Shutdown.number()), address, 0]) }.map(|_| ())
}
