//! Hostile-guest system tests of processor-state isolation: `attack-cpu`
//! (pv-drivers/src/bin/attack-cpu.rs) runs in one of its modes next to a
//! `counter` victim, often as two instances that each keep their own value
//! in the register under attack. Each test checks that every check the
//! attacker prints is `ok`, that the attacker's kernel runs on, that the
//! shell answers and the victim keeps counting, and that destroying
//! everything gives back all memory.

use mica_tests::machine::DEFAULT_FAILURE_MARKERS;
use mica_tests::session::{
    attach, boot, counter_reaches, create, destroy, detach, expect_memory_back, fail_with, list, mem,
};
use mica_tests::{Machine, fail, line_where, scan, seconds};

/// A guest dom0 reports as ended: for an attacker that is a finding (it
/// lost its kernel to its own user program, or hv killed it for
/// something it must refuse or emulate).
const ENDED_MARKERS: [&str; 2] = [") crashed", ") shut down;"];

fn boot_watching_guests() -> Machine {
    let mut machine = boot();
    let markers: Vec<&str> = DEFAULT_FAILURE_MARKERS.iter().copied().chain(ENDED_MARKERS).collect();
    machine.set_failure_markers(&markers);
    machine
}

/// Attaches to attacker `name`, waits for its summary line for `mode`,
/// checks that every check passed (at least `checks` of them), and that it
/// is still alive after (an `alive` line). Returns what it printed.
fn attacker_passes(machine: &mut Machine, name: &str, id: u64, mode: &str, checks: u64) -> String {
    attach(machine, name, id);
    let summary = format!("attack-cpu: {mode}: ");
    let mut output = machine
        .expect(
            line_where(format!("{name}'s summary \"{summary}<n> of <n> checks passed\""), |line| {
                line.starts_with(&summary) && line.ends_with(" checks passed")
            }),
            seconds(120),
        )
        .unwrap_or_else(fail);
    output += &machine
        .expect(
            line_where(format!("{name} alive after its checks"), |line| line.starts_with("attack-cpu: alive ")),
            seconds(60),
        )
        .unwrap_or_else(fail);
    output += &detach(machine);
    let last = output.lines().find(|line| line.starts_with(&summary) && line.ends_with(" checks passed")).unwrap_or("");
    let numbers = scan(&format!("{summary}{{}} of {{}} checks passed"), last).unwrap_or_default();
    if numbers.len() != 2 || numbers[0] != numbers[1] || numbers[1] < checks || output.contains("WRONG") {
        fail_with(machine, &format!("every check of {name} should pass (at least {checks}); it printed:\n{output}"));
    }
    output
}

/// Runs the attackers `(config, name, mode, checks)` next to a counter:
/// every check passes, the shell answers, the counter counts on, and after
/// destroying them all memory is back.
fn attackers_next_to_a_counter(attackers: &[(&str, &str, &str, u64)]) {
    let mut machine = boot_watching_guests();
    let (baseline_text, baseline) = mem(&mut machine);
    let counter = create(&mut machine, "counter", "counter");
    let before = counter_reaches(&mut machine, counter, 1);
    let ids: Vec<u64> = attackers.iter().map(|(config, name, ..)| create(&mut machine, config, name)).collect();
    for (&(_, name, mode, checks), &id) in attackers.iter().zip(&ids) {
        let output = attacker_passes(&mut machine, name, id, mode, checks);
        eprintln!("{name}:\n{output}");
    }
    // The shell answers (`command` allows 20 s) and lists everyone running.
    let (text, domains) = list(&mut machine);
    for (_, name, ..) in attackers {
        if domains.get(name).is_none_or(|row| row.state.contains('c') || row.state.contains('s')) {
            fail_with(&mut machine, &format!("`list` should show {name} alive; it printed:\n{text}"));
        }
    }
    counter_reaches(&mut machine, counter, before + 2);
    for ((_, name, ..), &id) in attackers.iter().zip(&ids) {
        destroy(&mut machine, name, id);
    }
    destroy(&mut machine, "counter", counter);
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after destroying the guests");
}

