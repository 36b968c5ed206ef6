//! dom0's L2 switch under hostile frames: vifs locked to their MACs come
//! and go, frames with any source and destination arrive from every port,
//! time moves on, and after every step the switch's table and answers are
//! checked against what its contract allows.

use std::collections::BTreeMap;

use dom0core::backends::net::switch::{Forward, HEADER, Mac, PortId, StaticError, Switch};

use crate::bytes::Bytes;

/// Table entries: small, so ports fill it.
const ENTRIES: usize = 12;
/// Most learned entries one unlocked port may hold.
const LEARN_LIMIT: usize = 3;
/// Learned entries older than this many ticks are forgotten.
const MAX_AGE: u64 = 16;
/// Port 0 is the NIC (dom0's `UPLINK`), 1..PORTS guests' vifs.
const PORTS: usize = 5;
const NIC: PortId = 0;

/// The live table at one tick: MAC to (port, age; `None` for static).
type Table = BTreeMap<Mac, (PortId, Option<u64>)>;

/// One of 32 unicast addresses (bit 7 clear), the same 32 with the
/// multicast bit (bit 7 set), or broadcast (0xff).
fn mac(byte: u8) -> Mac {
    if byte == 0xff {
        return [0xff; 6];
    }
    let first = if byte & 0x80 != 0 { 0x03 } else { 0x02 };
    [first, 0x16, 0x3e, 0, 0, byte & 0x1f]
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

fn frame(destination: Mac, source: Mac, length: usize) -> Vec<u8> {
    let mut bytes = destination.to_vec();
    bytes.extend_from_slice(&source);
    bytes.extend_from_slice(&[0x08, 0x00]);
    bytes.resize(length, 0);
    bytes
}

/// The live table, checking what holds of it at every step: one entry per
/// MAC, `lookup` agrees with it, each locked port's MAC is static on it and
/// nothing else is static, locked ports learn nothing, and no unlocked port
/// holds more than its bound of learned entries.
fn table(switch: &Switch<ENTRIES>, locked: &[Option<Mac>; PORTS], now: u64) -> Table {
    let mut table = Table::new();
    for (mac, port, age) in switch.entries(now) {
        assert!(table.insert(mac, (port, age)).is_none(), "{mac:x?} twice in the table");
        assert!(usize::from(port) < PORTS, "an entry for port {port}, which never sent");
        if let Some(age) = age {
            assert!(age <= MAX_AGE, "{mac:x?} listed at age {age}");
            assert!(!is_multicast(&mac), "multicast source {mac:x?} learned");
        }
    }
    for byte in (0..0x20).chain(0x80..0xa0).chain([0xff]) {
        let mac = mac(byte);
        assert_eq!(switch.lookup(&mac, now), table.get(&mac).map(|&(port, _)| port), "lookup of {mac:x?}");
    }
    let statics: Vec<(Mac, PortId)> =
        table.iter().filter(|(_, (_, age))| age.is_none()).map(|(&mac, &(port, _))| (mac, port)).collect();
    let expected: Vec<(Mac, PortId)> = {
        let mut expected: Vec<_> =
            locked.iter().enumerate().filter_map(|(port, mac)| Some(((*mac)?, port as PortId))).collect();
        expected.sort();
        expected
    };
    assert_eq!(statics, expected, "static entries are the locked vifs' MACs");
    for (port, own) in locked.iter().enumerate() {
        let port = port as PortId;
        assert_eq!(switch.static_mac(port), *own, "port {port}'s static MAC");
        let learned = table.values().filter(|&&(owner, age)| owner == port && age.is_some()).count();
        let bound = if own.is_some() { 0 } else { LEARN_LIMIT };
        assert!(learned <= bound, "port {port} (locked: {}) holds {learned} learned entries", own.is_some());
    }
    assert!(switch.len() <= ENTRIES);
    table
}

/// The input is a sequence of steps `[op][a][b]`:
/// - op % 8 == 0: lock vif `a` to MAC `b` (`add_static`);
/// - 1: remove port `a` (the NIC included);
/// - 2, 3, 4: a frame of 60 bytes, 14 bytes, or a runt of `a >> 4` bytes
///   from port `a` to MAC `b` from MAC `op >> 3` (`mac(op >> 3)`, or one
///   of four multicast MACs for `op >> 3` of 28 and up);
/// - 5: time moves `a` ticks on (times 64 if `b & 1`);
/// - 6: a frame from port `a` from its own MAC (if locked) to MAC `b`;
/// - 7: a frame from port `a` to vif `b`'s MAC (if locked) from MAC `op >> 3`.
///
/// `a` picks a port modulo 5 (0 the NIC). Every answer is checked: a frame
/// whose source its port may not use is refused and changes nothing; a
/// runt is dropped; unicast to a static MAC goes to its port only; learning
/// takes only the sender's entries; removal and ageing remove just theirs.
pub fn switch(data: &[u8]) {
    let mut switch = Switch::<ENTRIES>::new(MAX_AGE, LEARN_LIMIT);
    let mut locked: [Option<Mac>; PORTS] = [None; PORTS];
    let mut now = 0u64;
    let mut before = table(&switch, &locked, now);
    let mut input = Bytes::new(data);
    while !input.is_empty() {
        let [op, a, b] = input.array::<3>();
        let port = PortId::from(a) % PORTS as PortId;
        let refused = switch.refused();
        match op % 8 {
            0 => {
                let vif = 1 + PortId::from(a) % (PORTS as PortId - 1);
                let address = mac(b);
                let result = switch.add_static(vif, address);
                let in_use = is_multicast(&address) || locked.contains(&Some(address));
                match result {
                    Err(StaticError::InUse) => assert!(in_use, "{address:x?} refused as in use"),
                    Err(StaticError::PortLocked) => {
                        assert!(!in_use && locked[usize::from(vif)].is_some(), "{vif} refused as locked")
                    }
                    Err(StaticError::Full) => {
                        assert!(!in_use && locked[usize::from(vif)].is_none());
                        assert_eq!(switch.len(), ENTRIES, "refused as full, but it is not");
                    }
                    Ok(()) => {
                        assert!(!in_use && locked[usize::from(vif)].is_none(), "{address:x?} on {vif}: {locked:x?}");
                        locked[usize::from(vif)] = Some(address);
                    }
                }
                let after = table(&switch, &locked, now);
                let mut expected = before.clone();
                if result.is_ok() {
                    expected.retain(|&mac, &mut (owner, _)| owner != vif && mac != address);
                    expected.insert(address, (vif, None));
                }
                assert_eq!(after, expected, "add_static({vif}, {address:x?}) = {result:?}");
                before = after;
            }
            1 => {
                switch.remove_port(port);
                locked[usize::from(port)] = None;
                let after = table(&switch, &locked, now);
                let mut expected = before.clone();
                expected.retain(|_, &mut (owner, _)| owner != port);
                assert_eq!(after, expected, "remove_port({port})");
                before = after;
            }
            5 => {
                let ticks = u64::from(a) * if b & 1 != 0 { 64 } else { 1 };
                now += ticks;
                let after = table(&switch, &locked, now);
                let mut expected = before.clone();
                expected.retain(|_, &mut (_, age)| age.is_none_or(|age| age + ticks <= MAX_AGE));
                for (_, age) in expected.values_mut() {
                    *age = age.map(|age| age + ticks);
                }
                assert_eq!(after, expected, "{ticks} ticks on");
                before = after;
            }
            kind => {
                // 28 unicast sources, 4 multicast ones.
                let source = if op >> 3 >= 28 { mac(op | 0x80) } else { mac(op >> 3) };
                let (destination, source) = match kind {
                    6 => (mac(b), locked[usize::from(port)].unwrap_or(source)),
                    7 => (locked[1 + usize::from(b) % (PORTS - 1)].unwrap_or(mac(b)), source),
                    _ => (mac(b), source),
                };
                let length = match kind {
                    2 => 60,
                    3 => HEADER,
                    _ => usize::from(a >> 4),
                };
                let result = switch.forward(port, &frame(destination, source, length), now);
                before = check_frame(&switch, &locked, now, before, (port, destination, source, length), result);
                let counted = switch.refused() - refused;
                assert_eq!(counted, u64::from(result == Forward::Refused), "refusals counted");
            }
        }
    }
}

/// A frame and the switch's answer.
#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug in failure messages")]
struct Sent {
    port: PortId,
    destination: Mac,
    source: Mac,
    length: usize,
    result: Forward,
}

/// Checks what `forward` answered for a frame from `port` and what it did
/// to the table; returns the table after it.
fn check_frame(
    switch: &Switch<ENTRIES>,
    locked: &[Option<Mac>; PORTS],
    now: u64,
    before: Table,
    (port, destination, source, length): (PortId, Mac, Mac, usize),
    result: Forward,
) -> Table {
    let after = table(switch, locked, now);
    // For the messages (formatted only on a failure).
    let what = Sent { port, destination, source, length, result };
    if length < HEADER {
        assert_eq!(result, Forward::Drop, "{what:x?}");
        assert_eq!(after, before, "{what:x?} changed the table");
        return after;
    }
    let own = locked[usize::from(port)];
    let may_send = match own {
        Some(own) => own == source,
        None => !locked.contains(&Some(source)),
    };
    if !may_send {
        assert_eq!(result, Forward::Refused, "{what:x?}");
        assert_eq!(after, before, "{what:x?}: refused, yet the table changed");
        return after;
    }
    // Where the frame goes follows the table after learning from it.
    let expected = if is_multicast(&destination) {
        Forward::Flood
    } else {
        match after.get(&destination) {
            Some(&(target, _)) if target == port => Forward::Drop,
            Some(&(target, _)) => Forward::Port(target),
            None => Forward::Flood,
        }
    };
    assert_eq!(result, expected, "{what:x?}");
    if let Some(owner) = locked.iter().position(|mac| *mac == Some(destination)) {
        let goes = if owner == usize::from(port) { Forward::Drop } else { Forward::Port(owner as PortId) };
        assert_eq!(result, goes, "{what:x?}: unicast to vif {owner}'s MAC");
    }
    if own.is_some() || is_multicast(&source) {
        // A locked port and a multicast source learn nothing.
        assert_eq!(after, before, "{what:x?}: learned");
        return after;
    }
    // Learning from an unlocked port: `source` is now behind `port` (unless
    // the table is full of other ports' entries), and the only other entry
    // that may go is one of `port`'s own learned ones.
    let mut lost = Vec::new();
    for (mac, &(owner, age)) in &before {
        if *mac == source {
            continue;
        }
        match after.get(mac) {
            Some(&now_is) => assert_eq!(now_is, (owner, age), "{what:x?}: {mac:x?} changed"),
            None => {
                assert!(owner == port && age.is_some(), "{what:x?}: evicted {mac:x?} of port {owner}");
                lost.push(*mac);
            }
        }
    }
    assert!(lost.len() <= 1, "{what:x?}: evicted {lost:x?}");
    for mac in after.keys() {
        assert!(*mac == source || before.contains_key(mac), "{what:x?}: {mac:x?} appeared");
    }
    match after.get(&source) {
        Some(&entry) => assert_eq!(entry, (port, Some(0)), "{what:x?}: source not learned fresh on its port"),
        None => {
            let had_own = before.values().any(|&(owner, age)| owner == port && age.is_some());
            assert!(switch.len() == ENTRIES && !had_own && lost.is_empty(), "{what:x?}: source not learned");
        }
    }
    if NIC == port {
        let learned = after.values().filter(|&&(owner, _)| owner == NIC).count();
        assert!(learned <= LEARN_LIMIT, "the NIC holds {learned} learned entries");
    }
    after
}
