//! Example guest that measures hypercall round trips from a guest (not
//! dom0), prints them, then idles (so `console hcbench` can show them).
//!
//! With `mode=ping` / `mode=pong` on its command line (configs `hcping`
//! and `hcpong`, created in that order so pong is ping's domain id + 1) two
//! of them measure an event's way to the upcall of a vCPU that runs on
//! another CPU: pong offers ping a channel; then ping sends, pong's upcall
//! answers with a send, and ping takes the upcall: half the round trip is
//! one send-to-upcall. Both spin between events, so on a machine with two
//! CPUs each keeps one.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::event::EventOp;
use abi::xen::event_channel::{EvtchnOp, EvtchnSend};
use pv_drivers::guest::{self, Guest};
use pv_drivers::hypercall;

const CALLS: u64 = 10_000;
/// Event round trips ping measures.
const ROUNDS: u64 = 2_000;

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    match guest.cmdline().split_whitespace().find_map(|word| word.strip_prefix("mode=")) {
        Some("ping") => ping(&mut guest),
        Some("pong") => pong(&mut guest),
        _ => hypercalls(&mut guest),
    }
    loop {
        guest.wait_for_event();
    }
}

/// Waits, spinning, until an upcall has come since the upcall count was
/// `seen` and `port` is pending (and takes it).
fn spin_for_upcall(guest: &Guest, port: u32, seen: u64) {
    while guest.upcalls() == seen || !guest.take_port(port) {
        core::hint::spin_loop();
    }
}

/// Binds pong's offered port, then measures `ROUNDS` event round trips.
fn ping(guest: &mut Guest) {
    let pong = guest.domain_id() + 1;
    let tick = guest.ticks_per_second() / 20;
    let port = loop {
        // pong offers the lowest free port; a fresh guest's first few.
        if let Some(port) = (1..16).find_map(|port| hypercall::event(EventOp::BindInterdomain, pong as u64, port).ok())
        {
            break port as u32;
        }
        guest.sleep_until(guest::now() + tick);
    };
    let _ = writeln!(guest, "hcbench: ping: bound port {port} to d{pong}");
    let (mut total, mut minimum) = (0, u64::MAX);
    for _ in 0..ROUNDS {
        let seen = guest.upcalls();
        let start = guest::now();
        let _ = hypercall::notify(port);
        spin_for_upcall(guest, port, seen);
        let ticks = guest::now() - start;
        total += ticks;
        minimum = minimum.min(ticks);
    }
    let _ = writeln!(
        guest,
        "hcbench: event round trip to a vCPU on another CPU {} tsc (min {minimum}, {ROUNDS} rounds)",
        total / ROUNDS
    );
}

/// Offers ping (the domain before this one) a channel and answers every
/// event on it with one.
fn pong(guest: &mut Guest) {
    let ping = guest.domain_id() - 1;
    let Ok(port) = hypercall::event(EventOp::AllocUnbound, ping as u64, 0) else {
        let _ = writeln!(guest, "hcbench: pong: AllocUnbound for d{ping} failed");
        return;
    };
    let port = port as u32;
    let _ = writeln!(guest, "hcbench: pong: port {port} offered to d{ping}");
    // The upcall count is read before each send: ping's next event may
    // come (and its upcall run) before this loop would read it afterwards.
    let mut seen = guest.upcalls();
    loop {
        spin_for_upcall(guest, port, seen);
        seen = guest.upcalls();
        let _ = hypercall::notify(port);
    }
}

/// The guest's null hypercall and event send, from one CPU.
fn hypercalls(guest: &mut Guest) {
    let mut total = 0;
    let mut minimum = u64::MAX;
    for _ in 0..CALLS {
        let start = guest::now();
        hypercall::null();
        let ticks = guest::now() - start;
        total += ticks;
        minimum = minimum.min(ticks);
    }
    let _ = writeln!(guest, "hcbench: null hypercall {} tsc/call (min {minimum}, {CALLS} calls)", total / CALLS);
    // An event from this guest to another domain: the console channel to
    // dom0 (hv: port lookup, pending bit in dom0's event page, wake-up).
    let port = guest.console_port();
    let (mut total, mut minimum) = (0, u64::MAX);
    for _ in 0..CALLS {
        let start = guest::now();
        let _ = hypercall::notify(port);
        let ticks = guest::now() - start;
        total += ticks;
        minimum = minimum.min(ticks);
    }
    let _ = writeln!(guest, "hcbench: event send to dom0 {} tsc/call (min {minimum}, {CALLS} calls)", total / CALLS);
    // The same send in Xen's form (`event_channel_op` send, the port in a
    // structure hv reads through the guest's page tables).
    let (mut total, mut minimum) = (0, u64::MAX);
    for _ in 0..CALLS {
        let start = guest::now();
        let _ = pv_drivers::xen::event_channel(EvtchnOp::Send, &mut EvtchnSend { port });
        let ticks = guest::now() - start;
        total += ticks;
        minimum = minimum.min(ticks);
    }
    let _ =
        writeln!(guest, "hcbench: xen event send to dom0 {} tsc/call (min {minimum}, {CALLS} calls)", total / CALLS);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("hcbench: panic: {info}\n"))
}
