//! The guest side of Mica: hypercall wrappers, start-info access and the
//! helpers every domain (dom0 included) uses.
//!
//! Buffers passed to the hypervisor are named by guest-physical address. The
//! domain builder identity-maps a domain's memory (see
//! `abi::start_info`), so a pointer into that memory is its guest-physical
//! address; these wrappers rely on that and say so where they take buffers.
//!
//! The guest's drivers, from the bottom up: `hypercall` and `xen` (the
//! calls), `runtime` (events, timer, console, device pages; guest target
//! only), `platform` (what the layers above need of the runtime, as
//! traits), `store_client` (xs_wire), `xenbus` (the device handshake),
//! `blkfront` and `netfront` (over `ring` and `net`), and `guest`, which
//! puts them behind one value. Everything from `platform` up is built and
//! tested on the host too, against a model of dom0 (`model`).
#![cfg_attr(not(test), no_std)]

pub mod blkfront;
pub mod console;
pub mod event_page;
pub mod grant;
#[cfg(target_os = "none")]
pub mod guest;
pub mod hypercall;
#[cfg(test)]
mod model;
pub mod net;
pub mod netfront;
pub mod platform;
pub mod ring;
#[cfg(target_os = "none")]
pub mod runtime;
pub mod store_client;
pub mod xen;
pub mod xenbus;
// The tests share hv core's generator (one file for the workspace's tests).
#[cfg(test)]
#[path = "../../hv/src/test_random.rs"]
mod test_random;
