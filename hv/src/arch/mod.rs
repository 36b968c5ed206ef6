//! Architecture code. Generic hv code reaches the hardware only through here.

pub mod x86_64;

pub use self::x86_64::*;
