//! CPU lists as the shell reads and prints them (`vcpu-pin`, `vcpu-list`),
//! and the `vcpu-list` table.
//!
//! A CPU list is `all`, or comma-separated CPU indices and ranges such as
//! `1`, `0-1` or `0,2-3`, each index below [`MAX_CPUS`]; as a mask, bit i
//! is CPU index i (the CPUs running hv numbered as `info` lists them, as
//! `abi::domctl::DomCtlOp::SetAffinity` takes them).

use core::fmt::{self, Write};

use abi::domctl::{VCPU_NEVER_RAN, VcpuInfo, VcpuState};

/// CPU indices run from 0 to `MAX_CPUS - 1` (bits of a `u64` mask).
pub const MAX_CPUS: u32 = 64;

/// A parsed CPU list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuList {
    /// `all`: every CPU running hv, now and later.
    All,
    /// The CPUs named, bit i = CPU index i; never 0.
    Mask(u64),
}

/// Why a CPU list is malformed. Items are quoted from the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuListError<'a> {
    /// No text at all.
    Empty,
    /// Two commas in a row, or a comma at either end.
    EmptyItem,
    /// An item that is neither a decimal index nor `<index>-<index>`.
    BadItem(&'a str),
    /// An item naming a CPU index of [`MAX_CPUS`] or more.
    TooLarge(&'a str),
    /// A range whose end is below its start, like `3-1`.
    Reversed(&'a str),
}

impl fmt::Display for CpuListError<'_> {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        match self {
            CpuListError::Empty => write!(out, "the list is empty"),
            CpuListError::EmptyItem => write!(out, "an item is empty (two commas, or a comma at an end)"),
            CpuListError::BadItem(item) => write!(out, "'{item}' is not a CPU index or a range like 0-3"),
            CpuListError::TooLarge(item) => write!(out, "'{item}' names a CPU beyond index {}", MAX_CPUS - 1),
            CpuListError::Reversed(item) => write!(out, "range '{item}' ends before it starts"),
        }
    }
}

/// Parses a CPU list: `all`, or items `N` and `N-M` (N <= M) separated by
/// commas, without spaces or signs.
pub fn parse(text: &str) -> Result<CpuList, CpuListError<'_>> {
    if text == "all" {
        return Ok(CpuList::All);
    }
    if text.is_empty() {
        return Err(CpuListError::Empty);
    }
    let mut mask = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(CpuListError::EmptyItem);
        }
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (index(item, first)?, index(item, last)?),
            None => {
                let single = index(item, item)?;
                (single, single)
            }
        };
        if last < first {
            return Err(CpuListError::Reversed(item));
        }
        // first <= last < 64: the range's bits without overflow.
        mask |= (u64::MAX >> (63 - last)) & (u64::MAX << first);
    }
    Ok(CpuList::Mask(mask))
}

/// A CPU index written in `item`: decimal digits only, below [`MAX_CPUS`].
fn index<'a>(item: &'a str, digits: &str) -> Result<u32, CpuListError<'a>> {
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(CpuListError::BadItem(item));
    }
    match digits.parse::<u32>() {
        Ok(index) if index < MAX_CPUS => Ok(index),
        _ => Err(CpuListError::TooLarge(item)),
    }
}

/// The mask of the CPUs running hv as `HvInfo::cpus` lists them: bit i
/// for each entry i whose state is not `NONE` (entries sit at their CPU
/// index, so a CPU that did not start leaves its bit clear).
pub fn online_mask_of(cpus: &[abi::info::CpuInfo]) -> u64 {
    cpus.iter()
        .enumerate()
        .filter(|(index, cpu)| *index < MAX_CPUS as usize && cpu.state != abi::info::cpu_state::NONE)
        .fold(0, |mask, (index, _)| mask | 1 << index)
}

/// The mask of `cpu_count` CPUs (`HvInfo::cpu_count`): indices
/// `0..cpu_count`.
pub fn online_mask(cpu_count: u32) -> u64 {
    if cpu_count >= MAX_CPUS { u64::MAX } else { (1u64 << cpu_count) - 1 }
}

/// The mask `vcpu-pin` passes to `SetAffinity` for `cpus`, or the CPUs it
/// names that do not run hv (`online` is the mask of those that do).
pub fn pin_mask(cpus: CpuList, online: u64) -> Result<u64, u64> {
    match cpus {
        CpuList::All => Ok(u64::MAX),
        CpuList::Mask(mask) if mask & !online != 0 => Err(mask & !online),
        CpuList::Mask(mask) => Ok(mask),
    }
}

/// Displays a mask as a CPU list: `0-1`, `0,2-3`; `none` when empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus(pub u64);

