//! Benchmark runner (not a test): boots Mica in Bochs with `clock: sync=none`,
//! where the TSC counts emulated instructions, runs `bench` at the dom0 shell,
//! prints the path lengths and powers off.
//!
//!     cargo run --release -p mica-tests --bin bench

use std::process::ExitCode;

use mica_tests::{BenchReport, Bochs, Iso, PROMPT, boot_to_prompt, seconds};

fn run() -> Result<(), String> {
    let iso = Iso::get()?;
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
    let guest_null = machine.expect(mica_tests::line_starting("hcbench: event send to dom0"), seconds(60))?;
    machine.send(&[0x1d])?;
    machine.expect(PROMPT, seconds(20))?;
    machine.send_line("bench")?;
    let output = machine.expect(PROMPT, seconds(120))?;
    for (label, text, prefix) in [
        ("guest null:     ", &guest_null, "hcbench: null hypercall"),
        ("guest event:    ", &guest_null, "hcbench: event send to dom0"),
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

    machine.send_line("poweroff")?;
    machine.expect("hv: powering off", seconds(20))?;
    machine.wait_exit(seconds(30))?;
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
