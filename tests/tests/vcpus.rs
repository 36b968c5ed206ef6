//! System tests of `vcpu-list` and `vcpu-pin` (issue 9) on a 2-CPU
//! machine: the table lists every domain's vCPU, a pin changes the
//! affinity it shows (and, once hv schedules domains on every CPU, where
//! the vCPU runs), and every bad input gets its one error line and changes
//! nothing. Then guests with several vCPUs (ABI 0.9): the `smp` guest
//! (`vcpus = 4`) starts its vCPUs 1-3, which count on their own, on two
//! CPUs and on one, pinned and not; `vcpus` outside 1..=8 is refused.
//! Each test boots its own Bochs.
//!
//! The `counter` guest wakes once per guest second, so each `counter: <N>`
//! line it prints after a pin is a scheduling that obeyed the new affinity.
//! The `smp` guest's vCPU 0 prints every vCPU's count twice per guest
//! second (`smp: vcpus 4 up; counts 0:<n> 1:<n> 2:<n> 3:<n>`), and
//! vCPU 0 sends every other vCPU an IPI with each line, which each takes
//! in its upcall and answers (`smp: ipis 1:<n> ...; answers <m>`).

use mica_tests::report::{VcpuList, VcpuRow};
use mica_tests::session::{
    attach, boot, boot_with, command, counter_reaches, create, destroy, detach, expect_memory_back, fail_with, list,
    mem,
};
use mica_tests::{BochsOptions, InfoReport, Machine, fail, line_where, scan, seconds};

fn boot_two_cpus() -> Machine {
    let mut machine = boot_with(&BochsOptions { cpus: 2, hard_timeout: seconds(300), ..Default::default() });
    let info = command(&mut machine, "info");
    let report = InfoReport::parse(&info).unwrap_or_else(|error| fail_with(&mut machine, &error));
    if report.cpus != 2 {
        fail_with(&mut machine, &format!("these tests need both CPUs running hv; `info` printed:\n{info}"));
    }
    machine
}

/// Runs `vcpu-list [arguments]` and parses its table.
fn vcpu_list(machine: &mut Machine, arguments: &str) -> (String, VcpuList) {
    let line = format!("vcpu-list {arguments}");
    let output = command(machine, line.trim_end());
    match VcpuList::parse(&output) {
        Ok(list) => (output, list),
        Err(error) => fail_with(machine, &error),
    }
}

/// The row of vCPU 0 of `name` from `vcpu-list <name>`, which must list
/// exactly that vCPU.
fn vcpu_row(machine: &mut Machine, name: &str) -> (String, VcpuRow) {
    let (text, list) = vcpu_list(machine, name);
    match <[VcpuRow; 1]>::try_from(list.rows) {
        Ok([row]) if row.name == name && row.vcpu == 0 => (text, row),
        _ => {
            fail_with(machine, &format!("`vcpu-list {name}` should show one row, {name}'s vCPU 0; it printed:\n{text}"))
        }
    }
}

/// Runs `line`, which must print nothing (a pin that worked).
fn silent(machine: &mut Machine, line: &str) {
    let output = command(machine, line);
    if !output.trim().is_empty() {
        fail_with(machine, &format!("`{line}` should print nothing; it printed:\n{output}"));
    }
}

/// Runs `vcpu-pin <name> 0 <cpus>`, then waits for the counter to count
/// twice more (two schedulings under the new affinity); returns its row.
fn pin_counter(machine: &mut Machine, id: u64, cpus: &str) -> (String, VcpuRow) {
    silent(machine, &format!("vcpu-pin counter 0 {cpus}"));
    let now = counter_reaches(machine, id, 1);
    counter_reaches(machine, id, now + 2);
    vcpu_row(machine, "counter")
}

