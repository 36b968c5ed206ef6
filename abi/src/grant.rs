//! Grant tables, version 1 ([`crate::Hypercall::Grant`]): how a domain lets
//! one other domain reach one of its pages.
//!
//! The granter keeps a table of [`GrantEntry`] in a page of its own RAM and
//! registers it with [`GrantOp::SetupTable`]. To grant page `frame` to domain
//! `d`, it fills an entry (`frame`, `domain = d`) and then (release) sets
//! `flags = PERMIT_ACCESS` (plus `READONLY`). The entry's index is the grant
//! reference it passes to `d` (on a ring).
//!
//! The grantee either maps the page ([`GrantOp::Map`]: dom0 into its
//! foreign window, any other domain at a free guest-physical address of
//! its own, since 0.10) or asks hv to copy ([`GrantOp::Copy`]).
//! While mapped, and while a copy runs, hv keeps the `MAPPED` bit set in
//! the entry. hv sets it with an atomic compare-exchange of the very entry
//! it checked (since 0.8; the granter may revoke on another CPU at the same
//! moment), so a map or copy and a revocation never both succeed.
//!
//! Revoking: the granter clears `flags` with an atomic compare-exchange that
//! expects `MAPPED` clear. If the grantee still maps the page (or hv is
//! copying) the exchange fails and the grant stays: revocation is refused
//! meanwhile (`Busy` in pv-drivers); try again later.

use core::mem::{offset_of, size_of};

/// Entries in a one-page grant table.
pub const ENTRIES: usize = crate::PAGE_SIZE as usize / size_of::<GrantEntry>();

/// `flags` bits 0..2, the entry's type: [`PERMIT_ACCESS`] is the one type
/// Mica offers (Xen's `GTF_type_mask`; since ABI 1.0 any other value,
/// Xen's transfer and transitive types included, permits nothing).
pub const TYPE_MASK: u16 = 3;
/// `flags` type: the grantee may access the page (set by the granter;
/// Xen's `GTF_permit_access`).
pub const PERMIT_ACCESS: u16 = 1;
/// `flags`: read-only access (set by the granter; Xen's `GTF_readonly`,
/// bit 2 since ABI 1.0, bit 1 before).
pub const READONLY: u16 = 1 << 2;
/// `flags`: the grantee has the page mapped, or hv is copying it (set and
/// cleared by hv; Xen's `GTF_reading`, bit 3 since ABI 1.0, bit 2 before).
/// hv sets it for writable use too and never sets `GTF_writing` (bit 4):
/// a granter that checks both before revoking, as Xen's guests do, sees
/// the grant in use either way.
pub const MAPPED: u16 = 1 << 3;

const _: () = assert!(PERMIT_ACCESS == crate::xen::grant_table::GTF_PERMIT_ACCESS);
const _: () = assert!(TYPE_MASK == crate::xen::grant_table::GTF_TYPE_MASK);
const _: () = assert!(READONLY == crate::xen::grant_table::GTF_READONLY);
const _: () = assert!(MAPPED == crate::xen::grant_table::GTF_READING);

/// One grant, written by the granter (except `MAPPED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantEntry {
    /// `PERMIT_ACCESS`, `READONLY`, `MAPPED`.
    pub flags: u16,
    /// The domain allowed to use the grant (16 bits: ids are below 32768).
    pub domain: u16,
    /// The granter's guest frame number (guest-physical address / 4096).
    pub frame: u32,
}

const _: () = assert!(size_of::<GrantEntry>() == 8);
const _: () = assert!(offset_of!(GrantEntry, flags) == 0);
const _: () = assert!(offset_of!(GrantEntry, domain) == 2);
const _: () = assert!(offset_of!(GrantEntry, frame) == 4);
const _: () = assert!(ENTRIES == 512);

/// Grant operations (`a0` of the hypercall).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantOp {
    /// Registers the caller's grant table: one page at guest-physical `a1`.
    SetupTable = 0,
    /// Maps grant `a2` of domain `a1` at the caller's guest-physical `a3`,
    /// read-only if the grant says so. `a4` bit 0 ([`MAP_WRITABLE`]): the
    /// caller needs to write; a read-only grant is then refused with
    /// `Permission` instead of mapped read-only.
    ///
    /// dom0 maps in its foreign window (`InvalidArgument` outside it) and is
    /// refused with `Busy` when `a3` is mapped already, or when it has
    /// [`crate::domctl::FOREIGN_SHARE_PAGES`] pages of domain `a1` mapped
    /// (its share of the window; see [`crate::domctl::FOREIGN_WINDOW_BASE`]).
    ///
    /// Any other domain (since 0.10) maps at a page-aligned `a3` below
    /// [`GUEST_MAP_LIMIT`] (else `InvalidArgument`) where it has no RAM and
    /// no other mapping (else `Busy`), at most [`GUEST_MAPPINGS`] grants at
    /// once (`Busy` beyond). Its page tables must map `a3` for it to reach
    /// the page (the initial tables identity-map the first GiB).
    ///
    /// A grant stays mapped until the grantee unmaps it, or until the
    /// granter or the grantee is destroyed (hv unmaps it then). Touching
    /// the address after that is an EPT violation, as for any address
    /// without RAM: the domain is crashed.
    Map = 1,
    /// Removes the caller's grant mapping at guest-physical `a1` (`NotFound`
    /// if there is none). When it returns, no CPU reaches the page through
    /// the mapping any more: hv has flushed the translations of every CPU
    /// that ran the caller and waited for them (a TLB shootdown), and only
    /// then cleared `MAPPED`, so the granter may revoke the grant and reuse
    /// the page at once.
    Unmap = 2,
    /// Copies between a granted page and the caller's memory: `a1` the
    /// granter, `a2` the grant reference with the byte offset in the page in
    /// bits 32..44, `a3` the caller's guest-physical address, `a4` the length
    /// with the direction in bit 63 (1 = into the granted page). The range
    /// must stay within the granted page.
    Copy = 3,
}

impl GrantOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<GrantOp> {
        match number {
            0 => Some(GrantOp::SetupTable),
            1 => Some(GrantOp::Map),
            2 => Some(GrantOp::Unmap),
            3 => Some(GrantOp::Copy),
            _ => None,
        }
    }
}

/// Most grants a domain other than dom0 has mapped at once (since 0.10).
pub const GUEST_MAPPINGS: usize = 16;

/// A domain other than dom0 maps grants below this guest-physical address
/// (512 GiB; since 0.10).
pub const GUEST_MAP_LIMIT: u64 = 1 << 39;

/// `Map`'s flag in `a4`: the mapping must be writable.
pub const MAP_WRITABLE: u64 = 1 << 0;

/// `Copy`'s direction bit in `a4`.
pub const COPY_TO_GRANT: u64 = 1 << 63;
