//! With the `tracing` feature, the pool reports worker start, crash, recycle and exit,
//! and task submit and completion, with the worker pid and the job id.
//! Run with `cargo test --features tracing --test tracing_events`.
#![cfg(all(target_os = "linux", feature = "tracing"))]

mod support;

use std::fmt::{Debug, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procpool::TaskError;
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

fn double(x: u64) -> u64 {
    x * 2
}

fn exit_now(code: i32) -> u64 {
    std::process::exit(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_reports_its_workers_and_jobs() {
    let events = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Recorder(events.clone())).expect("first subscriber");

    let pool = support::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .build()
        .await
        .expect("pool builds");
    let first = support::worker_pids(&pool)[0];
    let bound = Duration::from_secs(30);
    assert_eq!(
        tokio::time::timeout(bound, pool.apply(double, 1))
            .await
            .unwrap(),
        Ok(2)
    );
    assert_eq!(
        tokio::time::timeout(bound, pool.apply(double, 2))
            .await
            .unwrap(),
        Ok(4)
    );
    let died = tokio::time::timeout(bound, pool.apply(exit_now, 3))
        .await
        .unwrap();
    assert!(
        matches!(died, Err(TaskError::WorkerDied { .. })),
        "{died:?}"
    );
    tokio::time::timeout(bound, pool.terminate()).await.unwrap();

    let events = events.lock().unwrap().clone();
    let has = |needle: &str| {
        events
            .iter()
            .any(|e| e.starts_with("procpool: ") && e.contains(needle))
    };
    assert!(
        has(&format!("message=worker started pid={first}")),
        "{events:#?}"
    );
    assert!(has("message=job submitted"), "{events:#?}");
    assert!(
        has(&format!("message=job completed pid={first}")),
        "{events:#?}"
    );
    assert!(
        has(&format!("message=worker recycled pid={first}")),
        "{events:#?}"
    );
    assert!(has("message=worker lost"), "{events:#?}");
    assert!(has("message=worker crashed or was killed"), "{events:#?}");
}
