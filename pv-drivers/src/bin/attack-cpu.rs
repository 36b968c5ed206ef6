//! Hostile-guest suite: attack-cpu tries to reach processor state that other
//! domains or hv use, or to act above its station. One mode per run, chosen
//! by the cmdline (`mode=<name> value=<n>`):
//!
//! - `cr8`: reads CR8 (a fresh vCPU has 0), sets it to `value` and checks
//!   for a guest second of yields that it keeps its own value (another
//!   instance sets another). On the real TPR, 15 would block hv's interrupts.
//! - `kgs`: puts `value` into IA32_KERNEL_GS_BASE with SWAPGS (no exit) and
//!   checks it is kept across yields and that a fresh vCPU starts at 0.
//! - `dr`: the debug registers are the vCPU's own, used without exits (a
//!   guest kernel such as Linux writes them at start-up): a fresh vCPU
//!   reads DR0-3 0, DR6 0xffff0ff0 and DR7 0x400; it writes markers (DR0-3
//!   `value` + 8 * n, DR6 the low four bits of `value` as B0-B3, DR7
//!   `dr7`, which arms no breakpoint) and checks for a guest second of
//!   yields that they stay its own (another instance writes others); DR4
//!   and DR5 alias DR6 and DR7, and get #UD with CR4.DE set.
//! - `traps`: RDMSR/WRMSR of hv's own MSR (FEATURE_CONTROL), APIC_BASE
//!   (the guest's own x2APIC: reads enabled at 0xfee00000, cannot move),
//!   RDPMC and setting CR4.PKE are refused with #GP (and the guest runs
//!   on); WBINVD and INVD return; VMCLEAR gets #UD.
//! - `msrs`: the MSRs a kernel sets up (STAR, LSTAR, CSTAR, SFMASK,
//!   KERNEL_GS_BASE, TSC_AUX, FS and GS base, PAT) read their reset values
//!   on a fresh vCPU, take markers derived from `value` (RDTSCP returns
//!   TSC_AUX) and keep them for a guest second of yields (another instance
//!   writes others); values a CPU refuses (non-canonical addresses, high
//!   bits, a reserved PAT type) get #GP and change nothing;
//!   IA32_MISC_ENABLE reads as fast strings with BTS and PEBS unavailable.
//! - `xcr0`: XSETBV of `value` (1 or 3) is accepted and kept across yields
//!   (XGETBV reads it back), a fresh vCPU has 1, and AVX state or XCR1 get #GP.
//! - `cpl3`: drops to ring 3 and makes hypercalls from there, Xen's
//!   (`xen_version`, `sched_op` shutdown) and Mica's (the null call, a
//!   shutdown): each must return -1 (Xen's `-EPERM`, Mica's `Permission`)
//!   and the kernel runs on.
//!
//! Prints one line per check (`ok` or `WRONG`) and a summary
//! `attack-cpu: <mode>: <passed> of <total> checks passed`, then prints
//! `attack-cpu: alive <n>` every guest second.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::fmt::Write;
use core::ptr::{read_volatile, write_volatile};

use abi::Error;
use pv_drivers::guest::{self, Guest};

/// The vector a fault handler records (0 = none since it was cleared).
static mut FAULT: u64 = 0;
/// Where a fault handler resumes: the instruction after the probed one.
static mut RECOVERY: u64 = 0;
/// The kernel stack pointer saved while ring 3 runs.
static mut SAVED_RSP: u64 = 0;
/// What the ring-3 hypercalls returned in RAX: Xen's `xen_version` and
/// `sched_op` shutdown, Mica's null call and shutdown.
static mut USER_XEN_VERSION_RESULT: u64 = 0;
static mut USER_XEN_SHUTDOWN_RESULT: u64 = 0;
static mut USER_NULL_RESULT: u64 = 0;
static mut USER_SHUTDOWN_RESULT: u64 = 0;
/// The `sched_shutdown` the ring-3 `sched_op` names: power off.
static USER_SHUTDOWN_REQUEST: abi::xen::sched::SchedShutdown =
    abi::xen::sched::SchedShutdown { reason: abi::xen::sched::ShutdownReason::Poweroff.number() };

