//! Example guest: a host on the vif, with smoltcp as its TCP/IP stack
//! (ARP, IPv4, ICMP echo). It answers pings at the address its command
//! line gives, and with `ping=<address>` it pings that address:
//!
//! ```text
//! cmdline = "ip=10.0.0.1/24 ping=10.0.0.2 count=10"
//! ```
//!
//! (`interval=<ms>` pauses that long between an answer and the next ping;
//! `split=<n>` sends every frame in two slots, its first n bytes at the
//! end of one page and the rest in another, as Linux's netfront sends a
//! frame that crosses a page.)
//!
//! A guest created without a vif waits for one (`network-attach`); when dom0
//! takes the vif away (`network-detach`) it says so, and when a vif comes
//! back it pings all over again.
//!
//! Each reply is reported on the console with its round trip in TSC ticks
//! (emulated instructions under Bochs; `quiet` leaves these out), then a
//! summary line
//! `nettest: ping <address>: <n> of <count> replies`. A reply that does not
//! come within three seconds (guest time) counts as lost: long enough for
//! the address resolution to be retried once (smoltcp retries after a
//! second) when the peer's vif came up after the first request.
//!
//! Hostile modes (the hostile-guest suite): `mode=hostile` and
//! `mode=hostile-rx` break the vif's rings; `mode=spoof victim=<mac>` and
//! `mode=flood-macs` attack dom0's switch and count the frames for other
//! guests it receives (see [`sniff`]). `mode=reconnect rounds=<n>` closes
//! its own vif and reconnects it n times (dom0 must let go of every page
//! each time) before it carries on as usual.
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, DeviceChange, Guest};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::icmp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address};

/// The vif as a smoltcp device: the guest runtime moves the frames.
struct Vif {
    guest: Guest,
    ticks_per_micro: u64,
    /// `split=<n>`: the bytes of each frame sent in its first slot.
    split: Option<usize>,
}

struct RxToken {
    frame: [u8; abi::net::FRAME_MAX],
    length: usize,
}

struct TxToken<'a> {
    guest: &'a mut Guest,
    split: Option<usize>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame[..self.length])
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, length: usize, f: F) -> R {
        let mut frame = [0u8; abi::net::FRAME_MAX];
        let length = length.min(frame.len());
        let result = f(&mut frame[..length]);
        // Transmit buffers free up as dom0 answers; wait (bounded) for one.
        let give_up = guest::now() + self.guest.ticks_per_second() / 10;
        let frame = &frame[..length];
        let send = |guest: &mut Guest| match self.split {
            Some(first) if first < frame.len() => guest.net_send_split(frame, first),
            _ => guest.net_send(frame),
        };
        while send(self.guest) == Err(pv_drivers::net::NetError::Full) {
            if guest::now() > give_up {
                break;
            }
            self.guest.net_wait(guest::now() + self.guest.ticks_per_second() / 1000);
        }
        result
    }
}

impl Device for Vif {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let mut frame = [0u8; abi::net::FRAME_MAX];
        let length = self.guest.net_receive(&mut frame).ok()??;
        Some((RxToken { frame, length }, TxToken { guest: &mut self.guest, split: self.split }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { guest: &mut self.guest, split: self.split })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = abi::net::FRAME_MAX;
        capabilities.checksum = ChecksumCapabilities::default();
        capabilities
    }
}

impl Vif {
    fn now(&self) -> Instant {
        Instant::from_micros((guest::now() / self.ticks_per_micro) as i64)
    }
}

/// The value of `key=` on the command line.
fn argument<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

