//! Guest configuration files: Xen `xl.cfg`-style `key = value` text parsed into a [`GuestConfig`].
//!
//! # Format
//!
//! ```text
//! # A comment runs from '#' (outside a string) to the end of the line.
//! name    = "web-1"                # required
//! memory  = 64                     # required, MiB
//! kernel  = "boot/guest.elf"       # required, a path in the boot ramdisk
//! ramdisk = "boot/initramfs.gz"    # a PVH kernel's first module
//! cmdline = "console=hvc0 quiet"
//! vcpus   = 1
//! on_crash = "restart"
//! weight  = 512
//! cap     = 50
//! disk    = [ "phy:ram0,xvda,w" ]
//! vif     = [ "mac=00:16:3e:00:00:01", ]
//! ```
//!
//! One assignment per line; blank lines are ignored and lines may end in CRLF.
//! A key is ASCII letters, digits and `_`. A value is one of:
//!
//! - a string: `"..."`, where `\"` and `\\` are the only escapes;
//! - an integer: decimal digits, optionally after `-` (so that `memory = -1`
//!   is reported as out of range rather than as a syntax error);
//! - a list of strings: `[ "a", "b" ]`, possibly empty, a trailing comma
//!   allowed. A list ends on the line it starts on.
//!
//! | key        | type    | default     | valid values                                  |
//! |------------|---------|-------------|-----------------------------------------------|
//! | `name`     | string  | required    | 1..=32 of `A-Z a-z 0-9 _ . -`, not starting with `-` or `.`, not all digits |
//! | `memory`   | integer | required    | 1..=1024 (MiB)                                |
//! | `kernel`   | string  | required    | 1..=100 bytes, no NUL                         |
//! | `ramdisk`  | string  | none        | 1..=100 bytes, no NUL: a file in the boot ramdisk the builder loads as the guest's module (its initramfs) |
//! | `cmdline`  | string  | `""`        | at most 1023 bytes, no NUL                    |
//! | `vcpus`    | integer | 1           | 1..=8 ([`VCPUS_MAX`])                         |
//! | `on_crash` | string  | `"destroy"` | `"destroy"`, `"restart"`, `"preserve"`        |
//! | `weight`   | integer | 256         | 1..=65535                                     |
//! | `cap`      | integer | 0 (no cap)  | 0..=100 x `vcpus` (% of one CPU, whole guest) |
//! | `disk`     | list    | `[]`        | at most 4 entries of at most 128 bytes each   |
//! | `vif`      | list    | `[]`        | at most 4 entries of at most 128 bytes each   |
//! | `type`     | string  | from the kernel | `"pvh"`: the kernel must have Xen's PVH entry note (without the key, a kernel with the note boots as PVH and one without as a Mica guest); Xen's `"pv"` and `"hvm"` are refused |
//!
//! A name must not be all digits because shell commands accept a domain name
//! or a domain id in the same place. Disk and vif entries are kept as raw
//! strings; their syntax belongs to the back ends that will use them.
//!
//! Anything else is an error reported with its 1-based line number: an
//! unknown or repeated key, a value of the wrong type or out of range, a
//! syntax error, a line that is not UTF-8. A missing required key is
//! reported with line 0 (the whole file).

use core::fmt;

use arrayvec::{ArrayString, ArrayVec};

/// Longest guest name, in bytes.
pub const NAME_MAX: usize = 32;
/// Largest `memory`, in MiB.
pub const MEMORY_MIB_MAX: u32 = 1024;
/// Longest `kernel` path, in bytes.
pub const KERNEL_MAX: usize = 100;
/// Longest `cmdline`, in bytes (the guest gets it NUL-terminated in 1024).
pub const CMDLINE_MAX: usize = 1023;
/// Most entries in a `disk` or `vif` list.
pub const LIST_ENTRIES_MAX: usize = 4;
/// Longest `disk` or `vif` entry, in bytes.
pub const LIST_ENTRY_MAX: usize = 128;
/// Longest unknown key kept for the error message; longer ones are cut.
pub const UNKNOWN_KEY_MAX: usize = 32;
/// Largest `vcpus`: the most vCPUs hv gives a domain.
pub const VCPUS_MAX: u32 = abi::hypercall::MAX_VCPUS;
/// What `vcpus` accepts, for its error message (kept equal to [`VCPUS_MAX`]).
const VCPUS_RANGE: &str = "must be 1..=8 (vCPUs of the guest)";
const _: () = assert!(VCPUS_MAX == 8, "VCPUS_RANGE names the range");

/// What to do when the guest crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnCrash {
    /// Tear the domain down and free its memory (`"destroy"`, the default).
    Destroy,
    /// Tear it down and build it again from the same configuration (`"restart"`).
    Restart,
    /// Keep the domain, paused, for inspection (`"preserve"`).
    Preserve,
}

