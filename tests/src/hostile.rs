//! Victims for hostile-guest tests: guests that must not notice an attacker
//! next to them. A test starts the victims, runs its attacker, then checks
//! what isolation promises: the dom0 shell still answers within a bound,
//! every victim made progress and its I/O is intact, and once everything is
//! destroyed free memory is back to the KiB.
//!
//! ```no_run
//! use mica_tests::hostile::{VictimOptions, Victims};
//! let mut machine = mica_tests::session::boot();
//! let mut victims = Victims::start(&mut machine, VictimOptions::ALL);
//! let id = victims.attacker(&mut machine, "hcfuzz", "hcfuzz");
//! victims.start_io(&mut machine); // disk and ping traffic during the attack
//! let output = victims.wait_for(&mut machine, "hcfuzz", id, "hcfuzz: ", "FAILED, done", 300);
//! assert!(output.contains("hcfuzz: 0 FAILED, done"));
//! victims.check(&mut machine);
//! victims.finish(&mut machine);
//! ```
//!
//! The victims are `counter` (prints a number every second of guest time),
//! `victimdisk` (disktest on a region of its own: writes, reads back and
//! checks 1024 sectors) and, with `ping`, `netserve` and `netping` (ten
//! pings through dom0's switch). `victimdisk` owns `ata1-master:10240+1024`:
//! an attacker with a disk needs another region (`attack-xsa-disk` has
//! 12288+1024; regions may not overlap, dom0 refuses the second guest).

use std::time::{Duration, Instant};

use crate::session::{attach, command, create, destroy, detach, fail_with, mem};
use crate::{DomainList, Machine, MemoryReport, fail, line_where, seconds};

/// Which victims to run.
#[derive(Clone, Copy, Debug)]
pub struct VictimOptions {
    /// `counter`: CPU progress.
    pub counter: bool,
    /// `victimdisk`: disk I/O through dom0's block back end.
    pub disk: bool,
    /// `netserve` and `netping`: guest-to-guest frames through dom0's switch.
    pub ping: bool,
}

impl VictimOptions {
    pub const ALL: VictimOptions = VictimOptions { counter: true, disk: true, ping: true };
    /// Without the network pair (two 4 MiB guests and ten round trips).
    pub const NO_PING: VictimOptions = VictimOptions { counter: true, disk: true, ping: false };
}

/// How long the shell may take to answer `list` while an attacker runs
/// (unloaded, Bochs answers in well under a second).
pub fn shell_bound() -> Duration {
    seconds(10)
}

/// The victims of one test, and every guest it started (destroyed by
/// [`Victims::finish`]).
pub struct Victims {
    options: VictimOptions,
    before: MemoryReport,
    /// Guests to destroy at the end, in creation order: (name, id).
    guests: Vec<(String, u64)>,
    counter_seen: u64,
    io_started: bool,
}

impl Victims {
    /// Records `mem` (the baseline for [`Victims::finish`]), then starts
    /// `counter` and `netserve` as the options say.
    pub fn start(machine: &mut Machine, options: VictimOptions) -> Victims {
        let mut victims = Victims::begin(machine, options);
        victims.start_victims(machine);
        victims
    }

    /// Records `mem` only: for tests that start something (a spy) before
    /// the victims, then call [`Victims::start_victims`].
    pub fn begin(machine: &mut Machine, options: VictimOptions) -> Victims {
        let (_, before) = mem(machine);
        Victims { options, before, guests: Vec::new(), counter_seen: 0, io_started: false }
    }

    /// Starts `counter` and `netserve` as the options say.
    pub fn start_victims(&mut self, machine: &mut Machine) {
        if self.options.counter {
            self.create(machine, "counter", "counter");
            self.counter_seen = self.counter_reaches(machine, 1);
        }
        if self.options.ping {
            self.create(machine, "netserve", "netserve");
        }
    }

    /// Destroys guest `name` before the others (it is not destroyed again
    /// by `finish`).
    pub fn destroy(&mut self, machine: &mut Machine, name: &str) {
        if let Some(index) = self.guests.iter().position(|(guest, _)| guest == name) {
            let (name, id) = self.guests.remove(index);
            destroy(machine, &name, id);
        }
    }

    /// Creates guest `name` from `config`; it is destroyed by `finish`.
    pub fn create(&mut self, machine: &mut Machine, config: &str, name: &str) -> u64 {
        let id = create(machine, config, name);
        self.guests.push((name.to_owned(), id));
        id
    }

    /// Creates the attacker (as [`Victims::create`]; a separate name for reading).
    pub fn attacker(&mut self, machine: &mut Machine, config: &str, name: &str) -> u64 {
        self.create(machine, config, name)
    }

