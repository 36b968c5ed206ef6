//! System tests of networking: guests' vifs join dom0's software switch;
//! two guests running smoltcp resolve each other with ARP and ping; a
//! hostile front end is disconnected while the others keep pinging.

use mica_tests::session::{attach, boot, command, create, destroy, detach, fail_with, mem};
use mica_tests::{Machine, fail, line_where, seconds};

fn expect_line(machine: &mut Machine, wanted: &str, timeout: u64) -> String {
    machine
        .expect(line_where(format!("a line starting {wanted:?}"), |line| line.starts_with(wanted)), seconds(timeout))
        .unwrap_or_else(fail)
}

/// Waits for netping's summary and requires every ping answered.
fn expect_all_replies(machine: &mut Machine) {
    let summary = expect_line(machine, "nettest: ping 10.0.0.2:", 120);
    if !summary.contains(": 10 of 10 replies") {
        fail_with(machine, &format!("every ping should be answered; netping said {summary:?}"));
    }
}

/// The line of `devices` about `name`'s vif.
fn vif_line<'a>(devices: &'a str, name: &str) -> Option<&'a str> {
    devices.lines().find(|line| line.trim_start().starts_with(name) && line.contains(" vif "))
}

/// Frames counted after `label` ("tx", "rx") in a `devices` vif line.
fn frames(line: &str, label: &str) -> u64 {
    line.split(&format!("{label} "))
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// netserve (10.0.0.2, MAC from its config) and netping (10.0.0.1, MAC
/// chosen by dom0) meet through the store, resolve each other with ARP
/// and exchange ten pings through dom0's switch; `devices` and `store`
/// show both vifs connected; destroying them removes their store entries
/// and returns every page.
#[test]
fn two_guests_ping_each_other_through_the_switch() {
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let server = create(&mut machine, "netserve", "netserve");
    let client = create(&mut machine, "netping", "netping");
    attach(&mut machine, "netping", client);
    expect_line(&mut machine, "nettest: 10.0.0.1/24 up on vif 0, mac 02:4d:69:00:", 60);
    let reply = expect_line(&mut machine, "nettest: reply from 10.0.0.2 seq=1 ", 60);
    if !reply.contains("rtt=") {
        fail_with(&mut machine, &format!("a reply should carry its round trip: {reply:?}"));
    }
    expect_all_replies(&mut machine);
    detach(&mut machine);

    let devices = command(&mut machine, "devices");
    for name in ["netserve", "netping"] {
        let Some(line) = vif_line(&devices, name) else {
            fail_with(&mut machine, &format!("`devices` should list {name}'s vif:\n{devices}"));
        };
        // Ten echo requests or replies each way, plus ARP.
        if !line.contains("connected") || frames(line, "tx") < 10 || frames(line, "rx") < 10 {
            fail_with(&mut machine, &format!("{name}'s vif should be connected and have moved frames:\n{devices}"));
        }
    }
    if !vif_line(&devices, "netserve").is_some_and(|line| line.contains("02:00:00:00:00:02")) {
        fail_with(&mut machine, &format!("netserve's vif should have its config's MAC:\n{devices}"));
    }
    if !devices.contains("switch: 2 addresses learned") {
        fail_with(&mut machine, &format!("the switch should have learned both guests' addresses:\n{devices}"));
    }
    let table = command(&mut machine, "switch");
    let learned = |mac: &str, port: &str| {
        table.lines().any(|line| line.starts_with(mac) && line.split_whitespace().nth(1) == Some(port))
    };
    if !learned("02:00:00:00:00:02", "netserve") || !learned("02:4d:69:00:", "netping") {
        fail_with(&mut machine, &format!("`switch` should list each guest's MAC on its port:\n{table}"));
    }
    let store = command(&mut machine, "store");
    for id in [server, client] {
        let front = format!("/local/domain/{id}/device/vif/0/state = \"4\"");
        let back = format!("/local/domain/0/backend/vif/{id}/0/state = \"4\"");
        if !store.contains(&front) || !store.contains(&back) {
            fail_with(&mut machine, &format!("the store should show both ends Connected ({front}, {back}):\n{store}"));
        }
    }
    // Xen's keys, as Linux's netfront reads and writes them.
    for line in [
        format!("/local/domain/0/backend/vif/{server}/0/feature-rx-copy = \"1\""),
        format!("/local/domain/0/backend/vif/{server}/0/feature-no-csum-offload = \"1\""),
        format!("/local/domain/0/backend/vif/{server}/0/feature-sg = \"1\""),
        format!("/local/domain/0/backend/vif/{server}/0/online = \"1\""),
        format!("/local/domain/{server}/device/vif/0/mac = \"02:00:00:00:00:02\""),
        format!("/local/domain/{server}/device/vif/0/request-rx-copy = \"1\""),
        format!("/local/domain/{server}/device/vif/0/backend = \"/local/domain/0/backend/vif/{server}/0\""),
    ] {
        if !store.contains(&line) {
            fail_with(&mut machine, &format!("the store should hold {line}:\n{store}"));
        }
    }

    destroy(&mut machine, "netping", client);
    destroy(&mut machine, "netserve", server);
    let store = command(&mut machine, "store");
    if store.contains("backend/vif/") {
        fail_with(&mut machine, &format!("destroying the guests should remove their vif entries:\n{store}"));
    }
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(
            &mut machine,
            &format!("free memory should be back to {} KiB after destroying the net guests:\n{text}", before.free_kib),
        );
    }
}

