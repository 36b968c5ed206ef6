//! Example guest: runs on every vCPU its domain has (`vcpus` in its
//! config; [`Guest::vcpu_count`] asks Xen's `VCPUOP_is_up`). vCPU 0 starts
//! vCPUs 1 to N-1 (`VCPUOP_initialise` and `VCPUOP_up`), each on a stack of
//! its own with its id as the argument, and prints `smp: vcpu <i> started`
//! (or why not) for each. Each of them checks that Xen's CPUID leaf
//! (`base + 4`, EBX) names the same id (else the
//! domain crashes with a message in hv's log), then spins forever adding
//! one to a counter of its own, yielding now and then. vCPU 0 prints,
//! once per half second of guest time,
//!
//! ```text
//! smp: vcpus 4 up; counts 0:<n> 1:<n> 2:<n> 3:<n>
//! ```
//!
//! where `vcpus` counts the vCPUs running (vCPU 0 and those started), the
//! counts are each vCPU's loop iterations (vCPU 0 counts its lines), one
//! per vCPU of the domain. Only vCPU 0 uses the `Guest` (console, events):
//! the runtime is not thread-safe; the others share only atomics.
//!
//! Interprocessor interrupts: before starting the others, vCPU 0 binds an
//! IPI port for each of them (`EVTCHNOP_bind_ipi`) and one for itself.
//! Each other vCPU takes upcalls (`guest::accept_upcalls`); with every line
//! vCPU 0 sends each of them an IPI, and each answers with an IPI to vCPU
//! 0. vCPU 0 then prints
//!
//! ```text
//! smp: ipis 1:<n> 2:<n> 3:<n>; answers <m>
//! ```
//!
//! with the IPIs each vCPU took and the answers vCPU 0 saw.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::hypercall::MAX_VCPUS;
use pv_drivers::guest::{self, Guest};
use pv_drivers::xen;

/// One vCPU's counter, on a cache line of its own (no false sharing
/// between vCPUs spinning on different CPUs).
#[repr(C, align(64))]
struct Counter(AtomicU64);

/// Each vCPU's count, indexed by vCPU id.
static COUNTS: [Counter; MAX_VCPUS as usize] = [const { Counter(AtomicU64::new(0)) }; MAX_VCPUS as usize];

/// The IPI port notifying each vCPU (index = vCPU id; 0 = none), and the
/// one notifying vCPU 0 that the others answer on.
static IPI_PORTS: [AtomicU64; MAX_VCPUS as usize] = [const { AtomicU64::new(0) }; MAX_VCPUS as usize];
static ANSWER_PORT: AtomicU64 = AtomicU64::new(0);
/// IPIs each vCPU took (index = vCPU id).
static IPIS: [Counter; MAX_VCPUS as usize] = [const { Counter(AtomicU64::new(0)) }; MAX_VCPUS as usize];

/// Bytes of stack for each vCPU vCPU 0 starts.
const STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// The stacks of vCPUs 1 to `MAX_VCPUS - 1` (vCPU i uses entry i - 1);
/// touched only by those vCPUs, never through a reference.
static mut STACKS: [Stack; MAX_VCPUS as usize - 1] = [const { Stack([0; STACK_SIZE]) }; MAX_VCPUS as usize - 1];

/// A spinning vCPU yields after this many iterations, so that the CPU it
/// shares goes round sooner (the scheduler would preempt it anyway).
const YIELD_EVERY: u64 = 1 << 16;

