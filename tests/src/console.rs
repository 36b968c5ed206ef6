//! A serial console transcript: bytes arrive on a reader thread, tests wait for patterns in them.

use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// What the reader thread has collected so far.
#[derive(Default)]
pub(crate) struct Transcript {
    /// Everything received, one char per byte (Latin-1, so every prefix of
    /// the bytes maps to a prefix of the text), with "\r\n" and a lone "\r"
    /// both turned into "\n": the shell may end lines either way.
    pub(crate) text: String,
    last_was_carriage_return: bool,
    /// Why no more bytes will come, once that is so.
    pub(crate) closed: Option<String>,
}

impl Transcript {
    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            match byte {
                b'\n' if self.last_was_carriage_return => {}
                b'\r' => self.text.push('\n'),
                _ => self.text.push(char::from(byte)),
            }
            self.last_was_carriage_return = byte == b'\r';
        }
    }
}

/// The transcript shared between the reader thread and the test.
#[derive(Default)]
pub(crate) struct Shared {
    transcript: Mutex<Transcript>,
    changed: Condvar,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Transcript> {
        // A panic elsewhere must not hide the transcript from the error report.
        self.transcript.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until something changes or `timeout` passes.
    pub(crate) fn wait<'a>(&self, guard: MutexGuard<'a, Transcript>, timeout: Duration) -> MutexGuard<'a, Transcript> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub(crate) fn close(&self, reason: String) {
        let mut transcript = self.lock();
        transcript.closed.get_or_insert(reason);
        self.changed.notify_all();
    }
}

/// The serial line of one emulator run: a transcript fed by a reader thread,
/// a writer for typing, and a cursor that `expect` advances past each match.
pub struct Console {
    shared: Arc<Shared>,
    writer: Box<dyn Write + Send>,
    /// Offset in `Transcript::text` up to which `expect` has consumed.
    cursor: usize,
}

impl Console {
    /// Starts a thread that copies `source` into the transcript until end of file.
    pub(crate) fn new(mut source: impl Read + Send + 'static, writer: Box<dyn Write + Send>) -> Console {
        let shared = Arc::new(Shared::default());
        let feed = Arc::clone(&shared);
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                match source.read(&mut buffer) {
                    Ok(0) => break feed.close("the emulator closed the serial line".into()),
                    Ok(count) => {
                        feed.lock().push(&buffer[..count]);
                        feed.changed.notify_all();
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        break feed.close(format!("reading the serial line failed: {error}"));
                    }
                }
            }
        });
        Console { shared, writer, cursor: 0 }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn cursor(&self) -> usize {
        self.cursor
    }

    pub(crate) fn advance_to(&mut self, cursor: usize) {
        self.cursor = cursor;
    }

    /// Everything received so far.
    pub fn transcript(&self) -> String {
        self.shared.lock().text.clone()
    }

    /// Sends raw bytes down the serial line.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer.write_all(bytes).and_then(|()| self.writer.flush()).map_err(|error| {
            format!("typing {:?} on the serial line failed: {error}", escape(&String::from_utf8_lossy(bytes)))
        })
    }

    /// Types `line` and presses Enter (a terminal sends "\r").
    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        self.send(format!("{line}\r").as_bytes())
    }
}

/// Makes control characters visible (except newline and tab) for error reports.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c as u32 == 0x7f || (0x80..0x100).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// The end of `text`, at most `limit` bytes, starting at a char boundary.
pub fn tail(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Deadline arithmetic for wait loops.
pub(crate) fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_normalise_across_chunks() {
        let mut transcript = Transcript::default();
        transcript.push(b"a\r");
        assert_eq!(transcript.text, "a\n");
        transcript.push(b"\nb\rc\n\x08");
        assert_eq!(transcript.text, "a\nb\nc\n\u{8}");
    }

    #[test]
    fn escape_shows_control_characters() {
        assert_eq!(escape("a\u{8} \u{8}\n\u{1b}[K"), "a\\x08 \\x08\n\\x1b[K");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
    }
}