impl fmt::Display for Cpus {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        if self.0 == 0 {
            return write!(out, "none");
        }
        let mut rest = self.0;
        let mut separator = "";
        while rest != 0 {
            let first = rest.trailing_zeros();
            // The run of set bits from `first` up.
            let length = (rest >> first).trailing_ones();
            let last = first + length - 1;
            if first == last {
                write!(out, "{separator}{first}")?;
            } else {
                write!(out, "{separator}{first}-{last}")?;
            }
            separator = ",";
            rest &= if last == 63 { 0 } else { u64::MAX << (last + 1) };
        }
        Ok(())
    }
}

/// Displays a vCPU's affinity: `all` when it holds every CPU of `online`,
/// else its CPU list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity {
    pub mask: u64,
    pub online: u64,
}

impl fmt::Display for Affinity {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        if self.online != 0 && self.mask & self.online == self.online {
            out.pad("all")
        } else {
            write!(out, "{}", Cpus(self.mask))
        }
    }
}

/// The `State` word of a `vcpu-list` row: `running` (on a CPU now),
/// `runnable` (waiting for a CPU), `blocked` (waiting for an event),
/// `paused` (its domain is), `offline` (its domain ended, or it was never
/// given a context); `?` for a value this dom0 does not know.
pub fn state_word(state: u32) -> &'static str {
    match VcpuState::from_number(state) {
        Some(VcpuState::Running) => "running",
        Some(VcpuState::Runnable) => "runnable",
        Some(VcpuState::Blocked) => "blocked",
        Some(VcpuState::Paused) => "paused",
        Some(VcpuState::Offline) => "offline",
        None => "?",
    }
}

/// Writes the `vcpu-list` header: `Name ID VCPU CPU State Time(s) Affinity`.
pub fn write_vcpu_header(out: &mut impl Write) -> fmt::Result {
    writeln!(
        out,
        "{:<32} {:>5} {:>4} {:>3} {:>8} {:>9} {:>6} Affinity",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Moves"
    )
}

