//! The guest side of Mica: hypercall wrappers and helpers every domain uses.
#![cfg_attr(not(test), no_std)]
