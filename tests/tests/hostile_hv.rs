//! Hostile-guest suite, hv's shared services: the `attack-hv` guest attacks
//! CPU time (a hypercall storm), the log (a flood, forged crash lines),
//! event channels (a peer that crashes) and its own vCPUs, through Xen's
//! calls (`console_io`, `event_channel_op`, `vcpu_op`) and Mica's own, next
//! to victims, and the tests check that the shell answers, victims
//! progress, hv's own lines and dom0's crash reports stay genuine, a dead
//! peer's channel reads closed, and memory comes back.
//!
//! A bound on wall time here is a correctness bound (the shell answered
//! within 5 s or not at all for half a minute), not a performance figure.

use std::time::{Duration, Instant};

use mica_tests::hostile::{VictimOptions, Victims};
use mica_tests::session::{
    attach, boot, command, counter_reaches, create, destroy, detach, expect_memory_back, fail_with, mem,
};
use mica_tests::{Machine, PROMPT, fail, line_where, scan, seconds};

/// Longest the shell may take to answer `list` next to an attacker.
const SHELL_ANSWER: Duration = Duration::from_secs(5);

/// `create <config>` with a long timeout (an attacker may already be
/// running): returns the id from dom0's "created" line.
fn create_slowly(machine: &mut Machine, config: &str, name: &str) -> u64 {
    machine.send_line(&format!("create {config}")).unwrap_or_else(fail);
    let prefix = format!("dom0: created '{name}' as domain ");
    let seen = machine
        .expect(line_where(format!("the line \"{prefix}<id>\""), |line| line.starts_with(&prefix)), seconds(120))
        .unwrap_or_else(fail);
    machine.expect(PROMPT, seconds(120)).unwrap_or_else(fail);
    seen.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or_else(|| fail_with(machine, &format!("no domain id in dom0's line:\n{seen}")))
}

/// A guest that spends its whole slice in 4 KiB console writes (Xen's
/// `console_io` and Mica's `ConsoleWrite` in turn), and another in CPUID exits, must still be preempted: the shell answers
/// `list` promptly (it took 24-37 s when only guest time counted against a
/// slice), the counter guest beside them keeps counting, and destroying
/// them returns their memory.
#[test]
fn a_hypercall_storm_does_not_starve_the_shell() {
    let mut machine = boot();
    let (baseline_text, baseline) = mem(&mut machine);
    let counter = create(&mut machine, "counter", "counter");
    let before = counter_reaches(&mut machine, counter, 1);
    let attacker = create_slowly(&mut machine, "attack-hypercall-storm", "attack-hypercall-storm");
    attach(&mut machine, "attack-hypercall-storm", attacker);
    machine.expect("attack-hv: storming\n", seconds(60)).unwrap_or_else(fail);
    detach(&mut machine);
    let exits = create_slowly(&mut machine, "attack-exit-storm", "attack-exit-storm");
    attach(&mut machine, "attack-exit-storm", exits);
    machine.expect("attack-hv: storming\n", seconds(60)).unwrap_or_else(fail);
    detach(&mut machine);

    for round in 0..3 {
        let started = Instant::now();
        machine.send_line("list").unwrap_or_else(fail);
        let output = machine.expect(PROMPT, seconds(120)).unwrap_or_else(fail);
        let took = started.elapsed();
        eprintln!("list next to a hypercall and an exit storm, round {round}: answered in {took:.1?}");
        if took > SHELL_ANSWER {
            fail_with(
                &mut machine,
                &format!(
                    "next to a hypercall and an exit storm the shell should answer `list` within {SHELL_ANSWER:?}, \
                     but took {took:.1?}; it printed:\n{output}"
                ),
            );
        }
        if !output.contains("attack-hypercall-storm") || !output.contains("attack-exit-storm") {
            fail_with(&mut machine, &format!("`list` should show the attackers; it printed:\n{output}"));
        }
    }
    counter_reaches(&mut machine, counter, before + 2);

    destroy(&mut machine, "attack-hypercall-storm", attacker);
    destroy(&mut machine, "attack-exit-storm", exits);
    destroy(&mut machine, "counter", counter);
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after destroying the attackers and counter");
}

