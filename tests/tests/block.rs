//! System tests of block I/O: dom0 serves a region of the emulated ATA disk
//! (ata1-master, a disk image in the run's directory) to a guest over a ring
//! with grant copies. The data must land on the image at the region's
//! offset and nowhere else, survive the guest's destruction, and a hostile
//! front end must be cut off without disturbing another guest's disk.

use std::fs;

use mica_tests::session::{attach, boot, command, create, destroy, detach, fail_with, mem};
use mica_tests::{Machine, fail, line_where, seconds};

const SECTOR: usize = 512;
/// The region `disktest.cfg` names: `ata1-master:2048+8192`.
const REGION_START: usize = 2048;
const REGION_SECTORS: usize = 8192;

/// The pattern `disktest` writes into guest sector `sector`.
fn pattern(sector: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; SECTOR];
    bytes[..8].copy_from_slice(&sector.to_le_bytes());
    bytes[8..16].copy_from_slice(b"MICADISK");
    for (i, byte) in bytes.iter_mut().enumerate().skip(16) {
        *byte = ((sector as usize * 7 + i) % 251) as u8;
    }
    bytes
}

fn expect_line(machine: &mut Machine, wanted: &str, timeout: u64) -> String {
    machine
        .expect(line_where(format!("a line starting {wanted:?}"), |line| line.starts_with(wanted)), seconds(timeout))
        .unwrap_or_else(fail)
}

/// A guest writes its whole disk and checks it; destroyed and built again
/// (`disktest-verify`), it reads the same data back; after power-off the
/// image holds the pattern at sectors 2048.. and zeros elsewhere.
#[test]
fn a_guest_disk_lands_on_the_image_at_its_offset_and_persists() {
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let id = create(&mut machine, "disktest", "disktest");
    attach(&mut machine, "disktest", id);
    expect_line(&mut machine, "disktest: wrote and verified 8192 sectors: all match", 120);
    detach(&mut machine);
    let devices = command(&mut machine, "devices");
    if !devices
        .lines()
        .any(|line| line.contains("disktest") && line.contains("ata1-master:2048+8192") && line.contains("connected"))
    {
        fail_with(&mut machine, &format!("`devices` should show disktest's connected disk; it printed:\n{devices}"));
    }
    // Front and back end met through the store: both sides say Connected (4).
    let store = command(&mut machine, "store");
    // The directories and keys are Xen's (xvda = 51712), as Linux's
    // blkfront reads and writes them.
    let front = format!("/local/domain/{id}/device/vbd/51712/state = \"4\"");
    let back = format!("/local/domain/0/backend/vbd/{id}/51712/state = \"4\"");
    if !store.contains(&front) || !store.contains(&back) {
        fail_with(&mut machine, &format!("the store should show both ends Connected ({front}, {back}):\n{store}"));
    }
    for (directory, key, value) in [
        (format!("/local/domain/{id}/device/vbd/51712"), "backend", format!("/local/domain/0/backend/vbd/{id}/51712")),
        (format!("/local/domain/{id}/device/vbd/51712"), "virtual-device", "51712".to_string()),
        (format!("/local/domain/{id}/device/vbd/51712"), "device-type", "disk".to_string()),
        (format!("/local/domain/{id}/device/vbd/51712"), "protocol", "x86_64-abi".to_string()),
        (format!("/local/domain/{id}/device/vbd/51712"), "feature-persistent", "1".to_string()),
        (format!("/local/domain/0/backend/vbd/{id}/51712"), "online", "1".to_string()),
        (format!("/local/domain/0/backend/vbd/{id}/51712"), "sectors", "8192".to_string()),
        (format!("/local/domain/0/backend/vbd/{id}/51712"), "feature-flush-cache", "1".to_string()),
        (format!("/local/domain/0/backend/vbd/{id}/51712"), "feature-persistent", "1".to_string()),
    ] {
        let line = format!("{directory}/{key} = \"{value}\"");
        if !store.contains(&line) {
            fail_with(&mut machine, &format!("the store should hold {line}:\n{store}"));
        }
    }
    destroy(&mut machine, "disktest", id);
    let store = command(&mut machine, "store");
    if store.contains(&format!("/local/domain/{id}")) || store.contains(&format!("backend/vbd/{id}")) {
        fail_with(&mut machine, &format!("destroying the guest should remove its store entries:\n{store}"));
    }

    let id = create(&mut machine, "disktest-verify", "disktest-verify");
    attach(&mut machine, "disktest-verify", id);
    expect_line(&mut machine, "disktest: verified 8192 sectors: all match", 120);
    detach(&mut machine);
    destroy(&mut machine, "disktest-verify", id);
    // Rings, consoles and persistent grant mappings all came back.
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(
            &mut machine,
            &format!("free memory should be back to {} KiB after destroying the disk guests:\n{text}", before.free_kib),
        );
    }

    machine.send_line("poweroff").unwrap_or_else(fail);
    machine.expect("hv: powering off", seconds(30)).unwrap_or_else(fail);
    machine.wait_exit(seconds(30)).unwrap_or_else(fail);
    let image_path = machine.directory().join("disk.img");
    let image = fs::read(&image_path).unwrap_or_else(|error| panic!("reading {}: {error}", image_path.display()));
    let mut wrong = Vec::new();
    for (sector, bytes) in image.chunks_exact(SECTOR).enumerate() {
        let inside = (REGION_START..REGION_START + REGION_SECTORS).contains(&sector);
        let good = if inside {
            bytes == pattern((sector - REGION_START) as u64).as_slice()
        } else {
            bytes.iter().all(|&b| b == 0)
        };
        if !good {
            wrong.push(sector);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} sectors of {} are wrong (inside the region they must hold the pattern, outside zeros); first: {:?}",
        wrong.len(),
        image_path.display(),
        &wrong[..wrong.len().min(10)]
    );
}

