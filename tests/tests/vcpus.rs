//! System tests of `vcpu-list` and `vcpu-pin` (issue 9) on a 2-CPU
//! machine: the table lists every domain's vCPU, a pin changes the
//! affinity it shows (and, once hv schedules domains on every CPU, where
//! the vCPU runs), and every bad input gets its one error line and changes
//! nothing. Each test boots its own Bochs.
//!
//! The `counter` guest wakes once per guest second, so each `counter: <N>`
//! line it prints after a pin is a scheduling that obeyed the new affinity.

use mica_tests::report::{VcpuList, VcpuRow};
use mica_tests::session::{boot_with, command, counter_reaches, create, destroy, fail_with};
use mica_tests::{BochsOptions, InfoReport, Machine, seconds};

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
