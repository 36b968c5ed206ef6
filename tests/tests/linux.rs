//! Debian 12's stock kernel as a PVH guest (issue 11), with the images
//! tests/linux.sh makes (`<target>/linux/`) on an images disk (ext4,
//! ata1-slave): dom0 streams the ELF vmlinux from it to
//! its physical addresses and the busybox initramfs as its module, and
//! Linux runs on Mica's Xen subset to busybox's shell on hvc0, where it
//! finds itself a Xen PVH guest with both its vCPUs online; powered off from its shell (ACPI S5) or
//! destroyed, it returns every page.
//!
//! Ignored by a plain `cargo test`: the images come from the network.
//! tests/run.sh runs tests/linux.sh and then this test with `--ignored`;
//! run by hand: `tests/linux.sh && cargo test -p mica-tests --test linux -- --ignored`.
//! Run without the images, it fails (a skip is never a pass).

use std::path::PathBuf;

use mica_tests::Machine;
use mica_tests::machine::DEFAULT_FAILURE_MARKERS;
use mica_tests::session::{attach, command, create, destroy, detach, expect_memory_back, fail_with, list, mem};
use mica_tests::{Bochs, BochsOptions, Iso, boot_to_prompt, fail, line_where, seconds};

/// tests/linux.sh's output directory.
fn images() -> PathBuf {
    let root = mica_tests::workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir).join("linux"),
        None => root.join("target").join("linux"),
    }
}

#[test]
#[ignore = "needs tests/linux.sh's images (Debian's kernel); tests/run.sh runs it"]
fn debians_kernel_boots_as_a_pvh_guest_to_its_shell() {
    // The machine's disk, kept to be read here afterwards: linux.cfg gives
    // the guest sectors 4096-12287 of it as xvda.
    let disk = std::env::temp_dir().join(format!("mica-linux-disk-{}.img", std::process::id()));
    std::fs::File::create(&disk)
        .and_then(|file| file.set_len(16 << 20))
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", disk.display()));
    let (mut machine, images_copy) = linux_machine("pvh", Some(disk.clone()));
    let (baseline_text, baseline) = mem(&mut machine);
    let id = start_linux(&mut machine);
    // busybox's shell on hvc0: Linux knows where it runs. (Each answer is
    // one the typed line, echoed, does not hold.)
    shell(&mut machine, "uname -sm", "Linux x86_64");
    // A clean boot: no oops, BUG or warning (each prints a call trace), and
    // no MSR access Linux did not expect to fail (it reads the microcode
    // revision without a safe accessor).
    shell(
        &mut machine,
        &format!("echo boot-traces=$({TRACES}) msr-errors=$(dmesg | grep -c 'unchecked MSR access')"),
        "boot-traces=0 msr-errors=0",
    );
    // Linux 6.1 names Xen's HVM and PVH guests "Xen HVM" here; the kind is in sysfs.
    shell(&mut machine, "dmesg | grep -o 'Hypervisor detected: [A-Za-z ]*'", "Hypervisor detected: Xen HVM");
    shell(&mut machine, "echo guest_type=$(cat /sys/hypervisor/guest_type)", "guest_type=PVH");
    // Both vCPUs online, each with the hypervisor flag.
    shell(
        &mut machine,
        "echo cpus=$(grep -c ^processor /proc/cpuinfo) hypervisor=$(grep -c ' hypervisor' /proc/cpuinfo)",
        "cpus=2 hypervisor=2",
    );
    shell(&mut machine, "echo online=$(cat /sys/devices/system/cpu/online)", "online=0-1");
    // xen-blkfront: the module loads, connects to dom0's back end, and
    // xvda has the configured 8,192 sectors; a pattern written with dd
    // (and flushed) lands in the disk image at the region's offset.
    attach_xvda(&mut machine);
    shell(
        &mut machine,
        "echo mica-xvda-$((6 * 7)) | dd of=/dev/xvda bs=512 seek=5 conv=fsync 2>/dev/null; echo dd-$?",
        "dd-0",
    );
    // Indirect requests: blkfront took dom0's offer of 32 segments a
    // request (11 without), and 128 KiB written and read back through the
    // page cache (one request each way) come back the same.
    shell(&mut machine, "dmesg | grep -o 'indirect descriptors: [a-z]*'", "indirect descriptors: enabled");
    shell(&mut machine, "echo segments=$(cat /sys/block/xvda/queue/max_segments)", "segments=32");
    shell(
        &mut machine,
        "dd if=/dev/urandom of=/tmp/p bs=128k count=1 2>/dev/null; \
         dd if=/tmp/p of=/dev/xvda bs=128k seek=8 conv=fsync 2>/dev/null; echo 3 >/proc/sys/vm/drop_caches; \
         dd if=/dev/xvda of=/tmp/q bs=128k skip=8 count=1 2>/dev/null; cmp /tmp/p /tmp/q && echo same-$((60 + 6))",
        "same-66",
    );
    // xen-netfront: eth0 comes up, and Linux pings a Mica smoltcp guest
    // (netserve, 10.0.0.2) through dom0's switch, 10 of 10.
    shell(&mut machine, "insmod /lib/modules/xen-netfront.ko; echo insmod-$?", "insmod-0");
    shell(
        &mut machine,
        "for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done; \
         ifconfig eth0 10.0.0.10 netmask 255.255.255.0 up; echo eth0-$?",
        "eth0-0",
    );
    detach(&mut machine);
    let netserve = create(&mut machine, "netserve", "netserve");
    attach(&mut machine, "linux", id);
    shell(&mut machine, "ping -c 10 -W 5 10.0.0.2 | tail -2", "10 packets transmitted, 10 packets received");
    detach(&mut machine);
    destroy(&mut machine, "netserve", netserve);
    attach(&mut machine, "linux", id);
    // `poweroff -f` powers the domain off (ACPI S5: the DSDT's \_S5, the
    // FADT's sleep control port, which hv turns into a power-off); dom0
    // destroys it and every page comes back.
    machine.set_failure_markers(DEFAULT_FAILURE_MARKERS);
    machine.send_line("poweroff -f").unwrap_or_else(fail);
    let ended = format!("dom0: 'linux' (domain {id}) shut down; on_crash=destroy");
    machine.expect(ended.as_str(), seconds(120)).unwrap_or_else(fail);
    machine.expect(format!("dom0: destroyed 'linux' (domain {id})").as_str(), seconds(30)).unwrap_or_else(fail);
    eprintln!("Linux's console, from its shell on:\n{}", detach(&mut machine));
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after Linux powered off");
    let image = std::fs::read(&disk).unwrap_or_else(|error| panic!("cannot read {}: {error}", disk.display()));
    let at = (4096 + 5) * 512;
    if &image[at..at + 13] != b"mica-xvda-42\n" {
        fail_with(
            &mut machine,
            &format!("the disk image should hold Linux's pattern at byte {at}; it holds {:?}", &image[at..at + 13]),
        );
    }
    if !command(&mut machine, "dmesg").contains(&format!("hv: d{id} shut down (PowerOff): ACPI S5")) {
        fail_with(&mut machine, "hv's log should say the domain shut down by ACPI S5");
    }

    // Again, and this time `destroy` the running Linux: every page comes back.
    machine.set_failure_markers(&[DEFAULT_FAILURE_MARKERS, &["dom0: 'linux' (domain "]].concat());
    let id = start_linux(&mut machine);
    // The pattern reads back through xvda after the re-create.
    attach_xvda(&mut machine);
    shell(&mut machine, "dd if=/dev/xvda bs=512 skip=5 count=1 2>/dev/null | head -c 12; echo", "mica-xvda-42");
    detach(&mut machine);
    destroy(&mut machine, "linux", id);
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after destroying the running Linux");
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&images_copy);
}