/// A guest's configuration, every value checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// The domain's name: see the module docs for its rules.
    pub name: ArrayString<NAME_MAX>,
    /// RAM, in MiB: 1..=[`MEMORY_MIB_MAX`].
    pub memory_mib: u32,
    /// Virtual CPUs: 1..=[`VCPUS_MAX`]; the guest starts all but the first.
    pub vcpus: u32,
    /// The kernel's path inside the boot ramdisk, as written.
    pub kernel: ArrayString<KERNEL_MAX>,
    /// The path inside the boot ramdisk of the file given to the guest as
    /// its module (a Linux initramfs); empty for none.
    pub ramdisk: ArrayString<KERNEL_MAX>,
    /// The kernel command line: at most [`CMDLINE_MAX`] bytes, no NUL.
    pub cmdline: ArrayString<1024>,
    /// What to do when the guest crashes.
    pub on_crash: OnCrash,
    /// Scheduler weight, relative to other domains: 1..=65535.
    pub weight: u32,
    /// Scheduler cap in percent of one CPU for the whole guest: 0..=100 per
    /// vCPU (150 = one and a half CPUs), 0 meaning no cap.
    pub cap: u32,
    /// `disk` entries, raw.
    pub disks: ArrayVec<ArrayString<LIST_ENTRY_MAX>, LIST_ENTRIES_MAX>,
    /// `vif` entries, raw.
    pub vifs: ArrayVec<ArrayString<LIST_ENTRY_MAX>, LIST_ENTRIES_MAX>,
    /// `type = "pvh"` was given: the kernel must boot as a PVH guest.
    pub pvh: bool,
}

/// Why a configuration file was rejected, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The 1-based line; 0 when the error concerns the whole file (a missing key).
    pub line: usize,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

/// What is wrong with a configuration file. Displayed through [`ConfigError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The line is not `key = value`; the text says what was expected.
    Syntax(&'static str),
    /// No such key; holds the key as written, cut to [`UNKNOWN_KEY_MAX`] bytes.
    UnknownKey(ArrayString<UNKNOWN_KEY_MAX>),
    /// The key was already set, on `first_line`.
    DuplicateKey { key: &'static str, first_line: usize },
    /// A required key is absent.
    MissingKey(&'static str),
    /// The value has the wrong type; `expected` reads "a string", "an integer", ...
    WrongType { key: &'static str, expected: &'static str },
    /// The value is not one the key accepts; `detail` reads "must be ...".
    OutOfRange { key: &'static str, detail: &'static str },
    /// The line is not valid UTF-8.
    NotUtf8,
    /// A string (for a list, one entry) is longer than `max` bytes.
    TooLong { key: &'static str, max: usize },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line != 0 {
            write!(f, "line {}: ", self.line)?;
        }
        match self.kind {
            ConfigErrorKind::Syntax(what) => f.write_str(what),
            ConfigErrorKind::UnknownKey(key) => write!(f, "unknown key '{key}'"),
            ConfigErrorKind::DuplicateKey { key, first_line } => {
                write!(f, "{key} is already set on line {first_line}")
            }
            ConfigErrorKind::MissingKey(key) => write!(f, "missing required key '{key}'"),
            ConfigErrorKind::WrongType { key, expected } => write!(f, "{key} must be {expected}"),
            ConfigErrorKind::OutOfRange { key, detail } => write!(f, "{key} {detail}"),
            ConfigErrorKind::NotUtf8 => f.write_str("not valid UTF-8"),
            ConfigErrorKind::TooLong { key, max } => {
                if Key::from_name(key).is_some_and(Key::is_list) {
                    write!(f, "each {key} entry must be at most {max} bytes")
                } else {
                    write!(f, "{key} must be at most {max} bytes")
                }
            }
        }
    }
}

/// Parses a configuration file.
pub fn parse(text: &[u8]) -> Result<GuestConfig, ConfigError> {
    let mut config = GuestConfig {
        name: ArrayString::new(),
        memory_mib: 0,
        vcpus: 1,
        kernel: ArrayString::new(),
        ramdisk: ArrayString::new(),
        cmdline: ArrayString::new(),
        on_crash: OnCrash::Destroy,
        weight: 256,
        cap: 0,
        disks: ArrayVec::new(),
        vifs: ArrayVec::new(),
        pvh: false,
    };
    // The line each key was set on; 0 while unset.
    let mut set_on_line = [0usize; KEYS.len()];

    for (index, line) in text.split(|&byte| byte == b'\n').enumerate() {
        let line_number = index + 1;
        let at = |kind| ConfigError { line: line_number, kind };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = core::str::from_utf8(line).map_err(|_| at(ConfigErrorKind::NotUtf8))?;
        let Some((key_text, value)) = parse_line(line).map_err(|what| at(ConfigErrorKind::Syntax(what)))? else {
            continue;
        };
        let Some(key) = Key::from_name(key_text) else {
            let cut = &key_text[..key_text.len().min(UNKNOWN_KEY_MAX)]; // keys are ASCII
            return Err(at(ConfigErrorKind::UnknownKey(ArrayString::from(cut).unwrap_or_default())));
        };
        let first_line = set_on_line[key as usize];
        if first_line != 0 {
            return Err(at(ConfigErrorKind::DuplicateKey { key: key.name(), first_line }));
        }
        set_on_line[key as usize] = line_number;
        apply(&mut config, key, value).map_err(at)?;
    }

    for key in [Key::Name, Key::Memory, Key::Kernel] {
        if set_on_line[key as usize] == 0 {
            return Err(ConfigError { line: 0, kind: ConfigErrorKind::MissingKey(key.name()) });
        }
    }
    // The cap is the guest's, at most 100 percent of a CPU per vCPU.
    if config.cap > 100 * config.vcpus {
        return Err(ConfigError {
            line: set_on_line[Key::Cap as usize],
            kind: ConfigErrorKind::OutOfRange { key: "cap", detail: "must be at most 100 per vCPU (see vcpus)" },
        });
    }
    Ok(config)
}

/// The keys, in the order of [`KEYS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Name,
    Memory,
    Vcpus,
    Kernel,
    Ramdisk,
    Cmdline,
    OnCrash,
    Weight,
    Cap,
    Disk,
    Vif,
    Type,
}

