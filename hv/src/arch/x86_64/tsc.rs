//! Measures the TSC frequency against the legacy PIT (8254), channel 2,
//! whose input clock is 1.193182 MHz on every PC that has one; on a machine
//! without it (some UEFI-only PCs), takes what CPUID says instead.

use super::cpu::{inb, outb, rdtsc};

const PIT_HZ: u64 = 1_193_182;
const CHANNEL2_DATA: u16 = 0x42;
const COMMAND: u16 = 0x43;
/// Port 0x61: bit 0 gates channel 2, bit 1 drives the speaker, bit 5 reads OUT2.
const CONTROL: u16 = 0x61;
const CALIBRATION_MS: u64 = 10;

/// The TSC frequency in kHz: measured against the PIT, else from CPUID
/// (leaf 0x15's crystal and ratio, else leaf 0x16's base frequency, which
/// the TSC runs at on CPUs with an invariant TSC); 0 if neither answers.
pub fn calibrate() -> u64 {
    // Without a PIT, port 0x61 may float high and "end" the count at once:
    // no TSC this century runs below 1 MHz.
    match measure_with_pit() {
        0..1000 => {
            let cpuid = raw_cpuid::CpuId::new();
            let crystal = cpuid.get_tsc_info().and_then(|info| info.tsc_frequency()).map(|hz| hz / 1000);
            let base =
                cpuid.get_processor_frequency_info().map(|info| u64::from(info.processor_base_frequency()) * 1000);
            crystal.or(base).unwrap_or(0)
        }
        khz => khz,
    }
}

/// The TSC frequency in kHz measured against the PIT, 0 if it did not answer.
fn measure_with_pit() -> u64 {
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    // SAFETY: ports 0x42, 0x43 and 0x61 are the PIT's channel 2 and its gate,
    // which hv owns (dom0 and guests never get them); this only runs a
    // one-shot count with the speaker off.
    unsafe {
        let control = inb(CONTROL) & !0x03;
        outb(CONTROL, control);
        outb(COMMAND, 0b1011_0000); // channel 2, low then high byte, mode 0, binary
        outb(CHANNEL2_DATA, count as u8);
        outb(CHANNEL2_DATA, (count >> 8) as u8);
        let start = rdtsc();
        outb(CONTROL, control | 0x01);
        let mut polls = 0u64;
        while inb(CONTROL) & 0x20 == 0 {
            polls += 1;
            // About 100 times what 10 ms of PIT take under Bochs, 1000 on a PC.
            if polls > 10_000_000 {
                return 0;
            }
        }
        let end = rdtsc();
        outb(CONTROL, control);
        (end - start) / CALIBRATION_MS
    }
}
