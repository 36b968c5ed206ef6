//! The shell's line editor: turns received bytes into echo output and
//! complete lines. Handles backspace/delete, Ctrl-U (erase line), Ctrl-C
//! (abandon line), and treats both `\r` and `\n` as end of line (a `\n`
//! right after `\r` is ignored, so CR LF terminals submit once).

/// Longest line the shell accepts; further characters are refused with a bell.
pub const MAX_LINE: usize = 256;

/// What the terminal should show, and whether a line is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Echo the typed character.
    Echo(u8),
    /// Erase `n` characters on screen (backspace, space, backspace each).
    Erase(usize),
    /// Ring the bell (line full, or nothing to erase).
    Bell,
    /// The line is complete: print a newline and run it.
    Submit,
    /// The line was abandoned (Ctrl-C): print `^C` and a new prompt.
    Cancel,
}

/// The line being typed.
#[derive(Clone, Debug)]
pub struct LineEditor {
    buffer: [u8; MAX_LINE],
    length: usize,
    last_was_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        LineEditor::new()
    }
}

impl LineEditor {
    /// An empty line.
    pub const fn new() -> LineEditor {
        LineEditor { buffer: [0; MAX_LINE], length: 0, last_was_cr: false }
    }

    /// Feeds one received byte.
    pub fn feed(&mut self, byte: u8) -> Action {
        let after_cr = core::mem::replace(&mut self.last_was_cr, byte == b'\r');
        match byte {
            b'\n' if after_cr => Action::None,
            b'\r' | b'\n' => Action::Submit,
            0x08 | 0x7f => {
                if self.length == 0 {
                    Action::Bell
                } else {
                    self.length -= 1;
                    Action::Erase(1)
                }
            }
            0x15 => {
                let erased = self.length;
                self.length = 0;
                if erased == 0 { Action::None } else { Action::Erase(erased) }
            }
            0x03 => {
                self.length = 0;
                Action::Cancel
            }
            0x20..=0x7e => {
                if self.length == MAX_LINE {
                    return Action::Bell;
                }
                self.buffer[self.length] = byte;
                self.length += 1;
                Action::Echo(byte)
            }
            // Other control bytes and non-ASCII are ignored.
            _ => Action::None,
        }
    }

    /// The line typed so far (always ASCII).
    pub fn line(&self) -> &str {
        core::str::from_utf8(&self.buffer[..self.length]).unwrap_or("")
    }

    /// Empties the line after it was submitted.
    pub fn clear(&mut self) {
        self.length = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_all(editor: &mut LineEditor, bytes: &[u8]) -> Vec<Action> {
        bytes.iter().map(|&b| editor.feed(b)).collect()
    }

    #[test]
    fn typing_and_backspace() {
        let mut editor = LineEditor::new();
        let actions = type_all(&mut editor, b"infx\x7fo");
        assert_eq!(actions[3], Action::Echo(b'x'));
        assert_eq!(actions[4], Action::Erase(1));
        assert_eq!(editor.line(), "info");
        assert_eq!(editor.feed(b'\r'), Action::Submit);
        assert_eq!(editor.feed(b'\n'), Action::None, "CR LF submits once");
        editor.clear();
        assert_eq!(editor.feed(0x08), Action::Bell, "nothing to erase");
        assert_eq!(editor.feed(b'\n'), Action::Submit, "a lone LF submits");
    }

    #[test]
    fn control_keys() {
        let mut editor = LineEditor::new();
        type_all(&mut editor, b"hello");
        assert_eq!(editor.feed(0x15), Action::Erase(5));
        assert_eq!(editor.line(), "");
        type_all(&mut editor, b"abc");
        assert_eq!(editor.feed(0x03), Action::Cancel);
        assert_eq!(editor.line(), "");
        assert_eq!(editor.feed(0x1b), Action::None);
        assert_eq!(editor.feed(0xc3), Action::None);
        assert_eq!(editor.line(), "");
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut editor = LineEditor::new();
        for _ in 0..MAX_LINE {
            assert_eq!(editor.feed(b'a'), Action::Echo(b'a'));
        }
        assert_eq!(editor.feed(b'a'), Action::Bell);
        assert_eq!(editor.line().len(), MAX_LINE);
    }
}
