//! `console_io` ([`super::Hypercall::ConsoleIo`]): the emergency console,
//! a byte stream to and from the hypervisor's own console. Linux uses it
//! for `earlyprintk=xen` and, in the control domain, as its `hvc0`.
//!
//! `rdi` is a [`ConsoleIoOp`], `rsi` a byte count, `rdx` the guest-virtual
//! address of the bytes.

use super::numbered_enum;

numbered_enum! {
    /// Console operations (`CONSOLEIO_*`), in `rdi`.
    pub enum ConsoleIoOp: u32 {
        /// Writes `rsi` bytes from `rdx` to the hypervisor's console.
        /// Returns 0 (Xen's rule: all bytes are taken). A guest's output
        /// goes to the log prefixed with its domain; Mica rate-limits it
        /// as it does its own `ConsoleWrite`. Errors: `-EFAULT`.
        Write = 0,
        /// Reads up to `rsi` bytes of console input into `rdx`; returns
        /// the count. Control domain only (`-EPERM` for others).
        Read = 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(ConsoleIoOp, u32);
        assert_eq!((ConsoleIoOp::Write.number(), ConsoleIoOp::Read.number()), (0, 1));
    }
}