/// The vector ring 3 uses to come back to the kernel.
const RETURN_VECTOR: usize = 0x80;

global_asm!(
    r#"
    .section .text
    .balign 16
    .global attack_cpu_gp_stub
attack_cpu_gp_stub:
    add rsp, 8
    mov qword ptr [rip + {fault}], 13
    jmp 2f
    .global attack_cpu_ud_stub
attack_cpu_ud_stub:
    mov qword ptr [rip + {fault}], 6
2:
    push rax
    mov rax, qword ptr [rip + {recovery}]
    mov qword ptr [rsp + 8], rax
    pop rax
    iretq

    .balign 16
    .global attack_cpu_enter_user
attack_cpu_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov qword ptr [rip + {saved_rsp}], rsp
    push 0x2b
    push rdi
    push 0x2
    push 0x33
    lea rax, [rip + attack_cpu_user_code]
    push rax
    iretq

attack_cpu_user_code:
    mov eax, {xen_version}
    xor edi, edi
    vmcall
    mov qword ptr [rip + {xen_version_result}], rax
    mov eax, {xen_sched}
    mov edi, {xen_shutdown}
    lea rsi, [rip + {xen_shutdown_request}]
    vmcall
    mov qword ptr [rip + {xen_shutdown_result}], rax
    mov eax, {null}
    vmcall
    mov qword ptr [rip + {null_result}], rax
    mov eax, {sched}
    mov edi, {shutdown}
    mov esi, {power_off}
    vmcall
    mov qword ptr [rip + {shutdown_result}], rax
    int 0x80
    ud2

    .balign 16
    .global attack_cpu_return_stub
attack_cpu_return_stub:
    mov rsp, qword ptr [rip + {saved_rsp}]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#,
    fault = sym FAULT,
    recovery = sym RECOVERY,
    saved_rsp = sym SAVED_RSP,
    xen_version_result = sym USER_XEN_VERSION_RESULT,
    xen_shutdown_result = sym USER_XEN_SHUTDOWN_RESULT,
    xen_shutdown_request = sym USER_SHUTDOWN_REQUEST,
    null_result = sym USER_NULL_RESULT,
    shutdown_result = sym USER_SHUTDOWN_RESULT,
    xen_version = const abi::xen::Hypercall::XenVersion.number(),
    xen_sched = const abi::xen::Hypercall::SchedOp.number(),
    xen_shutdown = const abi::xen::sched::SchedOp::Shutdown.number(),
    null = const abi::Hypercall::Null as u64,
    sched = const abi::Hypercall::Sched as u64,
    shutdown = const abi::hypercall::SchedOp::Shutdown as u64,
    power_off = const abi::hypercall::ShutdownReason::PowerOff as u32,
);

unsafe extern "C" {
    fn attack_cpu_gp_stub();
    fn attack_cpu_ud_stub();
    fn attack_cpu_enter_user(user_stack_top: u64);
    fn attack_cpu_return_stub();
}

/// Runs one instruction (the asm text `$instruction`, with operands) with
/// the #GP/#UD handlers ready to resume after it; evaluates to the vector
/// it faulted with (0 = none).
macro_rules! probe {
    ($instruction:literal $(, $($operands:tt)*)?) => {{
        // SAFETY: FAULT is written only here and by the fault stubs, on this
        // one vCPU; volatile, no reference.
        unsafe { write_volatile(&raw mut FAULT, 0) };
        // SAFETY: the instruction is one this guest may attempt: hv must
        // refuse it or emulate it; a #GP or #UD resumes at label 2.
        unsafe {
            asm!(
                "lea {recovery_address}, [rip + 2f]",
                "mov qword ptr [{recovery}], {recovery_address}",
                $instruction,
                "2:",
                recovery = in(reg) &raw mut RECOVERY,
                recovery_address = out(reg) _,
                $($($operands)*,)?
                options(nostack),
            );
        }
        // SAFETY: as above.
        unsafe { read_volatile(&raw const FAULT) }
    }};
}

