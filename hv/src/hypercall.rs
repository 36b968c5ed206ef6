//! Hypercall dispatch: the table from `abi::Hypercall` numbers to handlers.
//! Every handler validates its arguments and returns an `abi::Error` rather
//! than trusting anything the domain passed.

use abi::hypercall::{CONSOLE_WRITE_MAX, HYPERCALL_COUNT, PlatformOp};
use abi::info::{DOMAIN_INFO_MIN_SIZE, DomainInfo, HV_INFO_MIN_SIZE, HvInfo};
use abi::{DomainId, Error};

use hvcore::event_ops::{Call, event_op_own};

use crate::hypervisor::{Domain, Hypervisor};
use zerocopy::IntoBytes;

/// A handler: the hypervisor, the calling domain's index, the five arguments.
type Handler = fn(&mut Hypervisor, usize, [u64; 5]) -> Result<u64, Error>;

/// Handlers indexed by hypercall number (see `abi::Hypercall`).
static TABLE: [Handler; HYPERCALL_COUNT] = [
    version,
    |hv, caller, arguments| console_write(&mut hv.domains[caller], arguments),
    |hv, caller, arguments| dmesg_read(&mut hv.domains[caller], arguments),
    hv_info,
    domain_info,
    null,
    platform,
    hvcore::domctl::domctl,
    |hv, caller, arguments| hvcore::event_ops::sched_op(&mut hv.domains[caller], arguments),
    |hv, caller, arguments| hvcore::event_ops::event_op(&mut hv.domains, caller, arguments),
    |hv, caller, arguments| crate::events::vcpu_op(&mut hv.domains[caller], caller, arguments),
    |hv, caller, arguments| hvcore::grant_ops::grant_op(&mut hv.grants(), caller, arguments),
    |hv, caller, arguments| physdev(&mut hv.domains[caller], arguments),
];

/// Runs hypercall `number` for domain `caller` with every domain at hand.
pub fn dispatch(hv: &mut Hypervisor, caller: usize, number: u64, arguments: [u64; 5]) -> Result<u64, Error> {
    let call = abi::Hypercall::from_number(number).ok_or(Error::NoSuchHypercall)?;
    TABLE[call.index()](hv, caller, arguments)
}

/// Runs hypercall `number` on the caller's domain (in slot `slot`) alone (its lock held)
/// when it concerns no other: the `Sched` operations, the `Event`
/// operations [`event_op_own`] takes, `Vcpu` (its domain's vCPUs),
/// console writes, and dom0's `Physdev` and `DmesgRead`.
/// [`Call::Table`] for the rest, which [`dispatch`] runs.
#[inline]
pub fn dispatch_own(domain: &mut Domain, slot: usize, number: u64, arguments: [u64; 5]) -> Call {
    match abi::Hypercall::from_number(number) {
        // The hot path: a send, ahead of the other event operations.
        Some(abi::Hypercall::Event) if arguments[0] == abi::event::EventOp::Send as u64 => {
            let port = u32::try_from(arguments[1]).map_err(|_| Error::InvalidArgument);
            match port.and_then(|port| hvcore::event_ops::send(domain, port)) {
                Ok(call) => call,
                Err(error) => Call::Done(Err(error)),
            }
        }
        Some(abi::Hypercall::Event) => event_op_own(domain, arguments),
        Some(abi::Hypercall::Sched) => Call::Done(hvcore::event_ops::sched_op(domain, arguments)),
        Some(abi::Hypercall::Vcpu) => Call::Done(crate::events::vcpu_op(domain, slot, arguments)),
        Some(abi::Hypercall::Physdev) => Call::Done(physdev(domain, arguments)),
        Some(abi::Hypercall::ConsoleWrite) => Call::Done(console_write(domain, arguments)),
        Some(abi::Hypercall::DmesgRead) => Call::Done(dmesg_read(domain, arguments)),
        // A copy locks the granter alone; anything odd gets the table's answer.
        Some(abi::Hypercall::Grant) if arguments[0] == abi::grant::GrantOp::Copy as u64 => {
            match DomainId::try_from(arguments[1]) {
                Ok(other) if other != domain.id => Call::Pair { other },
                _ => Call::Table,
            }
        }
        _ => Call::Table,
    }
}

/// What dom0 may map as device memory and the bytes of RAM it has from
/// guest-physical 0: fixed at boot (`main`).
pub static DEVICES: spin::Once<(hvcore::mmio::DevicePolicy, u64)> = spin::Once::new();