    /// Starts the victims whose I/O should overlap the attack: the disk
    /// guest and the pinging guest.
    pub fn start_io(&mut self, machine: &mut Machine) {
        if self.options.disk {
            self.create(machine, "victimdisk", "victimdisk");
        }
        if self.options.ping {
            self.create(machine, "netping", "netping");
        }
        self.io_started = true;
    }

    /// Attaches to `name`'s console and waits (up to `timeout` seconds) for
    /// a line starting with `prefix` and containing `end`; returns what the
    /// console showed up to it, then detaches. Lines the guest printed
    /// before are replayed by dom0, so it may be called late.
    pub fn wait_for(
        &mut self,
        machine: &mut Machine,
        name: &str,
        id: u64,
        prefix: &str,
        end: &str,
        timeout: u64,
    ) -> String {
        let description = format!("a line from {name} starting {prefix:?} and containing {end:?}");
        self.wait_for_line(
            machine,
            name,
            id,
            &description,
            |line| line.starts_with(prefix) && line.contains(end),
            timeout,
        )
    }

    /// As [`Victims::wait_for`], for the first line that passes `test`.
    pub fn wait_for_line(
        &mut self,
        machine: &mut Machine,
        name: &str,
        id: u64,
        description: &str,
        test: impl Fn(&str) -> bool,
        timeout: u64,
    ) -> String {
        attach(machine, name, id);
        let mut seen = machine.expect(line_where(description, test), seconds(timeout)).unwrap_or_else(fail);
        seen += &detach(machine);
        seen
    }

    /// The checks: the shell answers `list` within [`shell_bound`], the
    /// counter advanced since the last check, the disk guest verified its
    /// disk, every ping was answered.
    pub fn check(&mut self, machine: &mut Machine) {
        let first = self.shell_answers(machine);
        if self.options.counter {
            let seen = self.counter_reaches(machine, self.counter_seen + 1);
            println!("victims: counter went from {} to {seen}", self.counter_seen);
            self.counter_seen = seen;
        }
        if !self.io_started {
            self.start_io(machine);
        }
        if self.options.disk {
            let id = self.id_of("victimdisk");
            // Its verdict: "... sectors: all match" or a FAILED line.
            let verdict = |line: &str| {
                line.starts_with("disktest: ") && (line.contains(": all match") || line.contains("FAILED"))
            };
            let seen = self.wait_for_line(machine, "victimdisk", id, "disktest's verdict", verdict, 240);
            if seen.contains("FAILED") || !seen.contains(" sectors: all match") {
                fail_with(machine, &format!("victimdisk should write and verify its disk; it printed:\n{seen}"));
            }
        }
        if self.options.ping {
            let id = self.id_of("netping");
            let seen = self.wait_for(machine, "netping", id, "nettest: ping 10.0.0.2:", "replies", 180);
            if !seen.contains(": 10 of 10 replies") {
                fail_with(machine, &format!("netping should get every reply; it printed:\n{seen}"));
            }
        }
        let last = self.shell_answers(machine);
        println!("victims: the shell answered `list` in {first:.2?} and {last:.2?}");
    }

    /// Runs `list` and fails unless it answers within [`shell_bound`];
    /// returns how long it took.
    pub fn shell_answers(&mut self, machine: &mut Machine) -> Duration {
        let started = Instant::now();
        let output = command(machine, "list");
        let took = started.elapsed();
        if took > shell_bound() {
            fail_with(
                machine,
                &format!("the shell took {took:.1?} to answer `list` (bound {:.1?}):\n{output}", shell_bound()),
            );
        }
        let list = DomainList::parse(&output).unwrap_or_else(|error| fail_with(machine, &error));
        if let Some(row) = list.rows.iter().find(|row| row.state.contains('c') || row.state.contains('s')) {
            fail_with(machine, &format!("no domain should have crashed or stopped ({}):\n{output}", row.name));
        }
        took
    }

    /// Destroys every guest started (last first) and checks that free
    /// memory is back to what it was before the victims started.
    pub fn finish(self, machine: &mut Machine) {
        for (name, id) in self.guests.iter().rev() {
            destroy(machine, name, *id);
        }
        let (text, after) = mem(machine);
        if after.free_kib != self.before.free_kib {
            fail_with(
                machine,
                &format!(
                    "free memory should be back to {} KiB after destroying every guest; it is {} KiB:\n{text}",
                    self.before.free_kib, after.free_kib
                ),
            );
        }
    }

    fn id_of(&self, name: &str) -> u64 {
        self.guests.iter().find(|(guest, _)| guest == name).map(|(_, id)| *id).unwrap_or(0)
    }

    /// Attaches to the counter and waits for `counter: <N>` with N at
    /// least `at_least`; returns the highest N seen.
    fn counter_reaches(&mut self, machine: &mut Machine, at_least: u64) -> u64 {
        crate::session::counter_reaches(machine, self.id_of("counter"), at_least)
    }
}
