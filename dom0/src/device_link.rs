//! What dom0's back end of a device (disk or vif) does next, given where it
//! is and the front end's `state` in the store (`abi::store`'s state
//! diagram): connect, close after the front end closed, or offer the
//! device again after the front end asked to reconnect. Pure decisions;
//! the toolstack does the mapping and the store writes.

use abi::store::DeviceState;

/// Where dom0's back end of one device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Offered (back end InitWait), waiting for the front end.
    Offered,
    /// Ring(s) mapped and port bound (back end Connected).
    Connected,
    /// Was connected, but the front end broke the ring: dom0 stopped
    /// serving it; the ring pages stay mapped until the front end closes.
    Broken,
    /// dom0 is taking the device away (`block-detach`, `network-detach`;
    /// back end Closing): its own path finishes that.
    Detaching,
    /// Closed after the front end closed it, or after a connection dom0
    /// refused (back end Closed): nothing mapped, waiting for the front
    /// end to write Initialising.
    Closed,
}

/// What the back end does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Stay,
    /// Map the ring(s) the front end published, bind its port, answer
    /// Connected (Closed if unusable).
    Connect,
    /// Finish in-flight work, unmap the ring(s) and persistent grants,
    /// close the port (unless already closed), answer Closed.
    Close,
    /// Answer Closed (nothing is mapped).
    Refuse,
    /// Offer the device again: answer InitWait.
    Reoffer,
}

/// The next step for a back end at `link` whose front end's `state` node
/// reads `front` (None: the node, or the whole directory, is absent).
///
/// A front end that leaves Connected/Initialised for any state other than
/// those two (Closing, Closed, Initialising, InitWait, unparseable, or
/// absent) is closing: the ABI reads an unexpected state as Closed.
/// Only an explicit Initialising takes a Closed back end back to InitWait:
/// an absent `state` after the front end was seen is Closed, never a
/// request to reconnect.
pub fn next_step(link: Link, front: Option<DeviceState>) -> Step {
    let front_live = matches!(front, Some(DeviceState::Initialised | DeviceState::Connected));
    match link {
        Link::Detaching => Step::Stay,
        Link::Connected | Link::Broken if front_live => Step::Stay,
        Link::Connected | Link::Broken => Step::Close,
        Link::Offered => match front {
            Some(DeviceState::Initialised) => Step::Connect,
            // Not started yet (absent reads as Initialising until the
            // front end was seen past it).
            None | Some(DeviceState::Initialising | DeviceState::InitWait | DeviceState::Connected) => Step::Stay,
            Some(DeviceState::Closing | DeviceState::Closed) => Step::Refuse,
        },
        Link::Closed => match front {
            Some(DeviceState::Initialising) => Step::Reoffer,
            _ => Step::Stay,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Option<DeviceState>; 7] = [
        None,
        Some(DeviceState::Initialising),
        Some(DeviceState::InitWait),
        Some(DeviceState::Initialised),
        Some(DeviceState::Connected),
        Some(DeviceState::Closing),
        Some(DeviceState::Closed),
    ];

    #[test]
    fn a_connected_back_end_closes_when_the_front_end_leaves() {
        for link in [Link::Connected, Link::Broken] {
            assert_eq!(next_step(link, Some(DeviceState::Closing)), Step::Close);
            assert_eq!(next_step(link, Some(DeviceState::Closed)), Step::Close);
            // Going straight back to Initialising, or vanishing, is a close too.
            assert_eq!(next_step(link, Some(DeviceState::Initialising)), Step::Close);
            assert_eq!(next_step(link, None), Step::Close);
            assert_eq!(next_step(link, Some(DeviceState::Connected)), Step::Stay);
            assert_eq!(next_step(link, Some(DeviceState::Initialised)), Step::Stay);
        }
    }

    #[test]
    fn a_closed_back_end_reoffers_only_on_an_explicit_initialising() {
        for front in ALL {
            let expected = if front == Some(DeviceState::Initialising) { Step::Reoffer } else { Step::Stay };
            assert_eq!(next_step(Link::Closed, front), expected, "{front:?}");
        }
    }

    #[test]
    fn an_offered_back_end_connects_on_initialised_and_refuses_a_close() {
        assert_eq!(next_step(Link::Offered, Some(DeviceState::Initialised)), Step::Connect);
        assert_eq!(next_step(Link::Offered, Some(DeviceState::Closing)), Step::Refuse);
        assert_eq!(next_step(Link::Offered, Some(DeviceState::Closed)), Step::Refuse);
        assert_eq!(next_step(Link::Offered, None), Step::Stay);
        assert_eq!(next_step(Link::Offered, Some(DeviceState::Initialising)), Step::Stay);
    }

    #[test]
    fn a_detach_dom0_started_is_left_to_its_own_path() {
        for front in ALL {
            assert_eq!(next_step(Link::Detaching, front), Step::Stay);
        }
    }

    /// A front end flapping Closing / Initialising / Initialised: the back
    /// end alternates Close, Reoffer, Connect, and never maps twice without
    /// a Close between (the toolstack's window pages come back each round).
    #[test]
    fn a_flapping_front_end_alternates_close_and_connect() {
        let mut link = Link::Connected;
        let mut mapped = 1;
        for round in 0..50 {
            for front in
                [DeviceState::Closing, DeviceState::Closed, DeviceState::Initialising, DeviceState::Initialised]
            {
                // Each front-end write may be seen twice (a pass per store change).
                for _ in 0..2 {
                    match next_step(link, Some(front)) {
                        Step::Stay => {}
                        Step::Close => {
                            mapped -= 1;
                            link = Link::Closed;
                        }
                        Step::Reoffer => link = Link::Offered,
                        Step::Connect => {
                            mapped += 1;
                            link = Link::Connected;
                        }
                        Step::Refuse => link = Link::Closed,
                    }
                    assert!((0..=1).contains(&mapped), "round {round}");
                }
            }
            assert_eq!(link, Link::Connected);
            assert_eq!(mapped, 1);
        }
    }
}
