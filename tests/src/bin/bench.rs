//! Benchmark runner (not a test): boots Mica in Bochs with `clock: sync=none`,
//! where the TSC counts emulated instructions, runs `bench` at the dom0 shell,
//! prints the path lengths and powers off.
//!
//!     cargo run --release -p mica-tests --bin bench
//!
//! `-- linux` runs the Linux guest's part alone.

use std::process::ExitCode;

use mica_tests::{BenchReport, Bochs, BochsOptions, Iso, Machine, PROMPT, boot_to_prompt, line_where, scan, seconds};

fn run() -> Result<(), String> {
    let iso = Iso::get()?;
    if std::env::args().nth(1).as_deref() == Some("linux") {
        return linux();
    }
    eprintln!("bench: booting {} in Bochs", iso.path().display());
    let mut machine = Bochs::boot(iso)?;
    boot_to_prompt(&mut machine)?;
    machine.send_line("bench")?;
    let output = machine.expect(PROMPT, seconds(120))?;
    let report = BenchReport::parse(&output)?;

    let null = report.null_hypercall;
    let cpuid = report.cpuid_exit;
    println!("null hypercall:  {:>8} tsc/call (min {}, {} calls)", null.mean_tsc, null.min_tsc, null.calls);
    println!("cpuid exit:      {:>8} tsc/call (min {}, {} calls)", cpuid.mean_tsc, cpuid.min_tsc, cpuid.calls);
    println!("boot to prompt:  {:>8} tsc", report.boot_to_prompt_tsc);
    if cpuid.mean_tsc > 0 {
        println!("null/cpuid:      {:>8.3}", null.mean_tsc as f64 / cpuid.mean_tsc as f64);
    } else {
        println!("null/cpuid:      undefined (cpuid exit took 0 tsc)");
    }

    // Guests: a guest's own null hypercall, event delivery, and the time from
    // `create` to the guest's first console byte.
    // One at a time, so each guest's start-up is measured alone.
    for config in ["counter", "hcbench"] {
        machine.send_line(&format!("create {config}"))?;
        machine.expect(PROMPT, seconds(60))?;
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    machine.send_line("console hcbench")?;
    let guest_null = machine.expect(mica_tests::line_starting("hcbench: xen event send to dom0"), seconds(60))?;
    machine.send(&[0x1d])?;
    machine.expect(PROMPT, seconds(20))?;
    machine.send_line("bench")?;
    let output = machine.expect(PROMPT, seconds(120))?;
    for (label, text, prefix) in [
        ("guest null:     ", &guest_null, "hcbench: null hypercall"),
        ("guest event:    ", &guest_null, "hcbench: event send to dom0"),
        ("guest xen event:", &guest_null, "hcbench: xen event send to dom0"),
        ("event delivery: ", &output, "bench: event send+deliver"),
        ("create->output: ", &output, "bench: create to first output"),
    ] {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| line.starts_with(prefix)).collect();
        if lines.is_empty() {
            println!("{label} (missing)");
        }
        for line in lines {
            println!("{label} {line}");
        }
    }

    block_and_network(&mut machine)?;

    machine.send_line("poweroff")?;
    machine.expect("hv: powering off", seconds(20))?;
    machine.wait_exit(seconds(30))?;
    cross_cpu_events(iso)?;
    linux()
}

/// Debian's kernel as a guest, with tests/linux.sh's images (if they are
/// there: the bench downloads nothing): `create linux` to its shell
/// prompt; reading 4 MiB of xvda with dd (O_DIRECT in 32 KiB and 1 MiB
/// blocks, and through the page cache)
/// against dom0 reading the same region itself (`diskbench`), both with
/// the disk in PIO mode, then both in DMA mode; the ping round trip from
/// Linux to `netanswer`.
/// Linux reports its times in its own clock (pvclock, from the TSC at the
/// rate hv measured and logs at boot), converted back to TSC ticks here.
fn linux() -> Result<(), String> {
    linux_on(1)?;
    linux_on(2)
}

