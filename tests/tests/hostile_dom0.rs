//! Hostile-guest suite, dom0's services: guests attack the switch (MAC
//! spoofing, table flooding) next to two guests pinging each other, and
//! the store (existence probing, rewriting what dom0 wrote) and the
//! operator's terminal (escape sequences on the console, in the store and
//! in hv's log). Each test checks the victims are unharmed, the attack got
//! nothing, and every page comes back when the guests are destroyed.

use mica_tests::session::{attach, boot, command, create, destroy, detach, fail_with, mem};
use mica_tests::{Machine, fail, line_where, seconds};

fn expect_line(machine: &mut Machine, wanted: &str, timeout: u64) -> String {
    machine
        .expect(line_where(format!("a line starting {wanted:?}"), |line| line.starts_with(wanted)), seconds(timeout))
        .unwrap_or_else(fail)
}

/// The number after `label ` in `text`.
fn number_after(text: &str, label: &str) -> Option<u64> {
    text.split(&format!("{label} ")).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A sniffing attacker's report in the store (`data/sniffed`, see
/// nettest's `sniff`): (reports, foreign frames), once it has one.
fn sniffed(machine: &mut Machine, id: u64) -> Option<(u64, u64, String)> {
    let output = command(machine, &format!("store /local/domain/{id}/data/sniffed"));
    let line = output.lines().find(|line| line.contains("data/sniffed = "))?.to_owned();
    Some((number_after(&line, "reports")?, number_after(&line, "foreign")?, line))
}

/// A report written after the victims finished pinging: waits until the
/// attacker's report count moved past what it was then.
fn fresh_report(machine: &mut Machine, name: &str, id: u64) -> (u64, String) {
    let first = sniffed(machine, id).map_or(0, |(reports, _, _)| reports);
    for _ in 0..60 {
        if let Some((reports, foreign, line)) = sniffed(machine, id)
            && reports > first
        {
            return (foreign, line);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    fail_with(machine, &format!("{name} should keep reporting in the store (data/sniffed)"))
}

/// netspoof sends from netserve's MAC; netflood from ever new MACs. Next
/// to them netpingslow pings netserve (pausing between pings, so that its
/// switch entries go quiet): every ping is answered, neither
/// attacker receives one unicast frame meant for another guest, the
/// switch refuses the attackers' frames (counted per vif) and keeps each
/// victim on its own port, and memory is back once all are destroyed.
#[test]
fn spoofing_and_flooding_guests_get_no_foreign_frames_and_victims_keep_pinging() {
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let server = create(&mut machine, "netserve", "netserve");
    let spoof = create(&mut machine, "netspoof", "netspoof");
    let flood = create(&mut machine, "netflood", "netflood");
    // Both attackers are at work before the victim starts pinging.
    for (name, id) in [("netspoof", spoof), ("netflood", flood)] {
        attach(&mut machine, name, id);
        expect_line(&mut machine, &format!("nettest: {}: ", if id == spoof { "spoof" } else { "flood-macs" }), 60);
        detach(&mut machine);
    }
    let client = create(&mut machine, "netpingslow", "netpingslow");
    attach(&mut machine, "netpingslow", client);
    let summary = expect_line(&mut machine, "nettest: ping 10.0.0.2:", 180);
    detach(&mut machine);
    if !summary.contains(": 10 of 10 replies") {
        fail_with(&mut machine, &format!("every ping should be answered next to the attackers; {summary:?}"));
    }
    for (name, id) in [("netspoof", spoof), ("netflood", flood)] {
        let (foreign, line) = fresh_report(&mut machine, name, id);
        if foreign != 0 {
            fail_with(&mut machine, &format!("{name} should receive no frame meant for another guest: {line}"));
        }
    }

    let devices = command(&mut machine, "devices");
    for name in ["netspoof", "netflood"] {
        let vif = devices.lines().find(|line| line.trim_start().starts_with(name) && line.contains(" vif "));
        if vif.and_then(|line| number_after(line, "refused,")).is_none_or(|spoofed| spoofed == 0) {
            fail_with(&mut machine, &format!("`devices` should count {name}'s refused frames as spoofed:\n{devices}"));
        }
    }
    let table = command(&mut machine, "switch");
    let on_port = |mac: &str, port: &str| {
        table.lines().any(|line| line.starts_with(mac) && line.split_whitespace().nth(1) == Some(port))
    };
    if !on_port("02:00:00:00:00:02", "netserve") || !on_port("02:4d:69:00:", "netpingslow") {
        fail_with(&mut machine, &format!("`switch` should keep each victim's MAC on its port:\n{table}"));
    }
    if table.lines().any(|line| line.starts_with("02:f1:")) {
        fail_with(&mut machine, &format!("`switch` should have learned none of netflood's fake MACs:\n{table}"));
    }
    let refused = table.lines().find_map(|line| line.strip_suffix(" frames refused (source MAC not the port's)"));
    if refused.and_then(|count| count.trim().parse::<u64>().ok()).is_none_or(|count| count == 0) {
        fail_with(&mut machine, &format!("`switch` should count the refused frames:\n{table}"));
    }

    for (name, id) in [("netpingslow", client), ("netflood", flood), ("netspoof", spoof), ("netserve", server)] {
        destroy(&mut machine, name, id);
    }
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(&mut machine, &format!("free memory should be back to {} KiB:\n{text}", before.free_kib));
    }
}

/// attack-dom0 probes the store next to a guest with a vif (netserve) and
/// finds nothing: every operation on another domain's device answers as
/// on a missing path. It cannot rewrite or remove its `name` or `domid`.
/// The escape sequences it prints, stores and logs (through Xen's
/// `console_io` and Mica's `ConsoleWrite`) reach the terminal escaped
/// (`\x1b`) on `console` attach and in `store`, and never raw in `dmesg`.
#[test]
fn a_guest_cannot_probe_the_store_rewrite_its_name_or_inject_terminal_escapes() {
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let victim = create(&mut machine, "netserve", "netserve");
    let attacker = create(&mut machine, "attack-dom0", "attack-dom0");
    attach(&mut machine, "attack-dom0", attacker);
    let revealed = expect_line(&mut machine, "attack-dom0: store: other domains' nodes revealed: ", 120);
    let name = expect_line(&mut machine, "attack-dom0: store: rewrite my name: ", 30);
    let domid = expect_line(&mut machine, "attack-dom0: store: rewrite my domid: ", 30);
    let removed = expect_line(&mut machine, "attack-dom0: store: remove my name: ", 30);
    let console = machine.expect("attack-dom0: done", seconds(60)).unwrap_or_else(fail);
    detach(&mut machine);
    if !revealed.trim_end().ends_with(": 0") {
        fail_with(&mut machine, &format!("the store should reveal no other domain's nodes: {revealed:?}\n{console}"));
    }
    for line in [&name, &domid, &removed] {
        if !line.contains("Refused(Eacces)") {
            fail_with(&mut machine, &format!("a guest should not change what dom0 wrote about it: {line:?}"));
        }
    }
    let home = command(&mut machine, &format!("store /local/domain/{attacker}"));
    if !home.contains(&format!("/local/domain/{attacker}/name = \"attack-dom0\""))
        || !home.contains(&format!("/local/domain/{attacker}/domid = \"{attacker}\""))
    {
        fail_with(&mut machine, &format!("the store should keep the name and domid dom0 wrote:\n{home}"));
    }
    if !home.contains("data/evil = \"\\x1b]0;PWNED-STORE\\x07\\x1b[2J\"") {
        fail_with(&mut machine, &format!("`store` should show the stored escape sequence escaped:\n{home}"));
    }
    // On attach again: the replayed history, escaped.
    attach(&mut machine, "attack-dom0", attacker);
    let replayed = machine.expect("attack-dom0: done", seconds(30)).unwrap_or_else(fail);
    detach(&mut machine);
    let log = command(&mut machine, "dmesg");
    let shown = [
        (console.as_str(), "attack-dom0: escape: \\x1b]0;PWNED-CONSOLE\\x07\\x1b[2J\\x1b[H\\x07 end", "console"),
        (replayed.as_str(), "attack-dom0: escape: \\x1b]0;PWNED-CONSOLE\\x07", "the replayed console"),
        // hv shows the bytes as `?` in its log already; dom0 would escape
        // them. Written through Xen's console_io and Mica's ConsoleWrite.
        (log.as_str(), "]0;PWNED-LOG-XEN", "dmesg"),
        (log.as_str(), "]0;PWNED-LOG-MICA", "dmesg"),
    ]
    .map(|(text, wanted, place)| (text.contains(wanted), wanted, place));
    for (found, wanted, place) in shown {
        if !found {
            fail_with(&mut machine, &format!("{place} should show {wanted:?}:\n{console}\n{replayed}\n{log}"));
        }
    }
    if machine.transcript().contains("\u{1b}]0;PWNED") || machine.transcript().contains("\u{1b}[2J") {
        fail_with(&mut machine, "a guest's escape sequence reached the terminal raw");
    }

    destroy(&mut machine, "attack-dom0", attacker);
    destroy(&mut machine, "netserve", victim);
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(&mut machine, &format!("free memory should be back to {} KiB:\n{text}", before.free_kib));
    }
}
