//! The event glue that needs the machine: device interrupts into dom0's
//! ports and the upcall injected into a vCPU. The rest of event delivery
//! is `hvcore::event_ops`.

use hvcore::event_ops::raise_in;

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

/// Injects the interrupt due for vCPU `vcpu` of `domain` (`cpu`, which
/// this CPU runs: the upcall, else its APIC's, `vlapic::take_interrupt`)
/// if it can take one now, and asks for an exit as soon as it can take
/// the next one if another waits. Out of line, with the VMCS accessors
/// inlined into it: the run loop's top stays small.
#[inline(never)]
pub fn deliver_upcall(domain: &mut Domain, vcpu: usize, cpu: &mut Vcpu) {
    if cpu.interruptible() {
        if let Some(vector) = hvcore::vlapic::take_interrupt(domain, vcpu) {
            cpu.inject_interrupt(vector);
        }
        cpu.set_interrupt_window_exiting(domain.vcpus[vcpu].upcall_due);
    } else {
        cpu.set_interrupt_window_exiting(true);
    }
}