/// Each key's spelling, indexed by `Key as usize`.
const KEYS: [(&str, Key); 12] = [
    ("name", Key::Name),
    ("memory", Key::Memory),
    ("vcpus", Key::Vcpus),
    ("kernel", Key::Kernel),
    ("ramdisk", Key::Ramdisk),
    ("cmdline", Key::Cmdline),
    ("on_crash", Key::OnCrash),
    ("weight", Key::Weight),
    ("cap", Key::Cap),
    ("disk", Key::Disk),
    ("vif", Key::Vif),
    ("type", Key::Type),
];

impl Key {
    fn from_name(name: &str) -> Option<Key> {
        KEYS.iter().find(|(spelling, _)| *spelling == name).map(|&(_, key)| key)
    }

    fn name(self) -> &'static str {
        KEYS[self as usize].0
    }

    fn is_list(self) -> bool {
        matches!(self, Key::Disk | Key::Vif)
    }
}

const EXPECTED_STRING: &str = "a string in double quotes";
const EXPECTED_INTEGER: &str = "a decimal integer";
const EXPECTED_LIST: &str = "a list of strings, like [ \"a\", \"b\" ]";

/// Checks `value` against `key` and stores it in `config`.
fn apply(config: &mut GuestConfig, key: Key, value: Value<'_>) -> Result<(), ConfigErrorKind> {
    let name = key.name();
    match key {
        Key::Name => {
            config.name = string(name, value, NAME_MAX)?;
            check_name(&config.name).map_err(|detail| ConfigErrorKind::OutOfRange { key: name, detail })?;
        }
        Key::Memory => {
            config.memory_mib = integer(name, value, 1, MEMORY_MIB_MAX, "must be 1..=1024 MiB")?;
        }
        Key::Vcpus => config.vcpus = integer(name, value, 1, VCPUS_MAX, VCPUS_RANGE)?,
        Key::Kernel => {
            config.kernel = string(name, value, KERNEL_MAX)?;
            if config.kernel.is_empty() {
                return Err(ConfigErrorKind::OutOfRange { key: name, detail: "must not be empty" });
            }
            reject_nul(name, &config.kernel)?;
        }
        Key::Ramdisk => {
            config.ramdisk = string(name, value, KERNEL_MAX)?;
            if config.ramdisk.is_empty() {
                return Err(ConfigErrorKind::OutOfRange { key: name, detail: "must not be empty" });
            }
            reject_nul(name, &config.ramdisk)?;
        }
        Key::Cmdline => {
            config.cmdline = string(name, value, CMDLINE_MAX)?;
            reject_nul(name, &config.cmdline)?;
        }
        Key::OnCrash => {
            let invalid =
                ConfigErrorKind::OutOfRange { key: name, detail: "must be \"destroy\", \"restart\" or \"preserve\"" };
            // A string too long for any action is simply not one of them.
            let action: ArrayString<8> = string(name, value, 8).map_err(|error| match error {
                ConfigErrorKind::TooLong { .. } => invalid,
                other => other,
            })?;
            config.on_crash = match action.as_str() {
                "destroy" => OnCrash::Destroy,
                "restart" => OnCrash::Restart,
                "preserve" => OnCrash::Preserve,
                _ => return Err(invalid),
            };
        }
        Key::Weight => config.weight = integer(name, value, 1, 65535, "must be 1..=65535")?,
        Key::Cap => {
            config.cap = integer(
                name,
                value,
                0,
                100 * VCPUS_MAX,
                "must be 0..=800 (percent of one CPU for the guest, at most 100 per vCPU; 0 means no cap)",
            )?;
        }
        Key::Disk => config.disks = list(name, value)?,
        Key::Vif => config.vifs = list(name, value)?,
        Key::Type => {
            let invalid = ConfigErrorKind::OutOfRange {
                key: name,
                detail: "must be \"pvh\" (Mica builds PVH guests; Xen's \"pv\" and \"hvm\" types it does not run)",
            };
            let kind: ArrayString<4> = string(name, value, 4).map_err(|error| match error {
                ConfigErrorKind::TooLong { .. } => invalid,
                other => other,
            })?;
            if kind.as_str() != "pvh" {
                return Err(invalid);
            }
            config.pvh = true;
        }
    }
    Ok(())
}

/// A string value of at most `max` (<= `N`) bytes.
fn string<const N: usize>(key: &'static str, value: Value<'_>, max: usize) -> Result<ArrayString<N>, ConfigErrorKind> {
    let Value::String(quoted) = value else {
        return Err(ConfigErrorKind::WrongType { key, expected: EXPECTED_STRING });
    };
    quoted.decode(max).ok_or(ConfigErrorKind::TooLong { key, max })
}

/// An integer value in `minimum..=maximum`; `detail` describes that range.
fn integer(
    key: &'static str,
    value: Value<'_>,
    minimum: u32,
    maximum: u32,
    detail: &'static str,
) -> Result<u32, ConfigErrorKind> {
    let Value::Integer { negative, magnitude } = value else {
        return Err(ConfigErrorKind::WrongType { key, expected: EXPECTED_INTEGER });
    };
    match u32::try_from(magnitude) {
        Ok(number) if (!negative || number == 0) && (minimum..=maximum).contains(&number) => Ok(number),
        _ => Err(ConfigErrorKind::OutOfRange { key, detail }),
    }
}

