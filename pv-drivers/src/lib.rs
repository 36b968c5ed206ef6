//! The guest side of Mica: hypercall wrappers, start-info access and the
//! helpers every domain (dom0 included) uses.
//!
//! Buffers passed to the hypervisor are named by guest-physical address. The
//! domain builder identity-maps a domain's memory (see
//! `abi::start_info`), so a pointer into that memory is its guest-physical
//! address; these wrappers rely on that and say so where they take buffers.
#![cfg_attr(not(test), no_std)]

pub mod console;
pub mod event_page;
pub mod grant;
#[cfg(target_os = "none")]
pub mod guest;
pub mod hypercall;
pub mod net;
pub mod ring;
pub mod xen;
// The tests share hv core's generator (one file for the workspace's tests).
#[cfg(test)]
#[path = "../../hv/src/test_random.rs"]
mod test_random;