/// The top of vCPU `vcpu`'s stack (1 to `MAX_VCPUS - 1`).
fn stack_top(vcpu: u32) -> u64 {
    let stacks = &raw mut STACKS as u64;
    stacks + u64::from(vcpu) * STACK_SIZE as u64
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let vcpus = guest.vcpu_count().min(MAX_VCPUS);
    let _ = writeln!(guest, "smp: domain {} has {vcpus} vcpus", guest.domain_id());
    match xen::vcpu_id() {
        Some(0) => {}
        other => {
            let _ = writeln!(guest, "smp: vcpu 0 is told it is {other:?}");
        }
    }
    // IPI ports first, so the others find theirs when they start.
    for vcpu in 1..vcpus {
        if let Ok(port) = xen::evtchn::bind_ipi(vcpu) {
            IPI_PORTS[vcpu as usize].store(u64::from(port), Ordering::Release);
        }
    }
    let answers_port = u64::from(xen::evtchn::bind_ipi(0).unwrap_or(0));
    // Masked: answers need no upcall (vCPU 0 looks once per line), and an
    // unmasked pending port would keep vCPU 0 from sleeping.
    // SAFETY: the runtime's shared-info page; one locked bit operation.
    unsafe { pv_drivers::event_page::mask(guest::event_page(), answers_port as u32) };
    ANSWER_PORT.store(answers_port, Ordering::Release);
    let mut answers = 0;
    let mut up = 1;
    for vcpu in 1..vcpus {
        // SAFETY: stack entry `vcpu - 1` belongs to this vCPU alone, and
        // `secondary` touches only the atomic counters.
        match unsafe { guest.start_vcpu(vcpu, secondary, stack_top(vcpu), u64::from(vcpu)) } {
            Ok(()) => {
                up += 1;
                let _ = writeln!(guest, "smp: vcpu {vcpu} started");
            }
            Err(error) => {
                let _ = writeln!(guest, "smp: vcpu {vcpu} not started: {}", error.describe());
            }
        }
    }

    let half_second = guest.ticks_per_second() / 2;
    let mut deadline = guest::now() + half_second;
    loop {
        guest.sleep_until(deadline);
        deadline += half_second;
        COUNTS[0].0.fetch_add(1, Ordering::Relaxed);
        // One write per line: the line reaches the console whole.
        let mut line = arrayvec::ArrayString::<256>::new();
        let _ = write!(line, "smp: vcpus {up} up; counts");
        for (vcpu, counter) in COUNTS.iter().enumerate().take(vcpus as usize) {
            let _ = write!(line, " {vcpu}:{}", counter.0.load(Ordering::Relaxed));
        }
        let _ = line.try_push('\n');
        guest.write(line.as_bytes());
        if guest.take_port(answers_port as u32) {
            answers += 1;
        }
        if vcpus > 1 {
            let mut line = arrayvec::ArrayString::<256>::new();
            let _ = write!(line, "smp: ipis");
            for (vcpu, count) in IPIS.iter().enumerate().take(vcpus as usize).skip(1) {
                let _ = write!(line, " {vcpu}:{}", count.0.load(Ordering::Relaxed));
            }
            let _ = writeln!(line, "; answers {answers}");
            guest.write(line.as_bytes());
            for port in IPI_PORTS.iter().take(vcpus as usize).skip(1) {
                let port = port.load(Ordering::Acquire);
                if port != 0 {
                    let _ = xen::evtchn::notify(port as u32);
                }
            }
        }
    }
}

/// Where vCPUs 1.. start, with interrupts off and no IDT: checks its id,
/// then counts forever.
extern "C" fn secondary(vcpu: u64) -> ! {
    match xen::vcpu_id() {
        Some(id) if u64::from(id) == vcpu => {}
        other => guest::crash(format_args!("smp: vcpu {vcpu} is told it is {other:?}\n")),
    }
    let Some(counter) = COUNTS.get(vcpu as usize) else {
        guest::crash(format_args!("smp: vcpu {vcpu} has no counter\n"))
    };
    // SAFETY: once, on this vCPU, on its own stack.
    unsafe { guest::accept_upcalls() };
    let ipi_port = IPI_PORTS[vcpu as usize].load(Ordering::Acquire) as u32;
    let mut upcalls = 0;
    loop {
        let count = counter.0.fetch_add(1, Ordering::Relaxed) + 1;
        if count.is_multiple_of(YIELD_EVERY) {
            xen::yield_now();
        }
        // An upcall since the last look: was it our IPI? Then answer.
        let taken = guest::vcpu_upcalls(vcpu as u32);
        if taken != upcalls {
            upcalls = taken;
            // SAFETY: the runtime's registered event page; the bit is
            // taken with an atomic operation.
            if ipi_port != 0 && unsafe { pv_drivers::event_page::take_pending(guest::event_page(), ipi_port) } {
                IPIS[vcpu as usize].0.fetch_add(1, Ordering::Relaxed);
                let _ = xen::evtchn::notify(ANSWER_PORT.load(Ordering::Acquire) as u32);
            }
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("smp: panic: {info}\n"))
}
