//! System tests of dom0 with two vCPUs (hv's `dom0_vcpus=2`, issue 9) on
//! a 2-CPU machine: dom0's vCPU 1 serves the guests' disks and network
//! while vCPU 0 runs the shell, so a long shell command holds up no
//! guest's I/O; and the network, NIC interrupt included, works from there.
//!
//! The long command is `diskbench` of the whole physical disk (64 MiB
//! here, a sparse image of the test's own): dom0 reads it 32 KiB at a
//! time on vCPU 0, taking the disks for one read at a time, so the guest's
//! requests take turns with it. The guest is `disklate` (the `disktest`
//! kernel), given a 1 MiB region with `block-attach`: it writes the region,
//! reads it back and checks every byte, and prints how long each half took
//! (TSC ticks, which under Bochs count emulated instructions alike on
//! every CPU).
//!
//! The proof that its I/O ran during the bench: the guest had started
//! (`devices` counted a request served) before the bench began, and its
//! whole write and read took fewer ticks than the bench. With one dom0
//! vCPU no request is served while the bench runs, so a guest that had
//! started before the bench and had work left can only finish after it:
//! its I/O would take longer than the bench. `devices` right after the
//! bench shows every request served.

use std::fs::File;
use std::path::PathBuf;
use std::sync::OnceLock;

use mica_tests::report::VcpuList;
use mica_tests::session::{attach, command, create, detach, fail_with};
use mica_tests::{Bochs, BochsOptions, Iso, Machine, PROMPT, boot_to_prompt, fail, line_where, scan, seconds};

const SECTOR: u64 = 512;
/// The physical disk: twice the harness's usual 32 MiB, so the bench
/// outlasts the guest's I/O several times over.
const DISK_SECTORS: u64 = (64 << 20) / SECTOR;
/// The region `block-attach` gives the guest (well inside the disk).
const REGION: &str = "ata1-master:24576+2048";
const REGION_SECTORS: u64 = 2048;
/// The guest's requests: a write per 32 KiB (64 sectors), a flush, then a
/// read per 32 KiB.
const GUEST_REQUESTS: u64 = 2 * REGION_SECTORS / 64 + 1;

/// A sparse disk image of `DISK_SECTORS` sectors, removed when dropped.
struct DiskImage(PathBuf);

impl DiskImage {
    fn new() -> DiskImage {
        let path = std::env::temp_dir().join(format!("mica-dom0-vcpus-{}.img", std::process::id()));
        let file = File::create(&path).unwrap_or_else(|error| panic!("creating {}: {error}", path.display()));
        file.set_len(DISK_SECTORS * SECTOR).unwrap_or_else(|error| panic!("sizing {}: {error}", path.display()));
        DiskImage(path)
    }
}

impl Drop for DiskImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `requests` count of `name`'s connected disk in `devices` (None when
/// it shows no connected disk for it).
fn disk_requests(machine: &mut Machine, name: &str) -> (String, Option<u64>) {
    let devices = command(machine, "devices");
    let requests = devices
        .lines()
        .filter(|line| line.trim_start().starts_with(name) && line.contains(" disk "))
        .find_map(|line| {
            let state = line[line.find("connected")?..].trim_end();
            scan("connected, {} requests, {} tsc serving them, {} pages mapped", state)
        })
        .map(|numbers| numbers[0]);
    (devices, requests)
}

/// Boots hv with `dom0_vcpus=2` on two CPUs (and `options`' other
/// settings) and checks that hv built dom0 with two vCPUs and dom0 started
/// the second for its data paths.
fn boot_dom0_with_two_vcpus(options: BochsOptions) -> Machine {
    // One ISO for the tests of this process (they run side by side).
    static ISO: OnceLock<Result<Iso, String>> = OnceLock::new();
    let iso =
        ISO.get_or_init(|| Iso::with_hv_args("dom0_vcpus=2")).as_ref().unwrap_or_else(|error| fail(error.clone()));
    let options = BochsOptions { cpus: 2, hard_timeout: seconds(600), ..options };
    let mut machine = Bochs::boot_with(iso, &options).unwrap_or_else(fail);
    let boot = boot_to_prompt(&mut machine).unwrap_or_else(fail);
    if !boot.contains("hv: dom0: 64 MiB at guest-physical 0, 2 vCPUs")
        || !boot.contains("dom0: vCPU 1 serves the disks and the network, vCPU 0 the shell")
    {
        fail_with(
            &mut machine,
            &format!("with dom0_vcpus=2 hv should build dom0 with 2 vCPUs and dom0 start the second:\n{boot}"),
        );
    }
    machine
}