/// [`linux`] on a machine of `cpus` CPUs. On one CPU a number of ticks is
/// a number of instructions (create to prompt, the measure); on
/// two, dom0 and Linux's two vCPUs run side by side, as on the machines
/// Mica is for, and ticks are the emulated machine's time.
fn linux_on(cpus: u32) -> Result<(), String> {
    let label = if cpus == 1 { "linux (1 CPU):".to_string() } else { format!("linux ({cpus} CPUs):") };
    let root = mica_tests::workspace_root();
    let directory = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir).join("linux"),
        None => root.join("target").join("linux"),
    };
    // The images disk tests/linux.sh makes (vmlinux, initramfs.gz,
    // linux.cfg on ext4), as ata1-slave; a copy, as Bochs locks an image.
    let image = directory.join("images.img");
    if !image.is_file() {
        println!("{label} NOT MEASURED: {} is missing (run tests/linux.sh)", image.display());
        return Ok(());
    }
    let copy = std::env::temp_dir().join(format!("mica-bench-linux-images-{}.img", std::process::id()));
    std::fs::copy(&image, &copy).map_err(|error| format!("copying {}: {error}", image.display()))?;
    let iso = Iso::with_hv_args("dom0_mem=64M")?;
    let options = BochsOptions {
        memory_mib: 512,
        hard_timeout: seconds(1800),
        images_disk: Some(copy.clone()),
        cpus,
        ..Default::default()
    };
    let mut machine = Bochs::boot_with(&iso, &options)?;
    let boot = boot_to_prompt(&mut machine)?;
    let khz = boot
        .lines()
        .find_map(|line| line.strip_prefix("hv: TSC runs at ")?.strip_suffix(" kHz")?.trim().parse::<f64>().ok())
        .ok_or("hv's boot log names no TSC rate")?;
    let ticks = |seconds: f64| (seconds * khz * 1000.0).round() as u64;
    let command = |machine: &mut Machine, line: &str| -> Result<String, String> {
        machine.send_line(line)?;
        machine.expect(PROMPT, seconds(120))
    };
    let shell = |machine: &mut Machine, line: &str, answer: &str| -> Result<String, String> {
        machine.send_line(line)?;
        machine.expect(answer, seconds(120))
    };
    let detach = |machine: &mut Machine| -> Result<String, String> {
        machine.send(&[0x1d])?;
        machine.expect(PROMPT, seconds(20))
    };

    // PIO on both disks: Bochs paces DMA like a disk of about 22 MB/s of
    // emulated time, which dom0 spends polling, while PIO costs only its
    // instructions (0.6 a byte): so the images disk's reads count dom0's
    // work, not Bochs's model of a platter.
    command(&mut machine, "diskmode ata1-master pio")?;
    command(&mut machine, "diskmode ata1-slave pio")?;
    command(&mut machine, "create linux")?;
    machine.send_line("console linux")?;
    machine.expect("mica-linux: /init reached", seconds(600))?;
    machine.expect("/ # ", seconds(60))?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    detach(&mut machine)?;
    let bench = command(&mut machine, "bench")?;
    let prompt =
        bench.lines().find(|line| line.starts_with("bench: create to latest output") && line.contains("(linux)"));
    match prompt.and_then(|line| number_before(line, "tsc")) {
        Some(tsc) => println!("{label} create to its shell prompt (its latest console output) {tsc} tsc"),
        None => println!("{label} create to prompt (missing)"),
    }
    // Of which dom0's build: reading the images (from the images disk) and
    // loading them.
    let built = bench.lines().find(|line| line.starts_with("bench: create built in") && line.contains("(linux)"));
    match built.and_then(|line| number_before(line, "tsc")) {
        Some(tsc) => println!("{label} of which dom0 built the domain (images read and loaded) {tsc} tsc"),
        None => println!("{label} create's build (missing)"),
    }
    // What the boot ramdisk costs before hv runs (GRUB reads every module).
    match bench
        .lines()
        .find_map(|line| line.split("firmware and GRUB took ").nth(1)?.split(')').next()?.trim().parse::<u64>().ok())
    {
        Some(tsc) => println!("{label} power-on to hv's entry (firmware, GRUB loading the ISO's modules) {tsc} tsc"),
        None => println!("{label} power-on to hv's entry (missing)"),
    }

    machine.send_line("console linux")?;
    shell(
        &mut machine,
        "insmod /lib/modules/xen-blkfront.ko; for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/block/xvda ] && break; \
         sleep 1; done; echo size=$(cat /sys/block/xvda/size)",
        "size=8192",
    )?;
    detach(&mut machine)?;
    let dom0_direct = |machine: &mut Machine| -> Result<Option<u64>, String> {
        let dom0 = command(machine, "diskbench ata1-master:4096+8192")?;
        Ok(dom0
            .lines()
            .find(|line| line.starts_with("diskbench: read 8192 sectors in"))
            .and_then(|line| number_before(line, "tsc")))
    };
    let mut dom0 = dom0_direct(&mut machine)?;
    // Linux's monotonic clock (ns, /proc/timer_list) around the read, and
    // around a dd that reads nothing: the difference is the data's time,
    // without dd's start and exit. One request at a time (4 and 32 KiB:
    // the difference is the cost per byte, the rest the cost per request),
    // and 1 MiB at once (blkfront splits it into requests of 11 pages).
    // And through the page cache (emptied first), as a plain `dd` reads:
    // Linux's read-ahead makes the requests.
    //
    // Where dd runs matters: blk-mq completes a request on the CPU that
    // submitted it, so when blkfront's interrupt comes to the other vCPU
    // each request costs a function-call IPI between Linux's vCPUs (and,
    // with one CPU under both, a switch). Left to Linux's scheduler the
    // same read measured 0.15 or 0.33 from run to run. So the interrupt is
    // bound to vCPU 0 and dd pinned there (`taskset 1`), and the 32 KiB read
    // runs once more pinned to vCPU 1 (`taskset 2`): the IPI's cost.
    machine.send_line("console linux")?;
    shell(
        &mut machine,
        "irq=$(grep blkif /proc/interrupts | cut -d: -f1 | tr -d ' '); echo 1 >/proc/irq/$irq/smp_affinity; \
         echo blkif-irq-cpus=$(cat /proc/irq/$irq/smp_affinity)",
        "blkif-irq-cpus=1",
    )?;
    detach(&mut machine)?;
    // Then the same with the disk in DMA mode, where Bochs's model of the
    // disk takes time (about 22 MB/s), as a real disk does, and dom0's
    // direct read waits for it too: how much of the disk's speed a guest
    // gets when the disk, not the CPU, is the limit.
    for (blocks, size, count, flag, cpus, mode) in [
        ("O_DIRECT, 4 KiB blocks", "4k", 1024, "iflag=direct", "1", "PIO"),
        ("O_DIRECT, 32 KiB blocks", "32k", 128, "iflag=direct", "1", "PIO"),
        ("O_DIRECT, 32 KiB blocks, dd on the other vCPU", "32k", 128, "iflag=direct", "2", "PIO"),
        ("O_DIRECT, 1 MiB blocks", "1M", 4, "iflag=direct", "1", "PIO"),
        ("O_DIRECT, one 4 MiB block (32 requests at once)", "4M", 1, "iflag=direct", "1", "PIO"),
        ("buffered, 1 MiB blocks", "1M", 4, "", "1", "PIO"),
        ("O_DIRECT, 32 KiB blocks", "32k", 128, "iflag=direct", "1", "DMA"),
        ("O_DIRECT, 1 MiB blocks", "1M", 4, "iflag=direct", "1", "DMA"),
        ("O_DIRECT, one 4 MiB block (32 requests at once)", "4M", 1, "iflag=direct", "1", "DMA"),
        ("buffered, 1 MiB blocks", "1M", 4, "", "1", "DMA"),
    ] {
        if mode == "DMA" && size == "32k" {
            command(&mut machine, "diskmode ata1-master dma")?;
            dom0 = dom0_direct(&mut machine)?;
        }
        machine.send_line("console linux")?;
        machine.send_line(&format!(
            "t() {{ grep -m1 'now at' /proc/timer_list | cut -d' ' -f3; }}; \
             sync; echo 3 >/proc/sys/vm/drop_caches; a=$(t); \
             taskset {cpus} dd if=/dev/xvda of=/dev/null bs={size} count={count} {flag} 2>/dev/null; b=$(t); \
             taskset {cpus} dd if=/dev/xvda of=/dev/null bs={size} count=0 {flag} 2>/dev/null; c=$(t); \
             echo dd-{size}{flag}-cpus{cpus}-{mode}-ns=$((b - a)) empty-ns=$((c - b))"
        ))?;
        // Named by the block size: `console` replays the earlier round's line.
        let prefix = format!("dd-{size}{flag}-cpus{cpus}-{mode}-ns=");
        let dd = machine
            .expect(line_where(format!("{prefix}<n> empty-ns=<n>"), |line| line.starts_with(&prefix)), seconds(120))?;
        detach(&mut machine)?;
        let dd_seconds = dd.lines().find(|line| line.starts_with(&prefix)).and_then(|line| {
            let numbers = scan(&format!("{prefix}{{}} empty-ns={{}}"), line.trim())?;
            Some(numbers[0].saturating_sub(numbers[1]) as f64 / 1e9)
        });
        match (dd_seconds, dom0) {
            (Some(seconds), Some(dom0)) if seconds > 0.0 => println!(
                "{label} xvda read 4 MiB (dd, {blocks}, {mode}; an empty dd's time subtracted): {seconds} s = {} tsc; dom0 direct {dom0} tsc; ratio {:.3}",
                ticks(seconds),
                dom0 as f64 / ticks(seconds) as f64
            ),
            _ => println!("{label} xvda read, {blocks} (missing: dd {dd:?}, diskbench {dom0:?})"),
        }
    }

    machine.send_line("console linux")?;
    shell(
        &mut machine,
        "insmod /lib/modules/xen-netfront.ko; for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; \
         sleep 1; done; ifconfig eth0 10.0.0.10 netmask 255.255.255.0 up; echo eth0-$?",
        "eth0-0",
    )?;
    detach(&mut machine)?;
    command(&mut machine, "create netanswer")?;
    machine.send_line("console linux")?;
    let ping = shell(&mut machine, "ping -c 20 10.0.0.2 | tail -1", " ms")?;
    detach(&mut machine)?;
    // "round-trip min/avg/max = 0.612/0.700/1.004 ms"
    let times: Vec<f64> = ping
        .lines()
        .find(|line| line.starts_with("round-trip"))
        .and_then(|line| line.split(" = ").nth(1))
        .map(|values| values.trim_end_matches(" ms").split('/').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_default();
    match times[..] {
        [min, avg, max] => println!(
            "{label} ping to netanswer, 20 round trips: avg {avg} ms = {} tsc (min {} tsc, max {} tsc)",
            ticks(avg / 1000.0),
            ticks(min / 1000.0),
            ticks(max / 1000.0)
        ),
        _ => println!("{label} ping (missing: {ping:?})"),
    }
    machine.send_line("poweroff")?;
    machine.expect("hv: powering off", seconds(20))?;
    machine.wait_exit(seconds(30))?;
    let _ = std::fs::remove_file(&copy);
    Ok(())
}

