//! The dom0 shell's commands: parsing a line into a [`Command`].
//!
//! The shell's other host-tested parts are here too:
//! - [`line_editor`]: received bytes into echo output and complete lines.
//! - [`cpu_list`]: CPU lists as `vcpu-pin` reads them and `vcpu-list`
//!   prints them.
//! - [`report`]: what `info` and `bench` print.
//! - [`terminal`]: guest-controlled text made safe for the terminal.
//! - [`selftest`]: the table of hostile hypercalls `selftest` makes.
//!
//! The shell's loop, which reads the serial console and runs each
//! command, is the binary's (`main.rs`).

pub mod cpu_list;
pub mod line_editor;
pub mod report;
pub mod selftest;
pub mod terminal;

use crate::shell::cpu_list::{CpuList, CpuListError};

/// A parsed shell command. Domain arguments are a name or a numeric id,
/// resolved by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `help`: list the commands.
    Help,
    /// `info`: hypervisor, CPU, memory and VM-exit statistics.
    Info,
    /// `dmesg`: the hypervisor's log.
    Dmesg,
    /// `bench`: measure hypercall and exit round trips.
    Bench,
    /// `selftest`: hostile hypercalls against the live hypervisor.
    SelfTest,
    /// `list`: the domains, like `xl list`.
    List,
    /// `create <config>`: build and start a guest from a ramdisk config.
    Create(&'a str),
    /// `destroy <domain>`.
    Destroy(&'a str),
    /// `pause <domain>`.
    Pause(&'a str),
    /// `unpause <domain>`.
    Unpause(&'a str),
    /// `console <domain>`: attach to its console (Ctrl-] detaches).
    Console(&'a str),
    /// `sched <domain> [weight=N] [cap=N]`.
    Sched { domain: &'a str, weight: Option<u32>, cap: Option<u32> },
    /// `vcpu-list [<domain>]`: each vCPU of every domain (or of one), like
    /// `xl vcpu-list`.
    VcpuList(Option<&'a str>),
    /// `vcpu-pin <domain> <vcpu> <cpus>`: the CPUs a vCPU (`None`: every
    /// vCPU, written `all`) may run on, like `xl vcpu-pin`.
    VcpuPin { domain: &'a str, vcpu: Option<u32>, cpus: CpuList },
    /// `mem`: memory of hv and of each domain.
    Mem,
    /// `ls`: the files in the boot ramdisk.
    Ls,
    /// `devices`: physical disks and each guest's devices.
    Devices,
    /// `switch`: the switch's MAC table (address, port, age).
    Switch,
    /// `store [path]`: the store's tree below `path` (default `/local/domain`).
    Store(Option<&'a str>),
    /// `diskbench <device:start+count>`: time dom0 reading a disk region
    /// directly, in the same 32 KiB requests a guest's front end makes.
    DiskBench(&'a str),
    /// `diskmode <disk> [pio|dma]`: show or choose how a disk moves data
    /// (`Some(true)`: bus-master DMA where the disk has it).
    DiskMode { disk: &'a str, dma: Option<bool> },
    /// `block-attach <domain> <disk:start+count[,ro]>`: give a running
    /// guest a disk (as a config's `disk` entry).
    BlockAttach { domain: &'a str, disk: &'a str },
    /// `block-detach <domain>`: take a running guest's disk away.
    BlockDetach(&'a str),
    /// `network-attach <domain> [settings]`: give a running guest a vif
    /// (settings as in a config's `vif` entry, e.g. `mac=02:00:00:00:00:09`).
    NetworkAttach { domain: &'a str, settings: &'a str },
    /// `network-detach <domain>`: take a running guest's vif away.
    NetworkDetach(&'a str),
    /// `poweroff`: turn the machine off.
    PowerOff,
    /// `reboot`: reset the machine.
    Reboot,
}

/// One line of `help`: name, arguments, description.
pub const COMMANDS: [(&str, &str, &str); 27] = [
    ("help", "", "list the commands"),
    ("list", "", "list the domains (Name, ID, Mem, VCPUs, State, Time)"),
    ("create", "<config>", "build and start a guest from a config file in the ramdisk"),
    ("destroy", "<domain>", "stop a guest and free everything it had"),
    ("pause", "<domain>", "stop running a guest, keeping its state"),
    ("unpause", "<domain>", "let a paused guest run again"),
    ("console", "<domain>", "attach to a guest's console; Ctrl-] returns here"),
    (
        "sched",
        "<domain> [weight=N] [cap=N]",
        "show or set scheduling weight (1-65535) and cap (% of one CPU for the domain, 100 per vCPU at most, 0 = none)",
    ),
    ("vcpu-list", "[<domain>]", "each vCPU: the CPU it runs or last ran on, state, CPU time, moves, CPUs it may use"),
    (
        "vcpu-pin",
        "<domain> <vcpu> <cpus>",
        "let vCPU <vcpu> (a number or all) run only on <cpus>: all, or like 1, 0-1, 0,2-3",
    ),
    ("mem", "", "memory of the hypervisor and of each domain"),
    ("ls", "", "list the files in the boot ramdisk"),
    ("devices", "", "disks, the NIC and the switch; each guest's console, disk and vif and their state"),
    ("block-attach", "<domain> <disk:start+count>", "give a running guest a disk (its front end connects)"),
    ("block-detach", "<domain>", "take a guest's disk away (Closing, then Closed when its front end lets go)"),
    ("network-attach", "<domain> [mac=..]", "give a running guest a vif on the switch (its front end connects)"),
    ("network-detach", "<domain>", "take a guest's vif away (Closing, then Closed when its front end lets go)"),
    ("switch", "", "the switch's MAC table: address, port (guest or nic0), seconds since last seen"),
    ("store", "[path]", "show the store's keys and values below path (default /local/domain)"),
    ("info", "", "hypervisor and ABI version, CPU, VMX features, memory, VM exits by reason"),
    ("dmesg", "", "print the hypervisor log"),
    ("bench", "", "measure the null hypercall and a CPUID exit in TSC ticks"),
    ("diskbench", "<disk:start+count>", "time dom0 reading a disk region directly (compare a guest's disk)"),
    ("diskmode", "<disk> [pio|dma]", "show or choose how a disk moves data: bus-master DMA or PIO"),
    ("selftest", "", "make hostile hypercalls and check each gets its documented error"),
    ("poweroff", "", "turn the machine off"),
    ("reboot", "", "reset the machine"),
];

/// Why a line is not a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    /// The first word names no command.
    Unknown(&'a str),
    /// The command got an argument it does not take.
    UnexpectedArgument { command: &'a str, argument: &'a str },
    /// The command needs an argument (its usage is given).
    MissingArgument { command: &'a str, usage: &'static str },
    /// An option is malformed or out of range.
    BadOption { command: &'a str, option: &'a str, expected: &'static str },
    /// An argument (`what` it is) is malformed.
    BadArgument { command: &'a str, what: &'static str, argument: &'a str, expected: &'static str },
    /// A CPU list is malformed.
    BadCpuList { command: &'a str, list: &'a str, error: CpuListError<'a> },
}

impl core::fmt::Display for ParseError<'_> {
    fn fmt(&self, out: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            ParseError::Unknown(name) => write!(out, "unknown command '{name}'; type 'help' for a list"),
            ParseError::UnexpectedArgument { command, argument } => {
                write!(out, "'{command}' does not take '{argument}'")
            }
            ParseError::MissingArgument { command, usage } => write!(out, "usage: {command} {usage}"),
            ParseError::BadOption { command, option, expected } => {
                write!(out, "{command}: bad option '{option}': {expected}")
            }
            ParseError::BadArgument { command, what, argument, expected } => {
                write!(out, "{command}: bad {what} '{argument}': {expected}")
            }
            ParseError::BadCpuList { command, list, error } => write!(out, "{command}: bad CPU list '{list}': {error}"),
        }
    }
}

fn usage(name: &str) -> &'static str {
    COMMANDS.iter().find(|(n, _, _)| *n == name).map_or("", |(_, arguments, _)| arguments)
}

/// Parses a line. `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command<'_>>, ParseError<'_>> {
    let mut words = line.split_whitespace();
    let Some(name) = words.next() else { return Ok(None) };
    let missing = ParseError::MissingArgument { command: name, usage: usage(name) };
    let command = match name {
        "help" | "?" => Command::Help,
        "info" => Command::Info,
        "dmesg" => Command::Dmesg,
        "bench" => Command::Bench,
        "selftest" => Command::SelfTest,
        "list" => Command::List,
        "mem" => Command::Mem,
        "ls" => Command::Ls,
        "devices" => Command::Devices,
        "switch" => Command::Switch,
        "store" => Command::Store(words.next()),
        "diskbench" => Command::DiskBench(words.next().ok_or(missing)?),
        "diskmode" => {
            let disk = words.next().ok_or(missing)?;
            let dma = match words.next() {
                None => None,
                Some("dma") => Some(true),
                Some("pio") => Some(false),
                Some(option) => {
                    return Err(ParseError::BadOption { command: name, option, expected: "the mode is pio or dma" });
                }
            };
            Command::DiskMode { disk, dma }
        }
        "block-attach" => {
            let domain = words.next().ok_or(missing)?;
            Command::BlockAttach { domain, disk: words.next().ok_or(missing)? }
        }
        "block-detach" => Command::BlockDetach(words.next().ok_or(missing)?),
        "network-attach" => {
            Command::NetworkAttach { domain: words.next().ok_or(missing)?, settings: words.next().unwrap_or("") }
        }
        "network-detach" => Command::NetworkDetach(words.next().ok_or(missing)?),
        "poweroff" => Command::PowerOff,
        "reboot" => Command::Reboot,
        "create" => Command::Create(words.next().ok_or(missing)?),
        "destroy" => Command::Destroy(words.next().ok_or(missing)?),
        "pause" => Command::Pause(words.next().ok_or(missing)?),
        "unpause" => Command::Unpause(words.next().ok_or(missing)?),
        "console" => Command::Console(words.next().ok_or(missing)?),
        "sched" => {
            let domain = words.next().ok_or(missing)?;
            let (mut weight, mut cap) = (None, None);
            for option in words.by_ref() {
                let bad = |expected| ParseError::BadOption { command: name, option, expected };
                if let Some(value) = option.strip_prefix("weight=") {
                    let value = value.parse::<u32>().ok().filter(|w| (1..=65535).contains(w));
                    weight = Some(value.ok_or(bad("weight must be 1..=65535"))?);
                } else if let Some(value) = option.strip_prefix("cap=") {
                    let value = value.parse::<u32>().ok().filter(|c| *c <= 100 * abi::hypercall::MAX_VCPUS);
                    cap = Some(value.ok_or(bad("cap must be 0..=800 (percent of one CPU, at most 100 per vCPU)"))?);
                } else {
                    return Err(bad("expected weight=N or cap=N"));
                }
            }
            Command::Sched { domain, weight, cap }
        }
        "vcpu-list" => Command::VcpuList(words.next()),
        "vcpu-pin" => {
            let domain = words.next().ok_or(missing)?;
            let vcpu_text = words.next().ok_or(missing)?;
            let list = words.next().ok_or(missing)?;
            let vcpu = match vcpu_text {
                "all" => None,
                digits if !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()) => {
                    Some(digits.parse::<u32>().map_err(|_| ParseError::BadArgument {
                        command: name,
                        what: "vCPU",
                        argument: digits,
                        expected: "too large",
                    })?)
                }
                _ => {
                    return Err(ParseError::BadArgument {
                        command: name,
                        what: "vCPU",
                        argument: vcpu_text,
                        expected: "expected a vCPU number or 'all'",
                    });
                }
            };
            let cpus = cpu_list::parse(list).map_err(|error| ParseError::BadCpuList { command: name, list, error })?;
            Command::VcpuPin { domain, vcpu, cpus }
        }
        _ => return Err(ParseError::Unknown(name)),
    };
    if let Some(argument) = words.next() {
        return Err(ParseError::UnexpectedArgument { command: name, argument });
    }
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("info"), Ok(Some(Command::Info)));
        assert_eq!(parse("  help  "), Ok(Some(Command::Help)));
        assert_eq!(parse("poweroff"), Ok(Some(Command::PowerOff)));
        assert_eq!(parse("create counter.cfg"), Ok(Some(Command::Create("counter.cfg"))));
        assert_eq!(parse("destroy 3"), Ok(Some(Command::Destroy("3"))));
        assert_eq!(parse("console echo"), Ok(Some(Command::Console("echo"))));
        assert_eq!(parse("sched spin"), Ok(Some(Command::Sched { domain: "spin", weight: None, cap: None })));
        assert_eq!(
            parse("sched spin weight=512 cap=20"),
            Ok(Some(Command::Sched { domain: "spin", weight: Some(512), cap: Some(20) }))
        );
        assert_eq!(parse("diskmode ata1-master"), Ok(Some(Command::DiskMode { disk: "ata1-master", dma: None })));
        assert_eq!(
            parse("diskmode ata1-master pio"),
            Ok(Some(Command::DiskMode { disk: "ata1-master", dma: Some(false) }))
        );
        assert_eq!(parse("network-attach web"), Ok(Some(Command::NetworkAttach { domain: "web", settings: "" })));
        assert_eq!(
            parse("network-attach web mac=02:00:00:00:00:09"),
            Ok(Some(Command::NetworkAttach { domain: "web", settings: "mac=02:00:00:00:00:09" }))
        );
        assert_eq!(parse("network-detach web"), Ok(Some(Command::NetworkDetach("web"))));
        assert_eq!(
            parse("block-attach web ata1-master:0+8"),
            Ok(Some(Command::BlockAttach { domain: "web", disk: "ata1-master:0+8" }))
        );
        assert!(matches!(parse("block-attach web"), Err(ParseError::MissingArgument { .. })));
        assert_eq!(parse("block-detach web"), Ok(Some(Command::BlockDetach("web"))));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn vcpu_commands_parse() {
        assert_eq!(parse("vcpu-list"), Ok(Some(Command::VcpuList(None))));
        assert_eq!(parse("vcpu-list counter"), Ok(Some(Command::VcpuList(Some("counter")))));
        assert_eq!(
            parse("vcpu-pin counter 0 1"),
            Ok(Some(Command::VcpuPin { domain: "counter", vcpu: Some(0), cpus: CpuList::Mask(0b10) }))
        );
        assert_eq!(
            parse("vcpu-pin 3 all 0,2-3"),
            Ok(Some(Command::VcpuPin { domain: "3", vcpu: None, cpus: CpuList::Mask(0b1101) }))
        );
        assert_eq!(
            parse("vcpu-pin Domain-0 0 all"),
            Ok(Some(Command::VcpuPin { domain: "Domain-0", vcpu: Some(0), cpus: CpuList::All }))
        );
    }

    #[test]
    fn vcpu_command_mistakes_are_reported() {
        let message = |line| format!("{}", parse(line).unwrap_err());
        assert_eq!(message("vcpu-list a b"), "'vcpu-list' does not take 'b'");
        assert_eq!(message("vcpu-pin counter 0"), "usage: vcpu-pin <domain> <vcpu> <cpus>");
        assert_eq!(message("vcpu-pin counter"), "usage: vcpu-pin <domain> <vcpu> <cpus>");
        assert_eq!(message("vcpu-pin counter x 1"), "vcpu-pin: bad vCPU 'x': expected a vCPU number or 'all'");
        assert_eq!(message("vcpu-pin counter -1 1"), "vcpu-pin: bad vCPU '-1': expected a vCPU number or 'all'");
        assert_eq!(message("vcpu-pin counter 99999999999 1"), "vcpu-pin: bad vCPU '99999999999': too large");
        assert_eq!(
            message("vcpu-pin counter 0 0-"),
            "vcpu-pin: bad CPU list '0-': '0-' is not a CPU index or a range like 0-3"
        );
        assert_eq!(
            message("vcpu-pin counter 0 3-1"),
            "vcpu-pin: bad CPU list '3-1': range '3-1' ends before it starts"
        );
        assert_eq!(
            message("vcpu-pin counter 0 1,,2"),
            "vcpu-pin: bad CPU list '1,,2': an item is empty (two commas, or a comma at an end)"
        );
        assert_eq!(message("vcpu-pin counter 0 64"), "vcpu-pin: bad CPU list '64': '64' names a CPU beyond index 63");
        assert_eq!(message("vcpu-pin counter 0 1 2"), "'vcpu-pin' does not take '2'");
    }

    #[test]
    fn mistakes_are_reported() {
        assert_eq!(parse("frobnicate now"), Err(ParseError::Unknown("frobnicate")));
        assert_eq!(parse("Info"), Err(ParseError::Unknown("Info")));
        assert_eq!(parse("info extra"), Err(ParseError::UnexpectedArgument { command: "info", argument: "extra" }));
        assert_eq!(parse("create"), Err(ParseError::MissingArgument { command: "create", usage: "<config>" }));
        assert_eq!(parse("destroy a b"), Err(ParseError::UnexpectedArgument { command: "destroy", argument: "b" }));
        assert!(matches!(parse("sched x weight=0"), Err(ParseError::BadOption { .. })));
        assert!(matches!(parse("sched x weight=70000"), Err(ParseError::BadOption { .. })));
        assert!(matches!(parse("sched x cap=801"), Err(ParseError::BadOption { .. })));
        assert!(parse("sched x cap=150").is_ok(), "a cap above one CPU is hv's to check against the vCPUs");
        assert!(matches!(parse("sched x speed=3"), Err(ParseError::BadOption { .. })));
        assert!(matches!(parse("diskmode ata1-master udma"), Err(ParseError::BadOption { .. })));
        let message = format!("{}", parse("create").unwrap_err());
        assert_eq!(message, "usage: create <config>");
    }

    #[test]
    fn every_listed_command_parses() {
        for (name, arguments, _) in COMMANDS {
            // One word for each `<argument>`: "0" reads as a domain, a
            // number, a vCPU and a CPU list.
            let required = arguments.matches('<').count();
            let line = core::iter::once(name).chain(core::iter::repeat_n("0", required)).collect::<Vec<_>>().join(" ");
            assert!(parse(&line).unwrap().is_some(), "{name}");
        }
    }
}
