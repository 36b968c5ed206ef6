//! The net back end's I/O: takes frames off guests' transmit rings (Xen's
//! netif: one hypervisor grant copy a slot, after the frame's slots are
//! checked; blank checksums filled), and copies
//! frames the switch sends to a guest into the buffers it posted on its
//! receive ring. The switch itself (MAC learning) is `dom0core::backends::net::switch`;
//! `Toolstack::service_net` joins the two and the physical NIC.

use abi::DomainId;
use abi::xen::io::net::{NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NetifRxResponse, NetifTxResponse};
use dom0core::backends::net::{Next, TxFrame, check_rx, fill_checksum};
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
    /// Transmitted frames refused (bad grant, size, range or flags).
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
    /// `FRAME_MAX` bytes): all its slots, copied and checked as
    /// `abi::net` says, each answered.
    pub fn take_frame(&mut self, guest: DomainId, frame: &mut [u8]) -> Transmit {
        if self.broken.is_some() {
            return Transmit::Idle;
        }
        let first = match self.tx.pop_request() {
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
        // The frame's later slots (extra-info, then data) were published
        // with its first: one missing is the front end's fault.
        let mut assembly = TxFrame::start(&first);
        let mut next = assembly.next();
        while next == Next::Slot {
            next = match self.tx.pop_request() {
                Ok(Some(slot)) => assembly.add(&slot),
                Ok(None) => Next::Fatal("a transmitted frame runs past the published requests"),
                Err(_) => Next::Fatal("transmit request index out of range"),
            };
        }
        if let Next::Fatal(reason) = next {
            self.broken = Some(reason);
            return Transmit::Idle;
        }
        let copied = Self::copy_frame(guest, &mut assembly, frame);
        let status = if copied.is_some() { NETIF_RSP_OKAY } else { NETIF_RSP_ERROR };
        for (id, data) in assembly.responses() {
            let response = NetifTxResponse { id, status: if data { status } else { NETIF_RSP_NULL } };
            if self.tx.push_response(&response).is_err() {
                self.broken = Some("more transmit responses than requests");
                return Transmit::Idle;
            }
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

    /// Copies a whole, checked frame's slots into `frame` and fills a blank
    /// checksum; returns its length, or None when it is refused.
    fn copy_frame(guest: DomainId, assembly: &mut TxFrame, frame: &mut [u8]) -> Option<usize> {
        let length = assembly.length();
        let checksum_blank = assembly.checksum_blank();
        let mut at = 0;
        for plan in assembly.outcome().ok()? {
            let bytes = frame.get_mut(at..at + plan.size as usize)?;
            if !bytes.is_empty() {
                hypercall::grant_copy(guest, plan.grant, plan.offset, bytes, false).ok()?;
            }
            at += plan.size as usize;
        }
        let frame = frame.get_mut(..length)?;
        if checksum_blank {
            fill_checksum(frame).ok()?;
        }
        Some(length)
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
            let status = if copied { frame.len() as i16 } else { NETIF_RSP_ERROR };
            let response = NetifRxResponse { id: request.id, offset: 0, flags: 0, status };
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
