//! Guest-controlled text made safe for the operator's terminal. A guest
//! writes whatever bytes it likes to its console, into the store and (via
//! hv's log) into `dmesg`; printed raw, an escape sequence in them retitles
//! or clears the operator's terminal, or forges lines that seem to come
//! from dom0. Every place where such text reaches the serial line prints
//! it through [`escape`]: printable ASCII passes, and every other byte is
//! shown as `\xNN` (ESC as `\x1b`), except the few layout characters the
//! [`Context`] keeps. Bytes above 0x7f are escaped too: a lone 0x9b is a
//! CSI to an 8-bit terminal, and guests on Mica write ASCII.

use core::fmt;

/// Where the text is shown, which decides what keeps its meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// A guest's console stream (`console`, live and replayed): newline,
    /// tab and carriage return keep their meaning. A carriage return only
    /// moves to the start of the guest's own line.
    Console,
    /// Multi-line log text (`dmesg`): newline and tab. A carriage return is
    /// escaped, or a guest's line could be drawn over its `dN` prefix.
    Log,
    /// One value shown between double quotes on one line (`store`):
    /// nothing but printable ASCII passes, and `"` and `\` are escaped too,
    /// so the value cannot end its quotes or its line early.
    Quoted,
}

impl Context {
    /// Whether `byte` is written as it is.
    fn passes(self, byte: u8) -> bool {
        match (self, byte) {
            (Context::Quoted, b'"' | b'\\') => false,
            (_, 0x20..=0x7e) => true,
            (Context::Console, b'\n' | b'\t' | b'\r') => true,
            (Context::Log, b'\n' | b'\t') => true,
            _ => false,
        }
    }
}

/// `bytes` as they may be shown in `context`; format it with `{}`.
pub fn escape(bytes: &[u8], context: Context) -> Escaped<'_> {
    Escaped { bytes, context }
}

/// Text being shown escaped (see [`escape`]).
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a> {
    bytes: &'a [u8],
    context: Context,
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        let mut rest = self.bytes;
        while !rest.is_empty() {
            // The longest run that passes, written at once.
            let run = rest.iter().position(|&byte| !self.context.passes(byte)).unwrap_or(rest.len());
            // A run that passes is ASCII, hence UTF-8.
            out.write_str(core::str::from_utf8(&rest[..run]).unwrap_or(""))?;
            let Some(&byte) = rest.get(run) else { break };
            match (self.context, byte) {
                (Context::Quoted, b'"') => out.write_str("\\\"")?,
                (Context::Quoted, b'\\') => out.write_str("\\\\")?,
                (Context::Quoted, b'\n') => out.write_str("\\n")?,
                (Context::Quoted, b'\t') => out.write_str("\\t")?,
                (_, b'\r') => out.write_str("\\r")?,
                _ => write!(out, "\\x{byte:02x}")?,
            }
            rest = &rest[run + 1..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(bytes: &[u8], context: Context) -> String {
        escape(bytes, context).to_string()
    }

    #[test]
    fn printable_text_passes_unchanged() {
        for context in [Context::Console, Context::Log, Context::Quoted] {
            assert_eq!(shown(b"hello, world 42 ~!", context), "hello, world 42 ~!");
            assert_eq!(shown(b"", context), "");
        }
    }

    #[test]
    fn escape_sequences_are_shown_not_sent() {
        // Set the window title, clear the screen, move the cursor home.
        let attack = b"\x1b]0;owned\x07\x1b[2J\x1b[H\x9b2J";
        for context in [Context::Console, Context::Log, Context::Quoted] {
            let text = shown(attack, context);
            assert_eq!(text, "\\x1b]0;owned\\x07\\x1b[2J\\x1b[H\\x9b2J");
            assert!(text.bytes().all(|byte| (0x20..=0x7e).contains(&byte)), "{text:?}");
        }
    }

    #[test]
    fn each_context_keeps_its_layout_characters() {
        let text = b"a\tb\r\nc\x08d\x7f";
        assert_eq!(shown(text, Context::Console), "a\tb\r\nc\\x08d\\x7f");
        assert_eq!(shown(text, Context::Log), "a\tb\\r\nc\\x08d\\x7f");
        assert_eq!(shown(text, Context::Quoted), "a\\tb\\r\\nc\\x08d\\x7f");
    }

    #[test]
    fn a_quoted_value_cannot_end_its_quotes_or_line() {
        let forged = "x\"\n/local/domain/0/name = \"evil\\";
        assert_eq!(shown(forged.as_bytes(), Context::Quoted), "x\\\"\\n/local/domain/0/name = \\\"evil\\\\");
        assert_eq!(shown("é".as_bytes(), Context::Quoted), "\\xc3\\xa9", "non-ASCII bytes are escaped");
    }

    #[test]
    fn random_bytes_never_reach_the_terminal_raw() {
        let mut random = crate::test_random::XorShift(0x7e57_e5ca_9e00);
        for _ in 0..2_000 {
            let length = (random.next() % 40) as usize;
            let bytes: Vec<u8> = (0..length).map(|_| random.next() as u8).collect();
            for context in [Context::Console, Context::Log, Context::Quoted] {
                let text = shown(&bytes, context);
                let allowed = |byte: u8| (0x20..=0x7e).contains(&byte) || context.passes(byte);
                assert!(text.bytes().all(allowed), "{bytes:?} in {context:?}: {text:?}");
            }
        }
    }
}
