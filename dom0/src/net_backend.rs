//! The net back end's checking and configuration, independent of the
//! hardware: guests' vif entries (`vif = [...]`), their MAC addresses, and
//! the validation of every request a front end puts on its rings (copied
//! out by the ring code, then checked here field by field before any copy).

use core::fmt;

use abi::net::{FRAME_MAX, FRAME_MIN, RxRequest, TxRequest};

/// A checked transmit request: where the frame lies in the granted page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPlan {
    pub grant: u32,
    pub offset: u16,
    pub size: u16,
}

/// Why a request is refused (answered `STATUS_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Reserved fields are not zero.
    Reserved,
    /// The grant reference is outside any grant table.
    BadGrant,
    /// The frame is shorter than a header or longer than `FRAME_MAX`.
    BadSize,
    /// The frame runs past the end of its page.
    PastPage,
}

/// Checks a transmit request.
pub fn check_tx(request: &TxRequest) -> Result<TxPlan, Refusal> {
    if request.flags != 0 || request._reserved != 0 {
        return Err(Refusal::Reserved);
    }
    if request.grant == 0 || request.grant as usize >= abi::grant::ENTRIES {
        return Err(Refusal::BadGrant);
    }
    let size = request.size as usize;
    if !(FRAME_MIN..=FRAME_MAX).contains(&size) {
        return Err(Refusal::BadSize);
    }
    if request.offset as usize + size > abi::PAGE_SIZE as usize {
        return Err(Refusal::PastPage);
    }
    Ok(TxPlan { grant: request.grant, offset: request.offset, size: request.size })
}

/// Checks a posted receive buffer; returns its grant reference.
pub fn check_rx(request: &RxRequest) -> Result<u32, Refusal> {
    if request._reserved != 0 {
        return Err(Refusal::Reserved);
    }
    if request.grant == 0 || request.grant as usize >= abi::grant::ENTRIES {
        return Err(Refusal::BadGrant);
    }
    Ok(request.grant)
}

/// A parsed `vif` entry: comma-separated `key=value` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VifSpec {
    /// `mac=xx:xx:xx:xx:xx:xx`; None: dom0 chooses one.
    pub mac: Option<[u8; 6]>,
}

/// Why a vif entry was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VifSpecError {
    /// A setting that is not `key=value`.
    Syntax,
    /// A key other than `mac`.
    UnknownKey,
    /// Not six pairs of hex digits.
    BadMac,
    /// A multicast or all-zero address cannot be a station's.
    NotUnicast,
}

impl fmt::Display for VifSpecError {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        out.write_str(match self {
            VifSpecError::Syntax => "expected comma-separated key=value settings, e.g. \"mac=02:00:00:00:00:01\"",
            VifSpecError::UnknownKey => "the only setting is \"mac\"",
            VifSpecError::BadMac => "a MAC address is six pairs of hex digits separated by ':'",
            VifSpecError::NotUnicast => "the MAC address must be unicast and not all zero",
        })
    }
}

/// Parses one entry of a config's `vif = [...]` list ("" is all defaults).
pub fn parse_vif(entry: &str) -> Result<VifSpec, VifSpecError> {
    let mut spec = VifSpec { mac: None };
    for setting in entry.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = setting.split_once('=').ok_or(VifSpecError::Syntax)?;
        match key.trim() {
            "mac" => {
                let mac = abi::net::parse_mac(value.trim()).ok_or(VifSpecError::BadMac)?;
                if mac[0] & 1 != 0 || mac == [0; 6] {
                    return Err(VifSpecError::NotUnicast);
                }
                spec.mac = Some(mac);
            }
            _ => return Err(VifSpecError::UnknownKey),
        }
    }
    Ok(spec)
}

