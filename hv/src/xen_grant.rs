//! Xen's `grant_table_op` map, unmap and copy (`abi::xen::grant_table`),
//! on Mica's grant operations (`grant_ops`): each call takes an array of
//! `count` entries at a guest-virtual address and answers every entry in
//! its own `status` (a `GNTST_*` number); the call itself returns 0, or
//! `-EFAULT` when the array cannot be read or written, `-EINVAL` for more
//! than [`BATCH_MAX`] entries.
//!
//! - map (`GNTMAP_host_map`, optionally `GNTMAP_readonly`): the granted
//!   page appears at guest-physical `host_addr` (dom0: in its foreign
//!   window; a guest: a free address below `abi::grant::GUEST_MAP_LIMIT`),
//!   as `GrantOp::Map` places it. `handle` is `host_addr`'s frame number,
//!   `dev_bus_addr` is `host_addr`. Device, application and PTE mappings
//!   (PV only) are `GNTST_general_error`.
//! - unmap: by `host_addr`, whose handle must be the map's.
//! - copy: one end a grant, the other a frame of the caller's
//!   (`GNTCOPY_source_gref` or `GNTCOPY_dest_gref`, not both: copies
//!   between two grants are `GNTST_general_error`), within a page each.

use abi::Error;
use abi::grant::{GrantOp, MAP_WRITABLE};
use abi::xen::Errno;
use abi::xen::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTMAP_HOST_MAP, GNTMAP_READONLY, GnttabCopy, GnttabMapGrantRef, GnttabOp,
    GnttabUnmapGrantRef, GrantStatus, copy_range_is_valid,
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::domctl::Hypervisor;
use crate::guest_virtual::AddressSpace;
use crate::platform::Platform;

/// Most entries one call takes (Xen would continue a longer batch later;
/// Mica asks for smaller ones).
pub const BATCH_MAX: u64 = 64;

/// Whether `operation` is one of the grant operations across domains this
/// module runs (with every domain locked).
pub fn is_table_op(operation: u32) -> bool {
    matches!(GnttabOp::from_number(operation), Some(GnttabOp::MapGrantRef | GnttabOp::UnmapGrantRef | GnttabOp::Copy))
}

/// `grant_table_op` `operation` on `count` entries at `address`, for the
/// domain in slot `caller`.
pub fn table_op<P: Platform>(
    hv: &mut Hypervisor<'_, P>,
    caller: usize,
    space: &AddressSpace,
    operation: u32,
    address: u64,
    count: u64,
) -> Result<u64, Errno> {
    if count > BATCH_MAX {
        return Err(Errno::Einval);
    }
    match GnttabOp::from_number(operation) {
        Some(GnttabOp::MapGrantRef) => each(hv, caller, space, address, count, |hv, entry: &mut GnttabMapGrantRef| {
            entry.status = map(hv, caller, entry).map_or_else(|status| status.number(), |()| 0);
        }),
        Some(GnttabOp::UnmapGrantRef) => {
            each(hv, caller, space, address, count, |hv, entry: &mut GnttabUnmapGrantRef| {
                entry.status = unmap(hv, caller, entry).map_or_else(|status| status.number(), |()| 0);
            })
        }
        Some(GnttabOp::Copy) => each(hv, caller, space, address, count, |hv, entry: &mut GnttabCopy| {
            entry.status = copy(hv, caller, entry).map_or_else(|status| status.number(), |()| 0);
        }),
        _ => Err(Errno::Enosys),
    }
}

