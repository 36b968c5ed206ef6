//! dom0's back ends: the block and net devices it serves to guests over
//! shared rings, the console's rings being the toolstack's.
//!
//! The library holds what is checked and decided without the hardware,
//! host-tested:
//! - [`block`]: the checks of every blkif request, and the plan of disk
//!   transfers a request may make.
//! - [`net`]: vif entries, MAC addresses, the checks of every netif
//!   request, and the software L2 switch ([`net::switch`]) joining the
//!   guests' vifs and the physical NIC.
//! - [`device_link`]: the one attach/detach state machine for disks and
//!   vifs, through the store (Xen's xenbus handshake).
//! - [`window`]: dom0's foreign window, budgeted per guest between rings
//!   and persistent grants.
//!
//! The binary's halves sit beside them (declared in `main.rs`):
//! `block/blkback.rs` and `net/netback.rs` move the data through the
//! rings, and `data_path.rs` holds every back end with the disks and NIC
//! they drive and serves them, on a vCPU of its own when dom0 has two.

pub mod block;
pub mod device_link;
pub mod net;
pub mod window;
