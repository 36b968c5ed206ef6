//! The hardware-independent core of the Mica hypervisor.
//!
//! Everything here is plain logic over injected memory, free of unsafe code,
//! so that it runs and is tested on the host (`cargo test -p hv`). The
//! architecture code in the `hv` binary feeds it real memory.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod acpi;
pub mod cpu_state;
pub mod cpuid_policy;
pub mod domain;
pub mod domctl;
pub mod elf;
pub mod event;
pub mod event_ops;
pub mod event_page;
pub mod exits;
#[cfg(test)]
pub mod fake_platform;
pub mod foreign;
pub mod frame;
pub mod grant_entry;
pub mod grant_ops;
pub mod guest;
pub mod guest_virtual;
pub mod io_ports;
pub mod log_ring;
pub mod mica_calls;
pub mod mmio;
pub mod multiboot2;
pub mod paging;
pub mod physdev;
pub mod platform;
pub mod scheduler;
pub mod smp;
#[cfg(test)]
mod test_random;
pub mod vlapic;
pub mod xen;
pub mod xen_grant;
