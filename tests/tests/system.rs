//! System tests: boot the Mica ISO in an emulator and use the dom0 shell over COM1.
//!
//! Bochs emulates VT-x with EPT, so hv and dom0 run there; QEMU's TCG has no
//! VT-x, so there hv must refuse to start cleanly. Each run has its own
//! working directory and a hard timeout; a missing emulator fails the test
//! with the command that installs it.

use mica_tests::{
    Bochs, InfoReport, Iso, Machine, PROMPT, Qemu, boot_to_prompt, fail, line_starting, line_where, run_command,
    seconds,
};

fn boot_bochs() -> Machine {
    let iso = Iso::get().unwrap_or_else(fail);
    Bochs::boot(iso).unwrap_or_else(fail)
}

fn info(machine: &mut Machine) -> (String, InfoReport) {
    let output = run_command(machine, "info", seconds(20)).unwrap_or_else(fail);
    let report = InfoReport::parse(&output).unwrap_or_else(|error| panic!("\n{error}\n"));
    (output, report)
}

/// Boot to the prompt; `info` twice: exits are counted, include hypercalls,
/// and grow between the two; VT-x features include EPT.
#[test]
fn bochs_boots_to_the_dom0_prompt_and_info_counts_exits() {
    let mut machine = boot_bochs();
    boot_to_prompt(&mut machine).unwrap_or_else(fail);

    let (first_text, first) = info(&mut machine);
    assert!(
        first.has_vmx_feature("ept"),
        "`info` should list ept among the VT-x features, got {:?}\n{first_text}",
        first.vmx_features
    );
    assert!(first.exits_total > 0, "dom0 exits total should be non-zero after booting\n{first_text}");
    assert!(
        first.exits("vmcall") > 0,
        "dom0 should have made hypercalls (a non-zero `  vmcall <N>` line)\n{first_text}"
    );
    for (reason, count) in &first.exits_by_reason {
        assert!(*count > 0, "`info` should list only non-zero exit reasons, but lists {reason} {count}\n{first_text}");
    }
    assert!(
        first.memory_free_kib <= first.memory_total_kib && first.memory_hv_kib <= first.memory_total_kib,
        "`info` memory figures are inconsistent\n{first_text}"
    );

    let (second_text, second) = info(&mut machine);
    assert!(
        second.exits_total > first.exits_total,
        "dom0 exits total should grow between two `info` commands (printing needs hypercalls): \
         first {}, then {}\n--- first ---\n{first_text}\n--- second ---\n{second_text}",
        first.exits_total,
        second.exits_total
    );
}

/// An unknown command gets the error line and a new prompt; `help`, `dmesg`
/// and line editing with backspace work afterwards.
#[test]
fn bochs_shell_rejects_unknown_commands_and_edits_lines() {
    let mut machine = boot_bochs();
    boot_to_prompt(&mut machine).unwrap_or_else(fail);

    machine.send_line("frobnicate").unwrap_or_else(fail);
    machine
        .expect(
            line_where("the line \"dom0: unknown command 'frobnicate'; type 'help' for a list\"", |line| {
                line == "dom0: unknown command 'frobnicate'; type 'help' for a list"
            }),
            seconds(20),
        )
        .unwrap_or_else(fail);
    machine.expect(PROMPT, seconds(10)).unwrap_or_else(fail);

    let help = run_command(&mut machine, "help", seconds(20)).unwrap_or_else(fail);
    for command in ["help", "info", "dmesg", "poweroff", "bench"] {
        // The echoed "help" itself does not count: look past the first line.
        let listed = help.lines().skip(1).any(|line| {
            line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).any(|word| word == command)
        });
        assert!(listed, "`help` should list the command {command:?}; it printed:\n{help}");
    }

    let dmesg = run_command(&mut machine, "dmesg", seconds(20)).unwrap_or_else(fail);
    assert!(
        dmesg.contains("Mica hv "),
        "`dmesg` should show hv's log, which starts with \"Mica hv \"; it printed:\n{dmesg}"
    );

    // "infx", backspace (DEL, as terminals send it), "o", Enter: runs `info`.
    machine.send(b"infx\x7fo\r").unwrap_or_else(fail);
    let edited = machine.expect(PROMPT, seconds(20)).unwrap_or_else(fail);
    assert!(
        !edited.contains("unknown command"),
        "after typing \"infx\", backspace, \"o\" the shell should run `info`, but it printed:\n{edited}"
    );
    InfoReport::parse(&edited).unwrap_or_else(|error| panic!("\nafter \"infx\", backspace, \"o\": {error}\n"));
}

/// `poweroff` ends the emulator by itself (no kill by the harness).
#[test]
fn bochs_poweroff_ends_the_emulator() {
    let mut machine = boot_bochs();
    boot_to_prompt(&mut machine).unwrap_or_else(fail);

    machine.send_line("poweroff").unwrap_or_else(fail);
    machine.expect("dom0: powering off", seconds(20)).unwrap_or_else(fail);
    machine.expect("hv: powering off", seconds(20)).unwrap_or_else(fail);
    let status = machine.wait_exit(seconds(30)).unwrap_or_else(fail);
    eprintln!("Bochs exited by itself after poweroff: {status}");
    // Bochs logs the guest's shutdown request itself as a ">>PANIC<<" line
    // ("Shutdown port: shutdown requested"); any other panic is a failure.
    let log = machine.log("bochs.log");
    let panics: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("PANIC"))
        .filter(|line| {
            let line = line.to_ascii_lowercase();
            !(line.contains("shutdown") || line.contains("power off"))
        })
        .collect();
    assert!(panics.is_empty(), "Bochs ended ({status}) but bochs.log reports panics:\n{}", panics.join("\n"));
}

/// QEMU without KVM emulates no VT-x: hv must say so and halt, not crash,
/// after the lines saying what memory and ACPI tables it found. (The UEFI
/// boot of the same check is in uefi.rs.)
#[test]
fn qemu_without_vmx_says_hv_cannot_start() {
    let iso = Iso::get().unwrap_or_else(fail);
    let mut machine = Qemu::boot_tcg(iso, seconds(90)).unwrap_or_else(fail);

    // The default failure markers stop these waits at an early refusal.
    machine.expect("Mica hv ", seconds(30)).unwrap_or_else(fail);
    machine.expect(line_starting("hv: memory: "), seconds(30)).unwrap_or_else(fail);
    machine.expect(line_starting("hv: ACPI "), seconds(30)).unwrap_or_else(fail);
    machine.set_failure_markers(&["EXCEPTION", "panicked at"]);
    let reason = machine.expect(line_starting("hv: cannot start: "), seconds(30)).unwrap_or_else(fail);
    let reason = reason.lines().last().unwrap_or_default().to_owned();
    assert!(reason.contains("VT-x"), "hv's reason for not starting should name VT-x, got {reason:?}");
    machine
        .expect(line_where("the line \"hv: halted\"", |line| line == "hv: halted"), seconds(10))
        .unwrap_or_else(fail);

    // Halted means quiet: nothing else, and no exception, for a while.
    std::thread::sleep(seconds(2));
    let transcript = machine.transcript();
    assert!(!transcript.contains("EXCEPTION"), "hv reported an exception after refusing to start:\n{transcript}");
}
