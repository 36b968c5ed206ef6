//! Mica's own hypercalls besides domain control, events and grants: the
//! ABI version, the null call, console writes, reading hv's log (dmesg),
//! hv's and a domain's information, powering off and rebooting, dom0's
//! device access and the `Vcpu` calls. The `hv` binary's dispatch table
//! (`hypercall.rs`) names them; what is hardware (the log, the machine's
//! facts, power, releasing a vCPU) they reach through [`Platform`].
//!
//! Every handler validates its arguments and returns an `abi::Error`
//! rather than trusting anything the domain passed.

use abi::hypercall::{CONSOLE_WRITE_MAX, PlatformOp, VcpuOp};
use abi::info::{DOMAIN_INFO_MIN_SIZE, DomainInfo, HV_INFO_MIN_SIZE, HvInfo};
use abi::{DomainId, Error};
use zerocopy::IntoBytes;

use crate::domain::Domain;
use crate::domctl::Hypervisor;
use crate::log_ring::Level;
use crate::platform::Platform;

/// Most bytes of hv's log `DmesgRead` copies in one call (the machine's
/// log holds at most this: `Platform::copy_log`).
pub const LOG_BYTES: usize = 16 * 1024;

/// The version hv reports besides the ABI's (`HvInfo::hv_version`).
const HV_VERSION: &str = env!("CARGO_PKG_VERSION");

fn require_privileged<P: Platform>(domain: &Domain<P>) -> Result<(), Error> {
    if domain.privileged { Ok(()) } else { Err(Error::Permission) }
}

/// `Hypercall::Version`: the ABI version (`major << 16 | minor`).
pub fn version<P: Platform>(_: &mut Hypervisor<P>, _: usize, _: [u64; 5]) -> Result<u64, Error> {
    Ok(abi::ABI_VERSION as u64)
}

/// `Hypercall::Null`: nothing, for measuring a hypercall's cost.
pub fn null<P: Platform>(_: &mut Hypervisor<P>, _: usize, _: [u64; 5]) -> Result<u64, Error> {
    Ok(0)
}

/// `Hypercall::ConsoleWrite`: `length` bytes (at most `CONSOLE_WRITE_MAX`)
/// at guest-physical `address` into hv's log, tagged with the domain's id
/// and within its line budget. Returns `length`.
pub fn console_write<P: Platform>(domain: &mut Domain<P>, [address, length, ..]: [u64; 5]) -> Result<u64, Error> {
    if length > CONSOLE_WRITE_MAX {
        return Err(Error::InvalidArgument);
    }
    let mut buffer = [0u8; CONSOLE_WRITE_MAX as usize];
    let text = &mut buffer[..length as usize];
    domain.read_guest(address, text)?;
    P::domain_text(domain.id, text, &mut domain.log_budget);
    Ok(length)
}

/// `Hypercall::DmesgRead` (dom0 only): the latest bytes of hv's log, at
/// most `length`, to guest-physical `address`, all of whose `length` bytes
/// must be addresses a domain can have. Returns how many.
pub fn dmesg_read<P: Platform>(domain: &mut Domain<P>, [address, length, ..]: [u64; 5]) -> Result<u64, Error> {
    require_privileged(domain)?;
    let mut buffer = [0u8; LOG_BYTES];
    let wanted = length.min(buffer.len() as u64) as usize;
    // Validate the whole destination before doing any work.
    crate::guest::page_chunks(address, length, u64::MAX)?;
    let copied = P::copy_log(&mut buffer[..wanted]);
    domain.write_guest(address, &buffer[..copied])?;
    Ok(copied as u64)
}