/// Points IDT vector `vector` at `handler` (interrupt gate, kernel code,
/// descriptor privilege `dpl`).
fn set_gate(vector: usize, handler: unsafe extern "C" fn(), dpl: u64) {
    let mut idtr = [0u8; 10];
    // SAFETY: SIDT stores 10 bytes into the buffer.
    unsafe { asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack)) };
    let base = u64::from_le_bytes(idtr[2..10].try_into().unwrap_or([0; 8]));
    let handler = handler as *const () as u64;
    let low = (handler & 0xffff) | (0x08 << 16) | ((0x8e | dpl << 5) << 40) | ((handler >> 16) & 0xffff) << 48;
    // SAFETY: the runtime's IDT has 256 16-byte gates in our own memory.
    unsafe {
        let gate = (base as *mut u64).add(vector * 2);
        write_volatile(gate, low);
        write_volatile(gate.add(1), handler >> 32);
    }
}

fn read_cr4() -> u64 {
    let value;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nostack, nomem)) };
    value
}

fn read_cr8() -> u64 {
    let value;
    // SAFETY: reading CR8 has no side effects.
    unsafe { asm!("mov {}, cr8", out(reg) value, options(nostack, nomem)) };
    value
}

/// Sets CR4 bit `bit`; returns the fault vector (0 = the bit is set).
fn set_cr4_bit(bit: u32) -> u64 {
    let value = read_cr4() | 1 << bit;
    probe!("mov cr4, {value}", value = in(reg) value)
}

/// Reads IA32_KERNEL_GS_BASE without RDMSR: SWAPGS, RDGSBASE, SWAPGS.
fn kernel_gs_base() -> u64 {
    let value;
    // SAFETY: CR4.FSGSBASE is set; the two SWAPGS leave both bases as found.
    unsafe { asm!("swapgs", "rdgsbase {}", "swapgs", out(reg) value, options(nostack, nomem)) };
    value
}

/// Writes IA32_KERNEL_GS_BASE without WRMSR (GS base keeps its value).
fn set_kernel_gs_base(value: u64) {
    // SAFETY: swaps GS base and KERNEL_GS_BASE around a WRGSBASE: GS base
    // comes back unchanged, KERNEL_GS_BASE gets `value` (canonical).
    unsafe { asm!("swapgs", "wrgsbase {}", "swapgs", in(reg) value, options(nostack, nomem)) };
}

fn xgetbv() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set; XGETBV of XCR0 only reads it.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") high, options(nostack, nomem)) };
    (high as u64) << 32 | low as u64
}

/// The report of one mode: checks passed and made.
struct Report<'a> {
    guest: &'a mut Guest,
    mode: &'a str,
    passed: u32,
    total: u32,
}

impl Report<'_> {
    fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments) {
        self.total += 1;
        self.passed += ok as u32;
        let verdict = if ok { "ok" } else { "WRONG" };
        let _ = writeln!(self.guest, "attack-cpu: {}: {name}: {verdict} ({detail})", self.mode);
    }

    /// Yields for one guest second, checking `still` after each yield;
    /// returns (yields, the first differing value seen).
    fn yield_while(&mut self, still: impl Fn() -> Option<u64>) -> (u64, Option<u64>) {
        let until = guest::now() + self.guest.ticks_per_second();
        let mut yields = 0;
        while guest::now() < until {
            pv_drivers::xen::yield_now();
            yields += 1;
            if let Some(changed) = still() {
                return (yields, Some(changed));
            }
        }
        (yields, None)
    }
}

