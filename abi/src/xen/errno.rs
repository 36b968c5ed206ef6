//! Xen's error numbers: what a failed hypercall returns in `rax`, negated.
//!
//! The numbers are Xen's own (its public `errno.h`); on x86 they equal
//! Linux's, so a Linux guest passes them on unchanged. The table below is
//! Xen's complete list, not only the values Mica returns, so that a guest
//! decoding a result never meets a number this crate cannot name. Two C
//! names are aliases with no variant of their own: `EWOULDBLOCK` is
//! [`Errno::Eagain`] and `EDEADLOCK` is [`Errno::Edeadlk`].
//!
//! A value that is in no table decodes to [`Errno::Unknown`] with the
//! number kept, never to a guess such as `EINVAL`.

/// Defines [`Errno`] from one table so the variant, its number and its C
/// name cannot drift apart.
macro_rules! errno_table {
    ($( $(#[$meta:meta])* $variant:ident = $number:literal, $name:literal; )+) => {
        /// A Xen error number. [`Errno::code`] is the value in `rax`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Errno {
            $( $(#[$meta])* $variant, )+
            /// A negative result this table does not list; the positive
            /// error number is kept.
            Unknown(i64),
        }

        impl Errno {
            /// Every listed error number (not [`Errno::Unknown`]), ascending.
            pub const ALL: &'static [Errno] = &[$(Errno::$variant),+];

            /// The positive error number (`EINVAL` is 22).
            pub const fn number(self) -> i64 {
                match self {
                    $( Errno::$variant => $number, )+
                    Errno::Unknown(number) => number,
                }
            }

            /// The error with this positive number; [`Errno::Unknown`] if
            /// the table does not list it.
            pub const fn from_number(number: i64) -> Errno {
                match number {
                    $( $number => Errno::$variant, )+
                    other => Errno::Unknown(other),
                }
            }

            /// The C name (`"EINVAL"`); `"E?"` for [`Errno::Unknown`].
            pub const fn name(self) -> &'static str {
                match self {
                    $( Errno::$variant => $name, )+
                    Errno::Unknown(_) => "E?",
                }
            }
        }
    };
}

errno_table! {
    /// Operation not permitted: the caller lacks the privilege (a guest
    /// naming another domain, for example).
    Eperm = 1, "EPERM";
    /// No such entry: the named object (vCPU, grant, page) does not exist.
    Enoent = 2, "ENOENT";
    /// No such domain (Xen's "no such process").
    Esrch = 3, "ESRCH";
    /// Interrupted.
    Eintr = 4, "EINTR";
    /// Input/output error.
    Eio = 5, "EIO";
    /// No such device or address.
    Enxio = 6, "ENXIO";
    /// An argument list or count is too long.
    E2big = 7, "E2BIG";
    /// Exec format error.
    Enoexec = 8, "ENOEXEC";
    /// Bad file (descriptor) number.
    Ebadf = 9, "EBADF";
    /// No child processes.
    Echild = 10, "ECHILD";
    /// Try again (also `EWOULDBLOCK`).
    Eagain = 11, "EAGAIN";
    /// Out of memory.
    Enomem = 12, "ENOMEM";
    /// Access denied (by policy rather than by privilege).
    Eacces = 13, "EACCES";
    /// A guest address could not be read or written.
    Efault = 14, "EFAULT";
    /// Busy: the object is in use.
    Ebusy = 16, "EBUSY";
    /// Already exists (for example a virtual IRQ already bound).
    Eexist = 17, "EEXIST";
    /// Cross-device link.
    Exdev = 18, "EXDEV";
    /// No such device.
    Enodev = 19, "ENODEV";
    /// Not a directory.
    Enotdir = 20, "ENOTDIR";
    /// Is a directory.
    Eisdir = 21, "EISDIR";
    /// Invalid argument.
    Einval = 22, "EINVAL";
    /// File table overflow.
    Enfile = 23, "ENFILE";
    /// Too many open files.
    Emfile = 24, "EMFILE";
    /// No space left (for example no free event channel port).
    Enospc = 28, "ENOSPC";
    /// Read-only.
    Erofs = 30, "EROFS";
    /// Too many links.
    Emlink = 31, "EMLINK";
    /// Argument out of the function's domain.
    Edom = 33, "EDOM";
    /// Result or argument out of range.
    Erange = 34, "ERANGE";
    /// Deadlock would occur (also `EDEADLOCK`).
    Edeadlk = 35, "EDEADLK";
    /// Name too long.
    Enametoolong = 36, "ENAMETOOLONG";
    /// No locks available.
    Enolck = 37, "ENOLCK";
    /// Not implemented: unknown hypercall or sub-operation.
    Enosys = 38, "ENOSYS";
    /// Directory not empty.
    Enotempty = 39, "ENOTEMPTY";
    /// No data available.
    Enodata = 61, "ENODATA";
    /// Timer expired (a single-shot timer asked to be in the future was
    /// already in the past).
    Etime = 62, "ETIME";
    /// Not a data message.
    Ebadmsg = 74, "EBADMSG";
    /// Value too large for its type.
    Eoverflow = 75, "EOVERFLOW";
    /// Illegal byte sequence.
    Eilseq = 84, "EILSEQ";
    /// The call should be restarted. Xen uses it internally and never
    /// returns it to a guest; listed for completeness.
    Erestart = 85, "ERESTART";
    /// Not a socket.
    Enotsock = 88, "ENOTSOCK";
    /// Message too large.
    Emsgsize = 90, "EMSGSIZE";
    /// Operation not supported.
    Eopnotsupp = 95, "EOPNOTSUPP";
    /// Address already in use.
    Eaddrinuse = 98, "EADDRINUSE";
    /// Address not available.
    Eaddrnotavail = 99, "EADDRNOTAVAIL";
    /// No buffer space available.
    Enobufs = 105, "ENOBUFS";
    /// Already connected.
    Eisconn = 106, "EISCONN";
    /// Not connected.
    Enotconn = 107, "ENOTCONN";
    /// Timed out.
    Etimedout = 110, "ETIMEDOUT";
    /// Connection refused.
    Econnrefused = 111, "ECONNREFUSED";
}

impl Errno {
    /// The value placed in `rax`: the negated error number (`-22`).
    pub const fn code(self) -> i64 {
        self.number().wrapping_neg()
    }

    /// Decodes a hypercall result: `Ok(value)` when non-negative, else the
    /// error (an unlisted code gives [`Errno::Unknown`] with its number).
    #[inline]
    pub const fn decode(raw: i64) -> Result<u64, Errno> {
        if raw >= 0 {
            return Ok(raw as u64);
        }
        // i64::MIN has no positive counterpart; keep it as it is.
        Err(Errno::from_number(raw.wrapping_neg()))
    }
}

/// The C alias of [`Errno::Eagain`].
pub const EWOULDBLOCK: Errno = Errno::Eagain;
/// The C alias of [`Errno::Edeadlk`].
pub const EDEADLOCK: Errno = Errno::Edeadlk;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_round_trips() {
        for (index, error) in Errno::ALL.iter().enumerate() {
            assert!(error.number() > 0);
            assert_eq!(error.code(), -error.number());
            assert_eq!(Errno::decode(error.code()), Err(*error));
            assert_eq!(Errno::from_number(error.number()), *error);
            assert!(error.name().starts_with('E'));
            if let Some(next) = Errno::ALL.get(index + 1) {
                assert!(next.number() > error.number(), "table is ascending and has no duplicates");
            }
        }
    }

    #[test]
    fn numbers_match_xen() {
        // Spot checks against Xen's public errno.h.
        assert_eq!(Errno::Eperm.code(), -1);
        assert_eq!(Errno::Esrch.number(), 3);
        assert_eq!(Errno::Efault.number(), 14);
        assert_eq!(Errno::Einval.code(), -22);
        assert_eq!(Errno::Enospc.number(), 28);
        assert_eq!(Errno::Enosys.code(), -38);
        assert_eq!(Errno::Etime.number(), 62);
        assert_eq!(Errno::Eisconn.number(), 106);
        assert_eq!(EWOULDBLOCK.number(), 11);
        assert_eq!(EDEADLOCK.name(), "EDEADLK");
    }

    #[test]
    fn success_decodes_to_the_value() {
        assert_eq!(Errno::decode(0), Ok(0));
        assert_eq!(Errno::decode(0x0004_0011), Ok(0x0004_0011));
        assert_eq!(Errno::decode(i64::MAX), Ok(i64::MAX as u64));
    }

    #[test]
    fn unknown_codes_stay_unknown() {
        assert_eq!(Errno::decode(-15), Err(Errno::Unknown(15)), "15 (ENOTBLK) is not in Xen's table");
        assert_eq!(Errno::decode(-114), Err(Errno::Unknown(114)), "EALREADY is not in Xen's table");
        assert_eq!(Errno::decode(-1000).map_err(Errno::code), Err(-1000));
        assert_ne!(Errno::decode(-1000), Err(Errno::Einval));
        assert_eq!(Errno::decode(i64::MIN), Err(Errno::Unknown(i64::MIN)));
        assert_eq!(Errno::Unknown(99_999).name(), "E?");
    }
}
