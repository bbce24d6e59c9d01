//! Issue 16's figures on their own: the default pool's sequential `apply` beside
//! `spawn_blocking` and the raw pipe round trip, and the open loop (Poisson arrivals of
//! 100 µs tasks at 2,000/s and at 80% of the pool's capacity) through the pool and
//! through `spawn_blocking`; see `procpool_bench::openloop`. A plain bench binary, not
//! Criterion: an open loop sets its own pace, which Criterion's iterations cannot.
//!
//! ```text
//! cargo bench -p procpool-bench --bench openloop             # about 40 s
//! cargo bench -p procpool-bench --bench openloop -- --quick  # about 12 s
//! ```

use procpool_bench::openloop::{measure, FULL, QUICK};

fn main() {
    if procpool_bench::is_exec_probe() {
        return;
    }
    procpool::init();
    // (cargo bench passes `--bench`; other arguments are ignored.)
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let report = measure(&rt, if quick { &QUICK } else { &FULL });
    println!(
        "issue 16: the default pool ({} processes, {} CPUs) as a service uses it",
        report.processes,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    print!("{}", report.render());
}