fn cr8(report: &mut Report, value: u64) {
    let initial = read_cr8();
    report.check("a fresh vCPU has CR8 0", initial == 0, format_args!("read {initial}"));
    // SAFETY: MOV to CR8 of a value 0..=15: hv must keep it to this vCPU.
    unsafe { asm!("mov cr8, {}", in(reg) value, options(nostack, nomem)) };
    let (yields, changed) = report.yield_while(|| Some(read_cr8()).filter(|&now| now != value));
    report.check(
        "CR8 kept across yields",
        changed.is_none(),
        format_args!("set {value}, {yields} yields, changed to {changed:?}"),
    );
    let fault = probe!("mov cr8, {v}", v = in(reg) 16u64);
    report.check("MOV CR8 of 16 faults", fault == 13, format_args!("vector {fault}"));
    let now = read_cr8();
    report.check("CR8 still holds the value", now == value, format_args!("read {now}"));
}

fn kernel_gs_base_mode(report: &mut Report, value: u64) {
    let fault = set_cr4_bit(16);
    report.check("CR4.FSGSBASE can be set", fault == 0, format_args!("vector {fault}"));
    if fault == 0 {
        let initial = kernel_gs_base();
        report.check("a fresh vCPU has KERNEL_GS_BASE 0", initial == 0, format_args!("read {initial:#x}"));
        set_kernel_gs_base(value);
        let (yields, changed) = report.yield_while(|| Some(kernel_gs_base()).filter(|&now| now != value));
        report.check(
            "KERNEL_GS_BASE kept across yields",
            changed.is_none(),
            format_args!("set {value:#x}, {yields} yields, changed to {changed:?}"),
        );
    }
}

/// The MSRs `msrs` mode sets, and the values a fresh vCPU reads.
const KERNEL_MSRS: [(&str, u32, u64); 9] = [
    ("STAR", 0xc000_0081, 0),
    ("LSTAR", 0xc000_0082, 0),
    ("CSTAR", 0xc000_0083, 0),
    ("SFMASK", 0xc000_0084, 0),
    ("KERNEL_GS_BASE", 0xc000_0102, 0),
    ("TSC_AUX", 0xc000_0103, 0),
    ("FS_BASE", 0xc000_0100, 0),
    ("GS_BASE", 0xc000_0101, 0),
    ("PAT", 0x277, 0x0007_0406_0007_0406),
];

/// RDMSR of `msr`: the value, or the vector it faulted with.
fn read_msr(msr: u32) -> Result<u64, u64> {
    let (low, high): (u32, u32);
    let fault = probe!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high);
    if fault == 0 { Ok(u64::from(high) << 32 | u64::from(low)) } else { Err(fault) }
}

/// WRMSR of `value` to `msr`: the vector it faulted with, 0 if none.
fn write_msr(msr: u32, value: u64) -> u64 {
    probe!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32)
}

