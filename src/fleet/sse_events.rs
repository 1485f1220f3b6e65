//! SSE events read from a response body, each at most [`MAX_EVENT`] bytes.
//! The `sse-stream` parser holds an event until the blank line that ends
//! it, with no bound of its own, so a server that never ended one would
//! grow the gateway's memory without limit. Past the bound the stream ends
//! with an error (rmcp's client transport bounds events the same way).

use axum::body::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sse_stream::{Sse, SseStream};

/// The largest event read (rmcp's bound on an SSE event and on a line).
pub const MAX_EVENT: usize = 16 << 20;

/// The events of `body` (a response's byte stream), bounded.
pub fn events<S, E>(body: S) -> BoxStream<'static, Result<Sse, sse_stream::Error>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut bound = EventBound::default();
    let bounded = body.map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        bound.take(&chunk)?;
        Ok::<_, std::io::Error>(chunk)
    });
    SseStream::from_bytes_stream(bounded).boxed()
}

/// Bytes since the last event ended, as the chunks go by.
#[derive(Default)]
struct EventBound {
    open: usize,
    /// The last chunk ended with a line break (an event may end at the
    /// start of the next one).
    at_line_start: bool,
}

impl EventBound {
    fn take(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let ends_here = last_event_end(chunk, self.at_line_start);
        self.open = match ends_here {
            Some(end) => chunk.len() - end,
            None => self.open + chunk.len(),
        };
        self.at_line_start = chunk.last() == Some(&b'\n');
        if self.open > MAX_EVENT {
            return Err(std::io::Error::other(format!(
                "the server sent an SSE event over {} MiB",
                MAX_EVENT >> 20
            )));
        }
        Ok(())
    }
}

/// Where the last event in `chunk` ends (just past its blank line), looking
/// from the end: events usually end where a chunk does, so this reads few
/// bytes.
fn last_event_end(chunk: &[u8], at_line_start: bool) -> Option<usize> {
    let mut i = chunk.len();
    while i > 0 {
        i -= 1;
        if chunk[i] != b'\n' {
            continue;
        }
        // A line break right after another one (or after "\r\n") is a blank line.
        let before = &chunk[..i];
        let blank = before.ends_with(b"\n")
            || before.ends_with(b"\n\r")
            || (at_line_start && (before.is_empty() || before == b"\r"));
        if blank {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_ending_anywhere_resets_the_count() {
        let mut bound = EventBound::default();
        bound.take(b"data: a\n\ndata: b").unwrap();
        assert_eq!(bound.open, "data: b".len());
        bound.take(b"\n").unwrap();
        bound.take(b"\n").unwrap();
        assert_eq!(
            bound.open, 0,
            "a blank line split across chunks ends the event"
        );
        bound.take(b"data: c\r\n\r\n").unwrap();
        assert_eq!(bound.open, 0, "CRLF line ends too");
    }

    #[test]
    fn an_event_that_never_ends_is_cut_off_at_the_bound() {
        let mut bound = EventBound::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            bound.take(&chunk).unwrap();
        }
        assert!(bound.take(b"x").is_err(), "past 16 MiB in one event");
        let mut bound = EventBound::default();
        for _ in 0..32 {
            bound.take(&chunk).unwrap();
            bound.take(b"\n\n").unwrap();
        }
        assert_eq!(bound.open, 0, "many events, each small, are fine");
    }
}
