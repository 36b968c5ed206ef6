//! Paths as callers name them: resolved to absolute paths, split into
//! components, and compared.

use core::fmt::Write as _;

use abi::DomainId;
use abi::store::{HOME_PREFIX, PATH_MAX, PathForm, check_path};
use abi::xen::errno::Errno;
use arrayvec::ArrayString;

/// An absolute path, resolved.
pub(super) type PathBuffer = ArrayString<PATH_MAX>;

/// The components of an absolute path.
pub(super) fn components(path: &str) -> impl Iterator<Item = &[u8]> {
    path.as_bytes()[1..].split(|&byte| byte == b'/').filter(|name| !name.is_empty())
}

/// Whether `path` is `ancestor` or below it.
pub(super) fn is_at_or_below(path: &[u8], ancestor: &[u8]) -> bool {
    ancestor == b"/" || (path.starts_with(ancestor) && (path.len() == ancestor.len() || path[ancestor.len()] == b'/'))
}

/// A domain's home directory.
pub(super) fn home(domain: DomainId) -> PathBuffer {
    let mut path = PathBuffer::new();
    // Cannot fail: the prefix and ten digits fit.
    let _ = write!(path, "{HOME_PREFIX}{domain}");
    path
}

/// Resolves a path as `caller` sent it into an absolute one.
pub(super) fn resolve(caller: DomainId, path: &str) -> Result<PathBuffer, Errno> {
    let mut absolute = PathBuffer::new();
    match check_path(path.as_bytes())? {
        PathForm::Absolute => absolute.try_push_str(path).map_err(|_| Errno::E2big)?,
        PathForm::Relative => write!(absolute, "{HOME_PREFIX}{caller}/{path}").map_err(|_| Errno::E2big)?,
    }
    Ok(absolute)
}

/// Values and tokens: UTF-8 (guaranteed by `&str`) without NUL.
pub(super) fn check_text(text: &str, max: usize) -> Result<(), Errno> {
    if text.len() > max {
        return Err(Errno::E2big);
    }
    if text.as_bytes().contains(&0) {
        return Err(Errno::Einval);
    }
    Ok(())
}
