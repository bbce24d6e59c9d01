//! Workers' output captured in memory ([`WorkerOutput::capture_with`]): for tests
//! that look at what a worker printed, and for tests whose workers print or crash on
//! purpose, so that the expected noise stays out of the test run's output.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use procpool::{OutputLine, OutputStream, WorkerOutput};

use super::BOUND;

/// One captured line: the worker's pid, the stream, the text, whether it was cut.
pub type CapturedLine = (u32, OutputStream, String, bool);

/// The lines a [`collector`] captured, in the order they came.
pub type Lines = Arc<Mutex<Vec<CapturedLine>>>;

/// A [`WorkerOutput`] that keeps every line in memory, and the lines it keeps.
pub fn collector() -> (Lines, WorkerOutput) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let output = WorkerOutput::capture_with(move |line: &OutputLine<'_>| {
        sink.lock().unwrap().push((
            line.pid,
            line.stream,
            line.text().into_owned(),
            line.truncated,
        ));
    });
    (lines, output)
}

/// Whether `lines` comes to hold a line matching `want`, within [`BOUND`].
pub async fn arrives(lines: &Lines, want: impl Fn(&CapturedLine) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + BOUND;
    while tokio::time::Instant::now() < deadline {
        if lines.lock().unwrap().iter().any(&want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The captured lines' text, one a line, for a failure message.
pub fn shown(lines: &Lines) -> String {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| format!("[{} {:?}] {}\n", l.0, l.1, l.2))
        .collect()
}
