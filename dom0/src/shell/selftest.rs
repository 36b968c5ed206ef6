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
    /// The id of a scratch domain `selftest` creates (16 pages allowed, 4
    /// populated at guest-physical 0) and destroys afterwards.
    Scratch,
}

/// The result a case expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Success with exactly this value.
    Value(u64),
    /// This error.
    Error(Error),
    /// This Xen errno (a number outside Mica's range: Xen's answer).
    Xen(abi::xen::Errno),
}

/// One check.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub number: u64,
    pub arguments: [Argument; 5],
    pub expected: Expected,
}

use Argument::{Buffer, MappedEnd, Ramdisk, Scratch, Value};

const fn case(name: &'static str, number: u64, arguments: [Argument; 5], expected: Expected) -> Case {
    Case { name, number, arguments, expected }
}

const NONE: Argument = Value(0);
const HV_INFO: u64 = Hypercall::HvInfo as u64;
const HV_INFO_SIZE: u64 = core::mem::size_of::<abi::info::HvInfo>() as u64;
const DOMAIN_INFO: u64 = Hypercall::DomainInfo as u64;
const DOMAIN_INFO_SIZE: u64 = core::mem::size_of::<abi::info::DomainInfo>() as u64;
const CONSOLE: u64 = Hypercall::ConsoleWrite as u64;
const DOMCTL: u64 = Hypercall::DomCtl as u64;
const EVENT: u64 = Hypercall::Event as u64;
const PHYSDEV: u64 = Hypercall::Physdev as u64;
const MAP_MMIO: Argument = Value(abi::physdev::PhysdevOp::MapMmio as u64);
const TRANSLATE: Argument = Value(abi::physdev::PhysdevOp::Translate as u64);
const ALLOW_PORTS: Argument = Value(abi::physdev::PhysdevOp::AllowIoPorts as u64);
const fn op(operation: abi::domctl::DomCtlOp) -> Argument {
    Value(operation as u64)
}
const fn event(operation: abi::event::EventOp) -> Argument {
    Value(operation as u64)
}
const VCPU: u64 = Hypercall::Vcpu as u64;
const fn vcpu(operation: abi::hypercall::VcpuOp) -> Argument {
    Value(operation as u64)
}
use abi::domctl::{COPY_MAX, DomCtlOp as D, FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_SIZE};
use abi::event::EventOp as E;
use abi::hypercall::VcpuOp as V;
use abi::physdev::{DEVICE_WINDOW_BASE, DEVICE_WINDOW_END, IO_PORTS_MAX, MMIO_PAGES_MAX, TRANSLATE_DEVICE_WRITES};