/// A list value: at most [`LIST_ENTRIES_MAX`] strings of at most [`LIST_ENTRY_MAX`] bytes.
fn list(
    key: &'static str,
    value: Value<'_>,
) -> Result<ArrayVec<ArrayString<LIST_ENTRY_MAX>, LIST_ENTRIES_MAX>, ConfigErrorKind> {
    let Value::List(items) = value else {
        return Err(ConfigErrorKind::WrongType { key, expected: EXPECTED_LIST });
    };
    let mut entries = ArrayVec::new();
    for item in items {
        let entry = item.decode(LIST_ENTRY_MAX).ok_or(ConfigErrorKind::TooLong { key, max: LIST_ENTRY_MAX })?;
        entries
            .try_push(entry)
            .map_err(|_| ConfigErrorKind::OutOfRange { key, detail: "must have at most 4 entries" })?;
    }
    Ok(entries)
}

fn reject_nul(key: &'static str, text: &str) -> Result<(), ConfigErrorKind> {
    if text.contains('\0') {
        return Err(ConfigErrorKind::OutOfRange { key, detail: "must not contain NUL" });
    }
    Ok(())
}

/// Checks a guest name's characters; the length was checked when it was decoded.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')) {
        return Err("may hold only letters, digits, '_', '.' and '-'");
    }
    if name.starts_with(['-', '.']) {
        return Err("must not start with '-' or '.'");
    }
    if name.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err("must not be a number (commands take a name or a domain id in the same place)");
    }
    Ok(())
}

/// A value as written, before it is checked against its key.
#[derive(Clone, Copy, Debug)]
enum Value<'a> {
    String(Quoted<'a>),
    /// Decimal digits, `magnitude` saturating at `u64::MAX`.
    Integer {
        negative: bool,
        magnitude: u64,
    },
    /// The items of a list already checked by [`parse_line`].
    List(ListItems<'a>),
}

/// The text between a string's quotes, escapes still in; already checked.
#[derive(Clone, Copy, Debug)]
struct Quoted<'a>(&'a str);

impl Quoted<'_> {
    fn chars(self) -> impl Iterator<Item = char> {
        let mut chars = self.0.chars();
        core::iter::from_fn(move || match chars.next()? {
            '\\' => chars.next(),
            other => Some(other),
        })
    }

    /// The string with escapes resolved, or `None` when longer than `max` (<= `N`) bytes.
    fn decode<const N: usize>(self, max: usize) -> Option<ArrayString<N>> {
        let mut out = ArrayString::new();
        for c in self.chars() {
            if out.len() + c.len_utf8() > max {
                return None;
            }
            out.try_push(c).ok()?;
        }
        Some(out)
    }
}

/// A position in one line.
#[derive(Clone, Copy, Debug)]
struct Cursor<'a> {
    line: &'a str,
    position: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.position).copied()
    }

    fn advance(&mut self) {
        self.position += 1;
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.advance();
        }
    }

    /// Takes the longest run of ASCII bytes matching `wanted`.
    fn take_while(&mut self, wanted: impl Fn(u8) -> bool) -> &'a str {
        let start = self.position;
        while self.peek().is_some_and(|byte| byte.is_ascii() && wanted(byte)) {
            self.advance();
        }
        &self.line[start..self.position]
    }

    /// Takes a string's text after its opening quote, and the closing quote.
    fn take_quoted(&mut self) -> Result<Quoted<'a>, &'static str> {
        let start = self.position;
        loop {
            match self.peek() {
                None => return Err("unterminated string"),
                Some(b'"') => break,
                Some(b'\\') => {
                    self.advance();
                    match self.peek() {
                        Some(b'"' | b'\\') => self.advance(),
                        None => return Err("unterminated string"),
                        Some(_) => return Err("unknown escape in a string: only \\\" and \\\\ are allowed"),
                    }
                }
                Some(_) => self.advance(),
            }
        }
        let text = &self.line[start..self.position];
        self.advance();
        Ok(Quoted(text))
    }
}

/// The items of a list, read from just after its `[`. Checked once by
/// [`parse_line`] through [`ListItems::next_item`]; iterated again after
/// that, when it cannot fail.
#[derive(Clone, Copy, Debug)]
struct ListItems<'a> {
    cursor: Cursor<'a>,
    first: bool,
    done: bool,
}

const UNTERMINATED_LIST: &str = "unterminated list: a list must end with ']' on the line it starts";

impl<'a> ListItems<'a> {
    fn next_item(&mut self) -> Result<Option<Quoted<'a>>, &'static str> {
        if self.done {
            return Ok(None);
        }
        self.cursor.skip_blanks();
        if !self.first {
            match self.cursor.peek() {
                Some(b',') => {
                    self.cursor.advance();
                    self.cursor.skip_blanks();
                }
                Some(b']') => {}
                None => return Err(UNTERMINATED_LIST),
                Some(_) => return Err("expected ',' or ']' after a list item"),
            }
        }
        self.first = false;
        match self.cursor.peek() {
            Some(b']') => {
                self.cursor.advance();
                self.done = true;
                Ok(None)
            }
            Some(b'"') => {
                self.cursor.advance();
                self.cursor.take_quoted().map(Some)
            }
            None => Err(UNTERMINATED_LIST),
            Some(_) => Err("list items must be strings in double quotes"),
        }
    }
}

