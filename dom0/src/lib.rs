//! dom0's service logic, independent of the hardware.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
