//! With the `tracing` feature, `WorkerOutput::Capture` emits each line of a worker's
//! output as an event (target `procpool::output`) with its pid and stream.
//! Run with `cargo test --features tracing --test tracing_output`.
#![cfg(all(target_os = "linux", feature = "tracing"))]

mod support;

use std::fmt::{Debug, Write as _};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procpool::WorkerOutput;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every event as "target: field=value ...".
struct Recorder(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(format!("{}: ", event.metadata().target()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Writes two lines to stdout and one to stderr (through the handles: the test
/// harness captures `println!` in memory).
fn speak(_: ()) -> u32 {
    let mut out = std::io::stdout();
    out.write_all(b"hello tracing\nsecond line\n").unwrap();
    out.flush().unwrap();
    std::io::stderr().write_all(b"on stderr\n").unwrap();
    std::process::id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_lines_become_tracing_events_with_the_pid() {
    let events = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Recorder(events.clone())).expect("first subscriber");
    let pool = support::builder()
        .processes(1)
        .stdout(WorkerOutput::Capture)
        .stderr(WorkerOutput::Capture)
        .build()
        .await
        .expect("pool builds");
    let bound = Duration::from_secs(30);
    let pid = tokio::time::timeout(bound, pool.apply(speak, ()))
        .await
        .expect("bounded")
        .expect("runs");
    let wanted = [
        format!("pid={pid} stream=\"stdout\""),
        format!("pid={pid} stream=\"stderr\""),
    ];
    let found = |line: &str, stream: &str| {
        events.lock().unwrap().iter().any(|e| {
            e.starts_with("procpool::output: ")
                && e.contains(stream)
                && e.contains(&format!("line={line} "))
        })
    };
    let arrived = support::eventually(bound, || {
        found("hello tracing", &wanted[0])
            && found("second line", &wanted[0])
            && found("on stderr", &wanted[1])
    });
    assert!(arrived, "events: {:#?}", events.lock().unwrap());
    tokio::time::timeout(bound, pool.terminate())
        .await
        .expect("bounded");
    assert!(support::eventually(bound, || support::is_gone(pid)));
}
