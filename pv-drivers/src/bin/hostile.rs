//! Example guest that attacks the hypervisor's interface: dom0-only
//! operations, other domains' event ports, bad addresses and values. Each
//! must fail with its documented error and leave the guest (and everyone
//! else) running. Prints one line per check and a summary.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::Error;
use abi::Hypercall as H;
use abi::domctl::DomCtlOp as D;
use abi::event::EventOp as E;
use abi::hypercall::PlatformOp;
use pv_drivers::guest::{self, Guest};
use pv_drivers::hypercall;

/// Guest-physical memory this guest was never given (mapped by its page
/// tables, backed by nothing in EPT).
const NOT_MINE: u64 = 0x3000_0000;

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut buffer = [0u8; 4096];
    let own = buffer.as_mut_ptr() as u64;
    let me = guest.domain_id() as u64;
    let checks: [(&str, H, [u64; 5], Result<u64, Error>); 16] = [
        ("create a domain", H::DomCtl, [D::Create as u64, 16, 0, 0, 0], Err(Error::Permission)),
        ("destroy dom0", H::DomCtl, [D::Destroy as u64, 0, 0, 0, 0], Err(Error::Permission)),
        ("pause myself through domctl", H::DomCtl, [D::Pause as u64, me, 0, 0, 0], Err(Error::Permission)),
        ("read the hv log", H::DmesgRead, [own, 4096, 0, 0, 0], Err(Error::Permission)),
        ("power the machine off", H::Platform, [PlatformOp::PowerOff as u64, 0, 0, 0, 0], Err(Error::Permission)),
        ("dom0's domain info", H::DomainInfo, [0, own, 4096, 0, 0], Err(Error::Permission)),
        ("my own domain info", H::DomainInfo, [me, own, 704, 0, 0], Ok(704)),
        ("console write from memory not mine", H::ConsoleWrite, [NOT_MINE, 16, 0, 0, 0], Err(Error::BadAddress)),
        ("hv info into memory not mine", H::HvInfo, [NOT_MINE, 4096, 0, 0, 0], Err(Error::BadAddress)),
        // dom0's port 1 is the console of the first guest dom0 built: taken.
        ("bind to dom0's connected port 1", H::Event, [E::BindInterdomain as u64, 0, 1, 0, 0], Err(Error::Busy)),
        ("send on a port I do not have", H::Event, [E::Send as u64, 200, 0, 0, 0], Err(Error::NotFound)),
        ("event page not mine", H::Event, [E::RegisterPage as u64, NOT_MINE, 0xf3, 0, 0], Err(Error::BadAddress)),
        ("event page unaligned", H::Event, [E::RegisterPage as u64, own + 8, 0xf3, 0, 0], Err(Error::InvalidArgument)),
        ("shutdown with a bad reason", H::Sched, [2, 99, 0, 0, 0], Err(Error::InvalidArgument)),
        ("unknown vcpu operation", H::Vcpu, [7, 0, 0, 0, 0], Err(Error::InvalidArgument)),
        ("the null hypercall still works", H::Null, [0; 5], Ok(0)),
    ];
    let mut passed = 0;
    for (name, call, arguments, expected) in checks {
        // SAFETY: the only pointers passed are `buffer` (ours, 4 KiB) and
        // memory we do not own, which hv must refuse.
        let raw = unsafe { hypercall::raw(call as u64, arguments) };
        let ok = Error::decode(raw) == expected;
        passed += ok as usize;
        let _ = writeln!(guest, "hostile: {name}: {} (rax {raw})", if ok { "as documented" } else { "WRONG" });
    }
    // Register isolation: keep a marker in XMM0 across yields for a second
    // of guest time while other domains run (another `hostile` does the
    // same with its own marker); hv must switch SSE state, not leak it.
    let marker = 0x4d49_4341_0000_0000u64 | me;
    let mut kept = true;
    // SAFETY: turns on CR4.OSFXSR (bit 9) so SSE instructions work; this
    // guest owns its CR4 (hv only reserves VMXE).
    unsafe { core::arch::asm!("mov {t}, cr4", "or {t}, 0x200", "mov cr4, {t}", t = out(reg) _, options(nostack)) };
    let until = guest::now() + guest.ticks_per_second();
    let mut yields = 0u64;
    while guest::now() < until {
        yields += 1;
        let seen: u64;
        // SAFETY: moves a value into XMM0, yields through a hypercall (which
        // preserves every register but RAX) and reads XMM0 back.
        unsafe {
            core::arch::asm!(
                "movq xmm0, {marker}",
                "vmcall",
                "movq {seen}, xmm0",
                marker = in(reg) marker,
                seen = out(reg) seen,
                inout("rax") abi::Hypercall::Sched as u64 => _,
                in("rdi") abi::hypercall::SchedOp::Yield as u64,
                out("xmm0") _,
                options(nostack),
            );
        }
        kept &= seen == marker;
    }
    passed += kept as usize;
    let _ =
        writeln!(guest, "hostile: XMM0 kept across {yields} yields: {}", if kept { "as documented" } else { "WRONG" });
    // SAFETY: number 9999 is no hypercall; hv must say so.
    let unknown = unsafe { hypercall::raw(9999, [0; 5]) };
    let ok = Error::decode(unknown) == Err(Error::NoSuchHypercall);
    passed += ok as usize;
    let _ = writeln!(
        guest,
        "hostile: unknown hypercall 9999: {} (rax {unknown})",
        if ok { "as documented" } else { "WRONG" }
    );
    let _ = writeln!(guest, "hostile: {} of {} checks passed; still running", passed, checks.len() + 2);
    core::hint::black_box(&mut buffer);
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("hostile: panic: {info}\n"))
}