/// `diskhostile` first tries to revoke a grant dom0 keeps mapped (refused:
/// busy), grants dom0 a page it does not own (the request fails with
/// status -1) and then runs its ring's producer index away: dom0 disconnects
/// its disk with a log line, while `disktest` on another region of the same
/// physical disk does all its I/O; both guests keep running.
#[test]
fn a_hostile_disk_front_end_is_cut_off_and_other_disks_carry_on() {
    let mut machine = boot();
    let hostile_id = create(&mut machine, "diskhostile", "diskhostile");
    expect_line(
        &mut machine,
        "dom0: 'diskhostile' broke its disk ring (request index out of range); disk disconnected",
        60,
    );
    let id = create(&mut machine, "disktest", "disktest");
    attach(&mut machine, "disktest", id);
    expect_line(&mut machine, "disktest: wrote and verified 8192 sectors: all match", 120);
    detach(&mut machine);
    attach(&mut machine, "diskhostile", hostile_id);
    let replay = detach(&mut machine);
    if !replay.contains("disktest: revoking a grant dom0 has mapped was refused (busy)") {
        fail_with(
            &mut machine,
            &format!("diskhostile's revocation of a mapped grant should be refused; its console showed:\n{replay}"),
        );
    }
    if !replay.contains("disktest: a grant of a page I do not own was answered with status -1") {
        fail_with(
            &mut machine,
            &format!("diskhostile's bad grant should get status -1; its console showed:\n{replay}"),
        );
    }
    let devices = command(&mut machine, "devices");
    let line_of = |name: &str| {
        devices.lines().find(|line| line.contains(name) && line.contains(" disk ")).unwrap_or("").to_owned()
    };
    if !line_of("diskhostile").contains("request index out of range") || !line_of("disktest ").contains("connected") {
        fail_with(
            &mut machine,
            &format!("`devices` should show diskhostile cut off and disktest connected:\n{devices}"),
        );
    }
    let list = command(&mut machine, "list");
    for name in ["diskhostile", "disktest"] {
        let row = list.lines().find(|line| line.starts_with(name)).unwrap_or("");
        if row.contains("c-") || row.is_empty() {
            fail_with(&mut machine, &format!("{name} should still be listed and not crashed:\n{list}"));
        }
    }
}