fn parse_cidr(text: &str) -> Option<IpCidr> {
    let (address, prefix) = text.split_once('/').unwrap_or((text, "24"));
    Some(IpCidr::new(IpAddress::Ipv4(address.parse::<Ipv4Address>().ok()?), prefix.parse().ok()?))
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut cmdline = arrayvec::ArrayString::<256>::new();
    let _ = cmdline.try_push_str(guest.cmdline());
    let cmdline = cmdline.as_str();
    match argument(cmdline, "mode") {
        Some("hostile") => hostile(guest),
        Some("hostile-rx") => hostile_receive(guest),
        Some("spoof") => {
            let victim = argument(cmdline, "victim").and_then(abi::net::parse_mac);
            sniff(guest, Attack::Spoof(victim.unwrap_or([0x02, 0, 0, 0, 0, 0x02])))
        }
        Some("flood-macs") => sniff(guest, Attack::FloodMacs),
        _ => {}
    }
    // A guest created without a vif waits for `network-attach`.
    if !guest.net_connected() {
        let _ = writeln!(guest, "nettest: waiting for a vif (network-attach)");
        while !guest.net_connected() {
            guest.wait_for_event();
            if guest.take_watch_events() > 0 {
                let _ = guest.net_hotplug();
            }
        }
    }
    // `mode=reconnect rounds=<n>`: the front end closes its vif and
    // connects it again (fresh rings and buffers) n times, then pings
    // over the last connection as usual.
    if argument(cmdline, "mode") == Some("reconnect") {
        let rounds: u32 = argument(cmdline, "rounds").and_then(|text| text.parse().ok()).unwrap_or(1);
        for round in 0..rounds {
            if let Err(error) = guest.net_close() {
                let _ = writeln!(guest, "nettest: FAILED: reconnect: round {round}: close: {error:?}");
                stop(guest)
            }
            if !guest.net_reconnect() {
                let _ = writeln!(guest, "nettest: FAILED: reconnect: round {round}: the back end did not reconnect");
                stop(guest)
            }
        }
        let _ =
            writeln!(guest, "nettest: reconnect: {rounds} rounds of close and reconnect, dom0 let go of every page");
    }
    let Some(mac) = guest.net_mac() else {
        let _ = writeln!(guest, "nettest: the vif has no MAC address in the store; stopping");
        stop(guest)
    };
    let Some(cidr) = argument(cmdline, "ip").and_then(parse_cidr) else {
        let _ = writeln!(guest, "nettest: expected ip=<a.b.c.d>[/prefix] on the command line; stopping");
        stop(guest)
    };
    let target = argument(cmdline, "ping").and_then(|text| text.parse::<Ipv4Address>().ok());
    let count: u16 = argument(cmdline, "count").and_then(|text| text.parse().ok()).unwrap_or(4);
    // `interval=<ms>`: a pause between an answer (or a loss) and the next ping.
    let interval_ms: u64 = argument(cmdline, "interval").and_then(|text| text.parse().ok()).unwrap_or(0);
    // `quiet`: no line per reply (benchmarks), only losses and the summary.
    let quiet = cmdline.split_whitespace().any(|word| word == "quiet");

    let ticks_per_micro = (guest.ticks_per_second() / 1_000_000).max(1);
    let split = argument(cmdline, "split").and_then(|text| text.parse().ok()).filter(|&first| first > 0);
    let mut vif = Vif { guest, ticks_per_micro, split };
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = guest::now();
    let start = vif.now();
    let mut interface = Interface::new(config, &mut vif, start);
    interface.update_ip_addrs(|addresses| {
        let _ = addresses.push(cidr);
    });
    let mut mac_text = [0u8; 17];
    let _ = writeln!(vif.guest, "nettest: {cidr} up on vif 0, mac {}", abi::net::format_mac(mac, &mut mac_text));

    let mut rx_metadata = [icmp::PacketMetadata::EMPTY; 4];
    let mut rx_payload = [0u8; 1024];
    let mut tx_metadata = [icmp::PacketMetadata::EMPTY; 4];
    let mut tx_payload = [0u8; 1024];
    let mut socket = icmp::Socket::new(
        icmp::PacketBuffer::new(&mut rx_metadata[..], &mut rx_payload[..]),
        icmp::PacketBuffer::new(&mut tx_metadata[..], &mut tx_payload[..]),
    );
    let ident = 0x4d69;
    let _ = socket.bind(icmp::Endpoint::Ident(ident));
    let mut storage = [SocketStorage::EMPTY; 1];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let handle = sockets.add(socket);

    let second = vif.guest.ticks_per_second();
    let reply_timeout = 3 * second;
    let mut sequence: u16 = 0;
    let mut sent_at = 0u64;
    let mut waiting = false;
    let mut replies = 0u16;
    let mut round_trips = 0u64;
    let mut timed = 0u64;
    let mut started = 0u64;
    let mut reported = false;
    let interval = interval_ms * (second / 1000);
    let mut next_send = 0u64;
    loop {
        if vif.guest.take_watch_events() > 0 {
            match vif.guest.net_hotplug() {
                Some(DeviceChange::Disconnected) => {
                    let _ = writeln!(vif.guest, "nettest: vif 0 disconnected by dom0");
                }
                Some(DeviceChange::Connected) => {
                    if let Some(mac) = vif.guest.net_mac() {
                        interface.set_hardware_addr(HardwareAddress::Ethernet(EthernetAddress(mac)));
                        let _ = writeln!(
                            vif.guest,
                            "nettest: {cidr} up on vif 0, mac {}",
                            abi::net::format_mac(mac, &mut mac_text)
                        );
                    }
                    // A new link: ping the target all over again.
                    (sequence, replies, round_trips, timed, started, reported, waiting) = (0, 0, 0, 0, 0, false, false);
                }
                None => {}
            }
        }
        let now = vif.now();
        interface.poll(now, &mut vif, &mut sockets);
        if let Some(target) = target
            && vif.guest.net_connected()
        {
            let socket = sockets.get_mut::<icmp::Socket>(handle);
            while socket.can_recv() {
                let Ok((payload, from)) = socket.recv() else { break };
                let Ok(packet) = Icmpv4Packet::new_checked(payload) else { continue };
                let Ok(Icmpv4Repr::EchoReply { seq_no, .. }) =
                    Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
                else {
                    continue;
                };
                if waiting && seq_no == sequence {
                    let rtt = guest::now() - sent_at;
                    replies += 1;
                    // The first round trip also resolves the address (and
                    // may wait out a retry while the peer comes up): the
                    // bench counts from its end.
                    if replies == 1 {
                        started = guest::now();
                    } else {
                        round_trips += rtt;
                        timed += 1;
                    }
                    waiting = false;
                    next_send = guest::now() + interval;
                    if !quiet {
                        let _ = writeln!(vif.guest, "nettest: reply from {from} seq={seq_no} rtt={rtt} tsc");
                    }
                }
            }
            if waiting && guest::now() - sent_at > reply_timeout {
                let _ = writeln!(vif.guest, "nettest: no reply from {target} seq={sequence}");
                waiting = false;
                next_send = guest::now() + interval;
            }
            if !waiting && sequence < count && socket.can_send() && guest::now() >= next_send {
                sequence += 1;
                let payload = *b"mica-nettest-ping";
                let request = Icmpv4Repr::EchoRequest { ident, seq_no: sequence, data: &payload };
                if let Ok(buffer) = socket.send(request.buffer_len(), IpAddress::Ipv4(target)) {
                    request.emit(&mut Icmpv4Packet::new_unchecked(buffer), &ChecksumCapabilities::default());
                    sent_at = guest::now();
                    waiting = true;
                    continue;
                }
            }
            if !waiting && sequence == count && !reported {
                reported = true;
                let total = guest::now() - started;
                let _ = writeln!(vif.guest, "nettest: ping {target}: {replies} of {count} replies");
                if let Some(each) = round_trips.checked_div(timed) {
                    let _ = writeln!(
                        vif.guest,
                        "nettest: bench: {timed} round trips in {total} tsc, {each} tsc per round trip (after the first)"
                    );
                }
            }
        }
        let wake = interface
            .poll_delay(vif.now(), &sockets)
            .map_or(second / 10, |delay| (delay.total_micros() * vif.ticks_per_micro).clamp(1, second / 10));
        let deadline = sent_at + reply_timeout;
        let wake = if waiting { wake.min(deadline - guest::now().min(deadline)) } else { wake };
        vif.guest.net_wait(guest::now() + wake.max(1));
    }
}

