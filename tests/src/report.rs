//! Parsers for what the dom0 shell prints (`info`, `bench`), with errors that
//! quote the text they could not read.

use crate::pattern::scan;

/// The output of the `info` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoReport {
    /// Names after `vmx features:` (e.g. `ept`, `vpid`, `unrestricted-guest`).
    pub vmx_features: Vec<String>,
    pub memory_total_kib: u64,
    pub memory_free_kib: u64,
    pub memory_hv_kib: u64,
    /// The `<N>` of `dom0 exits:   <N> total`.
    pub exits_total: u64,
    /// The `  <reason-name> <count>` lines after it, in order.
    pub exits_by_reason: Vec<(String, u64)>,
}

impl InfoReport {
    /// Parses the text of one `info` command (extra lines around it are ignored).
    pub fn parse(text: &str) -> Result<InfoReport, String> {
        let lines: Vec<&str> = text.lines().collect();
        let find =
            |prefix: &str| -> Result<usize, String> {
                lines.iter().position(|line| line.starts_with(prefix)).ok_or_else(|| {
                format!("`info` printed no line starting with {prefix:?}; its output was:\n{text}")
            })
            };

        let features_line = lines[find("vmx features:")?];
        let vmx_features = features_line["vmx features:".len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect();

        let memory_line = lines[find("memory:")?];
        let memory = scan(
            "memory: total {} KiB, free {} KiB, hv {} KiB",
            memory_line.trim_end(),
        )
        .ok_or_else(|| {
            format!(
                "`info` memory line {memory_line:?} is not like \
                     \"memory:       total <N> KiB, free <N> KiB, hv <N> KiB\""
            )
        })?;

        let exits_index = find("dom0 exits:")?;
        let exits_line = lines[exits_index];
        let exits_total = scan("dom0 exits: {} total", exits_line.trim_end()).ok_or_else(|| {
            format!("`info` line {exits_line:?} is not like \"dom0 exits:   <N> total\"")
        })?[0];
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
            let (name, count) = parsed.ok_or_else(|| {
                format!("`info` exit line {line:?} is not like \"  <reason-name> <count>\"")
            })?;
            exits_by_reason.push((name.to_owned(), count));
        }

        Ok(InfoReport {
            vmx_features,
            memory_total_kib: memory[0],
            memory_free_kib: memory[1],
            memory_hv_kib: memory[2],
            exits_total,
            exits_by_reason,
        })
    }

    /// The count listed for an exit reason, 0 when it is not listed.
    pub fn exits(&self, reason: &str) -> u64 {
        self.exits_by_reason
            .iter()
            .find(|(name, _)| name == reason)
            .map_or(0, |(_, count)| *count)
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
                .ok_or_else(|| {
                    format!(
                        "`bench` printed no line starting with {prefix:?}; its output was:\n{text}"
                    )
                })?;
            let numbers = scan(&template, line.trim_end()).ok_or_else(|| {
                format!("`bench` line {line:?} is not like \"bench: {what} <N> tsc/call (min <N>, <K> calls)\"")
            })?;
            Ok(PerCall {
                mean_tsc: numbers[0],
                min_tsc: numbers[1],
                calls: numbers[2],
            })
        };
        let boot_line = text.lines().find(|line| line.starts_with("bench: boot to prompt ")).ok_or_else(
            || format!("`bench` printed no line starting with \"bench: boot to prompt \"; its output was:\n{text}"),
        )?;
        let boot = scan("bench: boot to prompt {} tsc", boot_line.trim_end()).ok_or_else(|| {
            format!("`bench` line {boot_line:?} is not like \"bench: boot to prompt <N> tsc\"")
        })?;
        Ok(BenchReport {
            null_hypercall: per_call("null hypercall")?,
            cpuid_exit: per_call("cpuid exit")?,
            boot_to_prompt_tsc: boot[0],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "info\n\
        vmx features: ept vpid unrestricted-guest preemption-timer\n\
        memory:       total 262144 KiB, free 250000 KiB, hv 2048 KiB\n\
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
        assert_eq!(
            (
                info.memory_total_kib,
                info.memory_free_kib,
                info.memory_hv_kib
            ),
            (262144, 250000, 2048)
        );
        assert_eq!(info.exits_total, 20);
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
        assert_eq!(
            bench.null_hypercall,
            PerCall {
                mean_tsc: 512,
                min_tsc: 500,
                calls: 10000
            }
        );
        assert_eq!(bench.cpuid_exit.min_tsc, 290);
        assert_eq!(bench.boot_to_prompt_tsc, 123456789);
        assert!(BenchReport::parse("bench: cpuid exit 3 tsc/call").is_err());
    }
}
