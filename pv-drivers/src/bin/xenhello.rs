//! Example guest on Xen's interface (issue 10): finds Xen's CPUID leaves,
//! asks which Xen it runs on (`xen_version`: version, suffix, features),
//! says so on hv's console with `console_io`, makes a call through the
//! hypercall page, and powers itself off with `sched_op`: the first steps
//! of a Xen guest, with Xen's numbers, structures and errors.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::xen::Hypercall;
use abi::xen::sched::ShutdownReason;
use abi::xen::version::{XenVersionOp, feature};
use pv_drivers::xen;

/// The page hv fills with hypercall stubs.
static mut HYPERCALL_PAGE: xen::Page = xen::Page([0; 4096]);

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
    let page = unsafe { &mut *(&raw mut HYPERCALL_PAGE) };
    // SAFETY: as above.
    if unsafe { xen::fill_hypercall_page(page) } {
        let op = [u64::from(XenVersionOp::Version.number()), 0, 0];
        // SAFETY: hv filled the page; the call takes no pointer.
        let version = unsafe { xen::call_through_page(page, Hypercall::XenVersion, op) };
        let _ = writeln!(Console, "xenhello: xen_version through the hypercall page: {version:x?}");
    }
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