/// `Hypercall::Physdev`, on dom0's domain alone (its DMA translations need
/// no other lock).
fn physdev(domain: &mut Domain, arguments: [u64; 5]) -> Result<u64, Error> {
    let devices = DEVICES.get().ok_or(Error::Busy)?;
    hvcore::physdev::physdev_op(domain, devices, crate::arch::platform::acpi(), arguments)
}

/// A hypercall's result as RAX holds it: the value, or the negative error code.
#[inline]
pub fn encode(result: Result<u64, Error>) -> i64 {
    match result {
        Ok(value) => value.min(i64::MAX as u64) as i64,
        Err(error) => error.code(),
    }
}

/// The result of hypercall `number` if it reads no state at all (neither
/// the caller's domain nor hv's), so the run loop answers it without hv's
/// lock: `Version` and `Null`. `None` for every other number.
#[inline(always)]
pub fn without_state(number: u64) -> Option<i64> {
    const VERSION: u64 = abi::Hypercall::Version as u64;
    const NULL: u64 = abi::Hypercall::Null as u64;
    match number {
        VERSION => Some(abi::ABI_VERSION as i64),
        NULL => Some(0),
        _ => None,
    }
}

fn require_privileged(domain: &Domain) -> Result<(), Error> {
    if domain.privileged { Ok(()) } else { Err(Error::Permission) }
}

fn version(_: &mut Hypervisor, _: usize, _: [u64; 5]) -> Result<u64, Error> {
    Ok(abi::ABI_VERSION as u64)
}

fn null(_: &mut Hypervisor, _: usize, _: [u64; 5]) -> Result<u64, Error> {
    Ok(0)
}

fn console_write(domain: &mut Domain, [address, length, ..]: [u64; 5]) -> Result<u64, Error> {
    if length > CONSOLE_WRITE_MAX {
        return Err(Error::InvalidArgument);
    }
    let mut buffer = [0u8; CONSOLE_WRITE_MAX as usize];
    let text = &mut buffer[..length as usize];
    domain.read_guest(address, text)?;
    let now = crate::arch::cpu::rdtsc();
    crate::log::domain_text(domain.id, text, &mut domain.log_budget, now);
    Ok(length)
}

fn dmesg_read(domain: &mut Domain, [address, length, ..]: [u64; 5]) -> Result<u64, Error> {
    require_privileged(domain)?;
    let mut buffer = [0u8; crate::log::RING_BYTES];
    let wanted = length.min(buffer.len() as u64) as usize;
    // Validate the whole destination before doing any work.
    hvcore::guest::page_chunks(address, length, u64::MAX)?;
    let copied = crate::log::copy_latest(&mut buffer[..wanted]);
    domain.write_guest(address, &buffer[..copied])?;
    Ok(copied as u64)
}

fn hv_info(hv: &mut Hypervisor, caller: usize, [address, size, ..]: [u64; 5]) -> Result<u64, Error> {
    let length = hvcore::guest::versioned_size(size, HV_INFO_MIN_SIZE, core::mem::size_of::<HvInfo>())?;
    let info = crate::hypervisor::info(hv);
    hv.domains[caller].write_guest(address, &info.as_bytes()[..length])?;
    Ok(length as u64)
}

fn domain_info(hv: &mut Hypervisor, caller: usize, [domain, address, size, ..]: [u64; 5]) -> Result<u64, Error> {
    let length = hvcore::guest::versioned_size(size, DOMAIN_INFO_MIN_SIZE, core::mem::size_of::<DomainInfo>())?;
    let target = DomainId::try_from(domain).map_err(|_| Error::InvalidArgument)?;
    if target != hv.domains[caller].id {
        require_privileged(&hv.domains[caller])?;
    }
    let info = hv.domains.iter().find(|d| d.id == target).ok_or(Error::NotFound)?.info();
    hv.domains[caller].write_guest(address, &info.as_bytes()[..length])?;
    Ok(length as u64)
}

fn platform(hv: &mut Hypervisor, caller: usize, [operation, ..]: [u64; 5]) -> Result<u64, Error> {
    require_privileged(&hv.domains[caller])?;
    match PlatformOp::from_number(operation).ok_or(Error::InvalidArgument)? {
        PlatformOp::PowerOff => {
            crate::warning!("powering off (requested by d{})", hv.domains[caller].id);
            crate::arch::platform::power_off()
        }
        PlatformOp::Reboot => {
            crate::warning!("rebooting (requested by d{})", hv.domains[caller].id);
            crate::arch::platform::reboot()
        }
    }
}
