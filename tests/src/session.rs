//! Shell sessions for system tests: boot to the prompt, run commands and
//! read their output, create and destroy guests, attach to their consoles.

use crate::{
    Bochs, BochsOptions, DomainList, Iso, Machine, MemoryReport, PROMPT, boot_to_prompt, fail, line_where, seconds,
};

/// Ctrl-]: leaves a guest's console.
pub const DETACH: u8 = 0x1d;

pub fn boot() -> Machine {
    boot_with(&BochsOptions::default())
}

/// Boots Bochs with `options` to the first prompt.
pub fn boot_with(options: &BochsOptions) -> Machine {
    let iso = Iso::get().unwrap_or_else(fail);
    let mut machine = Bochs::boot_with(iso, options).unwrap_or_else(fail);
    boot_to_prompt(&mut machine).unwrap_or_else(fail);
    machine
}

/// Fails the test with `message` and the harness's report (console
/// transcript, Bochs log): for checks on output that `expect` already matched.
pub fn fail_with(machine: &mut Machine, message: &str) -> ! {
    panic!("\n{}\n", machine.report(message))
}

/// Types `line` at the prompt and returns what the command printed: the text
/// after the shell's echo of `line` up to the next prompt (excluded). Waiting
/// for the echo first (a line that is `line`, or ends with the prompt and
/// `line`) keeps us in step even when dom0 printed a prompt of its own in
/// between (it does after reporting a crashed guest).
pub fn command(machine: &mut Machine, line: &str) -> String {
    machine.send_line(line).unwrap_or_else(fail);
    let prompted = format!("{PROMPT}{line}");
    machine
        .expect(
            line_where(format!("the echo of {line:?}"), |echo| echo == line || echo.ends_with(&prompted)),
            seconds(20),
        )
        .unwrap_or_else(fail);
    let output = machine.expect(PROMPT, seconds(20)).unwrap_or_else(fail);
    output[..output.len() - PROMPT.len()].to_owned()
}

/// `create <config>`: checks dom0's `created '<name>' as domain <id>` line
/// and returns the id.
pub fn create(machine: &mut Machine, config: &str, name: &str) -> u64 {
    let output = command(machine, &format!("create {config}"));
    let prefix = format!("dom0: created '{name}' as domain ");
    let id = output.lines().find_map(|line| line.strip_prefix(&prefix)?.parse::<u64>().ok());
    id.unwrap_or_else(|| {
        fail_with(machine, &format!("`create {config}` should print \"{prefix}<id>\"; it printed:\n{output}"))
    })
}

/// `destroy <name>`: checks dom0's `destroyed '<name>' (domain <id>)` line.
pub fn destroy(machine: &mut Machine, name: &str, id: u64) {
    let output = command(machine, &format!("destroy {name}"));
    let expected = format!("dom0: destroyed '{name}' (domain {id})");
    if !output.lines().any(|line| line == expected) {
        fail_with(machine, &format!("`destroy {name}` should print {expected:?}; it printed:\n{output}"));
    }
}

pub fn list(machine: &mut Machine) -> (String, DomainList) {
    let output = command(machine, "list");
    match DomainList::parse(&output) {
        Ok(list) => (output, list),
        Err(error) => fail_with(machine, &error),
    }
}

pub fn mem(machine: &mut Machine) -> (String, MemoryReport) {
    let output = command(machine, "mem");
    match MemoryReport::parse(&output) {
        Ok(report) => (output, report),
        Err(error) => fail_with(machine, &error),
    }
}

/// `console <name>`: waits for dom0's `attached to '<name>' (domain <id>)` line.
pub fn attach(machine: &mut Machine, name: &str, id: u64) {
    machine.send_line(&format!("console {name}")).unwrap_or_else(fail);
    let attached = format!("dom0: attached to '{name}' (domain {id}); Ctrl-] returns to dom0");
    machine
        .expect(line_where(format!("the line {attached:?}"), |line| line == attached), seconds(20))
        .unwrap_or_else(fail);
}

/// Ctrl-]: returns what the guest printed since the last match (without the
/// newline dom0 adds on leaving) and waits for the prompt.
pub fn detach(machine: &mut Machine) -> String {
    machine.send(&[DETACH]).unwrap_or_else(fail);
    let output = machine.expect(PROMPT, seconds(20)).unwrap_or_else(fail);
    output[..output.len() - PROMPT.len()].to_owned()
}

/// The numbers of the `counter: <N>` lines in `text` (the `counter` guest's output).
pub fn counter_values(text: &str) -> Vec<u64> {
    text.lines().filter_map(|line| crate::scan("counter: {}", line)).map(|numbers| numbers[0]).collect()
}

/// Attaches to the `counter` guest `id`, waits for a live or replayed
/// `counter: <N>` line with N at least `at_least`, detaches; returns the
/// highest N shown.
pub fn counter_reaches(machine: &mut Machine, id: u64, at_least: u64) -> u64 {
    attach(machine, "counter", id);
    let mut seen = machine
        .expect(
            line_where(format!("a line \"counter: <N>\" with N >= {at_least}"), |line| {
                crate::scan("counter: {}", line).is_some_and(|numbers| numbers[0] >= at_least)
            }),
            seconds(60),
        )
        .unwrap_or_else(fail);
    seen += &detach(machine);
    counter_values(&seen).into_iter().max().unwrap_or(0)
}

/// Checks that `mem` shows exactly the free memory and hv memory of
/// `baseline` (to the KiB) and lists only Domain-0; `when` says when, for
/// the failure message.
pub fn expect_memory_back(machine: &mut Machine, baseline: &MemoryReport, baseline_text: &str, when: &str) {
    let (text, report) = mem(machine);
    if report.free_kib != baseline.free_kib || report.hv_kib != baseline.hv_kib {
        fail_with(
            machine,
            &format!(
                "{when}, `mem` should show exactly the free memory of before ({} KiB free, hv {} KiB), \
                 but shows {} KiB free, hv {} KiB ({} KiB leaked)\n--- before ---\n{baseline_text}\n\
                 --- now ---\n{text}",
                baseline.free_kib,
                baseline.hv_kib,
                report.free_kib,
                report.hv_kib,
                baseline.free_kib as i64 - report.free_kib as i64
            ),
        );
    }
    let names: Vec<&str> = report.domains.iter().map(|row| row.name.as_str()).collect();
    if names != ["Domain-0"] {
        fail_with(machine, &format!("{when}, `mem` should list only Domain-0; it printed:\n{text}"));
    }
}