#[test]
fn a_guests_disk_io_runs_while_the_shell_runs_a_long_command() {
    let image = DiskImage::new();
    let mut machine =
        boot_dom0_with_two_vcpus(BochsOptions { disk_image: Some(image.0.clone()), ..Default::default() });

    // The guest waits for its disk; `block-attach` offers it one, its front
    // end connects (through the store, on vCPU 0) and starts writing.
    let id = create(&mut machine, "disklate", "disklate");
    attach(&mut machine, "disklate", id);
    machine
        .expect(
            line_where("disktest waiting".to_owned(), |line| line.starts_with("disktest: waiting for a disk")),
            seconds(60),
        )
        .unwrap_or_else(fail);
    detach(&mut machine);
    let offered = command(&mut machine, &format!("block-attach disklate {REGION}"));
    if !offered.contains("disk 0 offered") {
        fail_with(&mut machine, &format!("block-attach should offer the disk:\n{offered}"));
    }
    let waited = std::time::Instant::now();
    let started = loop {
        match disk_requests(&mut machine, "disklate") {
            (_, Some(requests)) if requests > 0 => break requests,
            (devices, _) if waited.elapsed() > seconds(60) => fail_with(
                &mut machine,
                &format!("disklate's disk should connect and serve a request within 60 s:\n{devices}"),
            ),
            _ => {}
        }
    };
    if started > GUEST_REQUESTS / 2 {
        fail_with(
            &mut machine,
            &format!(
                "disklate got through {started} of its {GUEST_REQUESTS} requests before the bench could start: \
                 too far to tell whether the rest runs during the bench"
            ),
        );
    }

    // vCPU 0 reads the whole disk.
    machine.send_line(&format!("diskbench ata1-master:0+{DISK_SECTORS}")).unwrap_or_else(fail);
    let bench = machine
        .expect(line_where("the diskbench result".to_owned(), |line| line.starts_with("diskbench: ")), seconds(300))
        .unwrap_or_else(fail);
    machine.expect(PROMPT, seconds(20)).unwrap_or_else(fail);
    let bench_tsc = bench
        .lines()
        .find_map(|line| scan("diskbench: read {} sectors in {} tsc", line.trim_end()))
        .filter(|numbers| numbers[0] == DISK_SECTORS)
        .map(|numbers| numbers[1])
        .unwrap_or_else(|| fail_with(&mut machine, &format!("diskbench should read the whole disk:\n{bench}")));
    let (devices, after) = disk_requests(&mut machine, "disklate");

    attach(&mut machine, "disklate", id);
    let done = machine
        .expect(line_where("disktest's result".to_owned(), |line| line.contains("all match")), seconds(120))
        .unwrap_or_else(fail);
    detach(&mut machine);
    let Some([write_tsc, read_tsc]) = done.lines().find_map(|line| {
        let wanted =
            format!("disktest: wrote and verified {REGION_SECTORS} sectors: all match (write {{}} tsc, read {{}} tsc)");
        scan(&wanted, line.trim_end()).map(|numbers| [numbers[0], numbers[1]])
    }) else {
        fail_with(&mut machine, &format!("disklate should write and verify its {REGION_SECTORS} sectors:\n{done}"))
    };
    eprintln!(
        "diskbench: {bench_tsc} tsc; disklate: {started} of {GUEST_REQUESTS} requests served before it, \
         its write and verify {} tsc ({write_tsc} + {read_tsc}); {after:?} requests served after it",
        write_tsc + read_tsc
    );
    if write_tsc + read_tsc >= bench_tsc || after != Some(GUEST_REQUESTS) {
        fail_with(
            &mut machine,
            &format!(
                "disklate, under way before the bench began ({started} requests served), should have finished \
                 its I/O while vCPU 0 ran it: its write and verify took {} tsc, the bench {bench_tsc} tsc; \
                 `devices` after the bench should count all {GUEST_REQUESTS} requests:\n{devices}",
                write_tsc + read_tsc
            ),
        );
    }

    // Both of dom0's vCPUs ran (vCPU 1 for a while: it served the guest).
    let text = command(&mut machine, "vcpu-list 0");
    let list = VcpuList::parse(&text).unwrap_or_else(|error| fail_with(&mut machine, &error));
    let rows: Vec<(u64, bool)> = list
        .rows
        .iter()
        .filter(|row| row.name == "Domain-0")
        .map(|row| (row.vcpu, row.cpu.is_some() && row.state != "offline" && row.cpu_tenths > 0))
        .collect();
    if rows != [(0, true), (1, true)] {
        fail_with(
            &mut machine,
            &format!("`vcpu-list 0` should show Domain-0's vCPUs 0 and 1, both up and having run:\n{text}"),
        );
    }
}

/// The network runs on vCPU 1 too: `netuplink` pings a host beyond the
/// physical NIC (Bochs's slirp) through dom0's switch and e1000 driver,
/// and the NIC's interrupt (its port bound to vCPU 1, unmasked there once
/// the NIC is drained) keeps coming.
#[test]
fn a_guest_pings_a_host_beyond_the_nic_served_by_vcpu_1() {
    let mut machine = boot_dom0_with_two_vcpus(BochsOptions { network: "slirp", ..Default::default() });
    let id = create(&mut machine, "netuplink", "netuplink");
    attach(&mut machine, "netuplink", id);
    let summary = machine
        .expect(
            line_where("netuplink's summary".to_owned(), |line| line.starts_with("nettest: ping 10.0.2.2:")),
            seconds(120),
        )
        .unwrap_or_else(fail);
    detach(&mut machine);
    if !summary.contains(": 4 of 4 replies") {
        fail_with(&mut machine, &format!("the host beyond the NIC should answer every ping; got {summary:?}"));
    }
    let devices = command(&mut machine, "devices");
    let events = devices
        .lines()
        .find(|line| line.contains("nic0"))
        .and_then(|nic| nic.split(" interrupt events").next())
        .and_then(|text| text.rsplit(' ').next())
        .and_then(|count| count.parse::<u64>().ok());
    if events.is_none_or(|count| count < 4) {
        fail_with(&mut machine, &format!("the NIC's interrupt should have reached dom0 for each reply:\n{devices}"));
    }
}
