//! System tests of Xen's guest interface (issue 10), as far as hv offers
//! it: the `xenhello` guest makes its calls with Xen's numbers, structures
//! and errors (`pv_drivers::xen`), its pointers guest-virtual addresses
//! that hv translates through the guest's page tables.

use mica_tests::session::{attach, boot, command, create, expect_memory_back, fail_with, list, mem};
use mica_tests::{Machine, seconds};

/// Waits for dom0 to report guest `name` (domain `id`) shut down and
/// destroyed; returns `dmesg`, which also goes into the failure report
/// when the guest does not get that far.
fn shut_down(machine: &mut Machine, name: &str, id: u64) -> String {
    let ended = format!("dom0: '{name}' (domain {id}) shut down; on_crash=destroy");
    let waited = machine.expect(ended.as_str(), seconds(30));
    let dmesg = command(machine, "dmesg");
    if let Err(error) = waited {
        fail_with(machine, &format!("{error}\n`dmesg` printed:\n{dmesg}"));
    }
    dmesg
}

/// `xenhello` finds Xen's CPUID leaves (version 4.17, its domain and vCPU
/// ids), learns it runs on Xen 4.17 with Mica's suffix and the features
/// hv offers (`xen_version`), writes that to hv's console (`console_io`:
/// lines in `dmesg` under its domain), calls through the hypercall page
/// hv filled when it wrote the page's address to the MSR, places its
/// shared-info page and sends itself an event on a loopback channel (the
/// port's pending bit, vCPU 0's selector and upcall flag appear in Xen's
/// layout; `status` shows the channel; FIFO channels are refused), sleeps
/// on its single-shot timer for 1 ms of pvclock time (VIRQ_TIMER wakes
/// it), has an unknown
/// feature word and a suspend refused with `-EINVAL`, and powers off
/// (`sched_op`): dom0 sees it shut down and destroys it, every page back.
#[test]
fn a_guest_on_xens_interface_learns_the_version_writes_to_the_console_and_powers_off() {
    let mut machine = boot();
    let (baseline_text, baseline) = mem(&mut machine);
    let id = create(&mut machine, "xenhello", "xenhello");
    let dmesg = shut_down(&mut machine, "xenhello", id);
    let lines = [
        format!("(d{id}) xenhello: CPUID: Xen at 0x40000000, version 4.17, domain {id}, vCPU 0"),
        format!("(d{id}) xenhello: Xen 4.17.0-mica, features 0x305 (auto-translated physmap: true)"),
        format!("(d{id}) xenhello: xen_version through the hypercall page: Ok(40011)"),
        format!("(d{id}) xenhello: loopback 4 -> 3: send Ok(()), pending 1, selector 0x1, upcall 1"),
        format!("(d{id}) xenhello: status Ok(()) Some(Interdomain {{ remote_dom: {id}, remote_port: 3 }})"),
        format!("(d{id}) xenhello: init_control Err(Enosys)"),
        format!("(d{id}) xenhello: timer Ok(()): woke after 1 ms: true, timer port pending: 1"),
        format!("(d{id}) xenhello: feature word 1: Err(Einval)"),
        format!("(d{id}) xenhello: suspend: Err(Einval)"),
        format!("(d{id}) xenhello: powering off"),
        format!("d{id} shut down (PowerOff)"),
    ];
    for line in &lines {
        if !dmesg.lines().any(|logged| logged.ends_with(line.as_str())) {
            fail_with(&mut machine, &format!("`dmesg` should hold {line:?}; it printed:\n{dmesg}"));
        }
    }
    if dmesg.contains("still running after poweroff") {
        fail_with(&mut machine, &format!("xenhello ran on after its poweroff:\n{dmesg}"));
    }
    let (text, domains) = list(&mut machine);
    if domains.names() != ["Domain-0"] {
        fail_with(&mut machine, &format!("`list` should show dom0 alone once xenhello is gone; it printed:\n{text}"));
    }
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after xenhello powered off");
}