fn msrs(report: &mut Report, value: u64) {
    let fresh: [Result<u64, u64>; 9] = KERNEL_MSRS.map(|(_, msr, _)| read_msr(msr));
    let reset = KERNEL_MSRS.map(|(.., initial)| Ok(initial));
    report.check("a fresh vCPU reads the reset values", fresh == reset, format_args!("read {fresh:x?}"));
    // Markers from `value` (1..=255): addresses canonical, 32-bit where the
    // CPU wants it, PAT with a valid type of its own in entry 1.
    let markers: [u64; 9] = [
        value << 48 | 0x10 << 32,
        0xffff_ffff_8100_0000 + (value << 12),
        0xffff_ffff_8200_0000 + (value << 12),
        0x4_7700 | value,
        0xffff_8880_0000_0000 + (value << 20),
        value,
        0x7f00_0000_0000 + (value << 12),
        0xffff_8880_1000_0000 + (value << 20),
        0x0007_0406_0007_0006 | (if value.is_multiple_of(2) { 1 } else { 5 }) << 8,
    ];
    let faults: [u64; 9] = core::array::from_fn(|i| write_msr(KERNEL_MSRS[i].1, markers[i]));
    let read: [Result<u64, u64>; 9] = KERNEL_MSRS.map(|(_, msr, _)| read_msr(msr));
    let wanted = markers.map(Ok);
    report.check(
        "WRMSR of the markers",
        faults == [0; 9] && read == wanted,
        format_args!("faults {faults:?}, read {read:x?}"),
    );
    let (ecx, fault): (u32, u64);
    {
        let aux: u32;
        fault = probe!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux);
        ecx = aux;
    }
    report.check(
        "RDTSCP returns TSC_AUX",
        fault == 0 && u64::from(ecx) == value,
        format_args!("ecx {ecx}, vector {fault}"),
    );
    let changed = |_: ()| KERNEL_MSRS.iter().zip(&markers).find(|((_, msr, _), wanted)| read_msr(*msr) != Ok(**wanted));
    let (yields, moved) = report.yield_while(|| changed(()).map(|((_, msr, _), _)| u64::from(*msr)));
    report.check("kept across yields", moved.is_none(), format_args!("{yields} yields, MSR {moved:x?} changed"));
    for (name, msr, bad) in [
        ("a non-canonical LSTAR", 0xc000_0082u32, 0x0000_8000_0000_0000u64),
        ("a 64-bit TSC_AUX", 0xc000_0103, 1 << 32),
        ("a reserved PAT type", 0x277, 0x0007_0406_0007_0206),
    ] {
        let fault = write_msr(msr, bad);
        let kept = KERNEL_MSRS.iter().position(|entry| entry.1 == msr).map(|i| read_msr(msr) == Ok(markers[i]));
        report.check(name, fault == 13 && kept == Some(true), format_args!("vector {fault}, value kept {kept:?}"));
    }
    let misc = read_msr(0x1a0);
    let refused = write_msr(0x1a0, 0);
    report.check(
        "IA32_MISC_ENABLE reads fixed, refuses writes",
        misc == Ok(1 | 1 << 11 | 1 << 12) && refused == 13,
        format_args!("read {misc:x?}, write vector {refused}"),
    );
}

fn traps(report: &mut Report) {
    // hv's own MSR: every access is refused.
    let read = probe!("rdmsr", in("ecx") 0x3au32, out("eax") _, out("edx") _);
    let written = probe!("wrmsr", in("ecx") 0x3au32, in("eax") 0x1000u32, in("edx") 0u32);
    report.check(
        "FEATURE_CONTROL",
        read == 13 && written == 13,
        format_args!("RDMSR vector {read}, WRMSR vector {written}"),
    );
    // APIC_BASE is the guest's own x2APIC's: it reads as enabled in x2APIC
    // mode at 0xfee00000 (vCPU 0: the BSP bit), and cannot be moved.
    let base = read_msr(0x1b);
    let moved = write_msr(0x1b, 0x1000 | 1 << 11 | 1 << 10 | 1 << 8);
    report.check(
        "APIC_BASE the guest's x2APIC, not movable",
        base == Ok(0xfee0_0000 | 1 << 11 | 1 << 10 | 1 << 8) && moved == 13 && read_msr(0x1b) == base,
        format_args!("read {base:x?}, moving it vector {moved}"),
    );
    let fault = probe!("rdpmc", in("ecx") 0u32, out("eax") _, out("edx") _);
    report.check("RDPMC refused", fault == 13, format_args!("vector {fault}"));
    let fault = set_cr4_bit(22);
    let pke = read_cr4() & (1 << 22) != 0;
    report.check("CR4.PKE refused", fault == 13 && !pke, format_args!("vector {fault}, reads back {pke}"));
    let fault = probe!("wbinvd");
    report.check("WBINVD returns", fault == 0, format_args!("vector {fault}"));
    let fault = probe!("invd");
    report.check("INVD returns", fault == 0, format_args!("vector {fault}"));
    let region = 0u64;
    let fault = probe!("vmclear [{r}]", r = in(reg) &raw const region);
    report.check("VMCLEAR gets #UD", fault == 6, format_args!("vector {fault}"));
}

/// DR0, DR1, DR2, DR3, DR6 and DR7, as the guest reads them.
#[derive(Clone, Copy, PartialEq, Eq)]
struct DebugRegisters([u64; 6]);

