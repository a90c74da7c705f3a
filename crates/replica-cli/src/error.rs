//! Input and usage errors: a one-line cause (the file, the field, the line),
//! sometimes followed by a short list (the first weights that do not fit).
//! They end the command with exit code 2.

use std::fmt;
use std::path::Path;

/// How many lines of a list (missing weights, mismatched shapes) an error shows.
pub const LISTED: usize = 10;

/// An input or usage error: a one-line cause and the first items of a list of problems.
#[derive(Debug)]
pub struct CliError {
    /// The cause, on one line.
    pub message: String,
    /// Further lines: the first items of a list of problems.
    pub details: Vec<String>,
}

impl CliError {
    /// An error of one line, without details.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// An error about a file: `path: message`.
    pub fn file(path: &Path, message: impl fmt::Display) -> Self {
        Self::new(format!("{}: {message}", path.display()))
    }

    /// The message with `context: ` in front.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl From<replica_check::Error> for CliError {
    /// The harness's errors already name the file and key; a load report is a
    /// headline and a list, of which the first [`LISTED`] lines are kept.
    fn from(err: replica_check::Error) -> Self {
        // A file error is one line by design; only a load report is a list.
        if let replica_check::Error::File { .. } = err {
            return Self::new(err.to_string());
        }
        let text = without_backtrace(&err.to_string());
        let mut lines = text.lines().map(|l| l.trim().to_string());
        let message = lines.next().unwrap_or_default();
        let rest: Vec<String> = lines.filter(|l| !l.is_empty()).collect();
        let mut details: Vec<String> = rest.iter().take(LISTED).cloned().collect();
        if rest.len() > LISTED {
            details.push(format!("... and {} more", rest.len() - LISTED));
        }
        Self { message, details }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        for line in &self.details {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// An error message without the backtrace candle appends to its errors when
/// `RUST_BACKTRACE` is set: a user needs the cause, not the frames.
pub fn without_backtrace(text: &str) -> String {
    let is_frame = |line: &str| {
        let line = line.trim_start();
        line.starts_with("stack backtrace:")
            || line
                .split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    let kept: Vec<&str> = text.lines().take_while(|line| !is_frame(line)).collect();
    kept.join("\n").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_are_cut() {
        let text = "unexpected rank, expected: 2, got: 1 ([16])\n   0: candle_core::error::Error::bt\n             at src/error.rs:260:25\n";
        assert_eq!(without_backtrace(text), "unexpected rank, expected: 2, got: 1 ([16])");
        assert_eq!(without_backtrace("a: b\nc"), "a: b\nc");
    }
}
