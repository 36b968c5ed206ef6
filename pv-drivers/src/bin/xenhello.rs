//! Example guest on Xen's interface (issue 10): finds Xen's CPUID leaves,
//! asks which Xen it runs on (`xen_version`: version, suffix, features),
//! says so on hv's console with `console_io`, makes a call through the
//! hypercall page, places its shared-info page and sends itself events on
//! a loopback channel (polled: no callback vector), and powers itself off
//! with `sched_op`: the first steps of a Xen guest, with Xen's numbers,
//! structures and errors.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::xen::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnClose, EvtchnOp, EvtchnSend, EvtchnStatus, Virq,
};
use abi::xen::sched::ShutdownReason;
use abi::xen::shared_info::VcpuTimeInfo;
use abi::xen::version::{XenVersionOp, feature};
use abi::xen::{DOMID_SELF, Hypercall};
use pv_drivers::xen;
use zerocopy::FromBytes;

/// The page hv fills with hypercall stubs.
static mut HYPERCALL_PAGE: xen::Page = xen::Page([0; 4096]);
/// The shared-info page.
static mut SHARED_INFO: xen::Page = xen::Page([0; 4096]);

/// The word at byte `offset` of the shared-info page, as hv left it.
fn shared_word(offset: usize) -> u64 {
    // SAFETY: in bounds of the static page; a volatile read, since hv
    // writes the page behind the compiler's back.
    unsafe { core::ptr::read_volatile((&raw const SHARED_INFO).cast::<u8>().add(offset).cast::<u64>()) }
}

/// Places the shared-info page, opens a loopback channel (a port offered
/// to itself, then bound) and sends on it: the other end's pending bit,
/// vCPU 0's selector and upcall flag show up in Xen's layout.
fn events() {
    // SAFETY: the page is this guest's alone, used for nothing else.
    #[allow(clippy::deref_addrof, reason = "a `&mut` of a `static mut` goes through a raw pointer")]
    let shared_info = unsafe { &mut *(&raw mut SHARED_INFO) };
    // SAFETY: as above.
    if let Err(errno) = unsafe { xen::place_shared_info(shared_info) } {
        let _ = writeln!(Console, "xenhello: shared info refused: {errno:?}");
        return;
    }
    let mut offer = EvtchnAllocUnbound { dom: DOMID_SELF, remote_dom: DOMID_SELF, port: 0 };
    let mut bind = EvtchnBindInterdomain { remote_dom: DOMID_SELF, ..Default::default() };
    let bound = xen::event_channel(EvtchnOp::AllocUnbound, &mut offer).and_then(|()| {
        bind.remote_port = offer.port;
        xen::event_channel(EvtchnOp::BindInterdomain, &mut bind)
    });
    if let Err(errno) = bound {
        let _ = writeln!(Console, "xenhello: loopback channel refused: {errno:?}");
        return;
    }
    let sent = xen::event_channel(EvtchnOp::Send, &mut EvtchnSend { port: bind.local_port });
    let port = offer.port as usize;
    let pending = shared_word(2048 + port / 64 * 8) >> (port % 64) & 1;
    let (selector, upcall) = (shared_word(8), shared_word(0) & 0xff);
    let _ = writeln!(
        Console,
        "xenhello: loopback {} -> {port}: send {sent:?}, pending {pending}, selector {selector:#x}, upcall {upcall}",
        bind.local_port
    );
    let mut status = EvtchnStatus { dom: DOMID_SELF, port: bind.local_port, ..Default::default() };
    let asked = xen::event_channel(EvtchnOp::Status, &mut status);
    let _ = writeln!(Console, "xenhello: status {asked:?} {:?}", status.state());
    // FIFO event channels are refused, so a guest falls back to 2-level.
    let fifo = xen::event_channel(EvtchnOp::InitControl, &mut EvtchnClose { port: 0 });
    let _ = writeln!(Console, "xenhello: init_control {fifo:?}");
    timer();
}

/// Takes every event as a guest's handler would: clears vCPU 0's upcall
/// flag and selector, then the pending words (none is in flight here).
fn take_events() {
    for offset in [0, 8].into_iter().chain((0..4).map(|word| 2048 + 8 * word)) {
        // SAFETY: in bounds of the static page, which is this guest's.
        unsafe { core::ptr::write_volatile((&raw mut SHARED_INFO).cast::<u8>().add(offset).cast::<u64>(), 0) };
    }
}