/// On a machine with two CPUs: an event's round trip between two guests
/// that each spin on a CPU of their own (`hcping` sends, `hcpong`'s upcall
/// answers, `hcping` takes the upcall). Half of it is one send-to-upcall
/// across CPUs: the Send hypercall, hv's kick IPI, the other guest's exit,
/// the upcall's injection and the guest's handler.
fn cross_cpu_events(iso: &Iso) -> Result<(), String> {
    let options = BochsOptions { cpus: 2, ..Default::default() };
    let mut machine = Bochs::boot_with(iso, &options)?;
    boot_to_prompt(&mut machine)?;
    for config in ["hcping", "hcpong"] {
        machine.send_line(&format!("create {config}"))?;
        machine.expect(PROMPT, seconds(60))?;
    }
    let line = guest_line(&mut machine, "hcping", "hcbench: event round trip", "tsc", 300)?;
    println!("cross-CPU event (2 CPUs): {}", line.trim());
    if let Some(round_trip) = number_before(&line, " tsc") {
        println!("cross-CPU send to upcall: {} tsc (half the round trip)", round_trip / 2);
    }
    machine.send_line("poweroff")?;
    machine.expect("hv: powering off", seconds(20))?;
    machine.wait_exit(seconds(30))?;
    Ok(())
}

