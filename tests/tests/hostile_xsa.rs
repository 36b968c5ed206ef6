//! Hostile-guest tests for the classes of Xen's security advisories:
//! hypercall argument fuzzing (`hcfuzz`), grant refcount and revocation
//! races and double fetches of ring slots (`attack-xsa-disk`), event storms,
//! watch-queue growth and store request floods (`attack-xsa-store`). Each
//! attacker runs next to victims (tests/src/hostile.rs): the shell must
//! answer within a bound, the victims make progress with their I/O intact,
//! and all memory comes back. One boot per group of classes, so a failure
//! names its class.

use mica_tests::hostile::{VictimOptions, Victims};
use mica_tests::session::{boot_with, command, fail_with};
use mica_tests::{BochsOptions, Machine, scan, seconds};

fn boot() -> Machine {
    boot_with(&BochsOptions { hard_timeout: seconds(900), ..Default::default() })
}

/// Fails unless `output` holds a line containing `wanted`.
fn require(machine: &mut Machine, output: &str, wanted: &str, what: &str) {
    if !output.lines().any(|line| line.contains(wanted)) {
        fail_with(machine, &format!("{what}: expected a line containing {wanted:?}; the guest printed:\n{output}"));
    }
}

/// 10^5 random and boundary-value hypercalls from a guest, half of them
/// Xen's (numbers below 64, the interface guests use) and half Mica's own
/// (from 0x1000), after the structured checks of documented answers in
/// both number spaces: none is reported FAILED, both successes and
/// refusals are reached in each space, and the victims carry on.
#[test]
fn a_hundred_thousand_fuzzed_hypercalls_leave_hv_and_victims_unharmed() {
    let mut machine = boot();
    let mut victims = Victims::start(&mut machine, VictimOptions::NO_PING);
    let id = victims.attacker(&mut machine, "hcfuzz", "hcfuzz");
    victims.start_io(&mut machine);
    let output = victims.wait_for(&mut machine, "hcfuzz", id, "hcfuzz: ", "FAILED, done", 300);
    println!("{output}");
    for (summary, at_least) in [
        ("hcfuzz: structured: xen: {} checks, {} as documented", 35),
        ("hcfuzz: structured: mica: {} checks, {} as documented", 64),
        ("hcfuzz: structured: {} checks, {} as documented", 99),
    ] {
        match output.lines().find_map(|line| scan(summary, line)) {
            Some(numbers) if numbers[0] == numbers[1] && numbers[0] >= at_least => {}
            _ => fail_with(&mut machine, &format!("structured checks ({summary:?}) should all pass:\n{output}")),
        }
    }
    require(&mut machine, &output, "hcfuzz: 0 FAILED, done", "the fuzz run");
    // Each number space got its half, with successes and refusals.
    match output
        .lines()
        .find_map(|line| scan("hcfuzz: xen: {} calls, {} ok, {} errors; mica: {} calls, {} ok, {} errors", line))
    {
        Some(numbers) if numbers.chunks(3).all(|space| space[0] >= 40_000 && space[1] >= 500 && space[2] >= 500) => {}
        _ => fail_with(&mut machine, &format!("hcfuzz should call both number spaces, each ok and refused:\n{output}")),
    }
    let summary = output.lines().find_map(|line| {
        let head = &line[..line.find(" errors (")?];
        scan("hcfuzz: {} calls, {} ok, {}", head)
    });
    match summary {
        // Skipped calls (a valid shutdown) are few; both outcomes are reached.
        Some(numbers) if numbers[0] >= 95_000 && numbers[1] >= 1000 && numbers[2] >= 1000 => {}
        _ => fail_with(&mut machine, &format!("hcfuzz should make ~100000 calls, many ok and many refused:\n{output}")),
    }
    victims.check(&mut machine);
    victims.finish(&mut machine);
}

/// Grant revocation while disk requests are in flight, references revoked
/// and granted again, a request slot rewritten while dom0 reads it, and
/// aliased pages (a read into a read-only grant; the ring's grant used as a
/// data page, mapped twice, then read over the ring itself): dom0 never
/// uses a revoked grant, answers each request once with a documented
/// status, refuses to revoke what it maps, cuts the overwritten ring off
/// instead of crashing, and the victims (counter, a disk guest, two guests
/// pinging) carry on; all memory comes back.
#[test]
fn grant_races_and_double_fetches_leave_dom0_and_victims_unharmed() {
    let mut machine = boot();
    let mut victims = Victims::start(&mut machine, VictimOptions::ALL);
    let id = victims.attacker(&mut machine, "attack-xsa-disk", "attack-xsa-disk");
    victims.start_io(&mut machine);
    let output = victims.wait_for(&mut machine, "attack-xsa-disk", id, "attack-xsa: ", "FAILED", 300);
    println!("{output}");
    require(&mut machine, &output, "attack-xsa: done, 0 FAILED", "the attack");
    require(&mut machine, &output, "attack-xsa: grants: 48 requests revoked in flight", "revocation races");
    require(&mut machine, &output, "revoking a mapped transfer page was refused (busy)", "revoking a mapped grant");
    require(&mut machine, &output, "attack-xsa: grants: 80 references used: ", "grant reuse");
    require(&mut machine, &output, "attack-xsa: doublefetch: 64 requests rewritten", "double fetch");
    require(&mut machine, &output, "attack-xsa: doublefetch: the disk still reads back what was written", "the disk");
    require(&mut machine, &output, "attack-xsa: aliasing: a read into a read-only grant was refused", "read-only");
    require(&mut machine, &output, "attack-xsa: aliasing: revoking the ring's grant was refused (busy)", "refcount");
    require(&mut machine, &output, "attack-xsa: aliasing: done", "aliasing");
    let transcript = machine.transcript();
    require(&mut machine, &transcript, "dom0: 'attack-xsa-disk' broke its disk ring", "the ring read over itself");
    victims.check(&mut machine);
    victims.finish(&mut machine);
}

