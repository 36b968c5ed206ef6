//! x86-64 support: boot, descriptor tables, serial, local APIC and VMX.

pub mod boot;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod lapic;
pub mod machine;
pub mod memory;
pub mod platform;
pub mod serial;
pub mod smp;
pub mod tsc;
pub mod vmx;