/// Attacks dom0's net back end: a frame with an extra-info (GSO) slot,
/// which dom0 does not offer (it must answer both data slots with errors,
/// the extra slot with NULL, and keep the vif), a transmit request naming
/// a grant of memory this guest does not own (dom0 must answer an error),
/// then a runaway transmit producer index (dom0 must disconnect the vif).
/// Reports each step.
fn hostile(mut guest: Guest) -> ! {
    use abi::xen::io::net::{
        NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, NetifTxRequest, XEN_NETIF_EXTRA_TYPE_GSO,
    };
    let _ = writeln!(guest, "nettest: hostile: start");
    // As Linux's netfront sends a TCP segment for GSO: the first slot, a
    // GSO extra-info slot (type 1, no further extras, an id no buffer has),
    // then the rest of the data.
    let extra =
        NetifTxRequest { gref: u32::from(XEN_NETIF_EXTRA_TYPE_GSO), offset: 1448, flags: 0, id: 0xffff, size: 0 };
    let gso = [
        NetifTxRequest {
            gref: 1,
            offset: 0,
            flags: NETTXF_EXTRA_INFO | NETTXF_MORE_DATA | NETTXF_CSUM_BLANK,
            id: 0,
            size: 3000,
        },
        extra,
        NetifTxRequest { gref: 1, offset: 0, flags: 0, id: 1, size: 1500 },
    ];
    let _ = guest.net_send_raw(&gso);
    let errors = wait_for_errors(&mut guest, 2);
    let kept = guest.net_stats().is_some() && guest.net_reclaim().is_ok();
    let _ = writeln!(
        guest,
        "nettest: hostile: GSO frame refused by dom0: {}",
        if errors == 2 && kept { "yes" } else { "NO" }
    );
    // Guest-physical 1 GiB is far past this guest's memory.
    let foreign = guest.grant_to_dom0(1 << 30, true);
    let request = match foreign {
        Ok(gref) => NetifTxRequest { gref, offset: 0, flags: 0, id: 0, size: 60 },
        Err(_) => {
            let _ = writeln!(guest, "nettest: hostile: could not create the grant; stopping");
            stop(guest)
        }
    };
    let _ = guest.net_send_raw(&[request]);
    let refused = wait_for_errors(&mut guest, errors + 1) - errors;
    let _ =
        writeln!(guest, "nettest: hostile: foreign grant refused by dom0: {}", if refused == 1 { "yes" } else { "NO" });
    if let Some(page) = guest.net_tx_ring_page() {
        // SAFETY: the transmit ring page is ours; req_prod is its first word.
        unsafe { core::ptr::write_volatile(page as *mut u32, 0x4000_0000) };
        guest.net_notify();
        let _ = writeln!(guest, "nettest: hostile: transmit index corrupted");
    }
    stop(guest)
}