/// `xenhelloc`, a guest in C built on Xen's own public headers (Debian's
/// libxen-dev: `shared_info_t`, `struct evtchn_*`, `__HYPERVISOR_*`,
/// `struct hvm_start_info`, `struct xencons_interface`, `xs_wire.h`) and
/// booted as Xen boots a PVH kernel: dom0 starts it at the 32-bit entry
/// its ELF note names with an `hvm_start_info` (command line, memory map,
/// the ACPI tables' RSDP), and it enters 64-bit mode itself. hv's answers match Xen's definitions:
/// it reads the version and suffix, places its shared info, sends itself
/// an event on a loopback channel and finds it where Xen's
/// `shared_info_t` says, finds its console ring and its store through
/// HVM parameters, writes to the ring (`console`), reads its name from
/// the store (an xs_wire `XS_READ`), connects its disk as Linux's blkfront
/// does (Xen's device path and keys, a grant table placed with
/// add_to_physmap, Xen's `ring.h` macros) and writes and reads back a
/// sector through blkif, waits for a key typed at its console and powers
/// off.
#[test]
fn a_c_guest_on_xens_headers_boots_as_pvh_and_uses_its_console_and_store() {
    let mut machine = boot();
    let (baseline_text, baseline) = mem(&mut machine);
    let id = create(&mut machine, "xenhelloc", "xenhelloc");
    attach(&mut machine, "xenhelloc", id);
    let prompt = "xenhello-c: console ring: press a key to power off";
    let output =
        machine.expect(prompt, seconds(60)).unwrap_or_else(|error| fail_with(&mut machine, &error.to_string()));
    for line in [
        "xenhello-c: PVH start info magic ok, version 1, command line '', memory map: 20 KiB reserved 4 KiB ACPI 4072 KiB RAM, ACPI RSDP found",
        "xenhello-c: memory_map 0: 3 entries, the last at 24 KiB",
        "xenhello-c: Xen 4.17.0-mica",
        "xenhello-c: store: name xenhelloc",
        "xenhello-c: disk: 64 sectors; sector 0 written ok, read back the same",
    ] {
        if !output.lines().any(|printed| printed.trim_end() == line) {
            fail_with(&mut machine, &format!("its console should show {line:?}; it printed:\n{output}"));
        }
    }
    machine.send(b"k").unwrap_or_else(|error| fail_with(&mut machine, &error.to_string()));
    let dmesg = shut_down(&mut machine, "xenhelloc", id);
    for line in [
        format!("(d{id}) xenhello-c: Xen 4.17.0-mica"),
        format!("(d{id}) xenhello-c: shared info 0, channel 0 0 0: pending 1, upcall 1, selector 1"),
        format!("(d{id}) xenhello-c: got 'k', powering off"),
        format!("d{id} shut down (PowerOff)"),
    ] {
        if !dmesg.lines().any(|logged| logged.ends_with(line.as_str())) {
            fail_with(&mut machine, &format!("`dmesg` should hold {line:?}; it printed:\n{dmesg}"));
        }
    }
    if dmesg.contains("still running after poweroff") {
        fail_with(&mut machine, &format!("xenhelloc ran on after its poweroff:\n{dmesg}"));
    }
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after xenhelloc powered off");
}

/// The C guest's local x2APIC, reached through MSRs as Linux reaches it
/// (hv's `vlapic`): it reads its base (x2APIC mode, BSP) and id, takes
/// its timer's interrupt one-shot (not before the count ran out, the
/// count 0 after) and TSC-deadline, and a self IPI, each ended with an
/// EOI; then it starts its second vCPU with INIT and a Start-up IPI,
/// which runs real-mode code at the IPI's page and reads its own x2APIC
/// id. The guest powers off at a key and every page comes back.
#[test]
fn a_c_guest_finds_its_x2apic_takes_its_timers_interrupts_and_starts_a_vcpu_with_init_and_sipi() {
    let mut machine = boot();
    let (baseline_text, baseline) = mem(&mut machine);
    let id = create(&mut machine, "xenhelloc2", "xenhelloc2");
    attach(&mut machine, "xenhelloc2", id);
    let prompt = "xenhello-c: console ring: press a key to power off";
    let output =
        machine.expect(prompt, seconds(60)).unwrap_or_else(|error| fail_with(&mut machine, &error.to_string()));
    for line in [
        "xenhello-c: x2APIC: base 0xfee00d00, id 0, version 0x50014",
        "xenhello-c: APIC timer: one-shot after 100000 ticks: yes, TSC-deadline: 1, self IPI: 1, in service after EOI: 0x0",
        "xenhello-c: INIT and Start-up IPI: vCPU 1 ran in real mode at 0x8000, its x2APIC id 1",
    ] {
        if !output.lines().any(|printed| printed.trim_end() == line) {
            fail_with(&mut machine, &format!("its console should show {line:?}; it printed:\n{output}"));
        }
    }
    machine.send(b"k").unwrap_or_else(|error| fail_with(&mut machine, &error.to_string()));
    shut_down(&mut machine, "xenhelloc2", id);
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after xenhelloc2 powered off");
}
