//! Parsers for what the dom0 shell prints (`info`, `bench`, `list`, `mem`,
//! `sched`, `selftest`, `vcpu-list`), with errors that quote the text they
//! could not read.

use crate::pattern::scan;

/// The output of the `info` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoReport {
    /// Names after `vmx features:` (e.g. `ept`, `vpid`, `unrestricted-guest`).
    pub vmx_features: Vec<String>,
    pub memory_total_kib: u64,
    pub memory_free_kib: u64,
    pub memory_hv_kib: u64,
    /// The `<N>` of `cpus:         <N> running hv` (HvInfo.cpu_count).
    pub cpus: u64,
    /// The `  cpu <index> apic id <id> <state>` lines after it: (index,
    /// APIC id, state).
    pub cpu_list: Vec<(u64, u64, String)>,
    /// The `<N>` of `dom0 exits:   <N> total`.
    pub exits_total: u64,
    /// The `  <reason-name> <count>` lines after it, in order.
    pub exits_by_reason: Vec<(String, u64)>,
    /// `uptime: <N>.<tenth> s`, in tenths of a second since hv started.
    pub uptime_tenths: u64,
    /// `tsc: <N> kHz`: how fast the TSC counts (hv's measure).
    pub tsc_khz: u64,
}

impl InfoReport {
    /// Parses the text of one `info` command (extra lines around it are ignored).
    pub fn parse(text: &str) -> Result<InfoReport, String> {
        let lines: Vec<&str> = text.lines().collect();
        let find = |prefix: &str| -> Result<usize, String> {
            lines
                .iter()
                .position(|line| line.starts_with(prefix))
                .ok_or_else(|| format!("`info` printed no line starting with {prefix:?}; its output was:\n{text}"))
        };

        let features_line = lines[find("vmx features:")?];
        let vmx_features = features_line["vmx features:".len()..].split_whitespace().map(str::to_owned).collect();

        let memory_line = lines[find("memory:")?];
        let memory = scan("memory: total {} KiB, free {} KiB, hv {} KiB", memory_line.trim_end()).ok_or_else(|| {
            format!(
                "`info` memory line {memory_line:?} is not like \
                     \"memory:       total <N> KiB, free <N> KiB, hv <N> KiB\""
            )
        })?;

        let uptime_line = lines[find("uptime:")?];
        let uptime = scan("uptime: {}.{} s", uptime_line.trim_end())
            .ok_or_else(|| format!("`info` line {uptime_line:?} is not like \"uptime:       <N>.<tenth> s\""))?;
        let uptime_tenths = uptime[0] * 10 + uptime[1];
        let tsc_line = lines[find("tsc:")?];
        let tsc_khz = scan("tsc: {} kHz", tsc_line.trim_end())
            .ok_or_else(|| format!("`info` line {tsc_line:?} is not like \"tsc:          <N> kHz\""))?[0];

        let cpus_index = find("cpus:")?;
        let cpus_line = lines[cpus_index];
        let cpus = scan("cpus: {} running hv", cpus_line.trim_end())
            .ok_or_else(|| format!("`info` line {cpus_line:?} is not like \"cpus:         <N> running hv\""))?[0];
        let mut cpu_list = Vec::new();
        for line in lines[cpus_index + 1..].iter().take_while(|line| line.starts_with("  cpu ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let parsed = match words.as_slice() {
                ["cpu", index, "apic", "id", id, state @ ..] => {
                    index.parse().ok().zip(id.parse().ok()).map(|(index, id)| (index, id, state.join(" ")))
                }
                _ => None,
            };
            cpu_list.push(
                parsed.ok_or_else(|| format!("`info` line {line:?} is not like \"  cpu <N> apic id <N> <state>\""))?,
            );
        }

        let exits_index = find("dom0 exits:")?;
        let exits_line = lines[exits_index];
        let exits_total = scan("dom0 exits: {} total", exits_line.trim_end())
            .ok_or_else(|| format!("`info` line {exits_line:?} is not like \"dom0 exits:   <N> total\""))?[0];
        let mut exits_by_reason = Vec::new();
        for line in &lines[exits_index + 1..] {
            let Some(entry) = line.strip_prefix("  ") else {
                break;
            };
            let entry = entry.trim_end();
            let parsed = entry
                .rsplit_once(' ')
                .and_then(|(name, count)| Some((name.trim(), count.parse::<u64>().ok()?)))
                .filter(|(name, _)| !name.is_empty() && !name.contains(' '));
            let (name, count) =
                parsed.ok_or_else(|| format!("`info` exit line {line:?} is not like \"  <reason-name> <count>\""))?;
            exits_by_reason.push((name.to_owned(), count));
        }

        Ok(InfoReport {
            vmx_features,
            memory_total_kib: memory[0],
            memory_free_kib: memory[1],
            memory_hv_kib: memory[2],
            uptime_tenths,
            tsc_khz,
            cpus,
            cpu_list,
            exits_total,
            exits_by_reason,
        })
    }

