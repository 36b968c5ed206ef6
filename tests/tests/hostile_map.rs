//! System tests of dom0's foreign-mapping capacity: every guest has a
//! bounded share of dom0's foreign window (console and store rings, its
//! disk's ring and persistent grants, its vif's rings), so disk guests, even
//! hostile ones that grant dom0 far more pages than they need, can never
//! keep dom0 from building another guest.

use mica_tests::session::{attach, boot, command, create, destroy, detach, fail_with, mem};
use mica_tests::{Machine, fail, line_where, seconds};

fn expect_line(machine: &mut Machine, wanted: &str, timeout: u64) -> String {
    machine
        .expect(line_where(format!("a line starting {wanted:?}"), |line| line.starts_with(wanted)), seconds(timeout))
        .unwrap_or_else(fail)
}

/// Grants dom0 keeps mapped per disk at most (`dom0core::backends::window::PERSISTENT_GRANTS`:
/// a guest's share of the window, `abi::domctl::FOREIGN_SHARE_PAGES`, less its 5 rings).
const PERSISTENT_GRANTS: u64 = 320 - 5;

/// The number before `pages mapped` in `devices`' disk line of `name`.
fn pages_mapped(devices: &str, name: &str) -> Option<u64> {
    let line = devices.lines().find(|line| line.split_whitespace().next() == Some(name) && line.contains(" disk "))?;
    let before = line.split(" pages mapped").next()?;
    before.rsplit([' ', ',']).find(|word| !word.is_empty())?.parse().ok()
}

/// Two ordinary disk guests and two hostile ones (`mapflood1`, `mapflood2`:
/// each grants dom0 416 distinct pages, more than a guest's share of the
/// window, and names each in its own request, then makes requests that
/// mix pages dom0 has mapped with pages it copies) all run at once. Every
/// guest's I/O completes and checks; the hostile ones keep at most their
/// persistent-grant budget mapped (dom0 copies the rest); dom0 can still
/// build a further guest (before the fix it printed "connect console
/// failed: busy"); after destroying them all, free memory is back to the KiB.
#[test]
fn disk_guests_that_flood_dom0_with_grants_leave_room_for_new_guests() {
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let mut guests = Vec::new();
    for name in ["mapdisk1", "mapflood1", "mapflood2", "mapdisk2"] {
        let id = create(&mut machine, name, name);
        guests.push((name, id));
    }
    for &(name, id) in &guests {
        attach(&mut machine, name, id);
        let done = if name.starts_with("mapflood") {
            "disktest: flood: 416 distinct grants, wrote and verified 3328 sectors: all match"
        } else {
            "disktest: wrote and verified 1024 sectors: all match"
        };
        expect_line(&mut machine, done, 300);
        if name.starts_with("mapflood") {
            // Requests that mix pages dom0 has mapped with pages past its
            // budget: one disk command through dom0's bounce buffer.
            expect_line(
                &mut machine,
                "disktest: flood: 16 requests of mapped and copied pages, wrote and verified 1024 sectors: all match",
                300,
            );
        }
        detach(&mut machine);
    }
    if machine.transcript().contains("FAILED") {
        fail_with(&mut machine, "a disk guest reported a failure");
    }

    // The old failure: the window was full, and no guest could be built.
    let output = command(&mut machine, "create counter");
    let Some(counter) =
        output.lines().find_map(|line| line.strip_prefix("dom0: created 'counter' as domain ")?.parse::<u64>().ok())
    else {
        fail_with(
            &mut machine,
            &format!("with four disk guests running, dom0 should still build `counter`; it printed:\n{output}"),
        );
    };
    attach(&mut machine, "counter", counter);
    expect_line(&mut machine, "counter: 1", 60);
    detach(&mut machine);
    guests.push(("counter", counter));

    let devices = command(&mut machine, "devices");
    for &(name, _) in &guests[..4] {
        let line = devices.lines().find(|line| line.contains(name) && line.contains(" disk ")).unwrap_or("");
        if !line.contains("connected") {
            fail_with(&mut machine, &format!("`devices` should show {name}'s disk connected:\n{devices}"));
        }
        let Some(mapped) = pages_mapped(&devices, name) else {
            fail_with(&mut machine, &format!("`devices` should say how many pages {name}'s disk maps:\n{devices}"));
        };
        if mapped > PERSISTENT_GRANTS {
            fail_with(
                &mut machine,
                &format!(
                    "{name}'s disk maps {mapped} pages, more than a disk's budget ({PERSISTENT_GRANTS}):\n{devices}"
                ),
            );
        }
        // The flooders named far more grants than the budget: dom0 kept
        // exactly its budget mapped (and copied for the rest).
        if name.starts_with("mapflood") && mapped != PERSISTENT_GRANTS {
            fail_with(
                &mut machine,
                &format!("{name}'s disk should keep its whole budget ({PERSISTENT_GRANTS}) mapped:\n{devices}"),
            );
        }
    }

    for &(name, id) in guests.iter().rev() {
        destroy(&mut machine, name, id);
    }
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(
            &mut machine,
            &format!("free memory should be back to {} KiB after destroying every guest:\n{text}", before.free_kib),
        );
    }
}
