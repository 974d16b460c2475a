//! Log lines captured from an invocation, bounded in size.

use model::limits;
use serde::Serialize;

/// The longest line `push_always` keeps: a failure with its stack trace.
const ERROR_LINE_BYTES_MAX: usize = 16 * 1024;

/// One line a function wrote: to stdout/stderr, through its logger, or via `console.*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Unix milliseconds when the platform received it.
    pub time_ms: i64,
    /// `stdout`, `stderr`, or a logger level such as `INFO`.
    pub stream: String,
    pub message: String,
}

/// The lines of one invocation, capped at `INVOCATION_LOG_BYTES_MAX`; lines past the cap
/// are counted, not kept, so a chatty function cannot exhaust the server's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Logs {
    pub lines: Vec<LogLine>,
    pub dropped: u64,
    #[serde(skip)]
    bytes: usize,
}

impl Logs {
    pub fn push(&mut self, stream: &str, message: &[u8]) {
        let size = stream.len() + message.len();
        if self.bytes + size > limits::INVOCATION_LOG_BYTES_MAX {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        self.lines.push(LogLine {
            time_ms: now_ms(),
            stream: stream.to_string(),
            message: String::from_utf8_lossy(message).into_owned(),
        });
    }

    /// Keeps a line the platform itself writes (a function's failure), even past the cap:
    /// the line that says why a call failed must not be the one dropped. Its message is cut
    /// at `ERROR_LINE_BYTES_MAX`.
    pub fn push_always(&mut self, stream: &str, message: &str) {
        let mut end = message.len().min(ERROR_LINE_BYTES_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes += stream.len() + end;
        self.lines.push(LogLine {
            time_ms: now_ms(),
            stream: stream.to_string(),
            message: message[..end].to_string(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped == 0
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_bytes_and_counts_the_rest() {
        let mut logs = Logs::default();
        let line = vec![b'x'; 1000];
        for _ in 0..1000 {
            logs.push("stdout", &line);
        }
        assert_eq!(logs.lines.len(), limits::INVOCATION_LOG_BYTES_MAX / 1006);
        assert_eq!(logs.lines.len() as u64 + logs.dropped, 1000);
    }
}