/// `vcpu-list` shows dom0's and the counter's vCPU 0 with affinity `all`;
/// `vcpu-pin` sets the affinity it shows (`1`, back to `all`, also through
/// `all` as the vCPU and through a list of every CPU); each bad input
/// prints its one error line and leaves the affinity as it was.
#[test]
fn vcpu_list_and_pin_show_and_set_affinity() {
    let mut machine = boot_two_cpus();
    let id = create(&mut machine, "counter", "counter");
    counter_reaches(&mut machine, id, 1);

    let (text, list) = vcpu_list(&mut machine, "");
    let shown: Vec<(&str, u64, u64, &str)> =
        list.rows.iter().map(|row| (row.name.as_str(), row.id, row.vcpu, row.affinity.as_str())).collect();
    if shown != [("Domain-0", 0, 0, "all"), ("counter", id, 0, "all")] {
        fail_with(
            &mut machine,
            &format!(
                "`vcpu-list` should show Domain-0 (0) and counter ({id}), vCPU 0 each, affinity all; \
                 it printed:\n{text}"
            ),
        );
    }
    // dom0 runs the command (`running` once hv reports where vCPUs run);
    // counter sleeps between its lines.
    let dom0 = list.get("Domain-0", 0).unwrap_or_else(|| unreachable!());
    let counter = list.get("counter", 0).unwrap_or_else(|| unreachable!());
    if !["running", "runnable"].contains(&dom0.state.as_str())
        || !["running", "runnable", "blocked"].contains(&counter.state.as_str())
    {
        fail_with(
            &mut machine,
            &format!("`vcpu-list` should show Domain-0 running and counter running or blocked; it printed:\n{text}"),
        );
    }
    for name in ["Domain-0", "0"] {
        let (text, list) = vcpu_list(&mut machine, name);
        if list.rows.len() != 1 || list.rows[0].name != "Domain-0" {
            fail_with(&mut machine, &format!("`vcpu-list {name}` should show only Domain-0; it printed:\n{text}"));
        }
    }

    silent(&mut machine, "vcpu-pin counter 0 1");
    let (text, row) = vcpu_row(&mut machine, "counter");
    if row.affinity != "1" {
        fail_with(&mut machine, &format!("after `vcpu-pin counter 0 1` the affinity should be 1:\n{text}"));
    }

    // Bad inputs: one line each, and the affinity stays 1.
    let refused = [
        ("vcpu-pin nosuch 0 1", "dom0: vcpu-pin: no domain 'nosuch' (see 'list')"),
        ("vcpu-pin counter 1 0", "dom0: vcpu-pin: 'counter' has no vCPU 1 (its vCPUs: 0)"),
        ("vcpu-pin counter x 0", "dom0: vcpu-pin: bad vCPU 'x': expected a vCPU number or 'all'"),
        ("vcpu-pin counter 0 2", "dom0: vcpu-pin: CPU 2 not running hv (running hv: 0-1)"),
        ("vcpu-pin counter 0 0-3", "dom0: vcpu-pin: CPU 2-3 not running hv (running hv: 0-1)"),
        (
            "vcpu-pin counter 0 0,",
            "dom0: vcpu-pin: bad CPU list '0,': an item is empty (two commas, or a comma at an end)",
        ),
        ("vcpu-pin counter 0 1-0", "dom0: vcpu-pin: bad CPU list '1-0': range '1-0' ends before it starts"),
        ("vcpu-pin counter 0 x", "dom0: vcpu-pin: bad CPU list 'x': 'x' is not a CPU index or a range like 0-3"),
        ("vcpu-pin counter 0 64", "dom0: vcpu-pin: bad CPU list '64': '64' names a CPU beyond index 63"),
        ("vcpu-pin counter 0", "dom0: usage: vcpu-pin <domain> <vcpu> <cpus>"),
        ("vcpu-list nosuch", "dom0: vcpu-list: no domain 'nosuch' (see 'list')"),
        ("vcpu-list counter 0", "dom0: 'vcpu-list' does not take '0'"),
    ];
    for (line, expected) in refused {
        let output = command(&mut machine, line);
        let lines: Vec<&str> = output.lines().map(str::trim_end).filter(|line| !line.is_empty()).collect();
        if lines != [expected] {
            fail_with(&mut machine, &format!("`{line}` should print only {expected:?}; it printed:\n{output}"));
        }
    }
    let (text, row) = vcpu_row(&mut machine, "counter");
    if row.affinity != "1" {
        fail_with(&mut machine, &format!("refused `vcpu-pin`s should leave counter's affinity 1:\n{text}"));
    }
    let (text, list) = vcpu_list(&mut machine, "");
    if list.rows.len() != 2 || list.get("Domain-0", 0).map(|row| row.affinity.as_str()) != Some("all") {
        fail_with(&mut machine, &format!("refused `vcpu-pin`s should leave Domain-0's affinity all:\n{text}"));
    }
    // Pinned, the counter counts on.
    let now = counter_reaches(&mut machine, id, 1);
    counter_reaches(&mut machine, id, now + 1);

    // Back to every CPU, three ways; and dom0 can be pinned too.
    for (line, expected) in [
        ("vcpu-pin counter 0 all".to_owned(), "all"),
        ("vcpu-pin counter 0 0".to_owned(), "0"),
        ("vcpu-pin counter all 0-1".to_owned(), "all"),
        ("vcpu-pin counter 0 1".to_owned(), "1"),
        (format!("vcpu-pin {id} 0 0,1"), "all"),
    ] {
        silent(&mut machine, &line);
        let (text, row) = vcpu_row(&mut machine, "counter");
        if row.affinity != expected {
            fail_with(&mut machine, &format!("after `{line}` counter's affinity should be {expected}:\n{text}"));
        }
    }
    silent(&mut machine, "vcpu-pin Domain-0 0 0");
    let (text, row) = vcpu_row(&mut machine, "Domain-0");
    if row.affinity != "0" {
        fail_with(&mut machine, &format!("after `vcpu-pin Domain-0 0 0` its affinity should be 0:\n{text}"));
    }
    silent(&mut machine, "vcpu-pin 0 all all");
    let (text, row) = vcpu_row(&mut machine, "Domain-0");
    if row.affinity != "all" {
        fail_with(&mut machine, &format!("after `vcpu-pin 0 all all` Domain-0's affinity should be all:\n{text}"));
    }

    destroy(&mut machine, "counter", id);
    let (text, list) = vcpu_list(&mut machine, "");
    if list.rows.iter().map(|row| row.name.as_str()).collect::<Vec<_>>() != ["Domain-0"] {
        fail_with(&mut machine, &format!("after `destroy counter`, `vcpu-list` should show only Domain-0:\n{text}"));
    }
}