    /// The count listed for an exit reason, 0 when it is not listed.
    pub fn exits(&self, reason: &str) -> u64 {
        self.exits_by_reason.iter().find(|(name, _)| name == reason).map_or(0, |(_, count)| *count)
    }

    pub fn has_vmx_feature(&self, name: &str) -> bool {
        self.vmx_features.iter().any(|feature| feature == name)
    }
}

/// One `bench: <what> <N> tsc/call (min <N>, <K> calls)` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerCall {
    pub mean_tsc: u64,
    pub min_tsc: u64,
    pub calls: u64,
}

/// The output of the `bench` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchReport {
    pub null_hypercall: PerCall,
    pub cpuid_exit: PerCall,
    pub boot_to_prompt_tsc: u64,
}

impl BenchReport {
    pub fn parse(text: &str) -> Result<BenchReport, String> {
        let per_call = |what: &str| -> Result<PerCall, String> {
            let template = format!("bench: {what} {{}} tsc/call (min {{}}, {{}} calls)");
            let prefix = format!("bench: {what} ");
            let line = text
                .lines()
                .find(|line| line.starts_with(&prefix))
                .ok_or_else(|| format!("`bench` printed no line starting with {prefix:?}; its output was:\n{text}"))?;
            let numbers = scan(&template, line.trim_end()).ok_or_else(|| {
                format!("`bench` line {line:?} is not like \"bench: {what} <N> tsc/call (min <N>, <K> calls)\"")
            })?;
            Ok(PerCall { mean_tsc: numbers[0], min_tsc: numbers[1], calls: numbers[2] })
        };
        let boot_line = text.lines().find(|line| line.starts_with("bench: boot to prompt ")).ok_or_else(|| {
            format!("`bench` printed no line starting with \"bench: boot to prompt \"; its output was:\n{text}")
        })?;
        let boot = scan("bench: boot to prompt {} tsc", boot_line.trim_end())
            .ok_or_else(|| format!("`bench` line {boot_line:?} is not like \"bench: boot to prompt <N> tsc\""))?;
        Ok(BenchReport {
            null_hypercall: per_call("null hypercall")?,
            cpuid_exit: per_call("cpuid exit")?,
            boot_to_prompt_tsc: boot[0],
        })
    }
}

/// One row of the `list` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRow {
    pub name: String,
    pub id: u64,
    /// The `Mem` column, in MiB.
    pub memory_mib: u64,
    pub vcpus: u64,
    /// The six-letter `State` column: `r-----`, `-b----`, `--p---`, ...
    pub state: String,
    /// The `Time(s)` column (CPU seconds, one decimal) in tenths of a second.
    pub cpu_tenths: u64,
}

/// The output of the `list` command: `Name ID Mem VCPUs State Time(s)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainList {
    pub rows: Vec<DomainRow>,
}

