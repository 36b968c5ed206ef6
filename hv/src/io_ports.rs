//! Which I/O ports dom0 may take over (`abi::physdev::PhysdevOp::AllowIoPorts`):
//! any range of at most `IO_PORTS_MAX` ports that touches none of hv's.
//!
//! hv keeps the ports through which dom0 could take the machine from it:
//! the legacy interrupt controllers and timer it programs, the reset and
//! power-off ports, and the emulators' debug ports (one of which ends a
//! Bochs run). The ACPI PM1 control ports and the reset register (when it
//! is a port) come from the firmware's FADT.

use core::ops::Range;

use abi::physdev::IO_PORTS_MAX;

use crate::acpi::AcpiInfo;

/// Ports hv keeps on every machine, as half-open ranges.
pub const HV_PORTS: [Range<u32>; 15] = [
    // 8259A PICs (hv masks them): master, slave.
    0x20..0x22,
    0xa0..0xa2,
    // Their edge/level control registers (ELCR).
    0x4d0..0x4d2,
    // 8254 PIT (hv calibrates the TSC with channel 2) and its gate, port B.
    0x40..0x44,
    0x61..0x62,
    // Keyboard controller: data and command (hv's reboot pulses the reset line).
    0x60..0x61,
    0x64..0x65,
    // CMOS/RTC index and data.
    0x70..0x72,
    // System control port A: bit 0 resets the CPU.
    0x92..0x93,
    // PCI reset control register.
    0xcf9..0xcfa,
    // PM1a control ports emulators use (QEMU's PIIX4, Bochs), 2 bytes each.
    0x604..0x606,
    0xb004..0xb006,
    // Debug ports: Bochs's port E9 hack, its BIOS message ports, its shutdown port.
    0xe9..0xea,
    0x400..0x404,
    0x8900..0x8901,
];

/// Bytes of a PM1 control register (ACPI 4.8.3.2.1: PM1_CNT_LEN is 2).
const PM1_CONTROL_BYTES: u32 = 2;

/// Why a request to open ports is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Zero ports, more than `IO_PORTS_MAX`, or past port 0xFFFF.
    BadLength,
    /// The range touches a port hv keeps.
    Forbidden,
}

