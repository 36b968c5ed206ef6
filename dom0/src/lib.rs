//! dom0core: dom0's service logic, independent of the hardware, host-tested
//! (`cargo test -p dom0`) and free of unsafe code.
//!
//! dom0's source folders are its parts, and each holds both halves of its
//! part: the logic here, in the library, and the device side, in the
//! binary (`main.rs`). A folder's `mod.rs` is the library's module for it
//! and names the files that are the binary's.
//! - [`drivers`]: the hardware protocols of the UART, PCI, ATA and e1000
//!   drivers (the drivers themselves are the binary's).
//! - [`backends`]: what the block and net back ends accept from a guest,
//!   the software switch, the attach/detach handshake, the foreign window.
//! - [`store`]: the xenstore-compatible key/value store and its wire
//!   protocol.
//! - [`toolstack`]: guest configs, disk specs, the boot ramdisk, the
//!   images disk, and the domain builder with its ACPI tables.
//! - [`shell`]: the operator's shell: commands, line editor, and what it
//!   prints.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

// The images disk's filesystem reader allocates (the binary's heap).
extern crate alloc;

pub mod backends;
pub mod drivers;
pub mod shell;
pub mod store;
pub mod toolstack;
// The tests share hv core's generator (one file, used by both crates).
#[cfg(test)]
#[path = "../../hv/src/test_random.rs"]
mod test_random;