/// Loads xen-blkfront and waits (10 s of guest time at most) for xvda,
/// which must have the configured 8,192 sectors.
fn attach_xvda(machine: &mut Machine) {
    shell(machine, "insmod /lib/modules/xen-blkfront.ko; echo insmod-$?", "insmod-0");
    shell(
        machine,
        "for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/block/xvda ] && break; sleep 1; done; \
         echo size=$(cat /sys/block/xvda/size)",
        "size=8192",
    );
}

/// Linux next to the hostile suite's attackers (`hostile`: every bad call
/// of both ABIs; `hcfuzz`: 100,000 random and boundary-value hypercalls):
/// their checks pass, and Linux's shell answers and its clock and network
/// keep working all along.
#[test]
#[ignore = "needs tests/linux.sh's images (Debian's kernel); tests/run.sh runs it"]
fn linux_runs_on_beside_the_hostile_suite() {
    let (mut machine, images_copy) = linux_machine("hostile", None);
    let id = start_linux(&mut machine);
    shell(&mut machine, "insmod /lib/modules/xen-netfront.ko; echo insmod-$?", "insmod-0");
    // The kernel's complaints so far (its boot has none: the first test
    // checks that); none may come from the attackers.
    // (grep -c exits 1 on a count of 0: the file's one line is the check.)
    shell(&mut machine, &format!("{TRACES} >/tmp/traces; echo saved-$(wc -l </tmp/traces)"), "saved-1");
    detach(&mut machine);
    let hostile = create(&mut machine, "hostile", "hostile");
    let fuzz = create(&mut machine, "hcfuzz", "hcfuzz");
    attach(&mut machine, "linux", id);
    // Meanwhile, Linux's timer and shell: three seconds of sleep, counted.
    shell(&mut machine, "for i in 1 2 3; do sleep 1; echo tick-$i; done", "tick-3");
    detach(&mut machine);
    attach(&mut machine, "hostile", hostile);
    let output = machine
        .expect(
            line_where("hostile's summary line", |line| {
                line.starts_with("hostile: ") && line.contains(" checks passed")
            }),
            seconds(120),
        )
        .unwrap_or_else(fail);
    detach(&mut machine);
    if output.contains("WRONG") {
        fail_with(&mut machine, &format!("hostile found a check failing beside Linux:\n{output}"));
    }
    attach(&mut machine, "hcfuzz", fuzz);
    machine.expect("hcfuzz: 0 FAILED, done", seconds(300)).unwrap_or_else(fail);
    detach(&mut machine);
    // Linux is unharmed: its shell answers, it saw no oops, and it still
    // pings a Mica guest.
    attach(&mut machine, "linux", id);
    shell(&mut machine, &format!("echo new-traces=$(( $({TRACES}) - $(cat /tmp/traces) ))"), "new-traces=0");
    shell(
        &mut machine,
        "for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done; \
         ifconfig eth0 10.0.0.10 netmask 255.255.255.0 up; echo eth0-$?",
        "eth0-0",
    );
    detach(&mut machine);
    create(&mut machine, "netserve", "netserve");
    attach(&mut machine, "linux", id);
    shell(&mut machine, "ping -c 10 -W 5 10.0.0.2 | tail -2", "10 packets transmitted, 10 packets received");
    detach(&mut machine);
    let (text, domains) = list(&mut machine);
    for name in ["linux", "hostile", "hcfuzz", "netserve"] {
        if domains.get(name).is_none_or(|row| row.state.contains('c') || row.state.contains('s')) {
            fail_with(&mut machine, &format!("{name} should still run; `list` printed:\n{text}"));
        }
    }
    let _ = std::fs::remove_file(&images_copy);
}