/// Waits (a second at most) until dom0 answered `errors` transmit slots
/// with an error in all; returns how many it did.
fn wait_for_errors(guest: &mut Guest, errors: u64) -> u64 {
    let give_up = guest::now() + guest.ticks_per_second();
    while guest.net_stats().is_some_and(|stats| stats.tx_errors < errors) && guest::now() < give_up {
        guest.net_wait(guest::now() + guest.ticks_per_second() / 100);
        let _ = guest.net_reclaim();
    }
    guest.net_stats().map_or(0, |stats| stats.tx_errors)
}

/// Attacks the receive side: runs the receive ring's producer index away
/// (as if it had posted a billion buffers). dom0 reads that ring only when
/// it has a frame for this vif: the next broadcast on the switch (an ARP
/// request) makes it disconnect the vif.
fn hostile_receive(mut guest: Guest) -> ! {
    if let Some(page) = guest.net_rx_ring_page() {
        // SAFETY: the receive ring page is ours; req_prod is its first word.
        unsafe { core::ptr::write_volatile(page as *mut u32, 0x4000_0000) };
        guest.net_notify();
        let _ = writeln!(guest, "nettest: hostile: receive index corrupted");
    }
    stop(guest)
}

/// What a sniffing attacker sends.
#[derive(Clone, Copy)]
enum Attack {
    /// Frames from another guest's MAC, to take its traffic over.
    Spoof([u8; 6]),
    /// Frames from ever new MACs, to flood the switch's table so that it
    /// floods other guests' unicast frames here.
    FloodMacs,
}