/// Runs `one` on each of the `count` entries of type `T` at `address`,
/// writing each back (its status) before the next is read.
fn each<P: Platform, T: FromBytes + IntoBytes + Immutable>(
    hv: &mut Hypervisor<'_, P>,
    caller: usize,
    space: &AddressSpace,
    address: u64,
    count: u64,
    mut one: impl FnMut(&mut Hypervisor<'_, P>, &mut T),
) -> Result<u64, Errno> {
    for index in 0..count {
        let at = address.checked_add(index * size_of::<T>() as u64).ok_or(Errno::Efault)?;
        let mut entry: T = space.read_struct(&hv.domains[caller], at)?;
        one(hv, &mut entry);
        space.write(&hv.domains[caller], at, entry.as_bytes())?;
    }
    Ok(0)
}

/// The domain a grant operation names: the caller's own id or
/// `DOMID_SELF` names the caller.
fn named(hv: &Hypervisor<'_, impl Platform>, caller: usize, domid: u16) -> u64 {
    if domid == abi::xen::DOMID_SELF { u64::from(hv.domains[caller].id) } else { u64::from(domid) }
}

/// [`named`], for a domain that exists: else `GNTST_bad_domain`. (A
/// domain that exists but placed no grant table has granted nothing, as a
/// Xen domain whose table is all empty: `GNTST_permission_denied`.)
fn existing<P: Platform>(hv: &Hypervisor<'_, P>, caller: usize, domid: u16) -> Result<u64, GrantStatus> {
    let id = named(hv, caller, domid);
    let exists = abi::DomainId::try_from(id).ok().and_then(|id| hv.domains.slot_of(id)).is_some();
    if exists { Ok(id) } else { Err(GrantStatus::BadDomain) }
}

fn map<P: Platform>(
    hv: &mut Hypervisor<'_, P>,
    caller: usize,
    entry: &mut GnttabMapGrantRef,
) -> Result<(), GrantStatus> {
    if entry.flags & !(GNTMAP_HOST_MAP | GNTMAP_READONLY) != 0 || entry.flags & GNTMAP_HOST_MAP == 0 {
        return Err(GrantStatus::GeneralError);
    }
    if entry.r#ref as usize >= abi::grant::ENTRIES {
        return Err(GrantStatus::BadGntref);
    }
    if !entry.host_addr.is_multiple_of(abi::PAGE_SIZE) {
        return Err(GrantStatus::BadVirtAddr);
    }
    let writable = if entry.flags & GNTMAP_READONLY == 0 { MAP_WRITABLE } else { 0 };
    let granter = existing(hv, caller, entry.dom)?;
    let arguments = [GrantOp::Map as u64, granter, u64::from(entry.r#ref), entry.host_addr, writable];
    crate::grant_ops::grant_op(&mut hv.grants(), caller, arguments).map_err(|error| match error {
        // The granter exists but placed no table: it granted nothing.
        Error::NotFound => GrantStatus::PermissionDenied,
        Error::Permission => GrantStatus::PermissionDenied,
        Error::Busy | Error::OutOfMemory => GrantStatus::NoDeviceSpace,
        Error::InvalidArgument | Error::BadAddress => GrantStatus::BadVirtAddr,
        _ => GrantStatus::GeneralError,
    })?;
    entry.handle = (entry.host_addr / abi::PAGE_SIZE) as u32;
    entry.dev_bus_addr = entry.host_addr;
    Ok(())
}

fn unmap<P: Platform>(
    hv: &mut Hypervisor<'_, P>,
    caller: usize,
    entry: &GnttabUnmapGrantRef,
) -> Result<(), GrantStatus> {
    if u64::from(entry.handle) != entry.host_addr / abi::PAGE_SIZE {
        return Err(GrantStatus::BadHandle);
    }
    let arguments = [GrantOp::Unmap as u64, entry.host_addr, 0, 0, 0];
    crate::grant_ops::grant_op(&mut hv.grants(), caller, arguments).map(|_| ()).map_err(|error| match error {
        Error::NotFound | Error::InvalidArgument => GrantStatus::BadVirtAddr,
        _ => GrantStatus::GeneralError,
    })
}

fn copy<P: Platform>(hv: &mut Hypervisor<'_, P>, caller: usize, entry: &GnttabCopy) -> Result<(), GrantStatus> {
    if !copy_range_is_valid(entry.source.offset, entry.len) || !copy_range_is_valid(entry.dest.offset, entry.len) {
        return Err(GrantStatus::BadCopyArg);
    }
    let own = |hv: &Hypervisor<'_, P>, domid| named(hv, caller, domid) == u64::from(hv.domains[caller].id);
    // (the grant's end, the caller's frame, into the grant)
    let (grant, frame, to_grant) = match entry.flags & (GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF) {
        GNTCOPY_SOURCE_GREF => (entry.source, entry.dest, false),
        GNTCOPY_DEST_GREF => (entry.dest, entry.source, true),
        _ => return Err(GrantStatus::GeneralError),
    };
    if !own(hv, frame.domid) {
        return Err(GrantStatus::BadDomain);
    }
    let guest_physical =
        frame.gmfn().checked_mul(abi::PAGE_SIZE).ok_or(GrantStatus::BadPage)? + u64::from(frame.offset);
    let reference = u64::from(grant.grant_ref()) | u64::from(grant.offset) << 32;
    let length = u64::from(entry.len) | u64::from(to_grant) << 63;
    let granter = existing(hv, caller, grant.domid)?;
    let arguments = [GrantOp::Copy as u64, granter, reference, guest_physical, length];
    crate::grant_ops::grant_op(&mut hv.grants(), caller, arguments).map(|_| ()).map_err(|error| match error {
        // The granter exists but placed no table: it granted nothing.
        Error::NotFound => GrantStatus::PermissionDenied,
        Error::Permission => GrantStatus::PermissionDenied,
        Error::BadAddress => GrantStatus::BadPage,
        Error::InvalidArgument => GrantStatus::BadGntref,
        _ => GrantStatus::GeneralError,
    })
}