/// Where vCPUs run (needs hv to schedule domains on every CPU): dom0 is
/// shown running on a CPU while it runs `vcpu-list`; the counter pinned to
/// CPU 1 runs there, pinned to CPU 0 runs there, and counts on throughout.
#[test]
fn pinned_vcpus_run_where_they_are_pinned() {
    let mut machine = boot_two_cpus();
    let id = create(&mut machine, "counter", "counter");
    counter_reaches(&mut machine, id, 1);

    let (text, row) = vcpu_row(&mut machine, "Domain-0");
    if row.state != "running" || !matches!(row.cpu, Some(0 | 1)) {
        fail_with(
            &mut machine,
            &format!("`vcpu-list Domain-0` should show dom0 running on CPU 0 or 1 (it runs the command):\n{text}"),
        );
    }
    let (text, row) = vcpu_row(&mut machine, "counter");
    if row.cpu.is_none() {
        fail_with(&mut machine, &format!("counter has run: `vcpu-list` should show its CPU, not -:\n{text}"));
    }

    for (cpus, cpu) in [("1", 1), ("0", 0), ("1", 1)] {
        let (text, row) = pin_counter(&mut machine, id, cpus);
        if row.cpu != Some(cpu) || row.affinity != cpus {
            fail_with(
                &mut machine,
                &format!(
                    "pinned with `vcpu-pin counter 0 {cpus}`, counter should have run on CPU {cpu} \
                     (affinity {cpus}); `vcpu-list counter` printed:\n{text}"
                ),
            );
        }
    }
    let (text, row) = pin_counter(&mut machine, id, "all");
    if row.cpu.is_none() || row.affinity != "all" {
        fail_with(&mut machine, &format!("unpinned, counter should run on with affinity all:\n{text}"));
    }
}

