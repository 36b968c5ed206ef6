//! Formatting of what the shell reports (`info`, `bench`), kept apart from
//! the hypercalls that fetch the data so it can be tested on the host.

use core::fmt::{self, Write};

use abi::info::{DomainInfo, HvInfo, exit_reason_name, feature};

/// Writes the `info` report.
pub fn write_info(out: &mut impl Write, hv: &HvInfo, dom0: &DomainInfo, cpu_brand: &str) -> fmt::Result {
    let version_length = hv.hv_version.iter().position(|&b| b == 0).unwrap_or(hv.hv_version.len());
    let version = core::str::from_utf8(&hv.hv_version[..version_length]).unwrap_or("?");
    let (major, minor) = abi::version_parts(hv.abi_version);
    writeln!(out, "Mica hv {version}, ABI {major}.{minor}")?;
    writeln!(out, "cpu:          {}", if cpu_brand.is_empty() { "unknown" } else { cpu_brand })?;
    write!(out, "vmx features:")?;
    for (bit, name) in feature::NAMES {
        if hv.features & bit != 0 {
            write!(out, " {name}")?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "memory:       total {} KiB, free {} KiB, hv {} KiB",
        hv.total_pages * 4,
        hv.free_pages * 4,
        hv.hv_pages * 4
    )?;
    writeln!(out, "domains:      {}", hv.domain_count)?;
    writeln!(out, "dom0 memory:  {} KiB", dom0.current_pages * 4)?;
    writeln!(out, "dom0 exits:   {} total", dom0.exit_total)?;
    for (reason, &count) in dom0.exit_counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        match exit_reason_name(reason) {
            Some(name) => writeln!(out, "  {name:<20} {count}")?,
            None => writeln!(out, "  reason-{reason:<13} {count}")?,
        }
    }
    Ok(())
}

/// Summary of repeated round-trip measurements, in TSC ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    pub calls: u64,
    pub total: u64,
    pub minimum: u64,
}

impl Measurement {
    /// Mean ticks per call.
    pub fn mean(&self) -> u64 {
        self.total.checked_div(self.calls).unwrap_or(0)
    }
}

/// Writes one `bench` line.
pub fn write_measurement(out: &mut impl Write, what: &str, measurement: &Measurement) -> fmt::Result {
    writeln!(
        out,
        "bench: {what} {} tsc/call (min {}, {} calls)",
        measurement.mean(),
        measurement.minimum,
        measurement.calls
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_report_lists_features_memory_and_exits() {
        let mut hv = HvInfo { abi_version: abi::ABI_VERSION, domain_count: 1, ..HvInfo::default() };
        hv.features = feature::EPT | feature::VPID;
        hv.total_pages = 1000;
        hv.free_pages = 500;
        hv.hv_pages = 10;
        hv.hv_version[..5].copy_from_slice(b"0.1.0");
        let mut dom0 = DomainInfo { exit_total: 7, current_pages: 256, ..DomainInfo::default() };
        dom0.exit_counts[18] = 5;
        dom0.exit_counts[10] = 2;
        dom0.exit_counts[77] = 1;
        let mut out = String::new();
        write_info(&mut out, &hv, &dom0, "Test CPU").unwrap();
        let heading = format!("Mica hv 0.1.0, ABI {}.{}\n", abi::ABI_VERSION_MAJOR, abi::ABI_VERSION_MINOR);
        assert!(out.starts_with(&heading), "{out}");
        assert!(out.contains("vmx features: ept vpid\n"), "{out}");
        assert!(out.contains("memory:       total 4000 KiB, free 2000 KiB, hv 40 KiB\n"), "{out}");
        assert!(out.contains("dom0 exits:   7 total\n"), "{out}");
        assert!(out.contains("  vmcall               5\n"), "{out}");
        assert!(out.contains("  cpuid                2\n"), "{out}");
        assert!(out.contains("  reason-77"), "{out}");
        assert!(!out.contains("hlt"), "zero counts are omitted: {out}");
    }

    #[test]
    fn measurement_lines() {
        let mut out = String::new();
        let m = Measurement { calls: 4, total: 400, minimum: 90 };
        write_measurement(&mut out, "null hypercall", &m).unwrap();
        assert_eq!(out, "bench: null hypercall 100 tsc/call (min 90, 4 calls)\n");
        assert_eq!(Measurement { calls: 0, total: 0, minimum: 0 }.mean(), 0);
    }
}