impl DomainList {
    /// Parses the text of one `list` command: the header line, then one row
    /// per line until an empty line, the prompt or the end. Any other line
    /// inside the table is an error: the table must not be garbled.
    pub fn parse(text: &str) -> Result<DomainList, String> {
        let rows = table_rows(text, "list", &["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"])?;
        let rows = rows
            .into_iter()
            .map(|(line, name, fields)| {
                let bad = || {
                    format!(
                        "`list` row {line:?} is not like \"<name> <id> <MiB> <vcpus> <state> <seconds>.<tenth>\"; \
                         its output was:\n{text}"
                    )
                };
                let number = |field: &str| field.parse::<u64>().map_err(|_| bad());
                let state = fields[3];
                if state.len() != 6 || !state.chars().all(|c| c == '-' || c.is_ascii_lowercase()) {
                    return Err(bad());
                }
                let (whole, tenth) = fields[4].split_once('.').ok_or_else(bad)?;
                if tenth.len() != 1 {
                    return Err(bad());
                }
                Ok(DomainRow {
                    name,
                    id: number(fields[0])?,
                    memory_mib: number(fields[1])?,
                    vcpus: number(fields[2])?,
                    state: state.to_owned(),
                    cpu_tenths: number(whole)? * 10 + number(tenth)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(DomainList { rows })
    }

    /// The row of the domain called `name`.
    pub fn get(&self, name: &str) -> Option<&DomainRow> {
        self.rows.iter().find(|row| row.name == name)
    }

    /// The names in the order listed.
    pub fn names(&self) -> Vec<&str> {
        self.rows.iter().map(|row| row.name.as_str()).collect()
    }
}

/// One row of the `mem` command's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRow {
    pub name: String,
    pub id: u64,
    pub current_kib: u64,
    pub max_kib: u64,
}

/// The output of the `mem` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryReport {
    pub total_kib: u64,
    pub free_kib: u64,
    pub hv_kib: u64,
    pub domains: Vec<MemoryRow>,
}

impl MemoryReport {
    /// Parses the text of one `mem` command: `hv memory: total <N> KiB, free
    /// <N> KiB, hv <N> KiB`, then the table `Name ID Current(KiB) Max(KiB)`.
    pub fn parse(text: &str) -> Result<MemoryReport, String> {
        let line = text
            .lines()
            .find(|line| line.starts_with("hv memory:"))
            .ok_or_else(|| format!("`mem` printed no line starting with \"hv memory:\"; its output was:\n{text}"))?;
        let totals = scan("hv memory: total {} KiB, free {} KiB, hv {} KiB", line.trim_end()).ok_or_else(|| {
            format!("`mem` line {line:?} is not like \"hv memory: total <N> KiB, free <N> KiB, hv <N> KiB\"")
        })?;
        let rows = table_rows(text, "mem", &["Name", "ID", "Current(KiB)", "Max(KiB)"])?;
        let domains = rows
            .into_iter()
            .map(|(line, name, fields)| {
                let number = |field: &str| {
                    field.parse::<u64>().map_err(|_| {
                        format!("`mem` row {line:?} is not like \"<name> <id> <KiB> <KiB>\"; its output was:\n{text}")
                    })
                };
                Ok(MemoryRow {
                    name,
                    id: number(fields[0])?,
                    current_kib: number(fields[1])?,
                    max_kib: number(fields[2])?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(MemoryReport { total_kib: totals[0], free_kib: totals[1], hv_kib: totals[2], domains })
    }
}

/// The row printed by the `sched` command: `Name ID Weight Cap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulingRow {
    pub name: String,
    pub id: u64,
    pub weight: u64,
    pub cap: u64,
}

impl SchedulingRow {
    /// Parses the text of one `sched` command, which shows exactly one row.
    pub fn parse(text: &str) -> Result<SchedulingRow, String> {
        let rows = table_rows(text, "sched", &["Name", "ID", "Weight", "Cap"])?;
        let [(line, name, fields)] = <[_; 1]>::try_from(rows).map_err(|rows: Vec<_>| {
            format!("`sched` should show one row, it showed {}; its output was:\n{text}", rows.len())
        })?;
        let number = |field: &str| {
            field.parse::<u64>().map_err(|_| {
                format!("`sched` row {line:?} is not like \"<name> <id> <weight> <cap>\"; its output was:\n{text}")
            })
        };
        Ok(SchedulingRow { name, id: number(fields[0])?, weight: number(fields[1])?, cap: number(fields[2])? })
    }
}

/// The output of the `selftest` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTestReport {
    /// Each `selftest: <name>: ok|FAILED (rax <N>)` line: name, passed, rax.
    pub checks: Vec<(String, bool, i64)>,
    /// From the final `selftest: <passed> of <total> hypercall checks passed`.
    pub passed: u64,
    pub total: u64,
}

impl SelfTestReport {
    pub fn parse(text: &str) -> Result<SelfTestReport, String> {
        let mut checks = Vec::new();
        let mut summary = None;
        for line in text.lines().map(str::trim_end) {
            let Some(rest) = line.strip_prefix("selftest: ") else {
                continue;
            };
            if let Some(numbers) = scan("{} of {} hypercall checks passed", rest) {
                summary = Some((numbers[0], numbers[1]));
                continue;
            }
            let parsed = rest.rsplit_once(": ").and_then(|(name, verdict)| {
                let (verdict, rax) = verdict.split_once(" (rax ")?;
                let rax = rax.strip_suffix(')')?.parse::<i64>().ok()?;
                let passed = match verdict {
                    "ok" => true,
                    "FAILED" => false,
                    _ => return None,
                };
                Some((name.to_owned(), passed, rax))
            });
            checks.push(parsed.ok_or_else(|| {
                format!(
                    "`selftest` line {line:?} is not like \"selftest: <name>: ok|FAILED (rax <N>)\"; \
                     its output was:\n{text}"
                )
            })?);
        }
        let (passed, total) = summary.ok_or_else(|| {
            format!(
                "`selftest` printed no line like \"selftest: <N> of <N> hypercall checks passed\"; \
                 its output was:\n{text}"
            )
        })?;
        Ok(SelfTestReport { checks, passed, total })
    }

    /// The lines of the checks that failed.
    pub fn failures(&self) -> Vec<&(String, bool, i64)> {
        self.checks.iter().filter(|(_, passed, _)| !passed).collect()
    }
}

/// One row of the `vcpu-list` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuRow {
    pub name: String,
    pub id: u64,
    pub vcpu: u64,
    /// The `CPU` column: the CPU index it runs on or last ran on, `None`
    /// for `-` (never ran).
    pub cpu: Option<u64>,
    /// The `State` column: `running`, `runnable`, `blocked`, `paused` or
    /// `offline`.
    pub state: String,
    /// The `Time(s)` column in tenths of a second.
    pub cpu_tenths: u64,
    /// The `Moves` column: how often it ran on another CPU than before.
    pub moves: u64,
    /// The `Affinity` column: `all`, or a CPU list like `1`, `0-1`, `0,2-3`.
    pub affinity: String,
}

/// The output of the `vcpu-list` command: `Name ID VCPU CPU State Time(s)
/// Affinity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuList {
    pub rows: Vec<VcpuRow>,
}

impl VcpuList {
    /// Parses the text of one `vcpu-list` command: the header, then one row
    /// per line until an empty line, the prompt or the end; any other line
    /// inside the table is an error.
    pub fn parse(text: &str) -> Result<VcpuList, String> {
        let rows =
            table_rows(text, "vcpu-list", &["Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Moves", "Affinity"])?;
        let rows = rows
            .into_iter()
            .map(|(line, name, fields)| {
                let bad = || {
                    format!(
                        "`vcpu-list` row {line:?} is not like \"<name> <id> <vcpu> <cpu or -> <state> \
                         <seconds>.<tenth> <moves> <all or CPU list>\"; its output was:\n{text}"
                    )
                };
                let number = |field: &str| field.parse::<u64>().map_err(|_| bad());
                let cpu = match fields[2] {
                    "-" => None,
                    field => Some(number(field)?),
                };
                let state = fields[3];
                if !["running", "runnable", "blocked", "paused", "offline"].contains(&state) {
                    return Err(bad());
                }
                let (whole, tenth) = fields[4].split_once('.').ok_or_else(bad)?;
                if tenth.len() != 1 {
                    return Err(bad());
                }
                let moves = number(fields[5])?;
                let affinity = fields[6];
                let list = affinity.split(',').all(|item| {
                    let (first, last) = item.split_once('-').unwrap_or((item, item));
                    first.parse::<u8>().is_ok() && last.parse::<u8>().is_ok()
                });
                if affinity != "all" && !list {
                    return Err(bad());
                }
                Ok(VcpuRow {
                    name,
                    id: number(fields[0])?,
                    vcpu: number(fields[1])?,
                    cpu,
                    state: state.to_owned(),
                    cpu_tenths: number(whole)? * 10 + number(tenth)?,
                    moves,
                    affinity: affinity.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(VcpuList { rows })
    }

    /// The row of vCPU `vcpu` of the domain called `name`.
    pub fn get(&self, name: &str, vcpu: u64) -> Option<&VcpuRow> {
        self.rows.iter().find(|row| row.name == name && row.vcpu == vcpu)
    }
}

/// A row of a table: the whole line, the name (first column), the other fields.
type TableRow<'a> = (&'a str, String, Vec<&'a str>);

/// The rows under the header whose whitespace-separated words are `header`:
/// every line up to an empty line, the prompt or the end must have the
/// header's number of columns (the first, a name, has no spaces).
fn table_rows<'a>(text: &'a str, command: &str, header: &[&str]) -> Result<Vec<TableRow<'a>>, String> {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|line| line.split_whitespace().eq(header.iter().copied()))
        .ok_or_else(|| format!("`{command}` printed no header line {:?}; its output was:\n{text}", header.join(" ")))?;
    let mut rows = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.starts_with(crate::PROMPT.trim_end()) {
            break;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != header.len() {
            return Err(format!(
                "`{command}` row {line:?} does not have the {} columns {:?}; its output was:\n{text}",
                header.len(),
                header.join(" ")
            ));
        }
        rows.push((line, fields[0].to_owned(), fields[1..].to_vec()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "info\n\
        vmx features: ept vpid unrestricted-guest preemption-timer\n\
        memory:       total 262144 KiB, free 250000 KiB, hv 2048 KiB\n\
        uptime:       12.3 s\n\
        tsc:          50000 kHz\n\
        cpus:         2 running hv\n\
        \x20 cpu 0  apic id 0   running domains\n\
        \x20 cpu 1  apic id 1   vmx-root idle\n\
        dom0 exits:   20 total\n\
        \x20 vmcall 18\n\
        \x20 cpuid 2\n\
        dom0> ";

    #[test]
    fn info_parses() {
        let info = InfoReport::parse(INFO).unwrap();
        assert!(info.has_vmx_feature("ept"));
        assert!(!info.has_vmx_feature("ep"));
        assert_eq!(info.vmx_features.len(), 4);
        assert_eq!((info.memory_total_kib, info.memory_free_kib, info.memory_hv_kib), (262144, 250000, 2048));
        assert_eq!(info.exits_total, 20);
        assert_eq!(info.cpus, 2);
        assert_eq!(info.uptime_tenths, 123);
        assert_eq!(info.tsc_khz, 50_000);
        assert_eq!(info.cpu_list, vec![(0, 0, "running domains".to_string()), (1, 1, "vmx-root idle".to_string())]);
        assert_eq!(info.exits("vmcall"), 18);
        assert_eq!(info.exits("cpuid"), 2);
        assert_eq!(info.exits("hlt"), 0);
    }

    #[test]
    fn info_errors_quote_the_bad_line() {
        let error = InfoReport::parse(&INFO.replace("20 total", "twenty")).unwrap_err();
        assert!(error.contains("\"dom0 exits:   twenty\""), "{error}");
        let error = InfoReport::parse("nothing").unwrap_err();
        assert!(error.contains("vmx features:"), "{error}");
    }

    #[test]
    fn bench_parses() {
        let text = "bench\n\
            bench: null hypercall 512 tsc/call (min 500, 10000 calls)\n\
            bench: cpuid exit 300 tsc/call (min 290, 10000 calls)\n\
            bench: boot to prompt 123456789 tsc\n";
        let bench = BenchReport::parse(text).unwrap();
        assert_eq!(bench.null_hypercall, PerCall { mean_tsc: 512, min_tsc: 500, calls: 10000 });
        assert_eq!(bench.cpuid_exit.min_tsc, 290);
        assert_eq!(bench.boot_to_prompt_tsc, 123456789);
        assert!(BenchReport::parse("bench: cpuid exit 3 tsc/call").is_err());
    }

    const LIST: &str = "list\n\
        Name                                ID   Mem VCPUs    State   Time(s)\n\
        Domain-0                             0    64     1   r-----       1.4\n\
        counter                              1     4     1   -b----       0.0\n\
        spinner                              3     4     1   r-----      12.7\n\
        dom0> ";

    #[test]
    fn list_parses() {
        let list = DomainList::parse(LIST).unwrap();
        assert_eq!(list.names(), ["Domain-0", "counter", "spinner"]);
        assert_eq!(
            list.get("spinner"),
            Some(&DomainRow {
                name: "spinner".into(),
                id: 3,
                memory_mib: 4,
                vcpus: 1,
                state: "r-----".into(),
                cpu_tenths: 127,
            })
        );
        assert_eq!(list.get("Domain-0").unwrap().cpu_tenths, 14);
        assert_eq!(list.get("counter").unwrap().state, "-b----");
        assert!(list.get("echo").is_none());
    }

    #[test]
    fn list_without_guests_and_at_end_of_text() {
        let text = "Name ID Mem VCPUs State Time(s)\nDomain-0 0 64 1 r----- 0.0";
        assert_eq!(DomainList::parse(text).unwrap().names(), ["Domain-0"]);
    }

    #[test]
    fn list_errors_quote_the_bad_row() {
        let garbled = LIST.replace("-b----       0.0", "-b----  hv: error");
        let error = DomainList::parse(&garbled).unwrap_err();
        assert!(error.contains("counter"), "{error}");
        let error = DomainList::parse(&LIST.replace("12.7", "12")).unwrap_err();
        assert!(error.contains("\"spinner "), "{error}");
        let error = DomainList::parse(&LIST.replace("r-----      12.7", "running      12.7")).unwrap_err();
        assert!(error.contains("running"), "{error}");
        let error = DomainList::parse("dom0: list: busy\n").unwrap_err();
        assert!(error.contains("no header line"), "{error}");
    }

    const MEM: &str = "mem\n\
        hv memory: total 255612 KiB, free 177664 KiB, hv 1040 KiB\n\
        Name                                ID Current(KiB)     Max(KiB)\n\
        Domain-0                             0        65536        65536\n\
        counter                              1         4096         4096\n\
        dom0> ";

    #[test]
    fn mem_parses() {
        let mem = MemoryReport::parse(MEM).unwrap();
        assert_eq!((mem.total_kib, mem.free_kib, mem.hv_kib), (255612, 177664, 1040));
        assert_eq!(mem.domains[1], MemoryRow { name: "counter".into(), id: 1, current_kib: 4096, max_kib: 4096 });
        assert_eq!(mem.domains.len(), 2);
    }

    #[test]
    fn mem_errors_quote_the_bad_line() {
        let error = MemoryReport::parse(&MEM.replace("free 177664", "free lots")).unwrap_err();
        assert!(error.contains("free lots"), "{error}");
        let error = MemoryReport::parse(&MEM.replace("4096         4096", "4096")).unwrap_err();
        assert!(error.contains("counter"), "{error}");
    }

    #[test]
    fn sched_parses_one_row() {
        let text = "sched spinner weight=768\n\
            Name                    ID Weight  Cap\n\
            spinner                  1    768    0\n\
            dom0> ";
        assert_eq!(
            SchedulingRow::parse(text).unwrap(),
            SchedulingRow { name: "spinner".into(), id: 1, weight: 768, cap: 0 }
        );
        let error = SchedulingRow::parse("sched x\ndom0: no domain 'x'\n").unwrap_err();
        assert!(error.contains("no domain 'x'"), "{error}");
    }

    const VCPU_LIST: &str = "vcpu-list\n\
        Name                                ID VCPU CPU    State   Time(s)  Moves Affinity\n\
        Domain-0                             0    0   0  running       3.1      4 all\n\
        counter                              1    0   1  blocked       0.2      0 1\n\
        spinner                              2    0   -   paused       0.0      0 0,2-3\n\
        dom0> ";

    #[test]
    fn vcpu_list_parses() {
        let list = VcpuList::parse(VCPU_LIST).unwrap();
        assert_eq!(list.rows.len(), 3);
        assert_eq!(
            list.get("counter", 0),
            Some(&VcpuRow {
                name: "counter".into(),
                id: 1,
                vcpu: 0,
                cpu: Some(1),
                state: "blocked".into(),
                cpu_tenths: 2,
                moves: 0,
                affinity: "1".into(),
            })
        );
        let dom0 = list.get("Domain-0", 0).unwrap();
        assert_eq!(
            (dom0.cpu, dom0.state.as_str(), dom0.cpu_tenths, dom0.moves, dom0.affinity.as_str()),
            (Some(0), "running", 31, 4, "all")
        );
        let spinner = list.get("spinner", 0).unwrap();
        assert_eq!((spinner.cpu, spinner.affinity.as_str()), (None, "0,2-3"));
        assert!(list.get("counter", 1).is_none());
        let empty = "Name ID VCPU CPU State Time(s) Moves Affinity\n";
        assert_eq!(VcpuList::parse(empty).unwrap().rows, []);
    }

    #[test]
    fn vcpu_list_errors_quote_the_bad_row() {
        for (from, to) in [
            ("0  running", "x  running"),
            ("running", "r-----"),
            ("3.1", "3"),
            ("3.1      4 all", "3.1      4 every"),
            ("4 all", "four all"),
            ("0.2      0 1", "0.2      0 1-"),
            ("0.2      0 1", "0.2      0 1,,2"),
            ("0 0,2-3", "0 0,2-3 extra"),
        ] {
            let garbled = VCPU_LIST.replacen(from, to, 1);
            let error = VcpuList::parse(&garbled).unwrap_err();
            assert!(error.contains(to), "{from} -> {to}: {error}");
        }
        let error = VcpuList::parse("dom0: vcpu-list: no domain 'x' (see 'list')\n").unwrap_err();
        assert!(error.contains("no header line") && error.contains("no domain 'x'"), "{error}");
    }

    #[test]
    fn selftest_parses_passes_and_failures() {
        let text = "selftest\n\
            selftest: version: ok (rax 2)\n\
            selftest: unknown number: ok (rax -4)\n\
            selftest: hv info at 4 GiB: FAILED (rax 80)\n\
            selftest: 2 of 3 hypercall checks passed\n\
            dom0> ";
        let report = SelfTestReport::parse(text).unwrap();
        assert_eq!((report.passed, report.total), (2, 3));
        assert_eq!(report.checks.len(), 3);
        assert_eq!(report.checks[1], ("unknown number".into(), true, -4));
        assert_eq!(report.failures(), [&("hv info at 4 GiB".to_owned(), false, 80)]);
        let error = SelfTestReport::parse("selftest: version: maybe (rax 2)\n").unwrap_err();
        assert!(error.contains("maybe"), "{error}");
        let error = SelfTestReport::parse("selftest: version: ok (rax 2)\n").unwrap_err();
        assert!(error.contains("checks passed"), "{error}");
    }
}