/// Checks a request to open `count` ports from `first`; returns the ports
/// to open. `acpi` adds the FADT's PM1 control ports and reset port to
/// [`HV_PORTS`].
pub fn check(first: u64, count: u64, acpi: Option<&AcpiInfo>) -> Result<Range<u32>, Refusal> {
    if count == 0 || count > IO_PORTS_MAX {
        return Err(Refusal::BadLength);
    }
    // count <= IO_PORTS_MAX, so only `first` can overflow.
    let end = first.checked_add(count).ok_or(Refusal::BadLength)?;
    if end > 0x1_0000 {
        return Err(Refusal::BadLength);
    }
    let (first, end) = (first as u32, end as u32);
    let fadt_ports = acpi
        .into_iter()
        .flat_map(|info| [info.pm1a_control, info.pm1b_control])
        .filter(|&port| port != 0)
        .map(|port| u32::from(port)..u32::from(port) + PM1_CONTROL_BYTES);
    let reset_port = acpi.and_then(|info| info.reset).and_then(|reset| match reset.space {
        crate::acpi::ResetSpace::Io(port) => Some(u32::from(port)..u32::from(port) + 1),
        crate::acpi::ResetSpace::Memory(_) => None,
    });
    let mut kept = HV_PORTS.iter().cloned().chain(fadt_ports).chain(reset_port);
    if kept.any(|range| range.start < end && first < range.end) {
        return Err(Refusal::Forbidden);
    }
    Ok(first..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bochs_acpi() -> AcpiInfo {
        AcpiInfo {
            pm1a_control: 0xb004,
            pm1b_control: 0,
            s5_sleep_types: Some((0, 0)),
            ioapic_address: None,
            reset: Some(crate::acpi::ResetRegister { space: crate::acpi::ResetSpace::Io(0x3f0), value: 1 }),
            ..AcpiInfo::default()
        }
    }

    #[test]
    fn the_fadt_reset_port_is_hvs() {
        let acpi = bochs_acpi();
        assert_eq!(check(0x3f0, 1, Some(&acpi)), Err(Refusal::Forbidden));
        assert_eq!(check(0x3e8, 16, Some(&acpi)), Err(Refusal::Forbidden));
        assert!(check(0x3f0, 1, None).is_ok(), "without a FADT reset port it is an ordinary port");
    }

    #[test]
    fn device_ports_are_allowed() {
        let acpi = bochs_acpi();
        // Bochs's IDE bus-master BAR, a whole 256-port BAR, ports next to hv's.
        assert_eq!(check(0xc000, 16, Some(&acpi)), Ok(0xc000..0xc010));
        assert_eq!(check(0xd000, IO_PORTS_MAX, Some(&acpi)), Ok(0xd000..0xd100));
        assert!(check(0x1f0, 8, Some(&acpi)).is_ok());
        assert!(check(0x44, 0x1c, Some(&acpi)).is_ok());
        assert!(check(0xcf8, 1, None).is_ok());
        assert!(check(0xcfa, 6, None).is_ok());
        assert!(check(0xb006, 2, Some(&acpi)).is_ok());
        assert!(check(0xffff, 1, Some(&acpi)).is_ok());
        assert!(check(0x80, 1, None).is_ok());
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert_eq!(check(0xc000, 0, None), Err(Refusal::BadLength));
        assert_eq!(check(0xc000, IO_PORTS_MAX + 1, None), Err(Refusal::BadLength));
        assert_eq!(check(0xffff, 2, None), Err(Refusal::BadLength));
        assert_eq!(check(0x1_0000, 1, None), Err(Refusal::BadLength));
        assert_eq!(check(u64::MAX, 1, None), Err(Refusal::BadLength));
        assert_eq!(check(u64::MAX - 2, 16, None), Err(Refusal::BadLength));
        assert_eq!(check(0xc000, u64::MAX, None), Err(Refusal::BadLength));
    }

    #[test]
    fn hv_ports_are_refused() {
        let acpi = bochs_acpi();
        for port in [0x20, 0x21, 0xa0, 0xa1, 0x40, 0x43, 0x61, 0x60, 0x64, 0x70, 0x71, 0x92, 0xcf9, 0x4d0, 0x4d1] {
            assert_eq!(check(port, 1, Some(&acpi)), Err(Refusal::Forbidden), "port {port:#x}");
        }
        for port in [0x604, 0x605, 0xb004, 0xb005, 0xe9, 0x400, 0x402, 0x403, 0x8900] {
            assert_eq!(check(port, 1, None), Err(Refusal::Forbidden), "port {port:#x}");
        }
        // Ranges that only overlap at one end.
        assert_eq!(check(0x00, 0x21, None), Err(Refusal::Forbidden));
        assert_eq!(check(0xcf8, 8, None), Err(Refusal::Forbidden));
        assert_eq!(check(0x8800, IO_PORTS_MAX, None), Ok(0x8800..0x8900));
        assert_eq!(check(0x8801, IO_PORTS_MAX, None), Err(Refusal::Forbidden));
        assert_eq!(check(0x1, 0xe9, None), Err(Refusal::Forbidden));
    }

    #[test]
    fn the_fadt_ports_are_refused() {
        let acpi = AcpiInfo { pm1a_control: 0x1804, pm1b_control: 0x1904, ..bochs_acpi() };
        assert_eq!(check(0x1800, 16, Some(&acpi)), Err(Refusal::Forbidden));
        assert_eq!(check(0x1905, 1, Some(&acpi)), Err(Refusal::Forbidden));
        assert!(check(0x1906, 10, Some(&acpi)).is_ok());
        assert!(check(0x1800, 16, None).is_ok());
        // An absent PM1b (0) forbids nothing at port 0.
        let no_b = AcpiInfo { pm1b_control: 0, ..acpi };
        assert!(check(0, 1, Some(&no_b)).is_ok());
    }
}
