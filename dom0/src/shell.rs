//! The dom0 shell's commands: parsing a line into a [`Command`].

/// A parsed shell command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `help`: list the commands.
    Help,
    /// `info`: hypervisor, CPU, memory and VM-exit statistics.
    Info,
    /// `dmesg`: the hypervisor's log.
    Dmesg,
    /// `bench`: measure hypercall and exit round trips.
    Bench,
    /// `poweroff`: turn the machine off.
    PowerOff,
    /// `reboot`: reset the machine.
    Reboot,
    /// `selftest`: hostile hypercalls against the live hypervisor.
    SelfTest,
}

/// One line of `help`: name, arguments, description.
pub const COMMANDS: [(&str, &str, &str); 7] = [
    ("help", "", "list the commands"),
    ("info", "", "hypervisor and ABI version, CPU, VMX features, memory, VM exits by reason"),
    ("dmesg", "", "print the hypervisor log"),
    ("bench", "", "measure the null hypercall and a CPUID exit in TSC ticks"),
    ("selftest", "", "make hostile hypercalls and check each gets its documented error"),
    ("poweroff", "", "turn the machine off"),
    ("reboot", "", "reset the machine"),
];

/// Why a line is not a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    /// The first word names no command.
    Unknown(&'a str),
    /// The command takes no arguments but got some.
    UnexpectedArgument { command: &'a str, argument: &'a str },
}

/// Parses a line. `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError<'_>> {
    let mut words = line.split_whitespace();
    let Some(name) = words.next() else { return Ok(None) };
    let command = match name {
        "help" | "?" => Command::Help,
        "info" => Command::Info,
        "dmesg" => Command::Dmesg,
        "bench" => Command::Bench,
        "poweroff" => Command::PowerOff,
        "reboot" => Command::Reboot,
        "selftest" => Command::SelfTest,
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
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn mistakes_are_reported() {
        assert_eq!(parse("frobnicate now"), Err(ParseError::Unknown("frobnicate")));
        assert_eq!(parse("Info"), Err(ParseError::Unknown("Info")));
        assert_eq!(parse("info extra"), Err(ParseError::UnexpectedArgument { command: "info", argument: "extra" }));
    }

    #[test]
    fn every_listed_command_parses() {
        for (name, _, _) in COMMANDS {
            assert!(parse(name).unwrap().is_some(), "{name}");
        }
    }
}
