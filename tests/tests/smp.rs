//! System tests of hv on a machine with several CPUs (issue 9, first step:
//! boot every CPU). hv starts each CPU the ACPI MADT lists with
//! INIT-SIPI-SIPI; each reaches VMX root and halts there (domains still run
//! on the boot CPU only). `info` counts and lists the CPUs running hv,
//! `dmesg` names each, and everything works as on one CPU. Each test boots its own Bochs.
//!
//! Not covered: `maxcpus=N` in a system test. The harness boots the one ISO
//! run-qemu.sh builds, whose GRUB entry has a fixed hv command line, so no
//! test can pass `maxcpus=`; its parsing and the CPU choice it makes are
//! host-tested (hvcore::smp).

use mica_tests::session::{boot_with, command, counter_reaches, create, destroy, expect_memory_back, fail_with, mem};
use mica_tests::{BochsOptions, InfoReport, Machine, scan, seconds};

fn boot_cpus(cpus: u32) -> Machine {
    boot_with(&BochsOptions { cpus, hard_timeout: seconds(240), ..Default::default() })
}

/// Boots `cpus` CPUs and checks that `info` counts them all, `dmesg` shows
/// each started CPU (APIC id, VMX root, idle) and none that failed, and that
/// a guest runs, counts, and leaves no memory behind when destroyed.
fn every_cpu_runs_hv(cpus: u32) {
    let mut machine = boot_cpus(cpus);
    let info = command(&mut machine, "info");
    let report = InfoReport::parse(&info).unwrap_or_else(|error| fail_with(&mut machine, &error));
    if report.cpus != u64::from(cpus) {
        fail_with(
            &mut machine,
            &format!("on a {cpus}-CPU machine `info` should count {cpus} CPUs running hv; it printed:\n{info}"),
        );
    }
    // One line per CPU: the boot CPU runs dom0, the others idle in VMX root,
    // each with its own APIC id.
    let states: Vec<&str> = report.cpu_list.iter().map(|(_, _, state)| state.as_str()).collect();
    let mut apic_ids: Vec<u64> = report.cpu_list.iter().map(|&(_, id, _)| id).collect();
    apic_ids.sort();
    apic_ids.dedup();
    let indices: Vec<u64> = report.cpu_list.iter().map(|&(index, _, _)| index).collect();
    if report.cpu_list.len() != cpus as usize
        || indices != (0..u64::from(cpus)).collect::<Vec<_>>()
        || states.first() != Some(&"running dom0")
        || states.iter().skip(1).any(|&state| state != "vmx-root idle")
        || apic_ids.len() != cpus as usize
    {
        fail_with(
            &mut machine,
            &format!(
                "`info` should list {cpus} CPUs with distinct APIC ids: CPU 0 running dom0, the others \
                 vmx-root idle; it printed:\n{info}"
            ),
        );
    }
    let dmesg = command(&mut machine, "dmesg");
    let mut started: Vec<u64> = dmesg
        .lines()
        .filter_map(|line| scan("CPU {}: APIC id {}, vmx-root idle", line[line.find("CPU ")?..].trim_end()))
        .map(|n| n[0])
        .collect();
    started.sort();
    for line in dmesg.lines().filter(|line| line.contains("CPU")) {
        eprintln!("hv: {line}");
    }
    let expected: Vec<u64> = (1..u64::from(cpus)).collect();
    if started != expected || dmesg.contains("not started") || !dmesg.contains("CPU 0: APIC id") {
        fail_with(
            &mut machine,
            &format!(
                "hv's log should name the boot CPU and CPUs {expected:?} as started, idle in VMX root, \
                 and none as not started; it shows {started:?}:\n{dmesg}"
            ),
        );
    }

    // The system works as on one CPU.
    let (before_text, before) = mem(&mut machine);
    let id = create(&mut machine, "counter", "counter");
    let first = counter_reaches(&mut machine, id, 1);
    counter_reaches(&mut machine, id, first + 1);
    destroy(&mut machine, "counter", id);
    expect_memory_back(&mut machine, &before, &before_text, "after the counter guest is destroyed");
    let info = command(&mut machine, "info");
    let report = InfoReport::parse(&info).unwrap_or_else(|error| fail_with(&mut machine, &error));
    if report.cpus != u64::from(cpus) {
        fail_with(&mut machine, &format!("after a guest ran, `info` should still count {cpus} CPUs:\n{info}"));
    }
}

#[test]
fn two_cpus_boot_and_the_system_works() {
    every_cpu_runs_hv(2);
}

#[test]
fn four_cpus_boot_and_the_system_works() {
    every_cpu_runs_hv(4);
}
