//! The net back end's I/O: takes frames off guests' transmit rings (one
//! hypervisor grant copy each, after the request is checked), and copies
//! frames the switch sends to a guest into the buffers it posted on its
//! receive ring. The switch itself (MAC learning) is `dom0core::switch`;
//! `Toolstack::service_net` joins the two and the physical NIC.

use abi::DomainId;
use abi::net::{RxResponse, STATUS_ERROR, STATUS_OK, TxResponse};
use dom0core::net_backend::{check_rx, check_tx};
use pv_drivers::hypercall;
use pv_drivers::net::{RxBack, TxBack};

/// Most transmit requests taken from one vif per pass, so one busy guest
/// cannot keep dom0 from its other work.
pub const TX_BATCH: usize = 32;

/// Counters of one vif, from dom0's side.
#[derive(Clone, Copy, Debug, Default)]
pub struct VifStats {
    /// Frames the guest sent that the switch took.
    pub tx_frames: u64,
    /// Transmit requests refused (bad grant, size or range).
    pub tx_errors: u64,
    /// Frames the guest sent from a source MAC not its vif's: refused by
    /// the switch (counted in `tx_frames` too).
    pub tx_spoofed: u64,
    /// Frames delivered into the guest's buffers.
    pub rx_frames: u64,
    /// Frames for the guest dropped: no buffer posted.
    pub rx_dropped: u64,
    /// Posted buffers that could not be used (bad grant).
    pub rx_errors: u64,
}

/// A guest vif's back end.
pub struct NetBackend {
    pub tx: TxBack,
    pub rx: RxBack,
    /// dom0's end of the vif's event channel.
    pub port: u32,
    /// Foreign-window slots of the two ring pages.
    pub slots: [usize; 2],
    pub mac: [u8; 6],
    pub stats: VifStats,
    /// Set when the front end broke the protocol; the rings are no longer read.
    pub broken: Option<&'static str>,
    /// Responses are waiting to be published.
    dirty: bool,
}

/// What one look at a transmit ring found.
pub enum Transmit {
    /// A frame of this length is in the caller's buffer.
    Frame(usize),
    /// No frame this time (a request was refused and answered, or new
    /// requests arrived while arming the event): look again.
    Again,
    /// Nothing more to take (the back end asked to be told of the next).
    Idle,
}

impl NetBackend {
    pub fn new(tx: TxBack, rx: RxBack, port: u32, slots: [usize; 2], mac: [u8; 6]) -> NetBackend {
        NetBackend { tx, rx, port, slots, mac, stats: VifStats::default(), broken: None, dirty: false }
    }

    /// Takes the next frame the guest `guest` sent into `frame` (at least
    /// `FRAME_MAX` bytes) and answers its request.
    pub fn take_frame(&mut self, guest: DomainId, frame: &mut [u8]) -> Transmit {
        if self.broken.is_some() {
            return Transmit::Idle;
        }
        let request = match self.tx.pop_request() {
            Ok(Some(request)) => request,
            Ok(None) => {
                // Ask to be told of the next request, then look once more.
                return if self.tx.arm_request_event() { Transmit::Again } else { Transmit::Idle };
            }
            Err(_) => {
                self.broken = Some("transmit request index out of range");
                return Transmit::Idle;
            }
        };
        let copied = check_tx(&request).ok().and_then(|plan| {
            let bytes = frame.get_mut(..plan.size as usize)?;
            hypercall::grant_copy(guest, plan.grant, plan.offset, bytes, false).ok()?;
            Some(plan.size as usize)
        });
        let status = if copied.is_some() { STATUS_OK } else { STATUS_ERROR };
        if self.tx.push_response(&TxResponse { id: request.id, status, _reserved: 0 }).is_err() {
            self.broken = Some("more transmit responses than requests");
            return Transmit::Idle;
        }
        self.dirty = true;
        match copied {
            Some(length) => {
                self.stats.tx_frames += 1;
                Transmit::Frame(length)
            }
            None => {
                self.stats.tx_errors += 1;
                Transmit::Again
            }
        }
    }

    /// Copies `frame` into the oldest buffer guest `guest` posted; drops it
    /// (counted) when none is posted.
    pub fn deliver(&mut self, guest: DomainId, frame: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        loop {
            let request = match self.rx.pop_request() {
                Ok(Some(request)) => request,
                Ok(None) => {
                    self.stats.rx_dropped += 1;
                    return;
                }
                Err(_) => {
                    self.broken = Some("receive request index out of range");
                    return;
                }
            };
            let copied = check_rx(&request)
                .ok()
                .and_then(|grant| hypercall::grant_copy_to(guest, grant, 0, frame).ok())
                .is_some();
            let status = if copied { frame.len() as i16 } else { STATUS_ERROR };
            let response = RxResponse { id: request.id, offset: 0, status, _reserved: 0 };
            if self.rx.push_response(&response).is_err() {
                self.broken = Some("more receive responses than requests");
                return;
            }
            self.dirty = true;
            if copied {
                self.stats.rx_frames += 1;
                return;
            }
            // An unusable buffer went back empty: try the next one.
            self.stats.rx_errors += 1;
        }
    }

    /// Publishes the responses of this pass and notifies the guest if it
    /// asked to be told.
    pub fn flush(&mut self) {
        if !core::mem::take(&mut self.dirty) || self.broken.is_some() {
            return;
        }
        let tx = self.tx.publish_responses();
        let rx = self.rx.publish_responses();
        if tx || rx {
            let _ = hypercall::notify(self.port);
        }
    }
}
