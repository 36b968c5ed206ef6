//! Which CPUs hv starts: the MADT's processors (see [`crate::acpi`]), the
//! boot CPU first, limited by `maxcpus=N` on hv's command line.

/// The `maxcpus=N` option (N >= 1); None when absent or not a number.
/// The last occurrence wins, as for every hv option.
pub fn max_cpus(command_line: &str) -> Option<usize> {
    command_line
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("maxcpus="))
        .next_back()
        .and_then(|value| value.parse::<usize>().ok())
        .map(|n| n.max(1))
}

/// The `dom0_vcpus=N` option, kept within 1 to `MAX_VCPUS`; 1 when
/// absent or not a number (the last occurrence wins).
pub fn dom0_vcpus(command_line: &str) -> usize {
    let value = command_line.split_whitespace().filter_map(|word| word.strip_prefix("dom0_vcpus=")).next_back();
    value.and_then(|value| value.parse::<usize>().ok()).unwrap_or(1).clamp(1, crate::domain::MAX_VCPUS)
}

/// The APIC ids of the application processors to start, in MADT order:
/// every MADT CPU but the boot CPU (`boot_apic_id`), so that with it they
/// are at most `max_cpus` (None: no limit). `out` receives them; returns
/// how many.
pub fn application_processors(madt: &[u32], boot_apic_id: u32, max_cpus: Option<usize>, out: &mut [u32]) -> usize {
    let limit = max_cpus.unwrap_or(usize::MAX).saturating_sub(1).min(out.len());
    let mut count = 0;
    for &id in madt.iter().filter(|&&id| id != boot_apic_id) {
        if count == limit {
            break;
        }
        if !out[..count].contains(&id) {
            out[count] = id;
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dom0_vcpus_is_read_from_the_command_line_and_kept_in_range() {
        assert_eq!(dom0_vcpus("maxcpus=4"), 1);
        assert_eq!(dom0_vcpus("dom0_vcpus=2"), 2);
        assert_eq!(dom0_vcpus("dom0_vcpus=2 loglevel=info dom0_vcpus=3"), 3);
        assert_eq!(dom0_vcpus("dom0_vcpus=0"), 1);
        assert_eq!(dom0_vcpus("dom0_vcpus=99"), crate::domain::MAX_VCPUS);
        assert_eq!(dom0_vcpus("dom0_vcpus=two"), 1);
        assert_eq!(dom0_vcpus("xdom0_vcpus=2"), 1);
    }

    #[test]
    fn maxcpus_is_read_from_the_command_line() {
        assert_eq!(max_cpus("loglevel=info"), None);
        assert_eq!(max_cpus("loglevel=info maxcpus=2"), Some(2));
        assert_eq!(max_cpus("maxcpus=4 maxcpus=1"), Some(1), "the last wins");
        assert_eq!(max_cpus("maxcpus=0"), Some(1), "the boot CPU always runs");
        assert_eq!(max_cpus("maxcpus=two"), None);
        assert_eq!(max_cpus("xmaxcpus=2"), None);
    }

    #[test]
    fn the_boot_cpu_is_not_started_again_and_maxcpus_counts_it() {
        let mut out = [0u32; 8];
        let madt = [0, 1, 2, 3];
        assert_eq!(application_processors(&madt, 0, None, &mut out), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(application_processors(&madt, 2, Some(3), &mut out), 2);
        assert_eq!(&out[..2], &[0, 1], "the boot CPU need not be first in the MADT");
        assert_eq!(application_processors(&madt, 0, Some(1), &mut out), 0);
        assert_eq!(application_processors(&[], 0, None, &mut out), 0);
        assert_eq!(application_processors(&[0, 5, 5, 6], 0, None, &mut out), 2, "duplicates once");
        let mut small = [0u32; 1];
        assert_eq!(application_processors(&madt, 0, None, &mut small), 1, "at most the room given");
    }
}
