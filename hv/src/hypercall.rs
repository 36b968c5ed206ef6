//! Hypercall dispatch: the table from `abi::Hypercall` numbers to handlers,
//! which are hvcore's (host-tested there). Every handler validates its
//! arguments and returns an `abi::Error` rather than trusting anything the
//! domain passed.

use abi::hypercall::HYPERCALL_COUNT;
use abi::{DomainId, Error};

use hvcore::event_ops::{Call, event_op_own};
use hvcore::mica_calls::{console_write, dmesg_read, physdev, vcpu_op};

use crate::hypervisor::{Domain, Hypervisor};

/// A handler: the hypervisor, the calling domain's index, the five arguments.
type Handler = fn(&mut Hypervisor, usize, [u64; 5]) -> Result<u64, Error>;

/// Handlers indexed by hypercall number (see `abi::Hypercall`).
static TABLE: [Handler; HYPERCALL_COUNT] = [
    hvcore::mica_calls::version,
    |hv, caller, arguments| console_write(&mut hv.domains[caller], arguments),
    |hv, caller, arguments| dmesg_read(&mut hv.domains[caller], arguments),
    hvcore::mica_calls::hv_info,
    hvcore::mica_calls::domain_info,
    hvcore::mica_calls::null,
    hvcore::mica_calls::platform,
    hvcore::domctl::domctl,
    |hv, caller, arguments| hvcore::event_ops::sched_op(&mut hv.domains[caller], arguments),
    |hv, caller, arguments| hvcore::event_ops::event_op(&mut hv.domains, caller, arguments),
    |hv, caller, arguments| vcpu_op(&mut hv.domains[caller], caller, arguments),
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
        Some(abi::Hypercall::Vcpu) => Call::Done(vcpu_op(domain, slot, arguments)),
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
/// guest-physical 0: fixed at boot (`main`), read by `Physdev`
/// (`Platform::devices`).
pub static DEVICES: spin::Once<(hvcore::mmio::DevicePolicy, u64)> = spin::Once::new();

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