impl DebugRegisters {
    /// The values after reset (SDM Vol. 3B 18.2).
    const INITIAL: DebugRegisters = DebugRegisters([0, 0, 0, 0, 0xffff_0ff0, 0x400]);

    fn read() -> DebugRegisters {
        let mut r = [0u64; 6];
        // SAFETY: MOV from a debug register at CPL 0 only reads it (DR7.GD
        // is never set here); hv lets it run without an exit.
        unsafe {
            asm!(
                "mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3", "mov {}, dr6", "mov {}, dr7",
                out(reg) r[0], out(reg) r[1], out(reg) r[2], out(reg) r[3], out(reg) r[4], out(reg) r[5],
                options(nostack, nomem, preserves_flags),
            )
        };
        DebugRegisters(r)
    }
}

impl core::fmt::Debug for DebugRegisters {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let [dr0, dr1, dr2, dr3, dr6, dr7] = self.0;
        write!(f, "DR0-3 {dr0:#x} {dr1:#x} {dr2:#x} {dr3:#x}, DR6 {dr6:#x}, DR7 {dr7:#x}")
    }
}

fn debug_registers(report: &mut Report, value: u64, dr7: u64) {
    let fault = probe!("mov {t}, dr0", t = out(reg) _);
    report.check("MOV from DR0 runs", fault == 0, format_args!("vector {fault}"));
    if fault != 0 {
        return;
    }
    let initial = DebugRegisters::read();
    report.check(
        "a fresh vCPU has its own reset debug registers",
        initial == DebugRegisters::INITIAL,
        format_args!("{initial:?}"),
    );
    let markers = DebugRegisters([value, value + 8, value + 16, value + 24, 0xffff_0ff0 | (value & 0xf), dr7]);
    let [dr0, dr1, dr2, dr3, dr6, dr7] = markers.0;
    let fault = probe!(
        "mov dr0, {dr0}\n mov dr1, {dr1}\n mov dr2, {dr2}\n mov dr3, {dr3}\n mov dr6, {dr6}\n mov dr7, {dr7}",
        dr0 = in(reg) dr0, dr1 = in(reg) dr1, dr2 = in(reg) dr2, dr3 = in(reg) dr3, dr6 = in(reg) dr6, dr7 = in(reg) dr7
    );
    let now = DebugRegisters::read();
    report.check(
        "MOV to DR0-3, DR6, DR7 of the markers",
        fault == 0 && now == markers,
        format_args!("vector {fault}, read {now:?}"),
    );
    let (yields, changed) =
        report.yield_while(|| (DebugRegisters::read() != markers).then(|| DebugRegisters::read().0[0]));
    let now = DebugRegisters::read();
    report.check(
        "debug registers kept across yields",
        changed.is_none() && now == markers,
        format_args!("set {markers:?}, {yields} yields, read {now:?}"),
    );
    // CR4.DE clear: DR4 and DR5 are DR6 and DR7 (SDM Vol. 3B 18.2.2).
    let (dr4, dr5): (u64, u64);
    // SAFETY: as in `DebugRegisters::read`; CR4.DE is clear.
    unsafe { asm!("mov {}, dr4", "mov {}, dr5", out(reg) dr4, out(reg) dr5, options(nostack, nomem)) };
    report.check("DR4 and DR5 alias DR6 and DR7", dr4 == dr6 && dr5 == dr7, format_args!("DR4 {dr4:#x}, DR5 {dr5:#x}"));
    let fault = set_cr4_bit(3);
    let undefined = probe!("mov {t}, dr4", t = out(reg) _);
    // SAFETY: clears CR4.DE again; nothing here depends on it.
    unsafe { asm!("mov cr4, {}", in(reg) read_cr4() & !(1 << 3), options(nostack, nomem)) };
    report.check(
        "DR4 with CR4.DE set gets #UD",
        fault == 0 && undefined == 6,
        format_args!("setting CR4.DE: vector {fault}; MOV from DR4: vector {undefined}"),
    );
}

