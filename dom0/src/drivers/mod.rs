//! dom0's device drivers: the 16550 UART (the serial console), PCI
//! configuration space, ATA disks and the e1000 NIC.
//!
//! The library holds what needs no hardware, host-tested:
//! - [`ata_protocol`]: IDENTIFY parsing, task-file values, request
//!   splitting, the bus-master DMA engine's registers and PRD tables, and
//!   PCI configuration-space decoding.
//! - [`e1000_ring`]: the e1000's registers, descriptors and ring index
//!   arithmetic.
//!
//! The binary's drivers sit beside them (declared in `main.rs`):
//! `uart.rs`, `pci.rs`, `ata.rs` and `e1000.rs`, which touch ports and
//! memory-mapped registers.

pub mod ata_protocol;
pub mod e1000_ring;
