//! The guest console ring: one page in the guest's memory that dom0's console
//! back end maps, with one event channel for notification both ways.
//!
//! Two byte rings: `output` (guest writes, dom0 reads) and `input` (dom0
//! writes, guest reads). Indices are free-running `u32` counters, never
//! reduced modulo the size; a ring holds `producer - consumer` bytes
//! (wrapping arithmetic), at index `counter % SIZE`. The producer writes the
//! bytes, then (release) the producer index; the consumer reads the producer
//! index (acquire), copies the bytes out, then (release) its consumer
//! index. A side that finds `producer - consumer > SIZE` treats the ring as
//! corrupt and stops using it (dom0 then disconnects the console for
//! good). After producing, send an event on the console channel; the other
//! side may also poll (dom0 polls every console's output ring, event or
//! not).
//!
//! The guest finds the page in its start-info page (`console_page`: dom0
//! maps it before the guest first runs and keeps it mapped until the guest
//! is destroyed or corrupts the ring) and its end of the channel in
//! `console_port` (a PVH guest: in the HVM parameters
//! `HVM_PARAM_CONSOLE_PFN` and `HVM_PARAM_CONSOLE_EVTCHN`). Since ABI 1.0
//! that port is the guest's own and already connected, as Xen's toolstack
//! does it: dom0 allocated it in the guest's table for itself
//! (`event_channel_op` alloc_unbound on the guest's behalf) and bound its
//! end before the guest first ran. The guest sends and receives the
//! console's events on it, binding nothing. (Before 1.0 the port was
//! dom0's, for the guest to bind.)

use core::mem::{offset_of, size_of};

/// Bytes in the input ring (dom0 to guest).
pub const INPUT_SIZE: usize = 1024;
/// Bytes in the output ring (guest to dom0).
pub const OUTPUT_SIZE: usize = 2048;

/// The console page layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleRing {
    /// Input bytes, written by dom0.
    pub input: [u8; INPUT_SIZE],
    /// Output bytes, written by the guest.
    pub output: [u8; OUTPUT_SIZE],
    /// Input consumer index, written by the guest.
    pub input_consumer: u32,
    /// Input producer index, written by dom0.
    pub input_producer: u32,
    /// Output consumer index, written by dom0.
    pub output_consumer: u32,
    /// Output producer index, written by the guest.
    pub output_producer: u32,
}

const _: () = assert!(size_of::<ConsoleRing>() == INPUT_SIZE + OUTPUT_SIZE + 16);
const _: () = assert!(size_of::<ConsoleRing>() <= crate::PAGE_SIZE as usize);
const _: () = assert!(offset_of!(ConsoleRing, input) == 0);
const _: () = assert!(offset_of!(ConsoleRing, output) == INPUT_SIZE);
const _: () = assert!(offset_of!(ConsoleRing, input_consumer) == INPUT_SIZE + OUTPUT_SIZE);
const _: () = assert!(offset_of!(ConsoleRing, input_producer) == INPUT_SIZE + OUTPUT_SIZE + 4);
const _: () = assert!(offset_of!(ConsoleRing, output_consumer) == INPUT_SIZE + OUTPUT_SIZE + 8);
const _: () = assert!(offset_of!(ConsoleRing, output_producer) == INPUT_SIZE + OUTPUT_SIZE + 12);
