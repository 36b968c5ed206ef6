//! dom0's service logic, independent of the hardware: the shell's line
//! editor and command parser, and the formatting of what it reports.
//! Host-tested (`cargo test -p dom0`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod acpi_tables;
pub mod ata_protocol;
pub mod block_backend;
pub mod builder;
pub mod config;
pub mod cpu_list;
pub mod device_link;
pub mod disk_spec;
pub mod e1000_ring;
pub mod line_editor;
pub mod net_backend;
pub mod report;
pub mod selftest;
pub mod shell;
pub mod store;
pub mod switch;
pub mod tar;
pub mod terminal;
pub mod window;
// The tests share hv core's generator (one file, used by both crates).
#[cfg(test)]
#[path = "../../hv/src/test_random.rs"]
mod test_random;