fn xcr0(report: &mut Report, value: u64) {
    let fault = set_cr4_bit(18);
    report.check("CR4.OSXSAVE can be set", fault == 0, format_args!("vector {fault}"));
    if fault != 0 {
        return;
    }
    let initial = xgetbv();
    report.check("a fresh vCPU has XCR0 1", initial == 1, format_args!("read {initial:#x}"));
    let fault = probe!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") 0u32);
    report.check("XSETBV of the value", fault == 0, format_args!("value {value:#x}, vector {fault}"));
    let (yields, changed) = report.yield_while(|| Some(xgetbv()).filter(|&now| now != value));
    report.check("XCR0 kept across yields", changed.is_none(), format_args!("{yields} yields, changed to {changed:?}"));
    for (name, ecx, eax) in
        [("XCR0 with AVX refused", 0u32, 7u32), ("XCR0 without x87 refused", 0, 2), ("XCR1 refused", 1, 1)]
    {
        let fault = probe!("xsetbv", in("ecx") ecx, in("eax") eax, in("edx") 0u32);
        report.check(name, fault == 13, format_args!("vector {fault}"));
    }
    let now = xgetbv();
    report.check("XCR0 still holds the value", now == value, format_args!("read {now:#x}"));
}

/// A ring-3 stack and the kernel stack the CPU switches to on the way back.
#[repr(C, align(4096))]
struct Stack([u8; 8192]);
static mut USER_STACK: Stack = Stack([0; 8192]);
static mut RING0_STACK: Stack = Stack([0; 8192]);
/// A 64-bit TSS (104 bytes; RSP0 at byte 4).
#[repr(C, align(16))]
struct Tss([u8; 104]);
static mut TSS: Tss = Tss([0; 104]);
/// Kernel code, data, the TSS, user data (0x28) and user code (0x30).
#[repr(C, align(16))]
struct Gdt([u64; 7]);
static mut GDT: Gdt = Gdt([0; 7]);

/// Sets the user bit on every present entry of the page tables (the
/// builder maps everything supervisor-only), so ring 3 can run our code.
fn open_page_tables_to_ring_3() {
    const PRESENT: u64 = 1;
    const USER: u64 = 1 << 2;
    const LARGE: u64 = 1 << 7;
    const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
    fn walk(table: u64, level: u32) {
        for index in 0..512 {
            // SAFETY: the tables are identity-mapped pages of our memory.
            unsafe {
                let entry = (table as *mut u64).add(index);
                let value = read_volatile(entry);
                if value & PRESENT == 0 {
                    continue;
                }
                write_volatile(entry, value | USER);
                if level > 1 && value & LARGE == 0 {
                    walk(value & ADDRESS, level - 1);
                }
            }
        }
    }
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nostack, nomem)) };
    walk(cr3 & ADDRESS, 4);
    // SAFETY: reloading CR3 flushes the TLB; the tables are unchanged but for U.
    unsafe { asm!("mov cr3, {}", in(reg) cr3, options(nostack)) };
}