/// Writes one `vcpu-list` row for vCPU `info` of domain `name` (`id`):
/// the CPU it runs on or last ran on (`-` if it never ran), its state
/// ([`state_word`]), its CPU time in seconds with one decimal (`tsc_khz`
/// converts), and its affinity ([`Affinity`] against `online`).
pub fn write_vcpu_row(
    out: &mut impl Write,
    name: &str,
    id: abi::DomainId,
    info: &VcpuInfo,
    tsc_khz: u64,
    online: u64,
) -> fmt::Result {
    let mut cpu = arrayvec::ArrayString::<10>::new();
    if info.cpu == VCPU_NEVER_RAN {
        cpu.push('-');
    } else {
        let _ = write!(cpu, "{}", info.cpu);
    }
    let tenths = info.cpu_time_tsc.checked_div(tsc_khz.saturating_mul(100)).unwrap_or(0);
    writeln!(
        out,
        "{:<32} {:>5} {:>4} {:>3} {:>8} {:>7}.{} {:>6} {}",
        name,
        id,
        info.vcpu_id,
        cpu,
        state_word(info.state),
        tenths / 10,
        tenths % 10,
        info.moves,
        Affinity { mask: info.affinity, online }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(text: &str) -> u64 {
        match parse(text) {
            Ok(CpuList::Mask(mask)) => mask,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn lists_parse_to_masks() {
        assert_eq!(parse("all"), Ok(CpuList::All));
        assert_eq!(mask("0"), 0b1);
        assert_eq!(mask("1"), 0b10);
        assert_eq!(mask("0-1"), 0b11);
        assert_eq!(mask("0,2-3"), 0b1101);
        assert_eq!(mask("3-3"), 0b1000);
        assert_eq!(mask("2,0,2"), 0b101, "order and repeats do not matter");
        assert_eq!(mask("0-63"), u64::MAX);
        assert_eq!(mask("63"), 1 << 63);
        assert_eq!(mask("007"), 1 << 7);
    }

    #[test]
    fn malformed_lists_are_refused_with_the_item() {
        assert_eq!(parse(""), Err(CpuListError::Empty));
        assert_eq!(parse(","), Err(CpuListError::EmptyItem));
        assert_eq!(parse("0,,1"), Err(CpuListError::EmptyItem));
        assert_eq!(parse("1,"), Err(CpuListError::EmptyItem));
        assert_eq!(parse(",1"), Err(CpuListError::EmptyItem));
        assert_eq!(parse("x"), Err(CpuListError::BadItem("x")));
        assert_eq!(parse("All"), Err(CpuListError::BadItem("All")));
        assert_eq!(parse("all,1"), Err(CpuListError::BadItem("all")));
        assert_eq!(parse("+1"), Err(CpuListError::BadItem("+1")));
        assert_eq!(parse("-1"), Err(CpuListError::BadItem("-1")));
        assert_eq!(parse("0-"), Err(CpuListError::BadItem("0-")));
        assert_eq!(parse("0--1"), Err(CpuListError::BadItem("0--1")));
        assert_eq!(parse("0-1-2"), Err(CpuListError::BadItem("0-1-2")));
        assert_eq!(parse("1 "), Err(CpuListError::BadItem("1 ")));
        assert_eq!(parse("0,64"), Err(CpuListError::TooLarge("64")));
        assert_eq!(parse("1-99999999999"), Err(CpuListError::TooLarge("1-99999999999")));
        assert_eq!(parse("0,3-1"), Err(CpuListError::Reversed("3-1")));
        assert_eq!(
            format!("{}", CpuListError::Reversed("3-1")),
            "range '3-1' ends before it starts",
            "errors read as sentences"
        );
        assert_eq!(format!("{}", CpuListError::TooLarge("64")), "'64' names a CPU beyond index 63");
    }

    #[test]
    fn masks_print_as_lists() {
        let text = |mask| format!("{}", Cpus(mask));
        assert_eq!(text(0), "none");
        assert_eq!(text(0b1), "0");
        assert_eq!(text(0b10), "1");
        assert_eq!(text(0b11), "0-1");
        assert_eq!(text(0b1101), "0,2-3");
        assert_eq!(text(0b1010_0111), "0-2,5,7");
        assert_eq!(text(u64::MAX), "0-63");
        assert_eq!(text(1 << 63 | 1), "0,63");
        assert_eq!(text(0xc000_0000_0000_0000), "62-63");
    }

    #[test]
    fn printed_lists_parse_back() {
        let mut random = crate::test_random::XorShift(9);
        for _ in 0..2000 {
            let value = random.next() & random.next();
            if value == 0 {
                continue;
            }
            assert_eq!(mask(&format!("{}", Cpus(value))), value, "{value:#x}");
        }
    }

    #[test]
    fn affinity_is_all_when_it_covers_every_online_cpu() {
        let text = |mask, online| format!("{}", Affinity { mask, online });
        assert_eq!(text(u64::MAX, 0b11), "all");
        assert_eq!(text(0b11, 0b11), "all");
        assert_eq!(text(0b10, 0b11), "1");
        assert_eq!(text(0b01, 0b1), "all");
        assert_eq!(text(0b101, 0b1111), "0,2");
        assert_eq!(format!("{:>5}|", Affinity { mask: 1, online: 1 }), "  all|");
    }

    #[test]
    fn pin_masks_refuse_cpus_not_running_hv() {
        let mut cpus = [abi::info::CpuInfo::default(); abi::info::HV_INFO_CPUS];
        assert_eq!(online_mask_of(&cpus), 0);
        for index in [0, 1, 3] {
            cpus[index].state = abi::info::cpu_state::RUNNING_DOMAINS;
        }
        // CPU 2 failed to start: its bit stays clear, CPU 3 keeps its index.
        assert_eq!(online_mask_of(&cpus), 0b1011);
        assert_eq!(online_mask(1), 0b1);
        assert_eq!(online_mask(2), 0b11);
        assert_eq!(online_mask(64), u64::MAX);
        assert_eq!(pin_mask(CpuList::All, 0b11), Ok(u64::MAX));
        assert_eq!(pin_mask(CpuList::Mask(0b10), 0b11), Ok(0b10));
        assert_eq!(pin_mask(CpuList::Mask(0b110), 0b11), Err(0b100));
        assert_eq!(pin_mask(CpuList::Mask(0b10), 0b1), Err(0b10));
    }

    #[test]
    fn vcpu_rows() {
        let mut out = String::new();
        write_vcpu_header(&mut out).unwrap();
        let info = VcpuInfo {
            vcpu_id: 0,
            state: VcpuState::Running as u32,
            cpu: 1,
            cpu_time_tsc: 12_345_000_000,
            affinity: u64::MAX,
            moves: 7,
        };
        write_vcpu_row(&mut out, "Domain-0", 0, &info, 1_000_000, 0b11).unwrap();
        let never = VcpuInfo { state: VcpuState::Paused as u32, cpu: VCPU_NEVER_RAN, affinity: 0b10, ..info };
        write_vcpu_row(&mut out, "counter", 3, &never, 0, 0b11).unwrap();
        let unknown = VcpuInfo { state: 77, ..never };
        write_vcpu_row(&mut out, "x", 4, &unknown, 0, 0b11).unwrap();
        let lines: Vec<Vec<&str>> = out.lines().map(|line| line.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Moves", "Affinity"]);
        assert_eq!(lines[1], ["Domain-0", "0", "0", "1", "running", "12.3", "7", "all"]);
        assert_eq!(lines[2], ["counter", "3", "0", "-", "paused", "0.0", "7", "1"]);
        assert_eq!(lines[3][4], "?");
        for (state, word) in [(1, "runnable"), (2, "blocked"), (4, "offline")] {
            assert_eq!(state_word(state), word);
        }
    }
}