/// The counts of a line of the `smp` guest with `vcpus` counts,
/// `smp: vcpus <up> up; counts 0:<n> 1:<n> ...`: (up, counts).
fn smp_counts(line: &str, vcpus: usize) -> Option<(u64, Vec<u64>)> {
    let mut template = String::from("smp: vcpus {} up; counts");
    for vcpu in 0..vcpus {
        template += &format!(" {vcpu}:{{}}");
    }
    let numbers = scan(&template, line)?;
    Some((numbers[0], numbers[1..].to_vec()))
}

/// Attached to the `smp` guest (`name`, `vcpus` vCPUs): waits for a line
/// with all `vcpus` up, then for a later one where every vCPU's count is
/// higher; returns both lines' counts. Fails naming the counts that stood.
fn expect_counts_rise(machine: &mut Machine, vcpus: usize) -> (Vec<u64>, Vec<u64>) {
    let all_up = move |line: &str| smp_counts(line, vcpus).is_some_and(|(up, _)| up == vcpus as u64);
    let seen = machine
        .expect(line_where(format!("a line \"smp: vcpus {vcpus} up; counts 0:<n> ...\""), all_up), seconds(60))
        .unwrap_or_else(fail);
    let last_counts =
        |text: &str| text.lines().last().and_then(|line| smp_counts(line, vcpus)).map(|(_, counts)| counts);
    let first = last_counts(&seen).unwrap_or_else(|| unreachable!("the line matched"));
    let expected = first.clone();
    let risen = move |line: &str| {
        smp_counts(line, vcpus).is_some_and(|(_, counts)| counts.iter().zip(&expected).all(|(now, then)| now > then))
    };
    let description = format!("a line \"smp: vcpus {vcpus} up; counts ...\" with every count above {first:?}");
    let later = machine.expect(line_where(description, risen), seconds(60)).unwrap_or_else(fail);
    let second = last_counts(&later).unwrap_or_else(|| unreachable!("the line matched"));
    eprintln!("smp counts: {first:?} -> {second:?}");
    (first, second)
}

/// The numbers of a line `smp: ipis 1:<n> 2:<n> ...; answers <m>` of the
/// smp guest with `vcpus` vCPUs: (IPIs each of vCPUs 1.. took, answers).
fn smp_ipis(line: &str, vcpus: usize) -> Option<(Vec<u64>, u64)> {
    let mut template = String::from("smp: ipis");
    for vcpu in 1..vcpus {
        template += &format!(" {vcpu}:{{}}");
    }
    template += "; answers {}";
    let numbers = scan(&template, line)?;
    Some((numbers[..vcpus - 1].to_vec(), numbers[vcpus - 1]))
}

/// Attached to the smp guest: waits for a line in which every vCPU but 0
/// has taken at least two of vCPU 0's IPIs and vCPU 0 has seen answers
/// (IPIs back) after at least two lines.
fn expect_ipis(machine: &mut Machine, vcpus: usize) {
    let enough = move |line: &str| {
        smp_ipis(line, vcpus).is_some_and(|(ipis, answers)| ipis.iter().all(|&count| count >= 2) && answers >= 2)
    };
    let text = machine
        .expect(
            line_where("a line \"smp: ipis 1:<n> ...; answers <m>\" with every n >= 2 and m >= 2".to_string(), enough),
            seconds(60),
        )
        .unwrap_or_else(fail);
    eprintln!("smp ipis: {}", text.lines().last().unwrap_or(""));
}

/// `console <name>`, then [`expect_counts_rise`], then Ctrl-].
fn counts_rise(machine: &mut Machine, name: &str, id: u64, vcpus: usize) {
    attach(machine, name, id);
    expect_counts_rise(machine, vcpus);
    detach(machine);
}