/// The checks, in the order they run.
pub const CASES: [Case; 96] = [
    case("version", Hypercall::Version as u64, [NONE; 5], Expected::Value(abi::ABI_VERSION as u64)),
    case("null", Hypercall::Null as u64, [NONE; 5], Expected::Value(0)),
    case("unknown number", 999, [NONE; 5], Expected::Xen(abi::xen::Errno::Enosys)),
    case("number u64::MAX", u64::MAX, [NONE; 5], Expected::Xen(abi::xen::Errno::Enosys)),
    case(
        "unknown number of Mica's range",
        abi::xen::hypercall::MICA_HYPERCALL_LAST,
        [NONE; 5],
        Expected::Error(Error::NoSuchHypercall),
    ),
    case(
        "console past mapped memory",
        CONSOLE,
        [MappedEnd(0x1000), Value(16), NONE, NONE, NONE],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "console straddling mapped end",
        CONSOLE,
        [MappedEnd(u64::MAX - 3), Value(16), NONE, NONE, NONE],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "console too long",
        CONSOLE,
        [Buffer, Value(1 << 20), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "console wrapping address",
        CONSOLE,
        [Value(u64::MAX - 2), Value(16), NONE, NONE, NONE],
        Expected::Error(Error::BadAddress),
    ),
    case("hv info too small", HV_INFO, [Buffer, Value(8), NONE, NONE, NONE], Expected::Error(Error::BufferTooSmall)),
    case("hv info larger buffer", HV_INFO, [Buffer, Value(4096), NONE, NONE, NONE], Expected::Value(HV_INFO_SIZE)),
    case(
        "hv info into read-only ramdisk",
        HV_INFO,
        [Ramdisk, Value(HV_INFO_SIZE), NONE, NONE, NONE],
        Expected::Error(Error::BadAddress),
    ),
    // Past the end of dom0's foreign window: never mapped (inside the window,
    // guests' console pages are).
    case(
        "hv info at 5 GiB",
        HV_INFO,
        [Value(5 << 30), Value(HV_INFO_SIZE), NONE, NONE, NONE],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "domain info, no such domain",
        DOMAIN_INFO,
        [Value(12345), Buffer, Value(DOMAIN_INFO_SIZE), NONE, NONE],
        Expected::Error(Error::NotFound),
    ),
    case(
        "domain info, id beyond 32 bits",
        DOMAIN_INFO,
        [Value(1 << 40), Buffer, Value(DOMAIN_INFO_SIZE), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "dmesg past mapped memory",
        Hypercall::DmesgRead as u64,
        [MappedEnd(0), Value(64), NONE, NONE, NONE],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "platform op unknown",
        Hypercall::Platform as u64,
        [Value(99), NONE, NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case("null ignores arguments", Hypercall::Null as u64, [Value(u64::MAX); 5], Expected::Value(0)),
    // Domain control, against a scratch domain.
    case(
        "domctl unknown operation",
        DOMCTL,
        [Value(99), Scratch, NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "domctl create with no memory",
        DOMCTL,
        [op(D::Create), Value(0), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "domctl create larger than the machine",
        DOMCTL,
        [op(D::Create), Value(1 << 40), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "domctl destroy dom0",
        DOMCTL,
        [op(D::Destroy), Value(0), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "domctl pause dom0",
        DOMCTL,
        [op(D::Pause), Value(0), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "domctl destroy no such domain",
        DOMCTL,
        [op(D::Destroy), Value(31000), NONE, NONE, NONE],
        Expected::Error(Error::NotFound),
    ),
    case(
        "domctl domain id beyond 32 bits",
        DOMCTL,
        [op(D::Pause), Value(1 << 33), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "populate unaligned",
        DOMCTL,
        [op(D::PopulateMemory), Scratch, Value(0x10001), Value(1), NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "populate past the limit",
        DOMCTL,
        [op(D::PopulateMemory), Scratch, Value(0x100000), Value(13), NONE],
        Expected::Error(Error::OutOfMemory),
    ),
    case(
        "populate overflowing count",
        DOMCTL,
        [op(D::PopulateMemory), Scratch, Value(0x100000), Value(u64::MAX), NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "populate over populated pages",
        DOMCTL,
        [op(D::PopulateMemory), Scratch, Value(0), Value(1), NONE],
        Expected::Error(Error::Busy),
    ),
    case(
        "populate in the foreign window",
        DOMCTL,
        [op(D::PopulateMemory), Scratch, Value(FOREIGN_WINDOW_BASE), Value(1), NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "copy to unpopulated memory",
        DOMCTL,
        [op(D::CopyToGuest), Scratch, Value(0x200000), Buffer, Value(16)],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "copy straddling populated end",
        DOMCTL,
        [op(D::CopyToGuest), Scratch, Value(0x3ff8), Buffer, Value(16)],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "copy too long",
        DOMCTL,
        [op(D::CopyToGuest), Scratch, Value(0), Buffer, Value(COPY_MAX + 1)],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "copy from beyond dom0",
        DOMCTL,
        [op(D::CopyToGuest), Scratch, Value(0), MappedEnd(0), Value(16)],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "copy into the guest",
        DOMCTL,
        [op(D::CopyToGuest), Scratch, Value(0x1000), Buffer, Value(64)],
        Expected::Value(64),
    ),
    case(
        "vcpu context from a bad address",
        DOMCTL,
        [op(D::SetVcpuContext), Scratch, MappedEnd(0), NONE, NONE],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "vcpu context all zero",
        DOMCTL,
        [op(D::SetVcpuContext), Scratch, Buffer, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case("unpause without a vcpu", DOMCTL, [op(D::Unpause), Scratch, NONE, NONE, NONE], Expected::Error(Error::Busy)),
    case(
        "map foreign outside the window",
        DOMCTL,
        [op(D::MapForeign), Scratch, Value(0), Value(0x100000), NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map foreign unpopulated page",
        DOMCTL,
        [op(D::MapForeign), Scratch, Value(0x100000), Value(FOREIGN_WINDOW_BASE + 0x3f000), NONE],
        Expected::Error(Error::BadAddress),
    ),
    case(
        "unmap foreign not mapped",
        DOMCTL,
        [op(D::UnmapForeign), NONE, Value(FOREIGN_WINDOW_BASE + 0x3f000), NONE, NONE],
        Expected::Error(Error::NotFound),
    ),
    case(
        "weight zero",
        DOMCTL,
        [op(D::SetScheduling), Scratch, Value(0), Value(0), NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "cap over 100",
        DOMCTL,
        [op(D::SetScheduling), Scratch, Value(256), Value(101), NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "max memory below current",
        DOMCTL,
        [op(D::SetMaxMemory), Scratch, Value(1), NONE, NONE],
        Expected::Error(Error::Busy),
    ),
    case(
        "list domains into a bad buffer",
        DOMCTL,
        [op(D::ListDomains), Value(0), MappedEnd(0), Value(4), NONE],
        Expected::Error(Error::BadAddress),
    ),
    // Event channels.
    case(
        "event unknown operation",
        EVENT,
        [Value(99), NONE, NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "event bind unknown virq",
        EVENT,
        [event(E::BindVirq), Value(77), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "event send on a free port",
        EVENT,
        [event(E::Send), Value(250), NONE, NONE, NONE],
        Expected::Error(Error::NotFound),
    ),
    case(
        "event send on port beyond the table",
        EVENT,
        [event(E::Send), Value(1 << 20), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "event bind to a port not offered",
        EVENT,
        [event(E::BindInterdomain), Scratch, Value(1), NONE, NONE],
        Expected::Error(Error::NotFound),
    ),
    case(
        "event unbound for no such domain",
        EVENT,
        [event(E::AllocUnbound), Value(31000), NONE, NONE, NONE],
        Expected::Error(Error::NotFound),
    ),
    case(
        "event page with a low vector",
        EVENT,
        [event(E::RegisterPage), Buffer, Value(5), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    // Physical device access: every bad range is refused before anything is mapped.
    case(
        "physdev unknown operation",
        PHYSDEV,
        [Value(99), NONE, NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio unaligned",
        PHYSDEV,
        [MAP_MMIO, Value(DEVICE_WINDOW_BASE + 0x800), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio zero pages",
        PHYSDEV,
        [MAP_MMIO, Value(DEVICE_WINDOW_BASE), Value(0), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio too many pages",
        PHYSDEV,
        [MAP_MMIO, Value(DEVICE_WINDOW_BASE), Value(MMIO_PAGES_MAX + 1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio over RAM",
        PHYSDEV,
        [MAP_MMIO, Value(0x100000), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio the local APIC",
        PHYSDEV,
        [MAP_MMIO, Value(0xfee0_0000), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio the I/O APIC",
        PHYSDEV,
        [MAP_MMIO, Value(0xfec0_0000), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio below the window",
        PHYSDEV,
        [MAP_MMIO, Value(DEVICE_WINDOW_BASE - 0x1000), Value(2), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio past the window",
        PHYSDEV,
        [MAP_MMIO, Value(DEVICE_WINDOW_END - 0x1000), Value(2), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "map mmio wrapping range",
        PHYSDEV,
        [MAP_MMIO, Value(!0xfff), Value(2), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "translate past dom0's memory",
        PHYSDEV,
        [TRANSLATE, MappedEnd(0x1000), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "translate the ramdisk",
        PHYSDEV,
        [TRANSLATE, Ramdisk, NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "translate u64::MAX",
        PHYSDEV,
        [TRANSLATE, Value(u64::MAX), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ), // The window's last page: past every slot dom0's toolstack uses, never mapped.
    case(
        "translate an unmapped window page",
        PHYSDEV,
        [TRANSLATE, Value(FOREIGN_WINDOW_BASE + FOREIGN_WINDOW_SIZE - 0x1000), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "translate an unmapped window page for writes",
        PHYSDEV,
        [
            TRANSLATE,
            Value(FOREIGN_WINDOW_BASE + FOREIGN_WINDOW_SIZE - 0x1000),
            Value(TRANSLATE_DEVICE_WRITES),
            NONE,
            NONE,
        ],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "translate past the foreign window",
        PHYSDEV,
        [TRANSLATE, Value(FOREIGN_WINDOW_BASE + FOREIGN_WINDOW_SIZE), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "translate device memory",
        PHYSDEV,
        [TRANSLATE, Value(DEVICE_WINDOW_BASE), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "translate with an unknown flag",
        PHYSDEV,
        [TRANSLATE, Buffer, Value(2), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    // I/O ports: device BARs may be opened, hv's own ports never.
    case(
        "allow ports already passed through",
        PHYSDEV,
        [ALLOW_PORTS, Value(0x1f0), Value(8), NONE, NONE],
        Expected::Value(0),
    ),
    case(
        "allow zero ports",
        PHYSDEV,
        [ALLOW_PORTS, Value(0xc000), Value(0), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow too many ports",
        PHYSDEV,
        [ALLOW_PORTS, Value(0xc000), Value(IO_PORTS_MAX + 1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow ports past 0xffff",
        PHYSDEV,
        [ALLOW_PORTS, Value(0xffff), Value(2), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow port 0x10000",
        PHYSDEV,
        [ALLOW_PORTS, Value(0x1_0000), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow ports wrapping",
        PHYSDEV,
        [ALLOW_PORTS, Value(u64::MAX), Value(16), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow the PIT",
        PHYSDEV,
        [ALLOW_PORTS, Value(0x40), Value(4), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow the master PIC",
        PHYSDEV,
        [ALLOW_PORTS, Value(0x20), Value(2), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow the slave PIC",
        PHYSDEV,
        [ALLOW_PORTS, Value(0xa1), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow the keyboard controller",
        PHYSDEV,
        [ALLOW_PORTS, Value(0x64), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow CMOS",
        PHYSDEV,
        [ALLOW_PORTS, Value(0x70), Value(2), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow the reset register",
        PHYSDEV,
        [ALLOW_PORTS, Value(0xcf8), Value(8), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow the ACPI PM1 control port",
        PHYSDEV,
        [ALLOW_PORTS, Value(0xb000), Value(16), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "allow the Bochs shutdown port",
        PHYSDEV,
        [ALLOW_PORTS, Value(0x8900), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    // vCPUs (ABI 0.9): dom0 has one.
    case(
        "bind the timer of a vcpu dom0 lacks",
        EVENT,
        [event(E::BindVirq), Value(abi::event::Virq::Timer as u64), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "ipi for a vcpu dom0 lacks",
        EVENT,
        [event(E::BindIpi), Value(1), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "bind a port to a vcpu dom0 lacks",
        EVENT,
        [event(E::BindVcpu), Value(1), Value(1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "bind a free port to vcpu 0",
        EVENT,
        [event(E::BindVcpu), Value(250), Value(0), NONE, NONE],
        Expected::Error(Error::NotFound),
    ),
    case("vcpu id", VCPU, [vcpu(V::Id), NONE, NONE, NONE, NONE], Expected::Value(0)),
    case(
        "vcpu up beyond the count",
        VCPU,
        [vcpu(V::Up), Value(1), Buffer, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case(
        "vcpu up of id 2^32",
        VCPU,
        [vcpu(V::Up), Value(1 << 32), Buffer, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case("vcpu up of itself", VCPU, [vcpu(V::Up), Value(0), Buffer, NONE, NONE], Expected::Error(Error::Busy)),
    case("vcpu down of the only one", VCPU, [vcpu(V::Down), Value(0), NONE, NONE, NONE], Expected::Error(Error::Busy)),
    case(
        "vcpu down beyond the count",
        VCPU,
        [vcpu(V::Down), Value(8), NONE, NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
    case("vcpu unknown operation", VCPU, [Value(99), NONE, NONE, NONE, NONE], Expected::Error(Error::InvalidArgument)),
    case(
        "create with 9 vcpus",
        DOMCTL,
        [op(D::Create), Value(16), Value(abi::hypercall::MAX_VCPUS as u64 + 1), NONE, NONE],
        Expected::Error(Error::InvalidArgument),
    ),
];

/// Whether a raw RAX value matches the expectation.
pub fn matches(expected: Expected, result: i64) -> bool {
    match expected {
        Expected::Value(value) => result >= 0 && result as u64 == value,
        Expected::Error(error) => result == error.code(),
        Expected::Xen(errno) => result == errno.code(),
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
        for error in [
            Error::NoSuchHypercall,
            Error::BadAddress,
            Error::InvalidArgument,
            Error::BufferTooSmall,
            Error::NotFound,
            Error::Busy,
            Error::OutOfMemory,
        ] {
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