fn cpl3(report: &mut Report) {
    open_page_tables_to_ring_3();
    // SAFETY: one vCPU, boot-time setup of our own GDT, TSS and IDT gate.
    unsafe {
        let tss = &raw mut TSS as u64;
        let rsp0 = &raw mut RING0_STACK as u64 + 8192;
        let tss_bytes = &raw mut TSS as *mut u8;
        for (i, byte) in rsp0.to_le_bytes().iter().enumerate() {
            write_volatile(tss_bytes.add(4 + i), *byte);
        }
        // I/O map base past the limit: no I/O bitmap.
        write_volatile(tss_bytes.add(102), 104);
        let gdt = &raw mut GDT as *mut u64;
        let descriptors = [
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x67 | (tss & 0xff_ffff) << 16 | 0x89 << 40 | ((tss >> 24) & 0xff) << 56,
            tss >> 32,
            0x00cf_f300_0000_ffff,
            0x00af_fb00_0000_ffff,
        ];
        for (i, descriptor) in descriptors.iter().enumerate() {
            write_volatile(gdt.add(i), *descriptor);
        }
        let pointer: [u16; 5] = {
            let base = gdt as u64;
            [7 * 8 - 1, base as u16, (base >> 16) as u16, (base >> 32) as u16, (base >> 48) as u16]
        };
        asm!("lgdt [{}]", "ltr {:x}", in(reg) &pointer, in(reg) 0x18u16, options(nostack));
    }
    set_gate(RETURN_VECTOR, attack_cpu_return_stub, 3);
    // SAFETY: enters ring 3 at our user code with interrupts off; it makes
    // four hypercalls and comes back through INT 0x80, which restores the
    // kernel stack and registers saved here.
    unsafe { attack_cpu_enter_user(&raw mut USER_STACK as u64 + 8192) };
    // SAFETY: written by the ring-3 code above; volatile, no reference.
    let results = unsafe {
        [
            read_volatile(&raw const USER_XEN_VERSION_RESULT),
            read_volatile(&raw const USER_XEN_SHUTDOWN_RESULT),
            read_volatile(&raw const USER_NULL_RESULT),
            read_volatile(&raw const USER_SHUTDOWN_RESULT),
        ]
    };
    // Xen's -EPERM and Mica's Permission are both -1.
    let refused = [abi::xen::Errno::Eperm.code() as u64, Error::Permission.code() as u64];
    let names = [
        "xen: version from ring 3 refused",
        "xen: shutdown from ring 3 refused",
        "mica: null hypercall from ring 3 refused",
        "mica: shutdown from ring 3 refused",
    ];
    for (index, (name, result)) in names.iter().zip(results).enumerate() {
        let wanted = refused[index / 2];
        report.check(name, result == wanted, format_args!("rax {}", result as i64));
    }
    let (xen, mica) = (pv_drivers::xen::version(), pv_drivers::hypercall::version());
    report.check(
        "the kernel still makes hypercalls",
        xen == Ok(abi::xen::version::MICA_XEN_VERSION) && mica == abi::ABI_VERSION,
        format_args!("Xen's version {xen:x?}, Mica's {mica:#x}"),
    );
}

/// The value of `key=` in the cmdline, if present.
fn argument<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut cmdline = arrayvec::ArrayString::<256>::new();
    let _ = cmdline.try_push_str(guest.cmdline());
    set_gate(13, attack_cpu_gp_stub, 0);
    set_gate(6, attack_cpu_ud_stub, 0);
    let mode = argument(&cmdline, "mode").unwrap_or("");
    let value = argument(&cmdline, "value").and_then(parse_number).unwrap_or(0);
    let _ = writeln!(guest, "attack-cpu: domain {} mode {mode} value {value:#x}", guest.domain_id());
    let mut report = Report { guest: &mut guest, mode, passed: 0, total: 0 };
    match mode {
        "cr8" => cr8(&mut report, value),
        "dr" => debug_registers(
            &mut report,
            value,
            argument(&cmdline, "dr7").and_then(parse_number).unwrap_or(DebugRegisters::INITIAL.0[5]),
        ),
        "kgs" => kernel_gs_base_mode(&mut report, value),
        "traps" => traps(&mut report),
        "msrs" => msrs(&mut report, value),
        "xcr0" => xcr0(&mut report, value),
        "cpl3" => cpl3(&mut report),
        _ => report.check("known mode", false, format_args!("mode {mode:?}")),
    }
    let (passed, total) = (report.passed, report.total);
    let _ = writeln!(guest, "attack-cpu: {mode}: {passed} of {total} checks passed");
    let second = guest.ticks_per_second();
    let mut deadline = guest::now() + second;
    for alive in 1u64.. {
        guest.sleep_until(deadline);
        deadline += second;
        let _ = writeln!(guest, "attack-cpu: alive {alive}");
    }
    unreachable!()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("attack-cpu: panic: {info}\n"))
}