/// Creates the smp guest from `config` (named `name`, `vcpus` vCPUs):
/// `list` shows its vCPUs, its console that vCPU 0 started each of the
/// others, and then every count rising. Returns its id.
fn create_smp(machine: &mut Machine, config: &str, name: &str, vcpus: usize) -> u64 {
    let id = create(machine, config, name);
    let (text, domains) = list(machine);
    if domains.get(name).map(|row| row.vcpus) != Some(vcpus as u64) {
        fail_with(machine, &format!("`list` should show {name} with {vcpus} VCPUs; it printed:\n{text}"));
    }
    attach(machine, name, id);
    let greeting = format!("smp: domain {id} has {vcpus} vcpus");
    machine
        .expect(line_where(format!("the line {greeting:?}"), |line| line == greeting), seconds(60))
        .unwrap_or_else(fail);
    for vcpu in 1..vcpus {
        let started = format!("smp: vcpu {vcpu} started");
        machine
            .expect(line_where(format!("the line {started:?}"), |line| line == started), seconds(30))
            .unwrap_or_else(fail);
    }
    expect_counts_rise(machine, vcpus);
    expect_ipis(machine, vcpus);
    detach(machine);
    id
}

/// `vcpu-list <name>`, which must show its vCPUs 0 to `vcpus` - 1, none
/// offline (every one is up); the rows by vCPU.
fn smp_vcpus(machine: &mut Machine, name: &str, vcpus: usize) -> (String, Vec<VcpuRow>) {
    let (text, list) = vcpu_list(machine, name);
    let numbers: Vec<u64> = list.rows.iter().map(|row| row.vcpu).collect();
    if numbers != (0..vcpus as u64).collect::<Vec<_>>()
        || list.rows.iter().any(|row| row.name != name || row.state == "offline")
    {
        fail_with(
            machine,
            &format!("`vcpu-list {name}` should show its vCPUs 0-{}, none offline; it printed:\n{text}", vcpus - 1),
        );
    }
    (text, list.rows)
}

