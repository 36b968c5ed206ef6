//! System test harness for Mica: builds the ISO, boots it in an emulator,
//! drives the dom0 shell over COM1 and reports loudly what it saw.
//!
//! ```no_run
//! use mica_tests::{Bochs, Iso, fail, seconds};
//! let iso = Iso::get().unwrap_or_else(fail);
//! let mut machine = Bochs::boot(iso).unwrap_or_else(fail);
//! machine.expect("dom0> ", seconds(60)).unwrap_or_else(fail);
//! machine.send_line("info").unwrap_or_else(fail);
//! let output = machine.expect("dom0> ", seconds(20)).unwrap_or_else(fail);
//! ```
//!
//! Environment: `MICA_ISO` boots a given ISO instead of building one;
//! `MICA_TEST_TIMEOUT_SCALE` multiplies every timeout; `MICA_TEST_EMULATORS`
//! caps emulators running at once (default 2); `MICA_TEST_KEEP` keeps the
//! emulators' working directories.

pub mod console;
pub mod hostile;
pub mod iso;
pub mod machine;
pub mod pattern;
pub mod report;
pub mod session;

pub use console::Console;
pub use iso::{Iso, workspace_root};
pub use machine::{Bochs, BochsOptions, Machine, Qemu, fail, seconds};
pub use pattern::{Pattern, line_starting, line_where, scan};
pub use report::{
    BenchReport, DomainList, DomainRow, InfoReport, MemoryReport, MemoryRow, PerCall, SchedulingRow, SelfTestReport,
};

/// The prompt of the dom0 shell (no newline follows it).
pub const PROMPT: &str = "dom0> ";

/// The line dom0 prints once it runs on hv (the ABI version follows).
pub const DOM0_SIGNATURE: &str = "dom0: running on hypervisor \"MicaMicaMica\" (ABI ";

/// Boots to the first dom0 prompt: checks hv's banner, then dom0's signature
/// line, then waits for the prompt. Returns the console text up to the prompt.
pub fn boot_to_prompt(machine: &mut Machine) -> Result<String, String> {
    let mut seen = machine.expect("Mica hv ", seconds(30))?;
    seen += &machine.expect(DOM0_SIGNATURE, seconds(60))?;
    seen += &machine.expect(PROMPT, seconds(30))?;
    Ok(seen)
}

/// Types `command` at the prompt and returns what it printed, up to and
/// including the next prompt.
pub fn run_command(machine: &mut Machine, command: &str, timeout: std::time::Duration) -> Result<String, String> {
    machine.send_line(command)?;
    machine.expect(PROMPT, timeout)
}
