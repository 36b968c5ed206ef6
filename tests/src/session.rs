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
