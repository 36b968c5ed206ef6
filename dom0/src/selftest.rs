//! `selftest`: hostile hypercalls that dom0 makes against the live
//! hypervisor to show that every bad argument gets its documented error and
//! that hv keeps running. The table is data; `main` resolves the symbolic
//! arguments to real addresses and runs it.

use abi::Error;
use abi::hypercall::Hypercall;

/// A hypercall argument, resolved at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argument {
    /// This exact value.
    Value(u64),
    /// The address of a writable page-sized buffer in dom0's RAM.
    Buffer,
    /// The first guest-physical address past everything mapped for dom0
    /// (RAM and ramdisk), plus an offset (wrapping: `u64::MAX - n` is
    /// n+1 bytes below the end).
    MappedEnd(u64),
    /// The read-only ramdisk mapping (or the mapped end when there is none).
    Ramdisk,
}

/// The result a case expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Success with exactly this value.
    Value(u64),
    /// This error.
    Error(Error),
}

/// One check.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub number: u64,
    pub arguments: [Argument; 5],
    pub expected: Expected,
}

use Argument::{Buffer, MappedEnd, Ramdisk, Value};

const fn case(name: &'static str, number: u64, arguments: [Argument; 5], expected: Expected) -> Case {
    Case { name, number, arguments, expected }
}

const NONE: Argument = Value(0);
const HV_INFO: u64 = Hypercall::HvInfo as u64;
const HV_INFO_SIZE: u64 = core::mem::size_of::<abi::info::HvInfo>() as u64;
const DOMAIN_INFO: u64 = Hypercall::DomainInfo as u64;
const DOMAIN_INFO_SIZE: u64 = core::mem::size_of::<abi::info::DomainInfo>() as u64;
const CONSOLE: u64 = Hypercall::ConsoleWrite as u64;

/// The checks, in the order they run.
pub const CASES: [Case; 17] = [
    case("version", Hypercall::Version as u64, [NONE; 5], Expected::Value(abi::ABI_VERSION as u64)),
    case("null", Hypercall::Null as u64, [NONE; 5], Expected::Value(0)),
    case("unknown number", 999, [NONE; 5], Expected::Error(Error::NoSuchHypercall)),
    case("number u64::MAX", u64::MAX, [NONE; 5], Expected::Error(Error::NoSuchHypercall)),
    case("console past mapped memory", CONSOLE, [MappedEnd(0x1000), Value(16), NONE, NONE, NONE], Expected::Error(Error::BadAddress)),
    case("console straddling mapped end", CONSOLE, [MappedEnd(u64::MAX - 3), Value(16), NONE, NONE, NONE], Expected::Error(Error::BadAddress)),
    case("console too long", CONSOLE, [Buffer, Value(1 << 20), NONE, NONE, NONE], Expected::Error(Error::InvalidArgument)),
    case("console wrapping address", CONSOLE, [Value(u64::MAX - 2), Value(16), NONE, NONE, NONE], Expected::Error(Error::BadAddress)),
    case("hv info too small", HV_INFO, [Buffer, Value(8), NONE, NONE, NONE], Expected::Error(Error::BufferTooSmall)),
    case("hv info larger buffer", HV_INFO, [Buffer, Value(4096), NONE, NONE, NONE], Expected::Value(HV_INFO_SIZE)),
    case("hv info into read-only ramdisk", HV_INFO, [Ramdisk, Value(HV_INFO_SIZE), NONE, NONE, NONE], Expected::Error(Error::BadAddress)),
    case("hv info at 4 GiB", HV_INFO, [Value(1 << 32), Value(HV_INFO_SIZE), NONE, NONE, NONE], Expected::Error(Error::BadAddress)),
    case("domain info, no such domain", DOMAIN_INFO, [Value(12345), Buffer, Value(DOMAIN_INFO_SIZE), NONE, NONE], Expected::Error(Error::NotFound)),
    case("domain info, id beyond 32 bits", DOMAIN_INFO, [Value(1 << 40), Buffer, Value(DOMAIN_INFO_SIZE), NONE, NONE], Expected::Error(Error::InvalidArgument)),
    case("dmesg past mapped memory", Hypercall::DmesgRead as u64, [MappedEnd(0), Value(64), NONE, NONE, NONE], Expected::Error(Error::BadAddress)),
    case("platform op unknown", Hypercall::Platform as u64, [Value(99), NONE, NONE, NONE, NONE], Expected::Error(Error::InvalidArgument)),
    case("null ignores arguments", Hypercall::Null as u64, [Value(u64::MAX); 5], Expected::Value(0)),
];

/// Whether a raw RAX value matches the expectation.
pub fn matches(expected: Expected, result: i64) -> bool {
    match expected {
        Expected::Value(value) => result >= 0 && result as u64 == value,
        Expected::Error(error) => result == error.code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_errors_cover_the_enum() {
        for (i, a) in CASES.iter().enumerate() {
            for b in &CASES[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
        for error in [Error::NoSuchHypercall, Error::BadAddress, Error::InvalidArgument, Error::BufferTooSmall, Error::NotFound] {
            assert!(CASES.iter().any(|c| c.expected == Expected::Error(error)), "{error:?} untested");
        }
    }

    #[test]
    fn matching() {
        assert!(matches(Expected::Value(3), 3));
        assert!(!matches(Expected::Value(3), 4));
        assert!(!matches(Expected::Value(u64::MAX), -1));
        assert!(matches(Expected::Error(Error::BadAddress), Error::BadAddress.code()));
        assert!(!matches(Expected::Error(Error::BadAddress), 0));
    }
}