/// The `HvInfo` answer: the machine's facts and hv's count of domains and
/// of the frames it holds itself.
pub fn info<P: Platform>(hv: &Hypervisor<P>) -> HvInfo {
    let machine = P::machine_info();
    let owned: u64 = hv.domains.iter().map(|d| d.current_pages).sum();
    let mut hv_version = [0u8; 16];
    let length = HV_VERSION.len().min(hv_version.len());
    hv_version[..length].copy_from_slice(&HV_VERSION.as_bytes()[..length]);
    HvInfo {
        abi_version: abi::ABI_VERSION,
        domain_count: hv.domains.count() as u32,
        // Allocated frames no domain owns: hv's own tables and VMX structures.
        hv_pages: hv.state.reserved_pages + (machine.total_pages - machine.free_pages).saturating_sub(owned),
        boot_tsc: hv.state.boot_tsc,
        hv_version,
        ..machine
    }
}

/// `Hypercall::HvInfo`: [`info`] to the caller's guest-physical `address`,
/// as many bytes as `size` asks (at least the oldest layout's). Returns
/// how many.
pub fn hv_info<P: Platform>(
    hv: &mut Hypervisor<P>,
    caller: usize,
    [address, size, ..]: [u64; 5],
) -> Result<u64, Error> {
    let length = crate::guest::versioned_size(size, HV_INFO_MIN_SIZE, size_of::<HvInfo>())?;
    let info = info(hv);
    hv.domains[caller].write_guest(address, &info.as_bytes()[..length])?;
    Ok(length as u64)
}

/// `Hypercall::DomainInfo`: domain `domain`'s `DomainInfo` (the caller's
/// own, or any domain's for dom0) to the caller's guest-physical
/// `address`, as many bytes as `size` asks. Returns how many.
pub fn domain_info<P: Platform>(
    hv: &mut Hypervisor<P>,
    caller: usize,
    [domain, address, size, ..]: [u64; 5],
) -> Result<u64, Error> {
    let length = crate::guest::versioned_size(size, DOMAIN_INFO_MIN_SIZE, size_of::<DomainInfo>())?;
    let target = DomainId::try_from(domain).map_err(|_| Error::InvalidArgument)?;
    if target != hv.domains[caller].id {
        require_privileged(&hv.domains[caller])?;
    }
    let info = hv.domains.iter().find(|d| d.id == target).ok_or(Error::NotFound)?.info();
    hv.domains[caller].write_guest(address, &info.as_bytes()[..length])?;
    Ok(length as u64)
}

/// `Hypercall::Platform` (dom0 only): powers the machine off or reboots
/// it; does not return then.
pub fn platform<P: Platform>(hv: &mut Hypervisor<P>, caller: usize, [operation, ..]: [u64; 5]) -> Result<u64, Error> {
    require_privileged(&hv.domains[caller])?;
    let operation = PlatformOp::from_number(operation).ok_or(Error::InvalidArgument)?;
    let id = hv.domains[caller].id;
    match operation {
        PlatformOp::PowerOff => P::log(Level::Warning, format_args!("powering off (requested by d{id})")),
        PlatformOp::Reboot => P::log(Level::Warning, format_args!("rebooting (requested by d{id})")),
    }
    P::power(operation)
}

/// `Hypercall::Physdev`, on dom0's domain alone (its DMA translations need
/// no other lock): `Busy` until boot has fixed what dom0 may reach.
pub fn physdev<P: Platform>(domain: &mut Domain<P>, arguments: [u64; 5]) -> Result<u64, Error> {
    let (devices, acpi) = P::devices().ok_or(Error::Busy)?;
    crate::physdev::physdev_op(domain, devices, acpi, arguments)
}