/// A guest that sends a GSO frame (an extra-info slot, which dom0 does not
/// offer) gets error answers and keeps its vif; one that sends a transmit
/// request naming memory it does not own gets an error answer; when it
/// then runs its ring index away dom0 disconnects its vif (and says so)
/// while two other guests ping on unharmed (netserve answering in two
/// slots a frame).
#[test]
fn a_hostile_vif_is_disconnected_and_the_others_keep_pinging() {
    let mut machine = boot();
    let server = create(&mut machine, "netserve", "netserve");
    let hostile = create(&mut machine, "nethostile", "nethostile");
    attach(&mut machine, "nethostile", hostile);
    let gso = expect_line(&mut machine, "nettest: hostile: GSO frame refused by dom0:", 60);
    if !gso.trim_end().ends_with("yes") {
        fail_with(&mut machine, &format!("dom0 should answer a GSO frame with errors and keep the vif: {gso:?}"));
    }
    let refused = expect_line(&mut machine, "nettest: hostile: foreign grant refused by dom0:", 60);
    if !refused.trim_end().ends_with("yes") {
        fail_with(&mut machine, &format!("dom0 should refuse the foreign grant with an error: {refused:?}"));
    }
    expect_line(&mut machine, "nettest: hostile: transmit index corrupted", 60);
    detach(&mut machine);
    // dom0's line may come before the console was attached (the guest is quick).
    let disconnected = "dom0: 'nethostile' broke its vif rings (transmit request index out of range); vif disconnected";
    if !machine.transcript().contains(disconnected) {
        machine.expect(disconnected, seconds(30)).unwrap_or_else(fail);
    }
    let client = create(&mut machine, "netping", "netping");
    attach(&mut machine, "netping", client);
    expect_all_replies(&mut machine);
    detach(&mut machine);
    let devices = command(&mut machine, "devices");
    if !vif_line(&devices, "nethostile").is_some_and(|line| line.contains("disconnected")) {
        fail_with(&mut machine, &format!("`devices` should show the hostile vif disconnected:\n{devices}"));
    }
    let store = command(&mut machine, "store");
    if !store.contains(&format!("/local/domain/0/backend/vif/{hostile}/0/state = \"6\"")) {
        fail_with(&mut machine, &format!("the back end should say Closed (6) for the hostile vif:\n{store}"));
    }
    // The broken vif can be taken away at once (its pages unmapped).
    let detached = command(&mut machine, "network-detach nethostile");
    if !detached.contains("dom0: 'nethostile': vif 0 detached") {
        fail_with(&mut machine, &format!("a broken vif should be detached at once:\n{detached}"));
    }
    let again = command(&mut machine, "network-detach nethostile");
    if !again.contains("has no vif") {
        fail_with(&mut machine, &format!("detaching a vif twice should say there is none:\n{again}"));
    }
    for (name, id) in [("netping", client), ("nethostile", hostile), ("netserve", server)] {
        destroy(&mut machine, name, id);
    }
}