impl<'a> Iterator for ListItems<'a> {
    type Item = Quoted<'a>;

    fn next(&mut self) -> Option<Quoted<'a>> {
        self.next_item().ok().flatten()
    }
}

/// Splits a line into key and value; `Ok(None)` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<(&str, Value<'_>)>, &'static str> {
    let mut cursor = Cursor { line, position: 0 };
    cursor.skip_blanks();
    if matches!(cursor.peek(), None | Some(b'#')) {
        return Ok(None);
    }
    if !cursor.peek().is_some_and(|byte| byte.is_ascii_alphabetic() || byte == b'_') {
        return Err("expected a key: letters, digits and '_', starting with a letter or '_'");
    }
    let key = cursor.take_while(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
    cursor.skip_blanks();
    if cursor.peek() != Some(b'=') {
        return Err("expected '=' after the key");
    }
    cursor.advance();
    cursor.skip_blanks();
    let value = match cursor.peek() {
        Some(b'"') => {
            cursor.advance();
            Value::String(cursor.take_quoted()?)
        }
        Some(b'[') => {
            cursor.advance();
            let items = ListItems { cursor, first: true, done: false };
            let mut checker = items;
            while checker.next_item()?.is_some() {}
            cursor = checker.cursor;
            Value::List(items)
        }
        Some(byte) if byte == b'-' || byte.is_ascii_digit() => {
            let negative = byte == b'-';
            if negative {
                cursor.advance();
            }
            let digits = cursor.take_while(|byte| byte.is_ascii_digit());
            if digits.is_empty() {
                return Err("expected digits after '-'");
            }
            if cursor.peek().is_some_and(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'.') {
                return Err("an integer must be plain decimal digits, without a unit, point or 0x");
            }
            let magnitude = digits
                .bytes()
                .fold(0u64, |total, digit| total.saturating_mul(10).saturating_add(u64::from(digit - b'0')));
            Value::Integer { negative, magnitude }
        }
        None | Some(b'#') => return Err("expected a value after '='"),
        Some(_) => return Err("expected a value: a \"string\", a decimal integer or a [list]"),
    };
    cursor.skip_blanks();
    if !matches!(cursor.peek(), None | Some(b'#')) {
        return Err("unexpected text after the value");
    }
    Ok(Some((key, value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    const GOOD: &str = "\
# A web server guest.
name = \"web-1.example_a\"
memory = 64   # MiB
vcpus = 1
kernel = \"boot/guest.elf\"
cmdline = \"console=hvc0 root=\\\"/dev/xvda\\\" #notacomment \\\\\"
on_crash = \"restart\"
weight = 512
cap = 50
disk = [ \"phy:ram0,xvda,w\", \"file:#2,xvdb,r\" ]
vif = [\"mac=00:16:3e:00:00:01\",]

";

    fn error(text: &str) -> ConfigError {
        parse(text.as_bytes()).expect_err("the file should be rejected")
    }

    fn with_required(line: &str) -> String {
        std::format!("name = \"g\"\nmemory = 16\nkernel = \"k\"\n{line}\n")
    }

    fn kind_of(line: &str) -> ConfigErrorKind {
        let error = error(&with_required(line));
        assert_eq!(error.line, 4, "{line}: {error}");
        error.kind
    }

    fn strings<const N: usize>(items: &[&str]) -> ArrayVec<ArrayString<LIST_ENTRY_MAX>, N> {
        items.iter().map(|item| ArrayString::from(item).unwrap()).collect()
    }

    #[test]
    fn full_file() {
        let config = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(config.name.as_str(), "web-1.example_a");
        assert_eq!(config.memory_mib, 64);
        assert_eq!(config.vcpus, 1);
        assert_eq!(config.kernel.as_str(), "boot/guest.elf");
        assert_eq!(config.cmdline.as_str(), "console=hvc0 root=\"/dev/xvda\" #notacomment \\");
        assert_eq!(config.on_crash, OnCrash::Restart);
        assert_eq!(config.weight, 512);
        assert_eq!(config.cap, 50);
        assert_eq!(config.disks, strings(&["phy:ram0,xvda,w", "file:#2,xvdb,r"]));
        assert_eq!(config.vifs, strings(&["mac=00:16:3e:00:00:01"]));
    }

    #[test]
    fn defaults() {
        let config = parse(b"name=\"a\"\nmemory=1\nkernel=\"/k\"").unwrap();
        let expected = GuestConfig {
            name: ArrayString::from("a").unwrap(),
            memory_mib: 1,
            vcpus: 1,
            kernel: ArrayString::from("/k").unwrap(),
            ramdisk: ArrayString::new(),
            cmdline: ArrayString::new(),
            on_crash: OnCrash::Destroy,
            weight: 256,
            cap: 0,
            disks: ArrayVec::new(),
            vifs: ArrayVec::new(),
            pvh: false,
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn a_ramdisk_is_a_path_in_the_boot_ramdisk() {
        let config = parse(with_required("ramdisk = \"linux/initramfs.gz\"").as_bytes()).unwrap();
        assert_eq!(config.ramdisk.as_str(), "linux/initramfs.gz");
        assert_eq!(error(&with_required("ramdisk = \"\"")).to_string(), "line 4: ramdisk must not be empty");
        assert_eq!(
            error(&with_required("ramdisk = 1")).to_string(),
            "line 4: ramdisk must be a string in double quotes"
        );
        let long = std::format!("ramdisk = \"{}\"", "r".repeat(KERNEL_MAX + 1));
        assert_eq!(error(&with_required(&long)).to_string(), "line 4: ramdisk must be at most 100 bytes");
    }

    #[test]
    fn vcpus_from_one_to_the_most_hv_gives() {
        for vcpus in 1..=VCPUS_MAX {
            let config = parse(with_required(&std::format!("vcpus = {vcpus}")).as_bytes()).unwrap();
            assert_eq!(config.vcpus, vcpus);
        }
        assert_eq!(error(&with_required("vcpus = 0")).to_string(), "line 4: vcpus must be 1..=8 (vCPUs of the guest)");
    }

    #[test]
    fn crlf_tabs_and_comments() {
        let crlf = GOOD.replace('\n', "\r\n");
        assert_eq!(parse(crlf.as_bytes()), parse(GOOD.as_bytes()));
        let text = "\t# comment\r\n  name\t=\t\"x\"#c\r\nmemory=1024#c\r\n\r\n kernel = \"k\" \t # \"x\r\n\
                    disk = [ ] # none\r\nvif=[]\r\ncmdline = \"x#y\"#";
        let config = parse(text.as_bytes()).unwrap();
        assert_eq!(config.name.as_str(), "x");
        assert_eq!(config.memory_mib, 1024);
        assert_eq!(config.kernel.as_str(), "k");
        assert_eq!(config.cmdline.as_str(), "x#y");
        assert!(config.disks.is_empty() && config.vifs.is_empty());
    }

    #[test]
    fn limits_accepted() {
        let text = with_required(&std::format!(
            "cmdline = \"{}\"\nweight = 65535\ncap = 100\ndisk = [\"{}\", \"b\", \"c\", \"d\"]",
            "c".repeat(CMDLINE_MAX),
            "d".repeat(LIST_ENTRY_MAX)
        ));
        let config = parse(text.as_bytes()).unwrap();
        assert_eq!(config.cmdline.len(), CMDLINE_MAX);
        assert_eq!((config.weight, config.cap, config.disks.len()), (65535, 100, 4));
        let text =
            std::format!("name=\"{}\"\nmemory=1\nkernel=\"{}\"\nweight=1\ncap=0", "n".repeat(32), "k".repeat(100));
        let config = parse(text.as_bytes()).unwrap();
        assert_eq!((config.name.len(), config.kernel.len()), (32, 100));
        // Multi-byte characters count in bytes.
        assert_eq!(parse(with_required("cmdline = \"é\"").as_bytes()).unwrap().cmdline.as_str(), "é");
        for name in ["a", "A_b-c.d", "1a", "_", "9-"] {
            let text = std::format!("name=\"{name}\"\nmemory=1\nkernel=\"k\"");
            assert_eq!(parse(text.as_bytes()).unwrap().name.as_str(), name);
        }
    }

    #[test]
    fn syntax_errors() {
        use ConfigErrorKind::Syntax;
        let cases = [
            "memory 64",
            "memory: 64",
            "= 64",
            "9lives = 1",
            "cmdline = \"open",
            "cmdline = \"ends in backslash\\",
            "cmdline = \"bad \\n escape\"",
            "cmdline = \"a\" \"b\"",
            "cmdline = \"a\"b",
            "cap = 5 6",
            "cap = 5M",
            "cap = 0x10",
            "cap = 1.5",
            "cap = -",
            "cap = ",
            "cap = # nothing",
            "cap = yes",
            "disk = [ \"a\"",
            "disk = [ \"a\", ",
            "disk = [ \"a\" \"b\" ]",
            "disk = [ 1 ]",
            "disk = [ , ]",
            "disk = [ \"a\" ] x",
            "disk = [ \"a\"]]",
            "disk = [ \"a]",
        ];
        for line in cases {
            assert!(matches!(kind_of(line), Syntax(_)), "{line}");
        }
        // A list may not continue on the next line.
        let error = error("name=\"g\"\nmemory=1\nkernel=\"k\"\ndisk = [ \"a\",\n \"b\" ]\n");
        assert_eq!(error.line, 4);
        assert_eq!(error.to_string(), std::format!("line 4: {UNTERMINATED_LIST}"));
    }

    #[test]
    fn key_errors() {
        assert_eq!(kind_of("colour = \"red\""), ConfigErrorKind::UnknownKey(ArrayString::from("colour").unwrap()));
        let long = "k".repeat(40);
        assert_eq!(
            kind_of(&std::format!("{long} = 1")),
            ConfigErrorKind::UnknownKey(ArrayString::from(&long[..UNKNOWN_KEY_MAX]).unwrap())
        );
        // Keys are case sensitive.
        assert!(matches!(kind_of("Memory = 1"), ConfigErrorKind::UnknownKey(_)));
        assert_eq!(kind_of("memory = 16"), ConfigErrorKind::DuplicateKey { key: "memory", first_line: 2 });
        assert_eq!(
            error("name = \"a\"\n# comment\n\nname = \"a\"\n"),
            ConfigError { line: 4, kind: ConfigErrorKind::DuplicateKey { key: "name", first_line: 1 } }
        );
        for (text, missing) in [
            ("memory = 1\nkernel = \"k\"", "name"),
            ("name = \"a\"\nkernel = \"k\"", "memory"),
            ("name = \"a\"\nmemory = 1\ncap = 0", "kernel"),
            ("", "name"),
        ] {
            assert_eq!(error(text), ConfigError { line: 0, kind: ConfigErrorKind::MissingKey(missing) });
        }
    }

    #[test]
    fn type_errors() {
        for (line, key, expected) in [
            ("cmdline = 5", "cmdline", EXPECTED_STRING),
            ("cmdline = [\"a\"]", "cmdline", EXPECTED_STRING),
            ("on_crash = 1", "on_crash", EXPECTED_STRING),
            ("cap = \"5\"", "cap", EXPECTED_INTEGER),
            ("weight = []", "weight", EXPECTED_INTEGER),
            ("vcpus = \"1\"", "vcpus", EXPECTED_INTEGER),
            ("disk = \"phy:x\"", "disk", EXPECTED_LIST),
            ("vif = 0", "vif", EXPECTED_LIST),
        ] {
            assert_eq!(kind_of(line), ConfigErrorKind::WrongType { key, expected }, "{line}");
        }
        assert_eq!(
            error("name = 12\nmemory = 1\nkernel = \"k\""),
            ConfigError { line: 1, kind: ConfigErrorKind::WrongType { key: "name", expected: EXPECTED_STRING } }
        );
        assert_eq!(
            error("name = \"a\"\nmemory = \"64\"\nkernel = \"k\"").to_string(),
            "line 2: memory must be a decimal integer"
        );
    }

    #[test]
    fn range_errors() {
        use ConfigErrorKind::{OutOfRange, TooLong};
        for value in ["0", "1025", "-1", "99999999999999999999999"] {
            let text = std::format!("name = \"g\"\n\nmemory = {value}\nkernel = \"k\"");
            let error = parse(text.as_bytes()).unwrap_err();
            assert_eq!(error.line, 3);
            assert_eq!(error.to_string(), "line 3: memory must be 1..=1024 MiB");
        }
        assert!(parse(with_required("cap = -0").as_bytes()).is_ok());
        for line in ["weight = 0", "weight = 65536", "cap = 101", "cap = 801", "cap = -5"] {
            assert!(matches!(kind_of(line), OutOfRange { .. }), "{line}");
        }
        // A cap up to 100 per vCPU, wherever `vcpus` is.
        assert_eq!(parse(with_required("cap = 150\nvcpus = 2").as_bytes()).map(|c| (c.cap, c.vcpus)), Ok((150, 2)));
        assert_eq!(parse(with_required("vcpus = 2\ncap = 200").as_bytes()).map(|c| c.cap), Ok(200));
        let too_much = error(&with_required("vcpus = 2\ncap = 201"));
        assert_eq!(too_much.to_string(), "line 5: cap must be at most 100 per vCPU (see vcpus)");
        for line in
            ["vcpus = 0", "vcpus = -0", "vcpus = -1", "vcpus = 9", "vcpus = 4294967297", "vcpus = 99999999999999999999"]
        {
            assert_eq!(kind_of(line), OutOfRange { key: "vcpus", detail: VCPUS_RANGE }, "{line}");
        }
        assert!(matches!(kind_of("on_crash = \"reboot\""), OutOfRange { key: "on_crash", .. }));
        assert!(matches!(kind_of("on_crash = \"a-string-far-too-long-to-be-any-action\""), OutOfRange { .. }));
        assert!(matches!(kind_of("on_crash = \"Destroy\""), OutOfRange { .. }));
        // `type`: xl's key; only "pvh" is a type Mica builds.
        assert_eq!(parse(with_required("type = \"pvh\"").as_bytes()).map(|c| c.pvh), Ok(true));
        assert_eq!(parse(with_required("").as_bytes()).map(|c| c.pvh), Ok(false));
        for line in ["type = \"pv\"", "type = \"hvm\"", "type = \"PVH\"", "type = \"pvhvm-and-more\"", "type = \"\""] {
            assert!(matches!(kind_of(line), OutOfRange { key: "type", .. }), "{line}");
        }
        assert_eq!(kind_of("type = 1"), ConfigErrorKind::WrongType { key: "type", expected: EXPECTED_STRING });
        let hvm = error(&with_required("type = \"hvm\"")).to_string();
        assert!(hvm.contains("must be \"pvh\"") && hvm.contains("\"hvm\""), "{hvm}");
        assert!(matches!(
            kind_of("disk = [\"a\", \"b\", \"c\", \"d\", \"e\"]"),
            OutOfRange { key: "disk", detail: "must have at most 4 entries" }
        ));
        assert_eq!(kind_of("cmdline = \"a\0b\""), OutOfRange { key: "cmdline", detail: "must not contain NUL" });
        assert_eq!(
            kind_of(&std::format!("cmdline = \"{}\"", "c".repeat(CMDLINE_MAX + 1))),
            TooLong { key: "cmdline", max: CMDLINE_MAX }
        );
        assert_eq!(
            kind_of(&std::format!("vif = [\"a\", \"{}\"]", "v".repeat(LIST_ENTRY_MAX + 1))),
            TooLong { key: "vif", max: LIST_ENTRY_MAX }
        );
        // Escapes count once: 128 escaped quotes fit.
        assert!(parse(with_required(&std::format!("vif = [\"{}\"]", "\\\"".repeat(128))).as_bytes()).is_ok());

        let kernel = |value: &str| error(&std::format!("name=\"g\"\nmemory=1\nkernel={value}")).kind;
        assert_eq!(kernel("\"\""), OutOfRange { key: "kernel", detail: "must not be empty" });
        assert_eq!(kernel("\"a\0\""), OutOfRange { key: "kernel", detail: "must not contain NUL" });
        assert_eq!(kernel(&std::format!("\"{}\"", "k".repeat(101))), TooLong { key: "kernel", max: KERNEL_MAX });

        let name = |value: &str| error(&std::format!("memory=1\nkernel=\"k\"\nname=\"{value}\"")).kind;
        assert_eq!(name(&"n".repeat(33)), TooLong { key: "name", max: NAME_MAX });
        assert_eq!(name(""), OutOfRange { key: "name", detail: "must not be empty" });
        for bad in ["a b", "a/b", "é", "a\\\"b", "a\0"] {
            assert!(
                matches!(name(bad), OutOfRange { key: "name", detail } if detail.starts_with("may hold only")),
                "{bad}"
            );
        }
        for bad in ["-a", ".a", "..", "-1"] {
            assert_eq!(name(bad), OutOfRange { key: "name", detail: "must not start with '-' or '.'" }, "{bad}");
        }
        for bad in ["0", "12", "007"] {
            assert!(
                matches!(name(bad), OutOfRange { key: "name", detail } if detail.starts_with("must not be a number"))
            );
        }
    }

    #[test]
    fn not_utf8() {
        let mut text = with_required("cmdline = \"x\"").into_bytes();
        let at = text.len() - 3;
        text[at] = 0xff;
        assert_eq!(parse(&text), Err(ConfigError { line: 4, kind: ConfigErrorKind::NotUtf8 }));
        // Even inside a comment.
        assert_eq!(parse(b"# caf\xe9\nname=\"a\""), Err(ConfigError { line: 1, kind: ConfigErrorKind::NotUtf8 }));
    }

    #[test]
    fn messages() {
        let cases: [(&str, &str); 10] = [
            ("foo = 1", "line 4: unknown key 'foo'"),
            ("kernel = \"x\"", "line 4: kernel is already set on line 3"),
            ("cap = 101", "line 4: cap must be at most 100 per vCPU (see vcpus)"),
            ("vcpus = 9", "line 4: vcpus must be 1..=8 (vCPUs of the guest)"),
            ("disk = 1", "line 4: disk must be a list of strings, like [ \"a\", \"b\" ]"),
            ("cmdline = \"unterminated", "line 4: unterminated string"),
            ("cap = 1 # ok\nweight = 2 2", "line 5: unexpected text after the value"),
            (&std::format!("disk = [\"{}\"]", "x".repeat(129)), "line 4: each disk entry must be at most 128 bytes"),
            ("on_crash = \"explode\"", "line 4: on_crash must be \"destroy\", \"restart\" or \"preserve\""),
            ("vif = [\"a\",\"b\",\"c\",\"d\",\"e\"]", "line 4: vif must have at most 4 entries"),
        ];
        for (line, message) in cases {
            assert_eq!(error(&with_required(line)).to_string(), message);
        }
        assert_eq!(error("name = \"a\"\nmemory = 1").to_string(), "missing required key 'kernel'");
        assert_eq!(
            error(&std::format!("name = \"{}\"", "a".repeat(33))).to_string(),
            "line 1: name must be at most 32 bytes"
        );
        assert_eq!(parse(b"\xff").unwrap_err().to_string(), "line 1: not valid UTF-8");
    }

    /// Mutates a good file many times; parsing must never panic, and what it
    /// accepts must satisfy every documented rule.
    #[test]
    fn mutations_never_panic() {
        let mut generator = crate::test_random::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut random = move || generator.next();
        const INTERESTING: &[u8] = b"\"\\[]#=,\r\n \t-09aZ_.\0\xff\xc3\xa9";
        let good = GOOD.as_bytes();
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..20_000 {
            let mut text: Vec<u8> = good.to_vec();
            for _ in 0..=(random() % 4) {
                let position = (random() as usize) % (text.len() + 1);
                let byte = if random() % 2 == 0 {
                    INTERESTING[(random() as usize) % INTERESTING.len()]
                } else {
                    random() as u8
                };
                match random() % 4 {
                    0 if position < text.len() => text[position] = byte,
                    1 if position < text.len() => {
                        text.remove(position);
                    }
                    2 => text.insert(position, byte),
                    _ => text.truncate(position),
                }
            }
            match parse(&text) {
                Ok(config) => {
                    accepted += 1;
                    assert!(check_name(&config.name).is_ok() && config.name.len() <= NAME_MAX);
                    assert!((1..=MEMORY_MIB_MAX).contains(&config.memory_mib));
                    assert!((1..=VCPUS_MAX).contains(&config.vcpus));
                    assert!(!config.kernel.is_empty() && !config.kernel.contains('\0'));
                    assert!(config.cmdline.len() <= CMDLINE_MAX);
                    assert!((1..=65535).contains(&config.weight) && config.cap <= 100);
                }
                Err(error) => {
                    rejected += 1;
                    let line_count = text.split(|&byte| byte == b'\n').count();
                    assert!(error.line <= line_count, "{error} in {line_count} lines");
                    assert!(!error.to_string().is_empty());
                }
            }
        }
        assert!(accepted > 100 && rejected > 100, "accepted {accepted}, rejected {rejected}");
    }
}
