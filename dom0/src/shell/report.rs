//! Formatting of what the shell reports (`info`, `bench`), kept apart from
//! the hypercalls that fetch the data so it can be tested on the host.

use core::fmt::{self, Write};

use abi::info::{DomainInfo, HvInfo, exit_reason_name, feature};

/// Writes the `info` report; `now_tsc` is the TSC when hv answered (for
/// the uptime since hv started).
pub fn write_info(out: &mut impl Write, hv: &HvInfo, dom0: &DomainInfo, cpu_brand: &str, now_tsc: u64) -> fmt::Result {
    let version_length = hv.hv_version.iter().position(|&b| b == 0).unwrap_or(hv.hv_version.len());
    let version = core::str::from_utf8(&hv.hv_version[..version_length]).unwrap_or("?");
    let (major, minor) = abi::version_parts(hv.abi_version);
    writeln!(out, "Mica hv {version}, ABI {major}.{minor}")?;
    writeln!(out, "cpu:          {}", if cpu_brand.is_empty() { "unknown" } else { cpu_brand })?;
    // Tenths of a second since hv started (the TSC counts on every CPU).
    let tenths = now_tsc.saturating_sub(hv.boot_tsc) / (hv.tsc_khz.max(1) * 100);
    writeln!(out, "uptime:       {}.{} s", tenths / 10, tenths % 10)?;
    writeln!(out, "tsc:          {} kHz", hv.tsc_khz)?;
    writeln!(out, "cpus:         {} running hv", hv.cpu_count)?;
    // Entries sit at their CPU index; a CPU that did not start leaves a gap.
    for (index, cpu) in hv.cpus.iter().enumerate().filter(|(_, cpu)| cpu.state != abi::info::cpu_state::NONE) {
        writeln!(out, "  cpu {index:<2} apic id {:<3} {}", cpu.apic_id, abi::info::cpu_state::name(cpu.state))?;
    }
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

/// Describes a crash record as "crashed: <hv's text>" into `out` (left
/// empty when the record holds nothing, for a "see dmesg" fallback).
/// Bytes outside printable ASCII are shown as `\xNN`; whatever does not
/// fit in `out` is left out, a whole escape at a time.
pub fn crash_reason<const N: usize>(record: &abi::info::CrashRecord, out: &mut arrayvec::ArrayString<N>) {
    let text = record.text_bytes();
    if record.reason == abi::info::CrashReason::None as u32 || text.is_empty() {
        return;
    }
    let _ = out.try_push_str("crashed: ");
    for &byte in text {
        let fits = if (0x20..0x7f).contains(&byte) {
            out.try_push(byte as char).is_ok()
        } else {
            let mut escape: arrayvec::ArrayString<4> = arrayvec::ArrayString::new();
            let _ = write!(escape, "\\x{byte:02x}");
            out.try_push_str(&escape).is_ok()
        };
        if !fits {
            break;
        }
    }
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
        hv.cpu_count = 2;
        hv.tsc_khz = 2_000_000;
        hv.boot_tsc = 777;
        hv.cpus[0] = abi::info::CpuInfo { apic_id: 0, state: abi::info::cpu_state::RUNNING_DOMAINS };
        hv.cpus[1] = abi::info::CpuInfo { apic_id: 3, state: abi::info::cpu_state::RUNNING_DOMAINS };
        hv.hv_version[..5].copy_from_slice(b"0.1.0");
        let mut dom0 = DomainInfo { exit_total: 7, current_pages: 256, ..DomainInfo::default() };
        dom0.exit_counts[18] = 5;
        dom0.exit_counts[10] = 2;
        dom0.exit_counts[77] = 1;
        let mut out = String::new();
        write_info(&mut out, &hv, &dom0, "Test CPU", hv.boot_tsc + 123 * hv.tsc_khz * 100).unwrap();
        let heading = format!("Mica hv 0.1.0, ABI {}.{}\n", abi::ABI_VERSION_MAJOR, abi::ABI_VERSION_MINOR);
        assert!(out.starts_with(&heading), "{out}");
        assert!(out.contains("vmx features: ept vpid\n"), "{out}");
        assert!(
            out.contains(
                "cpus:         2 running hv\n  cpu 0  apic id 0   running domains\n  cpu 1  apic id 3   running domains\n"
            ),
            "{out}"
        );
        assert!(out.contains("memory:       total 4000 KiB, free 2000 KiB, hv 40 KiB\n"), "{out}");
        assert!(out.contains("dom0 exits:   7 total\n"), "{out}");
        assert!(out.contains("uptime:       12.3 s\ntsc:          2000000 kHz\n"), "{out}");
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

    #[test]
    fn crash_reason_comes_from_the_record_and_is_escaped_and_bounded() {
        use abi::info::{CRASH_TEXT_BYTES, CrashReason, CrashRecord};
        use arrayvec::ArrayString;
        let mut out: ArrayString<200> = ArrayString::new();
        crash_reason(&CrashRecord::NONE, &mut out);
        assert_eq!(out.as_str(), "", "no record: the caller falls back to 'see dmesg'");

        let mut record = CrashRecord { reason: CrashReason::EptViolation as u32, ..CrashRecord::NONE };
        let text = b"EPT violation at guest-physical 0x30000000";
        record.text[..text.len()].copy_from_slice(text);
        crash_reason(&record, &mut out);
        assert_eq!(out.as_str(), "crashed: EPT violation at guest-physical 0x30000000");

        // Multi-byte and control bytes are escaped, never sliced through;
        // a full buffer stops at a whole escape.
        record.text = [0; CRASH_TEXT_BYTES];
        record.text[..8].copy_from_slice(&[b'a', 0xc3, 0xa9, 0x1b, b'[', b'2', b'J', b'z']);
        let mut out: ArrayString<200> = ArrayString::new();
        crash_reason(&record, &mut out);
        assert_eq!(out.as_str(), "crashed: a\\xc3\\xa9\\x1b[2Jz");
        record.text = [0xe2; CRASH_TEXT_BYTES];
        for size in 0..40 {
            let mut small: ArrayString<40> = ArrayString::new();
            for _ in 0..size {
                small.push('.');
            }
            crash_reason(&record, &mut small);
            assert!(small.is_char_boundary(small.len()));
        }
        let mut short: ArrayString<14> = ArrayString::new();
        crash_reason(&record, &mut short);
        assert_eq!(short.as_str(), "crashed: \\xe2");
    }
}