/// CR8 is the task priority: on the real local APIC, 15 blocks every
/// interrupt (hv's idle HLT never woke; the shell hung), and the value one
/// guest set was read by the next. Two attackers set 15 and 9; each reads
/// back its own, and the machine runs on.
#[test]
fn cr8_is_per_vcpu_and_blocks_nothing_of_hv() {
    attackers_next_to_a_counter(&[("attack-cr8", "attack-cr8", "cr8", 4), ("attack-cr8b", "attack-cr8b", "cr8", 4)]);
}

/// IA32_KERNEL_GS_BASE changes with SWAPGS without an exit (one guest read
/// another's value): two attackers each keep a marker in it across yields,
/// and a fresh vCPU finds 0.
#[test]
fn kernel_gs_base_stays_with_its_vcpu() {
    attackers_next_to_a_counter(&[("attack-kgs", "attack-kgs", "kgs", 3), ("attack-kgs2", "attack-kgs2", "kgs", 3)]);
}

/// What hv does not switch it refuses: MSRs (STAR, LSTAR, CSTAR, SFMASK,
/// KERNEL_GS_BASE, TSC_AUX), RDPMC and CR4.PKE get #GP and the guest runs
/// on; WBINVD and INVD return (INVD crashed the guest); VMCLEAR gets #UD as
/// without VMX (it crashed).
#[test]
fn unswitched_state_is_refused_without_killing_the_guest() {
    attackers_next_to_a_counter(&[("attack-traps", "attack-traps", "traps", 7)]);
}

/// The MSRs a kernel sets up (SYSCALL's STAR, LSTAR, CSTAR, SFMASK;
/// KERNEL_GS_BASE, TSC_AUX, FS and GS base, PAT) are emulated for a PVH
/// kernel: two attackers each keep their own markers across a guest second
/// of yields, a fresh vCPU reads the reset values, and values a CPU would
/// refuse get #GP and change nothing.
#[test]
fn a_kernels_msrs_are_per_vcpu_and_checked() {
    attackers_next_to_a_counter(&[("attack-msr", "attack-msr", "msrs", 8), ("attack-msr2", "attack-msr2", "msrs", 8)]);
}

/// Debug registers are the vCPU's own and used without exits, as a guest
/// kernel needs (Linux writes DR0-3, DR6 and DR7 at start-up; a MOV DR
/// used to crash the guest, then got #GP). Two attackers each keep their
/// markers in DR0-3, DR6 and DR7 across yields, and a fresh vCPU finds the
/// reset values, not the other's.
#[test]
fn debug_registers_are_per_vcpu() {
    attackers_next_to_a_counter(&[("attack-dr", "attack-dr", "dr", 6), ("attack-dr2", "attack-dr2", "dr", 6)]);
}

/// XSETBV always exits: hv validates it, keeps XCR0 per vCPU and loads it
/// on a switch. One attacker sets x87|SSE, the other keeps x87 only.
#[test]
fn xcr0_is_validated_and_per_vcpu() {
    attackers_next_to_a_counter(&[
        ("attack-xcr0", "attack-xcr0", "xcr0", 8),
        ("attack-xcr0b", "attack-xcr0b", "xcr0", 8),
    ]);
}

/// A guest's user program (ring 3) makes Xen's `xen_version` and
/// `sched_op` shutdown, and Mica's null hypercall and shutdown: each
/// returns -1 (Xen's `-EPERM`, Mica's `Permission`), and the kernel runs
/// on and still makes hypercalls through both interfaces.
#[test]
fn hypercalls_from_guest_user_mode_are_refused() {
    attackers_next_to_a_counter(&[("attack-cpl3", "attack-cpl3", "cpl3", 5)]);
}
