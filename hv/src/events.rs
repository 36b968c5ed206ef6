//! The event glue that needs the machine: device interrupts into dom0's
//! ports, the upcall injected into a vCPU, and the `Vcpu` hypercall, which
//! starts and stops vCPUs. The rest of event delivery is
//! `hvcore::event_ops`.

use abi::Error;
use abi::hypercall::VcpuOp;
use hvcore::event_ops::raise_in;
use hvcore::platform::Platform;

use crate::arch::machine::Machine;
use crate::arch::vmx::Vcpu;
use crate::hypervisor::{DOMAINS, Domain};

/// Delivers the device interrupts that arrived: each line's port in the
/// domain that bound it (dom0) becomes pending.
pub fn deliver_device_interrupts() {
    let lines = crate::arch::ioapic::take_pending();
    if lines == 0 {
        return;
    }
    let Some(mut dom0) = DOMAINS.slot_of(abi::DOM0).and_then(|slot| DOMAINS.lock(slot)) else { return };
    for line in (0..16u8).filter(|line| lines & (1 << line) != 0) {
        if let Some(port) = dom0.events.pirq_port(line) {
            raise_in(&mut dom0, port);
        }
    }
}

/// Injects the upcall into vCPU `vcpu` of `domain` (`cpu`, which this CPU
/// runs) if it can take it now, else asks for an exit as soon as it can.
/// Out of line, with the VMCS accessors inlined into it: the run loop's
/// top stays small.
#[inline(never)]
pub fn deliver_upcall(domain: &mut Domain, vcpu: usize, cpu: &mut Vcpu) {
    let vector = domain.upcall_vector;
    let slot = &mut domain.vcpus[vcpu];
    if cpu.interruptible() {
        cpu.inject_interrupt(vector);
        cpu.set_interrupt_window_exiting(false);
        slot.upcall_due = false;
    } else {
        cpu.set_interrupt_window_exiting(true);
    }
}

/// `Hypercall::Vcpu` on the caller's domain alone (in slot `slot`): the
/// calling vCPU's timer and id; starting and stopping its other vCPUs.
pub fn vcpu_op(domain: &mut Domain, slot: usize, [operation, a1, a2, ..]: [u64; 5]) -> Result<u64, Error> {
    let me = Machine::current_vcpu();
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
            hvcore::domctl::start_vcpu(domain, slot, vcpu, &context).map(|()| 0)
        }
        VcpuOp::Down => {
            let vcpu = target()?;
            if !domain.vcpus[vcpu].up {
                return Err(Error::NotFound);
            }
            if domain.vcpus.iter().filter(|slot| slot.up).count() == 1 {
                return Err(Error::Busy);
            }
            let slot = &mut domain.vcpus[vcpu];
            (slot.up, slot.blocked, slot.timer_deadline, slot.upcall_due) = (false, false, 0, false);
            if slot.running {
                // Its CPU (this one, if it took itself down) retires it
                // when it lets go of it (`run_slice`).
                slot.reschedule = true;
                slot.notify(false);
            } else if let Some(cpu) = slot.vcpu.take() {
                Machine::release_vcpu(cpu);
            }
            Ok(0)
        }
    }
}
