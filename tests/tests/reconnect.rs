//! System tests of a front end that closes its own disk and reconnects it
//! (`abi::store`'s state diagram): dom0 answers Closed with the ring and
//! every persistent grant unmapped (the guest revokes them all), offers the
//! disk again when the front end writes Initialising, and serves the new
//! ring. A front end flapping close/reconnect 50 times leaks no window page
//! and does not starve the victims (tests/src/hostile.rs) beside it.

use mica_tests::hostile::{VictimOptions, Victims};
use mica_tests::session::{boot_with, command, fail_with};
use mica_tests::{BochsOptions, Machine, seconds};

fn boot() -> Machine {
    boot_with(&BochsOptions { hard_timeout: seconds(900), ..Default::default() })
}

/// `devices`' window line of `name`: (ring pages, grant pages) dom0 maps.
fn window_pages(devices: &str, name: &str) -> Option<(u64, u64)> {
    let line =
        devices.lines().find(|line| line.split_whitespace().next() == Some(name) && line.contains(" window "))?;
    let rest = line.split(" window ").nth(1)?.trim();
    let mut words = rest.split_whitespace();
    let rings = words.next()?.parse().ok()?;
    let grants = words.nth(2)?.parse().ok()?;
    Some((rings, grants))
}

/// Runs guest `name` (disktest in a close/reconnect mode) to its verdict
/// and checks that it verified its data, and that dom0 then maps no more of
/// its pages than of a guest without a disk (`counter`: console and store
/// rings) and shows its disk closed by the front end.
fn run_to_closed(machine: &mut Machine, victims: &mut Victims, name: &str, rounds: u64) {
    let id = victims.attacker(machine, name, name);
    let verdict =
        |line: &str| line.starts_with("disktest: ") && (line.contains("disk closed") || line.contains("FAILED"));
    let seen = victims.wait_for_line(machine, name, id, "disktest's verdict", verdict, 600);
    println!("{seen}");
    let wanted = format!("disktest: reconnect: {rounds} rounds of close and reconnect: all match, disk closed");
    if seen.contains("FAILED") || !seen.contains(&wanted) {
        fail_with(machine, &format!("{name} should print {wanted:?}; it printed:\n{seen}"));
    }
    let refused = "disktest: reconnect: a bad offer was refused (Closed)";
    if rounds == 1 && !seen.contains(refused) {
        fail_with(machine, &format!("{name} should print {refused:?}; it printed:\n{seen}"));
    }
    let devices = command(machine, "devices");
    let (Some(baseline), Some(held)) = (window_pages(&devices, "counter"), window_pages(&devices, name)) else {
        fail_with(machine, &format!("`devices` should show counter's and {name}'s window pages:\n{devices}"));
    };
    if held != (baseline.0, 0) {
        fail_with(
            machine,
            &format!(
                "after its disk closed, dom0 should map {name}'s console and store rings only ({} ring pages, \
                 as counter's), no grant: it maps {held:?}:\n{devices}",
                baseline.0
            ),
        );
    }
    if !devices
        .lines()
        .any(|line| line.contains(name) && line.contains(" disk ") && line.contains("closed by the front end"))
    {
        fail_with(machine, &format!("`devices` should show {name}'s disk closed by the front end:\n{devices}"));
    }
}

/// `reconnect` closes its disk once, makes an offer dom0 must refuse
/// (Closed), and reconnects (before the fix dom0 never answered its
/// Closing: "close: NoAnswer", and a refused offer lost the disk for
/// good: "the back end did not reconnect"); `flap` does it 50
/// times with I/O in each round. Both end with nothing of theirs mapped
/// beyond the console and store rings; the victims carry on; all memory
/// comes back after destroy.
#[test]
fn a_front_end_closes_and_reconnects_its_disk_without_leaks() {
    let mut machine = boot();
    let mut victims = Victims::start(&mut machine, VictimOptions::NO_PING);
    run_to_closed(&mut machine, &mut victims, "reconnect", 1);
    victims.start_io(&mut machine);
    run_to_closed(&mut machine, &mut victims, "flap", 50);
    victims.check(&mut machine);
    victims.finish(&mut machine);
}

/// `vifflap` closes its vif and reconnects it 50 times (before the fix:
/// "close: NoAnswer"), then pings `netserve` ten times over the last
/// connection: every reply comes, dom0 maps no more of its pages than of
/// `netserve` (console, store and two vif rings), the victims carry on and
/// all memory comes back after destroy.
#[test]
fn a_front_end_closes_and_reconnects_its_vif_without_leaks() {
    let mut machine = boot();
    let mut victims = Victims::start(&mut machine, VictimOptions::ALL);
    let id = victims.attacker(&mut machine, "vifflap", "vifflap");
    let seen = victims.wait_for_line(
        &mut machine,
        "vifflap",
        id,
        "nettest's ping summary or a failure",
        |line| line.starts_with("nettest: ") && (line.contains(" replies") || line.contains("FAILED")),
        600,
    );
    println!("{seen}");
    let reconnected = "nettest: reconnect: 50 rounds of close and reconnect, dom0 let go of every page";
    if seen.contains("FAILED")
        || !seen.contains(reconnected)
        || !seen.contains("nettest: ping 10.0.0.2: 10 of 10 replies")
    {
        fail_with(
            &mut machine,
            &format!("vifflap should print {reconnected:?}, then get every ping reply; it printed:\n{seen}"),
        );
    }
    let devices = command(&mut machine, "devices");
    let (Some(baseline), Some(held)) = (window_pages(&devices, "netserve"), window_pages(&devices, "vifflap")) else {
        fail_with(&mut machine, &format!("`devices` should show netserve's and vifflap's window pages:\n{devices}"));
    };
    if held != baseline {
        fail_with(
            &mut machine,
            &format!(
                "dom0 should map as many of vifflap's pages as of netserve's ({baseline:?}), not {held:?}:\n{devices}"
            ),
        );
    }
    victims.check(&mut machine);
    victims.finish(&mut machine);
}