/// On two CPUs the smp guest's four vCPUs all count, `vcpu-list` shows
/// them on both CPUs, pinned (vCPU 1 to CPU 0, vCPU 2 to CPU 1) they run
/// where pinned and count on; with eight vCPUs (the most) all count too;
/// destroyed, every frame comes back.
#[test]
fn four_vcpus_on_two_cpus_all_count_and_run_where_pinned() {
    let mut machine = boot_with(&BochsOptions { cpus: 2, hard_timeout: seconds(600), ..Default::default() });
    let info = command(&mut machine, "info");
    let report = InfoReport::parse(&info).unwrap_or_else(|error| fail_with(&mut machine, &error));
    if report.cpus != 2 {
        fail_with(&mut machine, &format!("this test needs both CPUs running hv; `info` printed:\n{info}"));
    }
    let (before_text, before) = mem(&mut machine);
    let id = create_smp(&mut machine, "smp", "smp", 4);

    // Three vCPUs spin: over a few samples they show up on both CPUs.
    let mut cpus_seen = Vec::new();
    let mut texts = String::new();
    for _ in 0..10 {
        let (text, rows) = smp_vcpus(&mut machine, "smp", 4);
        cpus_seen.extend(rows.iter().filter_map(|row| row.cpu));
        texts += &text;
        cpus_seen.sort();
        cpus_seen.dedup();
        if cpus_seen == [0, 1] {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    if cpus_seen != [0, 1] {
        fail_with(
            &mut machine,
            &format!(
                "smp's vCPUs should run on both CPUs; over 10 `vcpu-list smp` they showed {cpus_seen:?}:\n{texts}"
            ),
        );
    }

    let refused = "dom0: vcpu-pin: 'smp' has no vCPU 4 (its vCPUs: 0-3)";
    let output = command(&mut machine, "vcpu-pin smp 4 0");
    if output.trim() != refused {
        fail_with(&mut machine, &format!("`vcpu-pin smp 4 0` should print only {refused:?}; it printed:\n{output}"));
    }
    silent(&mut machine, "vcpu-pin smp 1 0");
    silent(&mut machine, "vcpu-pin smp 2 1");
    // Two rounds of rising counts: each pinned vCPU has been scheduled again.
    counts_rise(&mut machine, "smp", id, 4);
    counts_rise(&mut machine, "smp", id, 4);
    let (text, rows) = smp_vcpus(&mut machine, "smp", 4);
    let placed: Vec<(Option<u64>, &str)> = rows.iter().map(|row| (row.cpu, row.affinity.as_str())).collect();
    if placed[1] != (Some(0), "0") || placed[2] != (Some(1), "1") || placed[0].1 != "all" || placed[3].1 != "all" {
        fail_with(
            &mut machine,
            &format!(
                "after `vcpu-pin smp 1 0` and `vcpu-pin smp 2 1`, vCPU 1 should run on CPU 0 and vCPU 2 on \
                 CPU 1, vCPUs 0 and 3 keep affinity all; `vcpu-list smp` printed:\n{text}"
            ),
        );
    }
    destroy(&mut machine, "smp", id);
    expect_memory_back(&mut machine, &before, &before_text, "after the 4-vCPU smp guest is destroyed");

    let id = create_smp(&mut machine, "smp8", "smp8", 8);
    smp_vcpus(&mut machine, "smp8", 8);
    destroy(&mut machine, "smp8", id);
    expect_memory_back(&mut machine, &before, &before_text, "after the 8-vCPU smp8 guest is destroyed");
}

/// On one CPU the smp guest's four vCPUs (three spinning) all make
/// progress, all on CPU 0; destroyed, every frame comes back.
#[test]
fn four_vcpus_on_one_cpu_all_count() {
    let mut machine = boot_with(&BochsOptions { cpus: 1, hard_timeout: seconds(300), ..Default::default() });
    let (before_text, before) = mem(&mut machine);
    let id = create_smp(&mut machine, "smp", "smp", 4);
    counts_rise(&mut machine, "smp", id, 4);
    let (text, rows) = smp_vcpus(&mut machine, "smp", 4);
    if rows.iter().any(|row| row.cpu != Some(0)) {
        fail_with(
            &mut machine,
            &format!("on one CPU every vCPU should run on CPU 0; `vcpu-list smp` printed:\n{text}"),
        );
    }
    destroy(&mut machine, "smp", id);
    expect_memory_back(&mut machine, &before, &before_text, "after the smp guest is destroyed");
}

/// `vcpus = 9` (one more than hv gives a domain) and `vcpus = 0` get
/// dom0's one error line naming the allowed range; nothing is created.
#[test]
fn vcpus_outside_one_to_eight_are_refused() {
    let mut machine = boot();
    let (before_text, before) = mem(&mut machine);
    for config in ["vcpus9", "vcpus0"] {
        let expected = format!("dom0: create: {config}: line 4: vcpus must be 1..=8 (vCPUs of the guest)");
        let output = command(&mut machine, &format!("create {config}"));
        if output.lines().map(str::trim_end).filter(|line| !line.is_empty()).collect::<Vec<_>>() != [expected.as_str()]
        {
            fail_with(
                &mut machine,
                &format!("`create {config}` should print only {expected:?}; it printed:\n{output}"),
            );
        }
    }
    expect_memory_back(&mut machine, &before, &before_text, "after two refused creates");
}

/// The console line parser the smp tests rely on (no Bochs).
#[test]
fn smp_lines_parse() {
    assert_eq!(smp_ipis("smp: ipis 1:3 2:4 3:5; answers 6", 4), Some((vec![3, 4, 5], 6)));
    assert_eq!(smp_ipis("smp: ipis 1:3 2:4; answers 6", 4), None);
    let line = "smp: vcpus 4 up; counts 0:12 1:345 2:0 3:18446744073709551615";
    assert_eq!(smp_counts(line, 4), Some((4, vec![12, 345, 0, u64::MAX])));
    assert_eq!(smp_counts("smp: vcpus 1 up; counts 0:7", 1), Some((1, vec![7])));
    // The wrong number of counts, ids out of order, other lines: no match.
    assert_eq!(smp_counts(line, 3), None);
    assert_eq!(smp_counts(line, 5), None);
    assert_eq!(smp_counts("smp: vcpus 2 up; counts 1:3 0:4", 2), None);
    assert_eq!(smp_counts("smp: vcpu 1 started", 4), None);
    assert_eq!(smp_counts("counter: 3", 1), None);
}