/// Counts the kernel's oopses, BUGs and warnings (each prints a call trace)
/// in its log.
const TRACES: &str = "dmesg | grep -c -e 'Call Trace' -e 'Oops' -e 'BUG:'";

/// A machine for Linux (512 MiB; dom0 64 MiB) booted to dom0's prompt,
/// with tests/linux.sh's images disk (vmlinux, initramfs.gz, linux.cfg on
/// ext4) as ata1-slave, where dom0 finds them: the ISO's ramdisk stays
/// small, so GRUB does not spend ~21 instructions a byte loading 36 MB.
/// `disk`, if given, is its disk image (else a fresh one). Returns the
/// machine and its copy of the images disk (Bochs locks an image it uses,
/// and the tests run at once), for the test to remove. A Linux that panics
/// or powers off ends the test at once, with its console (dom0's report of
/// it is a failure marker).
fn linux_machine(test: &str, disk: Option<PathBuf>) -> (Machine, PathBuf) {
    let image = images().join("images.img");
    if !image.is_file() {
        panic!(
            "\nLINUX TEST NOT RUN: {} is missing. Run tests/linux.sh first (it downloads Debian's \
             kernel and busybox with apt-get and makes the images disk); this is a failure, not a pass.\n",
            image.display()
        );
    }
    let copy = std::env::temp_dir().join(format!("mica-linux-images-{test}-{}.img", std::process::id()));
    std::fs::copy(&image, &copy)
        .unwrap_or_else(|error| panic!("cannot copy {} to {}: {error}", image.display(), copy.display()));
    // dom0's default memory, said on the command line: the ISO needs a name of its own.
    let iso = Iso::with_hv_args("dom0_mem=64M").unwrap_or_else(fail);
    let options = BochsOptions {
        memory_mib: 512,
        hard_timeout: seconds(900),
        disk_image: disk,
        images_disk: Some(copy.clone()),
        ..BochsOptions::default()
    };
    let mut machine = Bochs::boot_with(&iso, &options).unwrap_or_else(fail);
    boot_to_prompt(&mut machine).unwrap_or_else(fail);
    if !machine.transcript().lines().any(|line| line == "dom0: images: ext4 on ata1-slave, 3 files") {
        fail_with(
            &mut machine,
            "dom0 should find tests/linux.sh's images disk: \"dom0: images: ext4 on ata1-slave, 3 files\"",
        );
    }
    let markers: Vec<&str> = DEFAULT_FAILURE_MARKERS.iter().copied().chain(["dom0: 'linux' (domain "]).collect();
    machine.set_failure_markers(&markers);
    (machine, copy)
}

/// `create linux`, attached to its console until its /init runs; returns
/// its domain id.
fn start_linux(machine: &mut Machine) -> u64 {
    let id = create(machine, "linux", "linux");
    attach(machine, "linux", id);
    // Messages before hvc0 go to the boot console (console_io: hv's log,
    // `dmesg`); hvc0 starts here. A failed wait stops the machine with its
    // whole transcript in the report, so hv's log cannot be fetched then:
    // to read Linux's early messages, boot it by hand and type `dmesg`.
    machine.expect("printk: console [hvc0] enabled", seconds(300)).unwrap_or_else(fail);
    machine.expect("mica-linux: /init reached", seconds(600)).unwrap_or_else(fail);
    id
}

/// Types `line` at Linux's shell and waits for `answer`.
fn shell(machine: &mut Machine, line: &str, answer: &str) {
    machine.send_line(line).unwrap_or_else(fail);
    if let Err(error) = machine.expect(answer, seconds(60)) {
        fail::<()>(format!("`{line}` should print {answer:?}: {error}"));
    }
}