/// System time (ns) from vCPU 0's pvclock in the shared-info page.
fn system_time() -> u64 {
    loop {
        let before = shared_word(32) as u32;
        let mut bytes = [0u8; 32];
        for (index, chunk) in bytes.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&shared_word(32 + 8 * index).to_le_bytes());
        }
        let time = VcpuTimeInfo::read_from_bytes(&bytes).unwrap_or_default();
        // SAFETY: RDTSC reads the time-stamp counter and nothing else.
        let now = unsafe { core::arch::x86_64::_rdtsc() };
        if abi::xen::shared_info::read_is_consistent(before, shared_word(32) as u32) {
            return time.system_time_at(now);
        }
    }
}

/// Binds VIRQ_TIMER, arms the timer 1 ms ahead on the pvclock and blocks:
/// the timer's port wakes it, pending, and at least 1 ms has passed.
fn timer() {
    let mut bind = EvtchnBindVirq { virq: Virq::Timer.number(), vcpu: 0, port: 0 };
    if let Err(errno) = xen::event_channel(EvtchnOp::BindVirq, &mut bind) {
        let _ = writeln!(Console, "xenhello: VIRQ_TIMER refused: {errno:?}");
        return;
    }
    // The loopback's event would end the block at once.
    take_events();
    let start = system_time();
    let armed = xen::set_timer(0, start + 1_000_000);
    xen::block();
    let slept = system_time().saturating_sub(start);
    let port = bind.port as usize;
    let pending = shared_word(2048 + port / 64 * 8) >> (port % 64) & 1;
    let _ = writeln!(
        Console,
        "xenhello: timer {armed:?}: woke after 1 ms: {}, timer port pending: {pending}",
        // 1 ms, give or take the rounding of ns to TSC ticks and back.
        (999_000..100_000_000).contains(&slept)
    );
}

/// Formats a line and writes it with `console_io`.
struct Console;

impl Write for Console {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        xen::console_write(text.as_bytes()).map_err(|_| core::fmt::Error)
    }
}

#[unsafe(no_mangle)]
extern "C" fn _start(_start_info: u64) -> ! {
    match xen::cpuid_base() {
        Some(base) => {
            let [_, vcpu, domain, _] = xen::cpuid(base + abi::xen::cpuid::LEAF_HVM);
            let version = xen::cpuid(base + abi::xen::cpuid::LEAF_VERSION)[0];
            let _ = writeln!(
                Console,
                "xenhello: CPUID: Xen at {base:#x}, version {}.{}, domain {domain}, vCPU {vcpu}",
                version >> 16,
                version & 0xffff
            );
        }
        None => {
            let _ = writeln!(Console, "xenhello: CPUID shows no Xen");
        }
    }
    let version = xen::version();
    let extraversion = xen::extraversion();
    let features = xen::features(0);
    let suffix = extraversion.as_ref().ok().and_then(|text| text.as_str()).unwrap_or("?");
    match (version, features) {
        (Ok(version), Ok(features)) => {
            let translated = features & 1 << feature::AUTO_TRANSLATED_PHYSMAP != 0;
            let _ = writeln!(
                Console,
                "xenhello: Xen {}.{}{suffix}, features {features:#x} (auto-translated physmap: {translated})",
                version >> 16,
                version & 0xffff
            );
        }
        (version, features) => {
            let _ = writeln!(Console, "xenhello: xen_version failed: {version:?} {features:?}");
        }
    }
    // SAFETY: the page is this guest's alone, used for nothing else.
    #[allow(clippy::deref_addrof, reason = "a `&mut` of a `static mut` goes through a raw pointer")]
    let page = unsafe { &mut *(&raw mut HYPERCALL_PAGE) };
    // SAFETY: as above.
    if unsafe { xen::fill_hypercall_page(page) } {
        let op = [u64::from(XenVersionOp::Version.number()), 0, 0];
        // SAFETY: hv filled the page; the call takes no pointer.
        let version = unsafe { xen::call_through_page(page, Hypercall::XenVersion, op) };
        let _ = writeln!(Console, "xenhello: xen_version through the hypercall page: {version:x?}");
    }
    events();
    // An unknown feature word and a reason Mica does not offer are refused.
    let _ = writeln!(Console, "xenhello: feature word 1: {:?}", xen::features(1));
    let _ = writeln!(Console, "xenhello: suspend: {:?}", xen::shutdown(ShutdownReason::Suspend));
    let _ = writeln!(Console, "xenhello: powering off");
    let refused = xen::shutdown(ShutdownReason::Poweroff);
    let _ = writeln!(Console, "xenhello: still running after poweroff: {refused:?}");
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    let _ = xen::console_write(b"xenhello: panic\n");
    let _ = xen::shutdown(ShutdownReason::Crash);
    loop {
        core::hint::spin_loop();
    }
}
