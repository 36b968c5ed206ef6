//! What the store client and the front ends need from the machine they run
//! on: event channels, a timer, grants, and the pages they share with their
//! back ends.
//!
//! The guest runtime (`runtime`, on the guest target) implements these
//! traits with Xen's hypercalls and its own static pages; the host tests
//! implement them with a model of dom0 (`model`: a store and back ends that
//! run whenever the front end waits), so the protocol logic above them
//! (`store_client`, `xenbus`, `blkfront`, `netfront`, `net`) is the same
//! code on both, with no unsafe code of its own.
#![forbid(unsafe_code)]

use abi::DomainId;

use crate::ring::{FrontRing, Slot};

/// An access outside the pages the platform set aside for its front ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotDeviceMemory;

/// The pages a platform set aside for its front ends' rings and buffers
/// (the ones it shares with back ends), named by guest-physical address.
/// They are reached only through these methods, never through Rust
/// references; every access is checked to lie inside those pages, so a
/// wrong address is an error, not a stray write.
pub trait GuestMemory {
    /// Copies `bytes` to `address`.
    fn write(&mut self, address: u64, bytes: &[u8]) -> Result<(), NotDeviceMemory>;

    /// Copies `out.len()` bytes from `address` into `out`.
    fn read(&self, address: u64, out: &mut [u8]) -> Result<(), NotDeviceMemory>;

    /// A new front end of a ring on the page at `page` (page-aligned), its
    /// header written fresh (`FrontRing::new`).
    fn front_ring<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize>(
        &mut self,
        page: u64,
    ) -> Result<FrontRing<Req, Rsp, SLOTS, SLOT_SIZE>, NotDeviceMemory>;
}

/// Event channels, time and grants, for a front end in a domain of its own
/// with its back ends in `abi::DOM0`.
///
/// Waiting: [`Platform::wait_for_event`] returns after some event, perhaps
/// not the one wanted; callers look at what they wait for, arm the ring's
/// or the timer's event, and wait again. The ports a wait takes (clears)
/// are the platform's own (timer, console, store) and every port made by
/// [`Platform::alloc_port`] until [`Platform::close_port`]: hv lets a vCPU
/// block only while none of its unmasked ports is pending.
pub trait Platform: GuestMemory {
    /// Notifies the other end of `port`.
    fn notify(&mut self, port: u32);

    /// A new port that domain `remote` may bind (Xen's `alloc_unbound`);
    /// waits take it from now on.
    fn alloc_port(&mut self, remote: DomainId) -> Option<u32>;

    /// Closes `port`, made by [`Platform::alloc_port`].
    fn close_port(&mut self, port: u32);

    /// Tests and clears `port`'s pending bit.
    fn take_port(&mut self, port: u32) -> bool;

    /// Waits until some event arrives, then takes the pending bits of the
    /// ports waits take (see the trait's docs).
    fn wait_for_event(&mut self);

    /// The current time, in ticks (the TSC).
    fn now(&self) -> u64;

    /// Ticks in one second.
    fn ticks_per_second(&self) -> u64;

    /// Arms the single-shot timer: an event arrives at tick `deadline`.
    fn set_timer(&mut self, deadline: u64);

    /// Grants `domain` access to the page at `address`; the reference.
    fn grant(&mut self, domain: DomainId, address: u64, readonly: bool) -> Result<u32, abi::Error>;

    /// Revokes grant `reference`: `Busy` while the grantee maps the page.
    fn end_grant(&mut self, reference: u32) -> Result<(), abi::Error>;
}