/// Event storms and bind/close churn (through Xen's `event_channel_op`,
/// then Mica's `EventOp`: a full table is refused with Xen's `-ENOSPC`,
/// Mica's `Busy`), watches up to the quota and a flood of changes under
/// them with the ring unread, and a flood of good and malformed store
/// requests: dom0 bounds what it queues, answers on, and the victims
/// carry on.
#[test]
fn event_storms_and_store_floods_leave_dom0_and_victims_unharmed() {
    let mut machine = boot();
    let mut victims = Victims::start(&mut machine, VictimOptions::NO_PING);
    let id = victims.attacker(&mut machine, "attack-xsa-store", "attack-xsa-store");
    victims.start_io(&mut machine);
    victims.shell_answers(&mut machine);
    let output = victims.wait_for(&mut machine, "attack-xsa-store", id, "attack-xsa: ", "FAILED", 300);
    println!("{output}");
    require(&mut machine, &output, "attack-xsa: done, 0 FAILED", "the attack");
    require(&mut machine, &output, "attack-xsa: events: done", "event storms");
    require(&mut machine, &output, "through Xen's call and ", "a storm through both interfaces");
    require(&mut machine, &output, "the table filled after", "bind/close churn");
    for (part, answer) in [("xen", "(ENOSPC)"), ("mica", "(busy)")] {
        let filled = output
            .lines()
            .any(|line| line.starts_with(&format!("attack-xsa: events: {part}: ")) && line.ends_with(answer));
        if !filled {
            fail_with(&mut machine, &format!("{part}: a full port table should be refused {answer}:\n{output}"));
        }
    }
    require(&mut machine, &output, "the next refused (ENOSPC)", "the watch quota");
    require(&mut machine, &output, "attack-xsa: watches: the store still answers", "watch-queue growth");
    require(&mut machine, &output, "attack-xsa: storeflood: 1500 requests", "the request flood");
    let store = command(&mut machine, "store");
    if !store.contains(&format!("/local/domain/{id}/data/flood")) {
        fail_with(&mut machine, &format!("the store should still show the attacker's own keys:\n{store}"));
    }
    victims.check(&mut machine);
    victims.finish(&mut machine);
}

/// A guest notifying dom0's ports and asking the store as fast as it can,
/// without end: while it runs the shell answers within the bound, the
/// counter advances and a disk guest writes and verifies its disk.
#[test]
fn an_endless_event_and_store_storm_starves_nobody() {
    let mut machine = boot();
    let mut victims = Victims::start(&mut machine, VictimOptions::NO_PING);
    let id = victims.attacker(&mut machine, "attack-xsa-storm", "attack-xsa-storm");
    victims.wait_for(&mut machine, "attack-xsa-storm", id, "attack-xsa: storm: ", "until destroyed", 120);
    victims.start_io(&mut machine);
    victims.check(&mut machine);
    victims.finish(&mut machine);
}

/// A guest watching the whole tree (`/`, every home, dom0's back ends)
/// while victims with disks and vifs are created, used and destroyed:
/// the store sends it events only for nodes it may read (its own).
#[test]
fn a_guest_watching_the_whole_store_learns_nothing_of_others() {
    let mut machine = boot();
    let mut victims = Victims::begin(&mut machine, VictimOptions::ALL);
    let spy = victims.attacker(&mut machine, "attack-xsa-spy", "attack-xsa-spy");
    victims.wait_for(&mut machine, "attack-xsa-spy", spy, "attack-xsa: spy: ", "watching the tree", 60);
    victims.start_victims(&mut machine);
    victims.start_io(&mut machine);
    victims.check(&mut machine);
    for name in ["netping", "victimdisk", "netserve", "counter"] {
        victims.destroy(&mut machine, name);
    }
    victims.shell_answers(&mut machine);
    let output = victims.wait_for(&mut machine, "attack-xsa-spy", spy, "attack-xsa: spy: ", "watching the tree", 60);
    println!("{output}");
    if output.contains("FAILED") {
        fail_with(&mut machine, &format!("the spy learned of other domains' nodes:\n{output}"));
    }
    let events = output.lines().filter_map(|line| scan("attack-xsa: spy: {} events, {} about nodes of others", line));
    if !events.clone().any(|numbers| numbers[0] >= 3) || events.clone().any(|numbers| numbers[1] > 0) {
        fail_with(&mut machine, &format!("the spy should count its own watches' events and no others:\n{output}"));
    }
    victims.finish(&mut machine);
}
