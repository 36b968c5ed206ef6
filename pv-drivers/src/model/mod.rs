//! A model of what a guest's front ends talk to, for host tests: its
//! device pages ([`Memory`]), and dom0's side, run whenever the front end
//! waits.

mod memory;

pub use memory::Memory;
