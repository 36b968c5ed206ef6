//! What `Console::expect` waits for: a substring, or a whole line that passes a test.

/// Something to look for in console text.
pub trait Pattern {
    /// The end (byte offset just past the match) of the first match in `text`.
    fn find_end(&self, text: &str) -> Option<usize>;
    /// A phrase for error messages: "the text \"dom0> \"".
    fn describe(&self) -> String;
}

impl Pattern for &str {
    fn find_end(&self, text: &str) -> Option<usize> {
        text.find(*self).map(|start| start + self.len())
    }
    fn describe(&self) -> String {
        format!("the text {self:?}")
    }
}

impl Pattern for String {
    fn find_end(&self, text: &str) -> Option<usize> {
        self.as_str().find_end(text)
    }
    fn describe(&self) -> String {
        self.as_str().describe()
    }
}

/// A complete line (ended by a newline) for which a test holds.
pub struct Line<F> {
    description: String,
    test: F,
}

/// The first complete line for which `test` holds; `description` names it in
/// error messages ("a line starting with \"hv: cannot start: \"").
pub fn line_where<F: Fn(&str) -> bool>(description: impl Into<String>, test: F) -> Line<F> {
    Line { description: description.into(), test }
}

/// The first complete line starting with `prefix`.
pub fn line_starting(prefix: &str) -> Line<impl Fn(&str) -> bool + '_> {
    line_where(format!("a line starting with {prefix:?}"), move |line| line.starts_with(prefix))
}

impl<F: Fn(&str) -> bool> Pattern for Line<F> {
    fn find_end(&self, text: &str) -> Option<usize> {
        let mut start = 0;
        while let Some(newline) = text[start..].find('\n') {
            let end = start + newline;
            if (self.test)(&text[start..end]) {
                return Some(end + 1);
            }
            start = end + 1;
        }
        None
    }
    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// Reads the numbers out of `text` laid out like `template`, where each `{}`
/// stands for an unsigned decimal number and any run of spaces in the template
/// matches one or more spaces. The whole text must match.
///
/// `scan("total {} KiB, free {} KiB", "total 12 KiB, free 3 KiB") == Some(vec![12, 3])`
pub fn scan(template: &str, text: &str) -> Option<Vec<u64>> {
    let mut numbers = Vec::new();
    let mut text = text;
    let mut template = template;
    while !template.is_empty() {
        if let Some(rest) = template.strip_prefix("{}") {
            let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return None;
            }
            numbers.push(text[..digits].parse().ok()?);
            text = &text[digits..];
            template = rest;
        } else if template.starts_with(' ') {
            let spaces = text.len() - text.trim_start_matches(' ').len();
            if spaces == 0 {
                return None;
            }
            text = &text[spaces..];
            template = template.trim_start_matches(' ');
        } else {
            let c = template.chars().next()?;
            text = text.strip_prefix(c)?;
            template = &template[c.len_utf8()..];
        }
    }
    text.is_empty().then_some(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_match_ends_after_the_needle() {
        assert_eq!("dom0> ".find_end("hello\ndom0> "), Some(12));
        assert_eq!("dom0> ".find_end("hello\ndom0>"), None);
    }

    #[test]
    fn line_match_needs_the_newline() {
        let pattern = line_starting("hv: cannot start: ");
        assert_eq!(pattern.find_end("x\nhv: cannot start: VT-x"), None);
        assert_eq!(pattern.find_end("x\nhv: cannot start: VT-x\n"), Some(25));
    }

    #[test]
    fn scan_reads_numbers_and_tolerates_spacing() {
        assert_eq!(
            scan(
                "memory: total {} KiB, free {} KiB, hv {} KiB",
                "memory:       total 262144 KiB, free 1 KiB, hv 20 KiB"
            ),
            Some(vec![262144, 1, 20])
        );
        assert_eq!(scan("{} total", "17 total"), Some(vec![17]));
        assert_eq!(scan("{} total", "17 total!"), None);
        assert_eq!(scan("{} total", "x total"), None);
        assert_eq!(scan("a {}", "a"), None);
    }
}
