//! Guest disk specifications, the entries of a config's `disk = [...]`:
//! `"<device>:<first sector>+<sector count>"`, optionally followed by `,ro`.
//! For example `"ata1-master:2048+8192"` gives the guest 4 MiB of the
//! secondary channel's master disk, starting 1 MiB in.

use core::fmt;

/// A parsed disk entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpec<'a> {
    /// The physical disk's name as dom0 reports it (`ata1-master`, ...).
    pub device: &'a str,
    /// First sector of the region on the physical disk.
    pub start: u64,
    /// Sectors in the region (the guest's disk size).
    pub sectors: u64,
    /// The guest may only read.
    pub readonly: bool,
}

/// Why a disk entry was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskSpecError {
    /// Not `<device>:<start>+<count>`.
    Syntax,
    /// A number is not a decimal integer.
    BadNumber,
    /// No sectors, or the region wraps past the largest sector number.
    BadRange,
    /// An option other than `ro`.
    UnknownOption,
}

impl fmt::Display for DiskSpecError {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        out.write_str(match self {
            DiskSpecError::Syntax => "expected \"<device>:<first sector>+<sector count>[,ro]\"",
            DiskSpecError::BadNumber => "sector numbers must be decimal integers",
            DiskSpecError::BadRange => "the region must have at least one sector and fit in 64 bits",
            DiskSpecError::UnknownOption => "the only option is \"ro\"",
        })
    }
}

/// Parses one `disk` entry.
pub fn parse(text: &str) -> Result<DiskSpec<'_>, DiskSpecError> {
    let (region, options) = match text.split_once(',') {
        Some((region, options)) => (region, Some(options)),
        None => (text, None),
    };
    let readonly = match options.map(str::trim) {
        None => false,
        Some("ro") => true,
        Some(_) => return Err(DiskSpecError::UnknownOption),
    };
    let (device, range) = region.trim().split_once(':').ok_or(DiskSpecError::Syntax)?;
    let (start, sectors) = range.split_once('+').ok_or(DiskSpecError::Syntax)?;
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(DiskSpecError::Syntax);
    }
    let number = |text: &str| {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DiskSpecError::BadNumber);
        }
        text.parse::<u64>().map_err(|_| DiskSpecError::BadNumber)
    };
    let (start, sectors) = (number(start)?, number(sectors)?);
    if sectors == 0 || start.checked_add(sectors).is_none() {
        return Err(DiskSpecError::BadRange);
    }
    Ok(DiskSpec { device, start, sectors, readonly })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_entries() {
        assert_eq!(
            parse("ata1-master:2048+8192"),
            Ok(DiskSpec { device: "ata1-master", start: 2048, sectors: 8192, readonly: false })
        );
        assert_eq!(parse(" ata0-slave:0+1,ro").map(|d| (d.start, d.sectors, d.readonly)), Ok((0, 1, true)));
    }

    #[test]
    fn bad_entries() {
        assert_eq!(parse("ata1-master"), Err(DiskSpecError::Syntax));
        assert_eq!(parse("ata1-master:2048"), Err(DiskSpecError::Syntax));
        assert_eq!(parse(":1+1"), Err(DiskSpecError::Syntax));
        assert_eq!(parse("a/b:1+1"), Err(DiskSpecError::Syntax));
        assert_eq!(parse("d:x+1"), Err(DiskSpecError::BadNumber));
        assert_eq!(parse("d:-1+1"), Err(DiskSpecError::BadNumber));
        assert_eq!(parse("d:1+"), Err(DiskSpecError::BadNumber));
        assert_eq!(parse("d:1+0"), Err(DiskSpecError::BadRange));
        assert_eq!(parse("d:18446744073709551615+2"), Err(DiskSpecError::BadRange));
        assert_eq!(parse("d:1+1,rw"), Err(DiskSpecError::UnknownOption));
    }
}