/// Hot-plug: `disklate` starts without a disk and waits; `block-attach`
/// offers a region, the front end connects, writes and checks it;
/// `block-detach` moves it to Closing, the front end lets go (Closed), dom0
/// flushes, unmaps the ring and its persistent grants and removes the
/// entries; mistakes get clear errors; all memory comes back; and the data
/// is on the image at the attached region's offset after power-off.
#[test]
fn a_disk_is_attached_and_detached_while_the_guest_runs() {
    const START: usize = 24576;
    const SECTORS: usize = 2048;
    let mut machine = boot();
    let (_, before) = mem(&mut machine);
    let id = create(&mut machine, "disklate", "disklate");
    attach(&mut machine, "disklate", id);
    expect_line(&mut machine, "disktest: waiting for a disk", 60);
    detach(&mut machine);

    let offered = command(&mut machine, &format!("block-attach disklate ata1-master:{START}+{SECTORS}"));
    if !offered.contains("disk 0 offered") {
        fail_with(&mut machine, &format!("block-attach should offer the disk:\n{offered}"));
    }
    let twice = command(&mut machine, "block-attach disklate ata1-master:0+8");
    if !twice.contains("has a disk already") {
        fail_with(&mut machine, &format!("a second disk should be refused:\n{twice}"));
    }
    attach(&mut machine, "disklate", id);
    expect_line(&mut machine, &format!("disktest: wrote and verified {SECTORS} sectors: all match"), 120);
    detach(&mut machine);
    let devices = command(&mut machine, "devices");
    if !devices.lines().any(|line| line.contains("disklate") && line.contains("connected")) {
        fail_with(&mut machine, &format!("`devices` should show the attached disk connected:\n{devices}"));
    }

    let closing = command(&mut machine, "block-detach disklate");
    if !closing.contains("disk 0 closing") {
        fail_with(&mut machine, &format!("block-detach should close the connected disk:\n{closing}"));
    }
    let detached = "dom0: 'disklate': disk 0 detached";
    if !machine.transcript().contains(detached) {
        machine.expect(detached, seconds(30)).unwrap_or_else(fail);
    }
    if machine.transcript().contains("did not answer") {
        fail_with(&mut machine, "the front end should let go of the disk itself, not time out");
    }
    attach(&mut machine, "disklate", id);
    expect_line(&mut machine, "disktest: disk 0 disconnected by dom0", 60);
    detach(&mut machine);
    let devices = command(&mut machine, "devices");
    if devices.lines().any(|line| line.contains("disklate") && line.contains(" disk ")) {
        fail_with(&mut machine, &format!("`devices` should show no disk for disklate after the detach:\n{devices}"));
    }
    let store = command(&mut machine, "store");
    if store.contains(&format!("backend/vbd/{id}")) || store.contains(&format!("/local/domain/{id}/device/vbd/51712")) {
        fail_with(&mut machine, &format!("the detached disk's store entries should be gone:\n{store}"));
    }
    for (line, wanted) in [
        ("block-detach disklate", "has no disk"),
        ("block-attach disklate nosuch:0+8", "no disk 'nosuch'"),
        ("block-attach disklate ata1-master:65530+100", "past the end"),
        ("block-attach nobody ata1-master:0+8", "no guest 'nobody'"),
    ] {
        let answer = command(&mut machine, line);
        if !answer.contains(wanted) {
            fail_with(&mut machine, &format!("`{line}` should say {wanted:?}:\n{answer}"));
        }
    }
    destroy(&mut machine, "disklate", id);
    let (text, after) = mem(&mut machine);
    if after.free_kib != before.free_kib {
        fail_with(&mut machine, &format!("free memory should be back to {} KiB:\n{text}", before.free_kib));
    }
    machine.send_line("poweroff").unwrap_or_else(fail);
    machine.expect("hv: powering off", seconds(30)).unwrap_or_else(fail);
    machine.wait_exit(seconds(30)).unwrap_or_else(fail);
    let image_path = machine.directory().join("disk.img");
    let image = fs::read(&image_path).unwrap_or_else(|error| panic!("reading {}: {error}", image_path.display()));
    let wrong = (0..SECTORS)
        .filter(|&sector| image[(START + sector) * SECTOR..][..SECTOR] != pattern(sector as u64)[..])
        .count();
    assert_eq!(wrong, 0, "the attached region of {} must hold the pattern", image_path.display());
}