/// A guest floods hv's log after a genuine crash; another writes text that
/// looks like hv's crash line for the domains created after it (both
/// through Xen's `console_io` and Mica's `ConsoleWrite` in turn). dom0 must
/// report the genuine reason (never the forged text), and `dmesg` must still
/// show hv's crash line after the flood, with guest text marked as such.
#[test]
fn log_floods_and_forged_crash_lines_do_not_fool_dom0() {
    let mut machine = boot();
    let (baseline_text, baseline) = mem(&mut machine);
    let forger = create(&mut machine, "attack-forge-crash", "attack-forge-crash");
    attach(&mut machine, "attack-forge-crash", forger);
    machine.expect("attack-hv: forging crash lines", seconds(60)).unwrap_or_else(fail);
    detach(&mut machine);

    // crasher (on_crash = "preserve") writes to memory it does not own.
    machine.send_line("create crasher").unwrap_or_else(fail);
    let seen = machine
        .expect(
            line_where("dom0's line \"dom0: 'crasher' (domain <id>) crashed ...\"", |line| {
                line.starts_with("dom0: 'crasher' (domain ")
            }),
            seconds(60),
        )
        .unwrap_or_else(fail);
    let report = seen.lines().rev().find(|line| line.starts_with("dom0: 'crasher' (domain ")).unwrap_or_default();
    let id = report.strip_prefix("dom0: 'crasher' (domain ").and_then(|rest| rest.split_once(')'));
    let Some(crasher) = id.and_then(|(id, _)| id.parse::<u64>().ok()) else {
        fail_with(&mut machine, &format!("no domain id in dom0's crash report {report:?}"))
    };
    if crasher <= forger || crasher > forger + 3 {
        fail_with(&mut machine, &format!("crasher should be one of the next 3 domains after {forger}, is {crasher}"));
    }
    let genuine = format!("dom0: 'crasher' (domain {crasher}) crashed: EPT violation at guest-physical 0x30000000");
    if report.contains("FORGED") || !report.starts_with(&genuine) {
        fail_with(
            &mut machine,
            &format!("dom0 should report crasher's genuine crash reason ({genuine:?}...), but printed {report:?}"),
        );
    }
    machine.expect(PROMPT, seconds(60)).unwrap_or_else(fail);

    // The forger writes through both interfaces, and both reach the log
    // behind its author. Looked for before the flood (which may push the
    // forger's lines out of `dmesg`'s window), and for a while: hv's rate
    // limit lets one of its writes through per refill, so either may be
    // the latest to show.
    let mut forged = String::new();
    for _ in 0..20 {
        forged = command(&mut machine, "dmesg");
        if ["xen", "mica"].iter().all(|through| forged.contains(&format!("FORGED-BY-d{forger}-{through} "))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for through in ["xen", "mica"] {
        if !forged.contains(&format!("FORGED-BY-d{forger}-{through} ")) {
            fail_with(&mut machine, &format!("`dmesg` should hold the text forged through {through}:\n{forged}"));
        }
    }

    let flooder = create(&mut machine, "attack-log-flood", "attack-log-flood");
    attach(&mut machine, "attack-log-flood", flooder);
    machine.expect("attack-hv: log-flood done", seconds(120)).unwrap_or_else(fail);
    detach(&mut machine);
    let log = command(&mut machine, "dmesg");
    let hv_line = format!("hv: error: d{crasher} crashed: EPT violation at guest-physical 0x30000000");
    if !log.lines().any(|line| line.starts_with(&hv_line)) {
        fail_with(
            &mut machine,
            &format!("after a log flood, `dmesg` should still show hv's line {hv_line:?}; it printed:\n{log}"),
        );
    }
    // Guest text never passes for hv's: every line that starts like hv's
    // was written by hv, and the forged text appears only behind its
    // author (before the flood and after it).
    for line in forged.lines().chain(log.lines()).filter(|line| line.contains("FORGED")) {
        if line.starts_with("hv:") || !line.starts_with(&format!("(d{forger}) ")) {
            fail_with(&mut machine, &format!("guest text should be marked with its domain in `dmesg`: {line:?}"));
        }
    }
    // Both interfaces reached the log (until the bucket ran dry).
    for through in ["(xen)", "(mica)"] {
        if !log.lines().any(|line| line.starts_with(&format!("(d{flooder}) attack-hv")) && line.contains(through)) {
            fail_with(&mut machine, &format!("`dmesg` should hold flood lines {through} of d{flooder}:\n{log}"));
        }
    }
    if !log.contains(&format!("d{flooder}: ")) || !log.contains("suppressed") {
        fail_with(
            &mut machine,
            &format!("`dmesg` should say that lines of d{flooder} were suppressed; it printed:\n{log}"),
        );
    }

    destroy(&mut machine, "attack-log-flood", flooder);
    destroy(&mut machine, "attack-forge-crash", forger);
    destroy(&mut machine, "crasher", crasher);
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after destroying the attackers and crasher");
}

/// A guest bound to a peer's port (Xen's `bind_interdomain`) keeps sending
/// after the peer crashed and after it is destroyed. Through Xen's calls
/// the send is dropped (0, as Xen drops a send to a port nobody holds) and
/// `status` says Closed; through Mica's, Send fails with `Closed` and
/// Status says Closed: neither pretends the event went somewhere.
#[test]
fn events_to_a_dead_peer_report_the_channel_closed() {
    let mut machine = boot();
    let (baseline_text, baseline) = mem(&mut machine);
    let peer = create(&mut machine, "attack-event-peer", "attack-event-peer");
    machine.send_line("create attack-event-server").unwrap_or_else(fail);
    let seen = machine
        .expect(
            line_where("dom0's line \"dom0: 'attack-event-server' (domain <id>) crashed ...\"", |line| {
                line.starts_with("dom0: 'attack-event-server' (domain ") && line.contains(" crashed")
            }),
            seconds(60),
        )
        .unwrap_or_else(fail);
    let server = seen
        .lines()
        .find_map(|line| scan("dom0: created 'attack-event-server' as domain {}", line))
        .map(|numbers| numbers[0])
        .unwrap_or_else(|| fail_with(&mut machine, &format!("no domain id for the server in:\n{seen}")));
    if server != peer + 1 {
        fail_with(&mut machine, &format!("the server should be domain {} (the peer's id + 1), is {server}", peer + 1));
    }
    machine.expect(PROMPT, seconds(60)).unwrap_or_else(fail);

    attach(&mut machine, "attack-event-peer", peer);
    machine.expect("attack-hv: event-peer: bound port ", seconds(30)).unwrap_or_else(fail);
    let crashed = format!(
        "attack-hv: event-peer: xen: send Ok, status Closed; mica: send Err(Closed), status Closed d{server}\n"
    );
    let output = machine.expect(crashed.as_str(), seconds(30)).unwrap_or_else(fail);
    let connected = format!(
        "attack-hv: event-peer: xen: send Ok, status Interdomain d{server}; mica: send Ok, status Interdomain d{server}\n"
    );
    if !output.contains(&connected) {
        fail_with(
            &mut machine,
            &format!("the peer should have sent successfully before the crash; it printed:\n{output}"),
        );
    }
    detach(&mut machine);

    destroy(&mut machine, "attack-event-server", server);
    // The peer prints only when the outcome changes; its console replays
    // what it printed, so the last outcome is the last such line.
    std::thread::sleep(Duration::from_secs(3));
    attach(&mut machine, "attack-event-peer", peer);
    let mut after = machine.expect(crashed.as_str(), seconds(30)).unwrap_or_else(fail);
    std::thread::sleep(Duration::from_secs(1));
    after += &detach(&mut machine);
    let last = after.lines().rev().find(|line| line.starts_with("attack-hv: event-peer: xen: send"));
    if last != Some(crashed.trim_end()) {
        fail_with(
            &mut machine,
            &format!("after the server was destroyed the peer should still see Closed; it printed:\n{after}"),
        );
    }
    destroy(&mut machine, "attack-event-peer", peer);
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after destroying both");
}

/// A guest with two vCPUs attacks the vCPU operations (see `attack-hv`
/// mode `vcpus`), Xen's `vcpu_op` and `event_channel_op` first, then
/// Mica's `VcpuOp` and `EventOp`: every malformed or out-of-range call
/// gets its documented error (Xen's errno, Mica's error), a hundred starts
/// and stops of vCPU 1 through each interface leave nothing behind, and
/// vCPU 1, left spinning with interrupts off, neither starves the victims
/// nor keeps the domain from being destroyed with every frame returned.
#[test]
fn a_guest_abusing_its_vcpus_gets_documented_errors_and_starves_nobody() {
    let mut machine = boot();
    let mut victims = Victims::start(&mut machine, VictimOptions::NO_PING);
    let id = victims.attacker(&mut machine, "attack-vcpus", "attack-vcpus");
    let output = victims.wait_for(&mut machine, "attack-vcpus", id, "attack-hv: vcpus: ", "done", 180);
    println!("{output}");
    // Each part made its checks, all as documented: (line, at least).
    for (summary, at_least) in [
        ("attack-hv: vcpus: xen: {} checks, {} as documented", 27),
        ("attack-hv: vcpus: mica: {} checks, {} as documented", 21),
        ("attack-hv: vcpus: {} checks, {} as documented", 48),
    ] {
        match output.lines().find_map(|line| scan(summary, line)) {
            Some(numbers) if numbers[0] == numbers[1] && numbers[0] >= at_least => {}
            _ => fail_with(
                &mut machine,
                &format!("every vCPU attack should get its documented answer ({summary:?}):\n{output}"),
            ),
        }
    }
    victims.start_io(&mut machine);
    victims.check(&mut machine);
    victims.finish(&mut machine);
}