/// A guest that runs its receive ring's index away is disconnected when the
/// switch floods the next broadcast to it (netping's ARP request), while
/// netping and netserve exchange every ping.
#[test]
fn a_runaway_receive_ring_is_disconnected_and_the_others_keep_pinging() {
    let mut machine = boot();
    let server = create(&mut machine, "netserve", "netserve");
    let hostile = create(&mut machine, "nethostilerx", "nethostilerx");
    attach(&mut machine, "nethostilerx", hostile);
    expect_line(&mut machine, "nettest: hostile: receive index corrupted", 60);
    detach(&mut machine);
    let client = create(&mut machine, "netping", "netping");
    attach(&mut machine, "netping", client);
    expect_all_replies(&mut machine);
    detach(&mut machine);
    let disconnected =
        "dom0: 'nethostilerx' broke its vif rings (receive request index out of range); vif disconnected";
    if !machine.transcript().contains(disconnected) {
        fail_with(&mut machine, &format!("dom0 should have disconnected the hostile vif ({disconnected:?})"));
    }
    let devices = command(&mut machine, "devices");
    if !vif_line(&devices, "nethostilerx").is_some_and(|line| line.contains("disconnected")) {
        fail_with(&mut machine, &format!("`devices` should show the hostile vif disconnected:\n{devices}"));
    }
    for (name, id) in [("netping", client), ("nethostilerx", hostile), ("netserve", server)] {
        destroy(&mut machine, name, id);
    }
}

/// The pinging guest starts before its peer: its first ARP request goes
/// nowhere (the peer's vif is not on the switch yet), smoltcp asks again a
/// second later, and that first ping is still answered in time.
#[test]
fn a_peer_that_comes_up_later_answers_every_ping() {
    let mut machine = boot();
    let client = create(&mut machine, "netping", "netping");
    let server = create(&mut machine, "netserve", "netserve");
    attach(&mut machine, "netping", client);
    expect_all_replies(&mut machine);
    detach(&mut machine);
    destroy(&mut machine, "netping", client);
    destroy(&mut machine, "netserve", server);
}