/// Runs `console <guest>` until a line starting `wanted` and containing
/// `also` arrives, detaches, and returns that line.
fn guest_line(machine: &mut Machine, guest: &str, wanted: &str, also: &str, timeout: u64) -> Result<String, String> {
    machine.send_line(&format!("console {guest}"))?;
    let matches = |line: &str| line.trim_start().starts_with(wanted) && line.contains(also);
    let text =
        machine.expect(mica_tests::line_where(format!("{wanted:?} with {also:?}"), matches), seconds(timeout))?;
    machine.send(&[0x1d])?;
    machine.expect(PROMPT, seconds(20))?;
    let line = text.lines().rev().find(|line| matches(line)).unwrap_or("");
    Ok(line.trim().to_string())
}

/// The number just before `unit` in `line` ("... in 123 tsc" -> 123).
fn number_before(line: &str, unit: &str) -> Option<u64> {
    line.split(&format!(" {unit}")).next()?.rsplit(' ').next()?.parse().ok()
}

/// Block: the guest's disk reads through the rings against dom0 reading the
/// same region itself. Network: guest-to-guest ping round trips through
/// dom0's switch, as frames per million instructions.
fn block_and_network(machine: &mut Machine) -> Result<(), String> {
    // Both transfer modes of the ATA driver, each guest run next to dom0
    // reading the same region itself.
    for mode in ["pio", "dma"] {
        machine.send_line(&format!("diskmode ata1-master {mode}"))?;
        machine.expect(PROMPT, seconds(20))?;
        machine.send_line("create diskbench")?;
        machine.expect(PROMPT, seconds(60))?;
        // Its last line is the deepest queue: 8 requests of 32 KiB in flight.
        let guest = guest_line(machine, "diskbench", "disktest: read 8192 sectors in", "depth 8 x 32 KiB", 600)?;
        machine.send_line("destroy diskbench")?;
        machine.expect(PROMPT, seconds(60))?;
        machine.send_line("diskbench ata1-master:2048+8192")?;
        let dom0 = machine.expect(PROMPT, seconds(120))?;
        let dom0_line = dom0.lines().find(|line| line.starts_with("diskbench: read 8192 sectors in")).unwrap_or("");
        match (number_before(dom0_line, "tsc"), number_before(&guest, "tsc")) {
            (Some(dom0), Some(guest)) if guest > 0 => println!(
                "block ({mode}): dom0 direct {dom0} tsc, guest (8 x 32 KiB in flight) {guest} tsc, ratio {:.3}{}",
                dom0 as f64 / guest as f64,
                if mode == "dma" { " (device time: Bochs's seek model, varies between runs)" } else { "" }
            ),
            _ => println!("block ({mode}): (missing: dom0 {dom0_line:?}, guest {guest:?})"),
        }
    }

    machine.send_line("create netanswer")?;
    machine.expect(PROMPT, seconds(60))?;
    machine.send_line("create netbench")?;
    machine.expect(PROMPT, seconds(60))?;
    let line = guest_line(machine, "netbench", "nettest: bench:", "", 600)?;
    // "nettest: bench: N round trips in T tsc, R tsc per round trip"
    let trips =
        line.split("bench: ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse::<u64>().ok());
    let total = number_before(line.split(',').next().unwrap_or(""), "tsc");
    match (trips, total) {
        (Some(trips), Some(total)) if total > 0 => {
            // Each round trip is two frames through the switch (request, reply).
            println!(
                "net: {trips} ping round trips in {total} tsc: {} tsc per round trip, {:.1} frames per million instructions",
                total / trips,
                2.0 * trips as f64 * 1e6 / total as f64
            );
        }
        _ => println!("net: (missing: {line:?})"),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench failed:\n{error}");
            ExitCode::FAILURE
        }
    }
}