/// Attacks the switch (`mode=spoof victim=<mac>` or `mode=flood-macs`) and
/// counts the unicast frames it receives for other MACs (which a switch
/// must never send it). Every half second it reports in the store, at
/// `data/sniffed`: `reports R sent S received N foreign F`; the first
/// foreign frame is reported on the console.
fn sniff(mut guest: Guest, attack: Attack) -> ! {
    while !guest.net_connected() {
        guest.wait_for_event();
        if guest.take_watch_events() > 0 {
            let _ = guest.net_hotplug();
        }
    }
    let own = guest.net_mac().unwrap_or([0; 6]);
    let mut text = [0u8; 17];
    let what = match attack {
        Attack::Spoof(victim) => {
            let _ = writeln!(guest, "nettest: spoof: sending as {}", abi::net::format_mac(victim, &mut text));
            "spoof"
        }
        Attack::FloodMacs => {
            let _ = writeln!(guest, "nettest: flood-macs: sending from new source MACs");
            "flood-macs"
        }
    };
    let second = guest.ticks_per_second();
    let (mut sent, mut received, mut foreign, mut reports) = (0u64, 0u64, 0u64, 0u64);
    let mut next_report = guest::now();
    let mut fake = 0u32;
    let mut frame = [0u8; abi::net::FRAME_MAX];
    loop {
        // A burst of frames addressed to this guest itself: the switch
        // learns (or refuses) their source and bothers nobody else.
        // One from its own MAC too: the switch knows where it lives, so the
        // burst below is dropped at its own port rather than flooded.
        let mut outgoing = [0u8; 60];
        outgoing[..6].copy_from_slice(&own);
        outgoing[6..12].copy_from_slice(&own);
        outgoing[12..14].copy_from_slice(&[0x88, 0xb5]);
        if guest.net_send(&outgoing).is_ok() {
            sent += 1;
        }
        for _ in 0..16 {
            let source = match attack {
                Attack::Spoof(victim) => victim,
                Attack::FloodMacs => {
                    fake = fake.wrapping_add(1);
                    let mut mac = [0x02, 0xf1, 0, 0, 0, 0];
                    mac[2..].copy_from_slice(&fake.to_be_bytes());
                    mac
                }
            };
            let mut outgoing = [0u8; 60];
            outgoing[..6].copy_from_slice(&own);
            outgoing[6..12].copy_from_slice(&source);
            // An experimental EtherType: no stack takes it for its own.
            outgoing[12..14].copy_from_slice(&[0x88, 0xb5]);
            if guest.net_send(&outgoing).is_err() {
                break;
            }
            sent += 1;
        }
        while let Ok(Some(length)) = guest.net_receive(&mut frame) {
            received += 1;
            let destination = &frame[..6.min(length)];
            if destination.len() == 6 && destination[0] & 1 == 0 && destination != own {
                foreign += 1;
                if foreign == 1 {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(destination);
                    let _ = writeln!(
                        guest,
                        "nettest: {what}: received a frame for {}",
                        abi::net::format_mac(mac, &mut text)
                    );
                }
            }
        }
        if guest::now() >= next_report {
            reports += 1;
            let mut report = arrayvec::ArrayString::<96>::new();
            let _ = write!(report, "reports {reports} sent {sent} received {received} foreign {foreign}");
            let _ = guest.store_write("data/sniffed", &report);
            next_report = guest::now() + second / 2;
        }
        guest.net_wait(guest::now() + second / 1000);
    }
}

fn stop(mut guest: Guest) -> ! {
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("nettest: panic: {info}\n"))
}