/// A guest reaches a host beyond the physical NIC: with Bochs's `vnet`
/// back end behind the e1000, `netuplink` (192.168.10.2) pings Bochs's
/// virtual host 192.168.10.1 through dom0's switch and e1000 driver.
#[test]
fn a_guest_pings_a_host_beyond_the_physical_nic() {
    let mut machine =
        mica_tests::session::boot_with(&mica_tests::BochsOptions { network: "slirp", ..Default::default() });
    let id = create(&mut machine, "netuplink", "netuplink");
    attach(&mut machine, "netuplink", id);
    let summary = expect_line(&mut machine, "nettest: ping 10.0.2.2:", 120);
    if !summary.contains(": 4 of 4 replies") {
        fail_with(&mut machine, &format!("the host beyond the NIC should answer every ping; got {summary:?}"));
    }
    detach(&mut machine);
    let devices = command(&mut machine, "devices");
    let nic = devices.lines().find(|line| line.contains("nic0")).unwrap_or("");
    if frames(nic, "tx") < 5 || frames(nic, "rx") < 5 {
        fail_with(&mut machine, &format!("the NIC should have carried the ARP and ping frames:\n{devices}"));
    }
    // The replies arrived by interrupt: the e1000's line, through hv's
    // I/O APIC, as an event on dom0's port.
    let events = nic
        .split(" interrupt events")
        .next()
        .and_then(|text| text.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    if !events.is_some_and(|count| count > 0) {
        fail_with(&mut machine, &format!("the NIC's interrupt should have reached dom0:\n{devices}"));
    }
    destroy(&mut machine, "netuplink", id);
}

/// Hot-plug: `netlate` starts without a vif and waits; `network-attach`
/// offers one, its front end connects and pings; `network-detach` moves the
/// vif to Closing, the front end lets go (Closed), dom0 unmaps, closes and
/// removes it; a second attach works again, and
/// destroying everything returns every page.
#[test]
fn a_vif_is_attached_and_detached_while_the_guest_runs() {
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let server = create(&mut machine, "netserve", "netserve");
    let late = create(&mut machine, "netlate", "netlate");
    attach(&mut machine, "netlate", late);
    expect_line(&mut machine, "nettest: waiting for a vif", 60);
    detach(&mut machine);

    let offered = command(&mut machine, "network-attach netlate mac=02:00:00:00:00:05");
    if !offered.contains("vif 0 offered, mac 02:00:00:00:00:05") {
        fail_with(&mut machine, &format!("network-attach should offer the vif:\n{offered}"));
    }
    attach(&mut machine, "netlate", late);
    expect_line(&mut machine, "nettest: 10.0.0.5/24 up on vif 0, mac 02:00:00:00:00:05", 60);
    let summary = expect_line(&mut machine, "nettest: ping 10.0.0.2:", 120);
    if !summary.contains(": 3 of 3 replies") {
        fail_with(&mut machine, &format!("the attached vif should carry every ping; got {summary:?}"));
    }
    detach(&mut machine);

    let closing = command(&mut machine, "network-detach netlate");
    if !closing.contains("vif 0 closing") {
        fail_with(&mut machine, &format!("network-detach should close the connected vif:\n{closing}"));
    }
    let detached = "dom0: 'netlate': vif 0 detached";
    if !machine.transcript().contains(detached) {
        machine.expect(detached, seconds(30)).unwrap_or_else(fail);
    }
    if machine.transcript().contains("the front end did not answer") {
        fail_with(&mut machine, "the front end should let go of the vif itself, not time out");
    }
    let devices = command(&mut machine, "devices");
    if vif_line(&devices, "netlate").is_some() {
        fail_with(&mut machine, &format!("`devices` should show no vif for netlate after the detach:\n{devices}"));
    }
    let store = command(&mut machine, "store");
    if store.contains(&format!("backend/vif/{late}")) || store.contains(&format!("/local/domain/{late}/device/vif/0")) {
        fail_with(&mut machine, &format!("the detached vif's store entries should be gone:\n{store}"));
    }
    // Plugged in again with the same MAC (the server's ARP cache still
    // holds it, as a real peer's would).
    let again = command(&mut machine, "network-attach netlate mac=02:00:00:00:00:05");
    if !again.contains("vif 0 offered, mac 02:00:00:00:00:05") {
        fail_with(&mut machine, &format!("a second network-attach should offer the vif again:\n{again}"));
    }
    attach(&mut machine, "netlate", late);
    expect_line(&mut machine, "nettest: vif 0 disconnected by dom0", 60);
    expect_line(&mut machine, "nettest: 10.0.0.5/24 up on vif 0, mac 02:00:00:00:00:05", 60);
    let summary = expect_line(&mut machine, "nettest: ping 10.0.0.2:", 120);
    if !summary.contains(": 3 of 3 replies") {
        fail_with(&mut machine, &format!("the re-attached vif should carry every ping; got {summary:?}"));
    }
    detach(&mut machine);
    destroy(&mut machine, "netlate", late);
    destroy(&mut machine, "netserve", server);
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(&mut machine, &format!("free memory should be back to {} KiB:\n{text}", before.free_kib));
    }
}

/// Disk and network at once: a disk guest writes and checks its disk while
/// two guests ping a third through the switch; everything completes and
/// everything comes back.
#[test]
fn disk_and_network_guests_run_side_by_side() {
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let server = create(&mut machine, "netserve", "netserve");
    let disk = create(&mut machine, "disktest", "disktest");
    let client = create(&mut machine, "netping", "netping");
    let bench = create(&mut machine, "netbench", "netbench");
    attach(&mut machine, "disktest", disk);
    expect_line(&mut machine, "disktest: wrote and verified 8192 sectors: all match", 180);
    detach(&mut machine);
    attach(&mut machine, "netping", client);
    expect_all_replies(&mut machine);
    detach(&mut machine);
    attach(&mut machine, "netbench", bench);
    let summary = expect_line(&mut machine, "nettest: ping 10.0.0.2:", 180);
    if !summary.contains(": 500 of 500 replies") {
        fail_with(&mut machine, &format!("netbench should get every reply; it said {summary:?}"));
    }
    detach(&mut machine);
    for (name, id) in [("netbench", bench), ("netping", client), ("disktest", disk), ("netserve", server)] {
        destroy(&mut machine, name, id);
    }
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(&mut machine, &format!("free memory should be back to {} KiB:\n{text}", before.free_kib));
    }
}
