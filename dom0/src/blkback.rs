//! The block back end's I/O: takes checked requests off a guest's ring,
//! moves the data between the physical disk and the guest's granted pages
//! (hypervisor grant copies), and answers.

use abi::DomainId;
use abi::block::{Response, STATUS_ERROR, STATUS_OK, STATUS_UNSUPPORTED};
use dom0core::block_backend::{Plan, Refusal, plan};
use pv_drivers::hypercall;

use crate::ata::AtaDisk;
use crate::toolstack::BlockBackend;

/// Most requests served per call, so one busy guest cannot keep dom0 from
/// its other work.
const BATCH: usize = 32;

impl BlockBackend {
    /// Serves up to a batch of requests. Returns whether any was served.
    pub fn service(&mut self, disks: &mut [AtaDisk], guest: DomainId) -> bool {
        let mut served = 0;
        while served < BATCH {
            let request = match self.ring.pop_request() {
                Ok(Some(request)) => request,
                Ok(None) => {
                    // Ask to be told of the next request, then look once more.
                    if self.ring.arm_request_event() {
                        continue;
                    }
                    break;
                }
                Err(_) => {
                    self.broken = Some("request index out of range");
                    return true;
                }
            };
            served += 1;
            self.requests += 1;
            let status = match plan(&request, &self.region) {
                Ok(plan) => execute(&plan, disks.get_mut(self.disk), guest),
                Err(Refusal::UnknownOperation) => STATUS_UNSUPPORTED,
                Err(_) => STATUS_ERROR,
            };
            let response = Response { id: request.id, operation: request.operation, _reserved: [0; 3], status };
            if self.ring.push_response(&response).is_err() {
                self.broken = Some("more responses than requests");
                return true;
            }
        }
        if served > 0 && self.ring.publish_responses() {
            let _ = hypercall::notify(self.port);
        }
        served > 0
    }
}

fn execute(plan: &Plan, disk: Option<&mut AtaDisk>, guest: DomainId) -> i32 {
    let Some(disk) = disk else { return STATUS_ERROR };
    let mut buffer = [0u8; 4096];
    match plan {
        Plan::Flush => {
            if disk.flush().is_ok() { STATUS_OK } else { STATUS_ERROR }
        }
        Plan::Read(transfers) => {
            for transfer in transfers {
                let bytes = &mut buffer[..transfer.bytes as usize];
                if disk.read(transfer.disk_sector, bytes).is_err()
                    || hypercall::grant_copy(guest, transfer.grant, transfer.offset, bytes, true).is_err()
                {
                    return STATUS_ERROR;
                }
            }
            STATUS_OK
        }
        Plan::Write(transfers) => {
            for transfer in transfers {
                let bytes = &mut buffer[..transfer.bytes as usize];
                if hypercall::grant_copy(guest, transfer.grant, transfer.offset, bytes, false).is_err()
                    || disk.write(transfer.disk_sector, bytes).is_err()
                {
                    return STATUS_ERROR;
                }
            }
            STATUS_OK
        }
    }
}