/// `Hypercall::Vcpu` on the caller's domain alone (in slot `slot`): the
/// calling vCPU's timer and id; starting and stopping its other vCPUs.
pub fn vcpu_op<P: Platform>(
    domain: &mut Domain<P>,
    slot: usize,
    [operation, a1, a2, ..]: [u64; 5],
) -> Result<u64, Error> {
    let me = P::current_vcpu();
    let count = domain.vcpu_count;
    let target = || usize::try_from(a1).ok().filter(|&vcpu| vcpu < count).ok_or(Error::InvalidArgument);
    match VcpuOp::from_number(operation).ok_or(Error::InvalidArgument)? {
        VcpuOp::SetTimer => {
            // A past deadline fires at the next scheduling decision.
            domain.vcpus[me].timer_deadline = a1;
            Ok(0)
        }
        VcpuOp::Id => Ok(me as u64),
        VcpuOp::Up => {
            let vcpu = target()?;
            let context: abi::domctl::VcpuContext = domain.read_struct(a2)?;
            crate::domctl::start_vcpu(domain, slot, vcpu, &context).map(|()| 0)
        }
        VcpuOp::Down => {
            let vcpu = target()?;
            crate::domctl::stop_vcpu(domain, vcpu)?;
            // It loses its state: Xen's `VCPUOP_initialise` may give it a
            // new one (it is no longer "initialised").
            domain.vcpus[vcpu].start_state = None;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domctl::State;
    use crate::fake_platform::{self as machine, Fake};
    use abi::domctl::VcpuContext;
    use spin::mutex::TicketMutex;
    use zerocopy::FromBytes;

    /// Where a domain keeps what it passes by address.
    const BUFFER: u64 = 0x1000;

    /// hv over the fake machine: dom0 in slot 0 (8 pages of RAM), a guest
    /// (id 1, 4 pages, 3 vCPUs) in slot 1.
    fn machine() -> Hypervisor<'static, Fake> {
        let state: &'static TicketMutex<State> = Box::leak(Box::new(TicketMutex::new(State::new())));
        let mut hv = Hypervisor { state: state.lock(), domains: crate::domain::tests::table() };
        for (id, pages, vcpus) in [(abi::DOM0, 8, 1), (1, 4, 3)] {
            let mut domain = Domain::<Fake>::new(id, id == abi::DOM0, 64).unwrap();
            domain.populate(0, pages).unwrap();
            domain.vcpu_count = vcpus;
            hv.domains.insert(domain).ok().unwrap();
        }
        hv
    }

    fn logged(text: &str) -> bool {
        machine::with(|state| state.log.iter().any(|line| line.contains(text)))
    }

    #[test]
    fn version_and_null_answer_without_looking_at_anything() {
        let mut hv = machine();
        assert_eq!(version(&mut hv, 1, [u64::MAX; 5]), Ok(abi::ABI_VERSION as u64));
        assert_eq!(null(&mut hv, 1, [u64::MAX; 5]), Ok(0));
    }

    #[test]
    fn console_writes_reach_the_log_tagged_and_bounded() {
        let mut hv = machine();
        let guest = &mut hv.domains[1];
        guest.write_guest(BUFFER, b"hello from d1\n").unwrap();
        assert_eq!(console_write(guest, [BUFFER, 14, 0, 0, 0]), Ok(14));
        assert!(logged("(d1) hello from d1\n"));
        let lines = machine::with(|state| state.log.len());
        assert_eq!(console_write(guest, [BUFFER, CONSOLE_WRITE_MAX + 1, 0, 0, 0]), Err(Error::InvalidArgument));
        assert_eq!(console_write(guest, [BUFFER, u64::MAX, 0, 0, 0]), Err(Error::InvalidArgument));
        assert_eq!(console_write(guest, [0x3800, 0x1000, 0, 0, 0]), Err(Error::BadAddress), "past its RAM");
        assert_eq!(machine::with(|state| state.log.len()), lines, "nothing logged for a refused write");
        assert_eq!(console_write(guest, [0, CONSOLE_WRITE_MAX, 0, 0, 0]), Ok(CONSOLE_WRITE_MAX), "the longest");
    }

    #[test]
    fn dmesg_is_dom0s_and_gives_the_latest_bytes() {
        let mut hv = machine();
        machine::with(|state| state.dmesg = b"hv: first\nhv: second\n".to_vec());
        assert_eq!(dmesg_read(&mut hv.domains[1], [BUFFER, 64, 0, 0, 0]), Err(Error::Permission));
        let dom0 = &mut hv.domains[0];
        assert_eq!(dmesg_read(dom0, [BUFFER, 11, 0, 0, 0]), Ok(11));
        let mut bytes = [0; 11];
        dom0.read_guest(BUFFER, &mut bytes).unwrap();
        assert_eq!(&bytes, b"hv: second\n", "the latest bytes");
        assert_eq!(dmesg_read(dom0, [BUFFER, 4096, 0, 0, 0]), Ok(21), "all there is");
        // The whole destination must be addresses, whatever the log holds.
        assert_eq!(dmesg_read(dom0, [u64::MAX - 8, 64, 0, 0, 0]), Err(Error::BadAddress));
        assert_eq!(dmesg_read(dom0, [1 << 40, 64, 0, 0, 0]), Err(Error::BadAddress), "not its RAM");
        // At most LOG_BYTES, however much is asked for (only those are written).
        machine::with(|state| state.dmesg = vec![b'x'; LOG_BYTES + 100]);
        assert_eq!(dmesg_read(dom0, [0, 1 << 20, 0, 0, 0]), Ok(LOG_BYTES as u64));
    }

    #[test]
    fn hv_info_joins_the_machines_facts_and_hvs_and_honours_the_size_asked() {
        let mut hv = machine();
        let mut cpus = [abi::info::CpuInfo::default(); abi::info::HV_INFO_CPUS];
        cpus[1] = abi::info::CpuInfo { apic_id: 2, state: abi::info::cpu_state::RUNNING_DOMAINS };
        let facts = HvInfo {
            features: 0b101,
            total_pages: 1000,
            free_pages: 600,
            tsc_khz: 2_000_000,
            cpu_count: 2,
            cpus,
            ..HvInfo::default()
        };
        machine::with(|state| state.machine_info = facts);
        (hv.state.reserved_pages, hv.state.boot_tsc) = (10, 77);
        let full = size_of::<HvInfo>() as u64;
        assert_eq!(hv_info(&mut hv, 1, [BUFFER, full + 100, 0, 0, 0]), Ok(full), "at most the whole");
        let info: HvInfo = hv.domains[1].read_struct(BUFFER).unwrap();
        assert_eq!(info.abi_version, abi::ABI_VERSION);
        assert_eq!(info.domain_count, 2);
        assert_eq!((info.features, info.total_pages, info.free_pages), (0b101, 1000, 600));
        assert_eq!(info.hv_pages, 10 + 400 - 12, "reserved, plus allocated frames no domain owns (8 + 4)");
        assert_eq!((info.tsc_khz, info.boot_tsc, info.cpu_count, info.cpus), (2_000_000, 77, 2, cpus));
        assert!(info.hv_version.starts_with(env!("CARGO_PKG_VERSION").as_bytes()));
        // The oldest layout: that many bytes and no more.
        hv.domains[1].write_guest(BUFFER, &[0xaa; 208]).unwrap();
        assert_eq!(hv_info(&mut hv, 1, [BUFFER, HV_INFO_MIN_SIZE, 0, 0, 0]), Ok(HV_INFO_MIN_SIZE));
        let mut bytes = [0; 208];
        hv.domains[1].read_guest(BUFFER, &mut bytes).unwrap();
        assert_eq!(bytes[..80], info.as_bytes()[..80]);
        assert!(bytes[80..].iter().all(|&byte| byte == 0xaa), "nothing past the size asked");
        assert_eq!(hv_info(&mut hv, 1, [BUFFER, HV_INFO_MIN_SIZE - 1, 0, 0, 0]), Err(Error::BufferTooSmall));
        assert_eq!(hv_info(&mut hv, 1, [1 << 40, full, 0, 0, 0]), Err(Error::BadAddress));
    }

    #[test]
    fn domain_info_is_a_domains_own_or_dom0s_for_any() {
        let mut hv = machine();
        let full = size_of::<DomainInfo>() as u64;
        let info = |hv: &mut Hypervisor<Fake>, caller, id: u64, size| domain_info(hv, caller, [id, BUFFER, size, 0, 0]);
        assert_eq!(info(&mut hv, 1, 1, full + 8), Ok(full));
        let bytes = hv.domains[1].read_struct::<[u8; size_of::<DomainInfo>()]>(BUFFER).unwrap();
        let read = DomainInfo::read_from_bytes(&bytes).unwrap();
        assert_eq!((read.domain_id, read.current_pages, read.vcpu_count), (1, 4, 3));
        assert_eq!(info(&mut hv, 1, 0, full), Err(Error::Permission), "a guest sees only itself");
        assert_eq!(info(&mut hv, 1, 9, full), Err(Error::Permission));
        assert_eq!(info(&mut hv, 0, 1, full), Ok(full));
        assert_eq!(info(&mut hv, 0, 9, full), Err(Error::NotFound));
        assert_eq!(info(&mut hv, 0, 1 << 40, full), Err(Error::InvalidArgument));
        assert_eq!(info(&mut hv, 0, 1, DOMAIN_INFO_MIN_SIZE - 1), Err(Error::BufferTooSmall));
        assert_eq!(info(&mut hv, 0, 1, DOMAIN_INFO_MIN_SIZE), Ok(DOMAIN_INFO_MIN_SIZE));
    }

    #[test]
    fn only_dom0_powers_the_machine_off_or_reboots_it() {
        let mut hv = machine();
        for operation in [PlatformOp::PowerOff as u64, PlatformOp::Reboot as u64, 7] {
            assert_eq!(platform(&mut hv, 1, [operation, 0, 0, 0, 0]), Err(Error::Permission));
        }
        assert_eq!(platform(&mut hv, 0, [7, 0, 0, 0, 0]), Err(Error::InvalidArgument));
        assert_eq!(machine::with(|state| state.power), None);
        for (operation, line) in [
            (PlatformOp::PowerOff, "powering off (requested by d0)"),
            (PlatformOp::Reboot, "rebooting (requested by d0)"),
        ] {
            // The machine does not come back (the fake panics).
            let call = std::panic::AssertUnwindSafe(|| platform(&mut hv, 0, [operation as u64, 0, 0, 0, 0]));
            assert!(std::panic::catch_unwind(call).is_err());
            assert_eq!(machine::with(|state| state.power), Some(operation));
            assert!(logged(line), "{line}");
        }
    }

    #[test]
    fn physdev_waits_for_boot_and_passes_what_boot_fixed() {
        let mut hv = machine();
        let translate = [abi::physdev::PhysdevOp::Translate as u64, 0x1000, 0, 0, 0];
        assert_eq!(physdev(&mut hv.domains[0], translate), Err(Error::Busy), "before boot fixed the policy");
        let devices: &'static (crate::mmio::DevicePolicy, u64) =
            Box::leak(Box::new((crate::mmio::DevicePolicy::new(), 2 * abi::PAGE_SIZE)));
        machine::with(|state| state.devices = Some((devices, None)));
        let host = hv.domains[0].host_frame(0x1000, crate::paging::Access::READ);
        assert_eq!(physdev(&mut hv.domains[0], translate), host.map_err(|_| Error::NotFound));
        let beyond = [abi::physdev::PhysdevOp::Translate as u64, 0x2000, 0, 0, 0];
        assert_eq!(physdev(&mut hv.domains[0], beyond), Err(Error::InvalidArgument), "past the RAM boot named");
        assert_eq!(physdev(&mut hv.domains[1], translate), Err(Error::Permission));
    }

    /// A 64-bit context `start_vcpu` accepts, in the guest's memory at `BUFFER`.
    fn context_at_buffer(hv: &mut Hypervisor<Fake>, rip: u64) -> u64 {
        let context =
            VcpuContext { rip, rsp: 0x2000, cr3: 0x3000, gdt_base: 0x3800, gdt_limit: 39, ..VcpuContext::default() };
        hv.domains[1].write_guest(BUFFER, context.as_bytes()).unwrap();
        BUFFER
    }

    fn vcpu(hv: &mut Hypervisor<Fake>, operation: VcpuOp, a1: u64, a2: u64) -> Result<u64, Error> {
        vcpu_op(&mut hv.domains[1], 1, [operation as u64, a1, a2, 0, 0])
    }

    #[test]
    fn the_timer_and_id_are_the_calling_vcpus() {
        let mut hv = machine();
        machine::with(|state| state.current_vcpu = 2);
        assert_eq!(vcpu(&mut hv, VcpuOp::Id, 0, 0), Ok(2));
        assert_eq!(vcpu(&mut hv, VcpuOp::SetTimer, 1234, 0), Ok(0));
        let deadlines: Vec<u64> = hv.domains[1].vcpus.iter().map(|slot| slot.timer_deadline).collect();
        assert_eq!(deadlines[..3], [0, 0, 1234]);
        assert_eq!(vcpu_op(&mut hv.domains[1], 1, [4, 0, 0, 0, 0]), Err(Error::InvalidArgument), "no such operation");
    }

    #[test]
    fn vcpus_start_from_a_checked_context_and_stop_unless_last() {
        let mut hv = machine();
        let context = context_at_buffer(&mut hv, 0x10_0000);
        // Up: only the domain's vCPUs, from readable, valid contexts.
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 3, context), Err(Error::InvalidArgument), "3 vCPUs: 0 to 2");
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, u64::MAX, context), Err(Error::InvalidArgument));
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 1, 1 << 40), Err(Error::BadAddress));
        let bad = context_at_buffer(&mut hv, 1 << 47);
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 1, bad), Err(Error::InvalidArgument), "a non-canonical rip");
        let context = context_at_buffer(&mut hv, 0x10_0000);
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 0, context), Ok(0));
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 1, context), Ok(0));
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 1, context), Err(Error::Busy), "up already");
        assert!(hv.domains[1].vcpus[1].up && hv.domains[1].vcpus[1].vcpu.is_some());
        // Down: not of a vCPU that is not up, nor of the last one up.
        assert_eq!(vcpu(&mut hv, VcpuOp::Down, 3, 0), Err(Error::InvalidArgument));
        assert_eq!(vcpu(&mut hv, VcpuOp::Down, 2, 0), Err(Error::NotFound), "never up");
        assert_eq!(vcpu(&mut hv, VcpuOp::Down, 1, 0), Ok(0));
        assert!(!hv.domains[1].vcpus[1].up && hv.domains[1].vcpus[1].vcpu.is_none());
        assert_eq!(machine::with(|state| state.released_vcpus.clone()), [0x10_0000], "no CPU held it: released");
        assert_eq!(vcpu(&mut hv, VcpuOp::Down, 1, 0), Err(Error::NotFound), "down already");
        assert_eq!(vcpu(&mut hv, VcpuOp::Down, 0, 0), Err(Error::Busy), "the last vCPU up");
        assert!(hv.domains[1].vcpus[0].up);
    }

    #[test]
    fn a_vcpu_taken_down_on_another_cpu_is_kicked_and_retired_there() {
        let mut hv = machine();
        let context = context_at_buffer(&mut hv, 0x10_0000);
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 0, context), Ok(0));
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 2, context), Ok(0));
        let slot = &mut hv.domains[1].vcpus[2];
        // CPU 1 runs it, with its timer armed: it is out of its slot.
        let running = slot.vcpu.take();
        (slot.running, slot.last_cpu, slot.timer_deadline, slot.upcall_due) = (true, 1, 99, true);
        assert_eq!(vcpu(&mut hv, VcpuOp::Down, 2, 0), Ok(0));
        let slot = &hv.domains[1].vcpus[2];
        assert!(!slot.up && slot.reschedule, "leaves its CPU at once");
        assert_eq!((slot.timer_deadline, slot.upcall_due), (0, false), "its state goes");
        assert_eq!(machine::with(|state| state.kicks.clone()), [1]);
        assert!(machine::with(|state| state.released_vcpus.is_empty()), "CPU 1 still holds it");
        assert_eq!(vcpu(&mut hv, VcpuOp::Up, 2, context), Err(Error::Busy), "until CPU 1 lets go of it");
        Fake::release_vcpu(running.unwrap());
    }
}