/// The MAC address dom0 gives vif `index` of domain `domain` when its
/// config names none: locally administered (02:), "Mi", then the vif and
/// the domain id, so it is unique on the switch.
pub fn default_mac(domain: u32, index: u8) -> [u8; 6] {
    [0x02, b'M', b'i', index, (domain >> 8) as u8, domain as u8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::XorShift;

    fn tx(grant: u32, offset: u16, size: u16) -> TxRequest {
        TxRequest { id: 1, flags: 0, grant, offset, size, _reserved: 0 }
    }

    #[test]
    fn transmit_requests_stay_inside_their_page() {
        assert_eq!(check_tx(&tx(5, 0, 60)), Ok(TxPlan { grant: 5, offset: 0, size: 60 }));
        assert_eq!(check_tx(&tx(5, 4096 - 1514, 1514)).map(|p| p.size), Ok(1514));
        assert_eq!(check_tx(&tx(5, 4096 - 1513, 1514)), Err(Refusal::PastPage));
        assert_eq!(check_tx(&tx(5, u16::MAX, 1514)), Err(Refusal::PastPage));
        assert_eq!(check_tx(&tx(5, 0, 13)), Err(Refusal::BadSize));
        assert_eq!(check_tx(&tx(5, 0, 1515)), Err(Refusal::BadSize));
        assert_eq!(check_tx(&tx(0, 0, 60)), Err(Refusal::BadGrant));
        assert_eq!(check_tx(&tx(512, 0, 60)), Err(Refusal::BadGrant));
        assert_eq!(check_tx(&TxRequest { flags: 1, ..tx(5, 0, 60) }), Err(Refusal::Reserved));
        assert_eq!(check_rx(&RxRequest { id: 0, _reserved: 0, grant: 3 }), Ok(3));
        assert_eq!(check_rx(&RxRequest { id: 0, _reserved: 0, grant: u32::MAX }), Err(Refusal::BadGrant));
        assert_eq!(check_rx(&RxRequest { id: 0, _reserved: 1, grant: 3 }), Err(Refusal::Reserved));
    }

    #[test]
    fn fuzzed_requests_are_refused_or_safe() {
        let mut random = XorShift(0x5eed_0f_f00d);
        let mut accepted = 0;
        for _ in 0..200_000 {
            let bits = random.next();
            let request = TxRequest {
                id: bits as u16,
                flags: if random.below(8) == 0 { bits as u16 >> 3 } else { 0 },
                grant: if random.below(2) == 0 { (bits >> 16) as u32 % 600 } else { (bits >> 16) as u32 },
                offset: if random.below(2) == 0 { (bits >> 48) as u16 % 4096 } else { (bits >> 48) as u16 },
                size: (random.next() as u16) % 2048,
                _reserved: if random.below(8) == 0 { 1 } else { 0 },
            };
            if let Ok(plan) = check_tx(&request) {
                accepted += 1;
                assert!(plan.grant > 0 && (plan.grant as usize) < abi::grant::ENTRIES);
                assert!((FRAME_MIN..=FRAME_MAX).contains(&(plan.size as usize)));
                assert!(plan.offset as usize + plan.size as usize <= 4096);
            }
        }
        assert!(accepted > 1000, "the fuzzer must reach the accepting path ({accepted})");
    }

    #[test]
    fn vif_entries() {
        assert_eq!(parse_vif(""), Ok(VifSpec { mac: None }));
        assert_eq!(parse_vif("mac=02:00:00:00:00:01"), Ok(VifSpec { mac: Some([2, 0, 0, 0, 0, 1]) }));
        assert_eq!(parse_vif(" mac = 02:00:00:00:00:01 , "), Ok(VifSpec { mac: Some([2, 0, 0, 0, 0, 1]) }));
        assert_eq!(parse_vif("mac=01:00:5e:00:00:01"), Err(VifSpecError::NotUnicast));
        assert_eq!(parse_vif("mac=00:00:00:00:00:00"), Err(VifSpecError::NotUnicast));
        assert_eq!(parse_vif("mac=02:00:00:00:00"), Err(VifSpecError::BadMac));
        assert_eq!(parse_vif("bridge=xenbr0"), Err(VifSpecError::UnknownKey));
        assert_eq!(parse_vif("mac"), Err(VifSpecError::Syntax));
        assert_ne!(default_mac(1, 0), default_mac(2, 0));
        assert_ne!(default_mac(1, 0), default_mac(1, 1));
        assert_ne!(default_mac(1, 0), default_mac(257, 0));
        assert_eq!(default_mac(7, 0)[0] & 3, 2, "locally administered unicast");
    }
}
