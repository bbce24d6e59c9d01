//! The comparison: procpool beside the raw limits of two processes (pipe and socketpair
//! ping-pong, socketpair bandwidth, forked children doing CPU work without IPC, fork
//! and exec of this binary), Tokio's `spawn_blocking`, rayon and procspawn, measured
//! in one run and one process tree, printed as one table with each figure's ratio to
//! its reference and the targets of the performance issue, met or not.
//!
//! ```text
//! cargo run --release -p procpool-bench --bin compare                  # about a minute
//! cargo run --release -p procpool-bench --bin compare -- --quick       # about 20 s, for CI
//! cargo run --release -p procpool-bench --bin compare -- --python /tmp/pools.json
//! cargo run --release -p procpool-bench --bin compare -- --out /tmp/compare-runs
//! ```
//!
//! `--python FILE` reads the JSON that `../shared/anchors/python/bench_pools.py --json
//! FILE` wrote (run from the repository root, in the same session) and judges the
//! targets set relative to Python's pools; nothing of Python is measured here. `FILE`
//! is relative to the current directory, which `cargo run` does not change.
//!
//! `--out DIR [--runs N]` runs this binary N times (default 5) with the other
//! arguments, one run after the other, keeps each run's output in `DIR/run-K.txt` and
//! prints the runs side by side with their spread (`procpool_bench::runs`). It runs
//! itself rather than being a binary of its own so that the runs measure exactly the
//! build that was asked for (`cargo run --bin` of another binary would not rebuild
//! this one).

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use procpool::{Pool, StartMethod};
use rayon::prelude::*;
use serde_bytes::ByteBuf;

use procpool_bench::{
    echo_bytes, echo_vec, identity, median, median_of, median_of_async, spin, Channel, RawPeer,
};

// Workers on other machines: what a link costs (its own file).
#[path = "../remote_section.rs"]
mod remote_section;

/// How much of everything to run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    lat_calls: usize,
    lat_warm: usize,
    map_auto_n: usize,
    map_auto_reps: usize,
    cs1_n: usize,
    cs1_reps: usize,
    procspawn_tasks: usize,
    cpu_tasks: u64,
    cpu_reps: usize,
    pay_16m_calls: usize,
    pay_1m_calls: usize,
    startup_reps: usize,
    replace_reps: usize,
    idle: Duration,
}

const FULL: Sizes = Sizes {
    lat_calls: 10_000,
    lat_warm: 300,
    map_auto_n: 200_000,
    map_auto_reps: 5,
    cs1_n: 200_000,
    cs1_reps: 3,
    procspawn_tasks: 2000,
    cpu_tasks: 64,
    cpu_reps: 3,
    pay_16m_calls: 8,
    pay_1m_calls: 64,
    startup_reps: 10,
    replace_reps: 40,
    idle: Duration::from_secs(1),
};

const QUICK: Sizes = Sizes {
    lat_calls: 2000,
    lat_warm: 200,
    map_auto_n: 200_000,
    map_auto_reps: 3,
    cs1_n: 100_000,
    cs1_reps: 1,
    procspawn_tasks: 500,
    cpu_tasks: 32,
    cpu_reps: 1,
    pay_16m_calls: 4,
    pay_1m_calls: 16,
    startup_reps: 5,
    replace_reps: 15,
    idle: Duration::from_millis(300),
};

// ---------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Micros,
    Millis,
    TasksPerSec,
    MibPerSec,
    Speedup,
    Mib,
    Seconds,
    /// A count per call.
    Count,
    /// A line of explanation, no value.
    Note,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Micros => format!("{v:.1} µs"),
            Unit::Millis => format!("{v:.2} ms"),
            Unit::TasksPerSec if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
            Unit::TasksPerSec if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
            Unit::TasksPerSec => format!("{v:.0} /s"),
            Unit::MibPerSec => format!("{v:.0} MiB/s"),
            Unit::Speedup => format!("{v:.2}x"),
            Unit::Mib => format!("{v:.1} MiB"),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::Count => format!("{v:.2}"),
            Unit::Note => String::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum Verdict {
    Reference,
    Info,
    Met,
    NotMet,
    NotJudged(&'static str),
}

#[derive(Debug, Clone)]
struct Row {
    figure: String,
    value: Option<f64>,
    unit: Unit,
    /// The ratio to the section's reference, and the reference's short name.
    ratio: Option<(f64, String)>,
    target: String,
    verdict: Verdict,
}

#[derive(Debug, Default)]
struct Table {
    sections: Vec<(String, Vec<Row>)>,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    fn push(&mut self, row: Row) {
        self.sections.last_mut().expect("a section").1.push(row);
    }

    fn reference(&mut self, figure: &str, value: f64, unit: Unit) {
        self.push(Row {
            figure: figure.into(),
            value: Some(value),
            unit,
            ratio: None,
            target: String::new(),
            verdict: Verdict::Reference,
        });
    }

    fn note(&mut self, text: &str) {
        self.info(text, None, Unit::Note, None);
    }

    fn info(&mut self, figure: &str, value: Option<f64>, unit: Unit, ratio: Option<(f64, &str)>) {
        self.push(Row {
            figure: figure.into(),
            value,
            unit,
            ratio: ratio.map(|(r, s)| (r, s.to_string())),
            target: String::new(),
            verdict: Verdict::Info,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn judged(
        &mut self,
        figure: &str,
        value: f64,
        unit: Unit,
        ratio: Option<(f64, &str)>,
        target: &str,
        met: Option<bool>,
    ) {
        self.push(Row {
            figure: figure.into(),
            value: Some(value),
            unit,
            ratio: ratio.map(|(r, s)| (r, s.to_string())),
            target: target.into(),
            verdict: match met {
                Some(true) => Verdict::Met,
                Some(false) => Verdict::NotMet,
                None => Verdict::NotJudged("needs --python"),
            },
        });
    }

    fn render(&self) -> String {
        let mut lines: Vec<[String; 5]> = Vec::new();
        let header = [
            "figure".to_string(),
            "value".to_string(),
            "ratio to reference".to_string(),
            "target".to_string(),
            "result".to_string(),
        ];
        for (_, rows) in &self.sections {
            for r in rows {
                lines.push([
                    r.figure.clone(),
                    match (r.value, r.unit) {
                        (_, Unit::Note) => String::new(),
                        (Some(v), unit) => unit.show(v),
                        (None, _) => "n/a".into(),
                    },
                    match (&r.verdict, &r.ratio) {
                        (Verdict::Reference, _) => "= reference".into(),
                        (_, Some((x, of))) => format!("{x:.2}x {of}"),
                        (_, None) => String::new(),
                    },
                    r.target.clone(),
                    match &r.verdict {
                        Verdict::Reference | Verdict::Info => String::new(),
                        Verdict::Met => "met".into(),
                        Verdict::NotMet => "NOT MET".into(),
                        Verdict::NotJudged(why) => format!("n/a ({why})"),
                    },
                ]);
            }
        }
        let notes: Vec<bool> = self
            .sections
            .iter()
            .flat_map(|(_, rows)| rows.iter().map(|r| r.unit == Unit::Note))
            .collect();
        let mut w = [0usize; 5];
        let columns = lines
            .iter()
            .zip(&notes)
            .filter(|(_, &note)| !note)
            .map(|(l, _)| l);
        for l in std::iter::once(&header).chain(columns) {
            for (i, c) in l.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let fmt_line = |l: &[String; 5]| {
            let mut s = String::new();
            for (i, c) in l.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                if i == 1 {
                    // values right-aligned
                    let _ = write!(s, "{}{}  ", " ".repeat(pad), c);
                } else {
                    let _ = write!(s, "{}{}  ", c, " ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", fmt_line(&header));
        let total: usize = w.iter().sum::<usize>() + 8;
        let mut i = 0;
        for (title, rows) in &self.sections {
            let _ = writeln!(out, "{}", "-".repeat(total));
            let _ = writeln!(out, "{title}");
            for _ in rows {
                if notes[i] {
                    let _ = writeln!(out, "{}", lines[i][0]);
                } else {
                    let _ = writeln!(out, "{}", fmt_line(&lines[i]));
                }
                i += 1;
            }
        }
        out
    }

    fn count(&self) -> (usize, usize, usize) {
        let (mut met, mut not, mut na) = (0, 0, 0);
        for (_, rows) in &self.sections {
            for r in rows {
                match r.verdict {
                    Verdict::Met => met += 1,
                    Verdict::NotMet => not += 1,
                    Verdict::NotJudged(_) => na += 1,
                    _ => {}
                }
            }
        }
        (met, not, na)
    }
}

// ---------------------------------------------------------------------------------
// Python's figures, read from bench_pools.py's JSON
// ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Python {
    file: String,
    quick: bool,
    lat_us: Option<f64>,
    map_default: Option<f64>,
    map_cs1: Option<f64>,
    mpire_16m: Option<f64>,
    mp_16m: Option<f64>,
    /// The smallest idle worker RSS among the pools, and which pool.
    rss: Option<(f64, String)>,
    rss_fork: Option<f64>,
    startup_ms: Option<f64>,
}

fn read_python(path: &str) -> Result<Python, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let num = |pool: &str, wl: &str, sec: &str, key: &str| -> Option<f64> {
        v["pools"][pool][wl][sec][key].as_f64()
    };
    let fork = "mp.Pool(fork)";
    let mut rss: Option<(f64, String)> = None;
    if let Some(pools) = v["pools"].as_object() {
        for (name, r) in pools {
            if let Some(x) = r["memory"]["memory"]["worker_rss_mib"].as_f64() {
                if rss.as_ref().is_none_or(|(best, _)| x < *best) {
                    rss = Some((x, name.clone()));
                }
            }
        }
    }
    Ok(Python {
        file: path.to_string(),
        quick: v["meta"]["quick"].as_bool().unwrap_or(false),
        lat_us: num(fork, "latency", "latency", "lat_us_median"),
        map_default: num(fork, "throughput", "map_default", "tasks_per_s"),
        map_cs1: num(fork, "throughput", "map_cs1", "tasks_per_s"),
        mpire_16m: num("mpire", "payload", "16MiB", "mib_per_s"),
        mp_16m: num(fork, "payload", "16MiB", "mib_per_s"),
        rss,
        rss_fork: num(fork, "memory", "memory", "worker_rss_mib"),
        startup_ms: num(fork, "startup", "startup", "startup_ms_median"),
    })
}

// ---------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------

fn say(what: &str) {
    eprintln!("  measuring {what} ...");
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

const METHODS: [(&str, StartMethod); 3] = [
    ("forkserver", StartMethod::ForkServer),
    ("spawn", StartMethod::Spawn),
    ("fork", StartMethod::Fork),
];

async fn pool_of(n: usize, method: StartMethod) -> Pool {
    Pool::builder()
        .processes(n)
        .start_method(method)
        .build()
        .await
        .expect("build a pool")
}

/// Idle worker memory, per start method: RSS and PSS of each worker of a fresh pool of
/// 2 after it has served a few tasks and idled.
fn memory(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table, py: Option<&Python>) {
    say("idle worker memory");
    t.section("memory: idle worker of a pool of 2 (VmRSS of /proc/<pid>/status; this binary)");
    let mut pss_note = Vec::new();
    for (name, method) in METHODS {
        let (rss, pss) = rt.block_on(async {
            let pool = pool_of(2, method).await;
            let _ = pool.map(identity, 0..100u64).await.expect("map");
            tokio::time::sleep(s.idle).await;
            let pids: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
            let rss: Vec<f64> = pids
                .iter()
                .filter_map(|&p| procpool_bench::rss_mib(p))
                .collect();
            let pss: Vec<f64> = pids
                .iter()
                .filter_map(|&p| procpool_bench::pss_mib(p))
                .collect();
            pool.terminate().await;
            (mean(&rss), mean(&pss))
        });
        pss_note.push(format!(
            "{name} {}",
            pss.map_or("n/a".into(), |p| format!("{p:.1}"))
        ));
        let Some(rss) = rss else {
            t.info(
                &format!("procpool worker RSS, {name}"),
                None,
                Unit::Mib,
                None,
            );
            continue;
        };
        let figure = format!("procpool worker RSS, {name}");
        match py.and_then(|p| p.rss.clone()) {
            Some((py_rss, _)) => {
                let of = "Python worker";
                if name == "forkserver" {
                    t.judged(
                        &figure,
                        rss,
                        Unit::Mib,
                        Some((rss / py_rss, of)),
                        "<= 0.25x Python worker",
                        Some(rss <= 0.25 * py_rss),
                    );
                } else {
                    t.info(&figure, Some(rss), Unit::Mib, Some((rss / py_rss, of)));
                }
            }
            None if name == "forkserver" => t.judged(
                &figure,
                rss,
                Unit::Mib,
                None,
                "<= 0.25x Python worker",
                None,
            ),
            None => t.info(&figure, Some(rss), Unit::Mib, None),
        }
    }
    t.note(&format!("  (PSS MiB: {})", pss_note.join(", ")));
    if let Some((x, pool)) = py.and_then(|p| p.rss.clone()) {
        t.info(
            &format!("Python worker RSS, smallest in bench_pools.py's ({pool}; read)"),
            Some(x),
            Unit::Mib,
            None,
        );
    }
    if let Some(x) = py.and_then(|p| p.rss_fork) {
        t.info(
            "Python mp.Pool(fork) worker RSS (read)",
            Some(x),
            Unit::Mib,
            None,
        );
    }
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn latency(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table, py: Option<&Python>) {
    t.section(
        "latency: sequential round trip of 8 bytes / apply(identity, 1u64) on 1 worker, median",
    );
    say("raw pipe and socketpair ping-pong");
    let raw = |channel| {
        let mut peer = RawPeer::start(channel, 8, 8).expect("fork the raw peer");
        let out = 1u64.to_ne_bytes();
        let mut back = [0u8; 8];
        median_of(s.lat_warm, s.lat_calls, || {
            peer.round_trip(black_box(&out), &mut back)
        })
    };
    let pipe = us(raw(Channel::Pipe));
    let sock = us(raw(Channel::SocketPair));
    t.reference(
        "raw pipe round trip, 8 B, two processes",
        pipe,
        Unit::Micros,
    );
    t.info(
        "raw socketpair round trip, 8 B",
        Some(sock),
        Unit::Micros,
        Some((sock / pipe, "raw pipe")),
    );

    say("spawn_blocking round trip");
    let sb = us(
        rt.block_on(median_of_async(s.lat_warm, s.lat_calls, || async {
            black_box(
                tokio::task::spawn_blocking(|| identity(black_box(1)))
                    .await
                    .expect("spawn_blocking"),
            );
        })),
    );
    t.info(
        "tokio spawn_blocking round trip",
        Some(sb),
        Unit::Micros,
        Some((sb / pipe, "raw pipe")),
    );

    for (name, method) in METHODS {
        say(&format!("procpool apply latency ({name})"));
        let d = rt.block_on(async {
            let pool = pool_of(1, method).await;
            let d = median_of_async(s.lat_warm, s.lat_calls, || async {
                black_box(pool.apply(identity, black_box(1u64)).await.expect("apply"));
            })
            .await;
            pool.terminate().await;
            d
        });
        let v = us(d);
        t.judged(
            &format!("procpool apply, {name}"),
            v,
            Unit::Micros,
            Some((v / pipe, "raw pipe")),
            "<= 1.5x raw pipe, <= spawn_blocking",
            Some(v <= 1.5 * pipe && v <= sb),
        );
    }

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        // The raw round trip is bimodal on a VM: a few µs when both ends share a CPU,
        // tens of µs when each wake-up crosses to another vCPU. Pinned, each mode is
        // measured on its own, for the raw pipe and for procpool alike.
        say("pinned round trips: one CPU, and across two CPUs");
        let me = std::process::id();
        let all: Vec<usize> = (0..cpus).collect();
        for (label, ours, theirs) in [
            ("on one CPU", [0usize], [0usize]),
            ("across 2 CPUs", [0], [1]),
        ] {
            let mut peer = RawPeer::start(Channel::Pipe, 8, 8).expect("fork the raw peer");
            let pinned = procpool_bench::pin_process(me, &ours)
                && procpool_bench::pin_process(peer.pid(), &theirs);
            let out = 1u64.to_ne_bytes();
            let mut back = [0u8; 8];
            let raw_d = us(median_of(s.lat_warm, s.lat_calls, || {
                peer.round_trip(black_box(&out), &mut back)
            }));
            drop(peer);
            let (d, pinned) = rt.block_on(async {
                let pool = pool_of(1, StartMethod::ForkServer).await;
                let worker = pool.stats().workers.first().map_or(0, |w| w.pid);
                let pinned = pinned
                    && procpool_bench::pin_process(me, &ours)
                    && procpool_bench::pin_process(worker, &theirs);
                let d = median_of_async(s.lat_warm, s.lat_calls, || async {
                    black_box(pool.apply(identity, black_box(1u64)).await.expect("apply"));
                })
                .await;
                pool.terminate().await;
                (us(d), pinned)
            });
            procpool_bench::pin_process(me, &all);
            let warn = if pinned { "" } else { " (pinning failed)" };
            t.info(
                &format!("raw pipe round trip, pinned {label}{warn}"),
                Some(raw_d),
                Unit::Micros,
                Some((raw_d / pipe, "raw pipe")),
            );
            t.info(
                &format!("procpool apply, forkserver, pinned {label}{warn}"),
                Some(d),
                Unit::Micros,
                Some((d / raw_d, &format!("raw pipe {label}"))),
            );
        }
    }

    say("procpool apply latency, other callers (forkserver)");
    let spawned = us(rt.block_on(async {
        let pool = pool_of(1, StartMethod::ForkServer).await;
        let (warm, calls) = (s.lat_warm, s.lat_calls);
        let p = pool.clone();
        let d = tokio::spawn(async move {
            median_of_async(warm, calls, || async {
                black_box(p.apply(identity, black_box(1u64)).await.expect("apply"));
            })
            .await
        })
        .await
        .expect("the measuring task");
        pool.terminate().await;
        d
    }));
    t.info(
        "procpool apply, forkserver, caller in a tokio::spawn'ed task",
        Some(spawned),
        Unit::Micros,
        Some((spawned / pipe, "raw pipe")),
    );
    let current = us(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(async {
            let pool = pool_of(1, StartMethod::ForkServer).await;
            let d = median_of_async(s.lat_warm, s.lat_calls, || async {
                black_box(pool.apply(identity, black_box(1u64)).await.expect("apply"));
            })
            .await;
            pool.terminate().await;
            d
        }));
    t.info(
        "procpool apply, forkserver, current-thread runtime",
        Some(current),
        Unit::Micros,
        Some((current / pipe, "raw pipe")),
    );

    say("procspawn pool round trip");
    let pool = procspawn::Pool::new(1).expect("procspawn pool");
    let d = median_of(s.lat_warm.min(100), s.lat_calls.min(1000), || {
        let h = pool.spawn(black_box(1u64), identity);
        black_box(h.join().expect("procspawn"));
    });
    pool.kill();
    drop(pool);
    let v = us(d);
    t.info(
        "procspawn Pool(1) spawn + join",
        Some(v),
        Unit::Micros,
        Some((v / pipe, "raw pipe")),
    );
    if let Some(x) = py.and_then(|p| p.lat_us) {
        t.info(
            "Python mp.Pool(fork) apply (read)",
            Some(x),
            Unit::Micros,
            Some((x / pipe, "raw pipe")),
        );
    }
}

/// Issue 16: the default pool (no polling) as a service uses it, beside `spawn_blocking`
/// (see `procpool_bench::openloop`).
fn service(rt: &tokio::runtime::Runtime, quick: bool, t: &mut Table) {
    use procpool_bench::openloop::{measure, FULL, QUICK};
    t.section(
        "service: default pool (processes = CPUs, no polling), sequential apply and open loop",
    );
    say("the default pool: sequential apply and the open loop");
    for r in measure(rt, if quick { &QUICK } else { &FULL }).rows() {
        let unit = if r.micros { Unit::Micros } else { Unit::Count };
        match r.target {
            Some((target, met)) => t.judged(&r.figure, r.value, unit, r.ratio, target, Some(met)),
            None => t.info(&r.figure, Some(r.value), unit, r.ratio),
        }
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn throughput(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table, py: Option<&Python>) {
    t.section(&format!(
        "throughput: identity(u64) tasks on 2 workers / 2 threads (map: {} tasks; chunk size 1: {}), median; procpool's after one run not counted",
        s.map_auto_n, s.cs1_n
    ));
    say("spawn_blocking, one per task");
    let sb = rate(
        s.cs1_n,
        median(
            (0..s.cs1_reps)
                .map(|_| {
                    rt.block_on(async {
                        let start = Instant::now();
                        let handles: Vec<_> = (0..s.cs1_n as u64)
                            .map(|i| tokio::task::spawn_blocking(move || identity(i)))
                            .collect();
                        for h in handles {
                            black_box(h.await.expect("spawn_blocking"));
                        }
                        start.elapsed()
                    })
                })
                .collect(),
        ),
    );
    t.reference("tokio spawn_blocking, one per task", sb, Unit::TasksPerSec);

    say("rayon");
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon pool");
    let slots: Vec<AtomicU64> = (0..s.map_auto_n).map(|_| AtomicU64::new(0)).collect();
    let d = median_of(1, s.map_auto_reps, || {
        rayon.scope(|sc| {
            for (i, slot) in slots.iter().enumerate() {
                sc.spawn(move |_| slot.store(identity(i as u64), Ordering::Relaxed));
            }
        })
    });
    let v = rate(s.map_auto_n, d);
    t.info(
        "rayon, one scope spawn per task",
        Some(v),
        Unit::TasksPerSec,
        Some((v / sb, "spawn_blocking")),
    );
    say("procpool map / imap_unordered");
    let (auto, cs1, unord) = rt.block_on(async {
        let pool = pool_of(2, StartMethod::default()).await;
        let input: Vec<u64> = (0..s.map_auto_n as u64).collect();
        let auto = median_of_async(1, s.map_auto_reps, || async {
            let out = pool.map(identity, input.clone()).await.expect("map");
            assert_eq!(out.len(), input.len());
        })
        .await;
        let input: Vec<u64> = (0..s.cs1_n as u64).collect();
        // One run first, as for the automatic chunks: the first run of a path pays for
        // the memory it touches first and for the drivers' pacing to settle.
        let cs1 = median_of_async(1, s.cs1_reps, || async {
            let out = pool
                .map(identity, input.clone())
                .chunk_size(1)
                .await
                .expect("map");
            assert_eq!(out.len(), input.len());
        })
        .await;
        let unord = median_of_async(1, s.cs1_reps, || async {
            let mut st = pool.imap_unordered(identity, input.clone()).chunk_size(1);
            let mut n = 0;
            while let Some(r) = st.next().await {
                black_box(r.expect("task"));
                n += 1;
            }
            assert_eq!(n, input.len());
        })
        .await;
        pool.terminate().await;
        (
            rate(s.map_auto_n, auto),
            rate(s.cs1_n, cs1),
            rate(s.cs1_n, unord),
        )
    });
    let py_map = py.and_then(|p| p.map_default);
    t.judged(
        "procpool map, automatic chunks",
        auto,
        Unit::TasksPerSec,
        Some((auto / sb, "spawn_blocking")),
        &match py_map {
            Some(x) => format!(">= 3x Python map ({:.2}x)", auto / x),
            None => ">= 3x Python mp.Pool.map".into(),
        },
        py_map.map(|x| auto >= 3.0 * x),
    );
    let py_cs1 = py.and_then(|p| p.map_cs1);
    t.judged(
        "procpool map, chunk size 1",
        cs1,
        Unit::TasksPerSec,
        Some((cs1 / sb, "spawn_blocking")),
        &match py_cs1 {
            Some(x) => format!(
                ">= 1 M/s, > spawn_blocking, >= 50x Python ({:.0}x)",
                cs1 / x
            ),
            None => ">= 1 M/s, > spawn_blocking, >= 50x Python".into(),
        },
        py_cs1.map(|x| cs1 >= 1e6 && cs1 > sb && cs1 >= 50.0 * x),
    );
    t.info(
        "procpool imap_unordered, chunk size 1",
        Some(unord),
        Unit::TasksPerSec,
        Some((unord / sb, "spawn_blocking")),
    );

    say("procspawn, one spawn per task");
    let pool = procspawn::Pool::new(2).expect("procspawn pool");
    let start = Instant::now();
    let handles: Vec<_> = (0..s.procspawn_tasks as u64)
        .map(|i| pool.spawn(i, identity))
        .collect();
    for h in handles {
        black_box(h.join().expect("procspawn"));
    }
    let v = rate(s.procspawn_tasks, start.elapsed());
    pool.kill();
    drop(pool);
    t.info(
        &format!(
            "procspawn Pool(2), one spawn per task ({} tasks)",
            s.procspawn_tasks
        ),
        Some(v),
        Unit::TasksPerSec,
        Some((v / sb, "spawn_blocking")),
    );
    if let Some(p) = py {
        let n = if p.quick {
            "20k / 5k tasks"
        } else {
            "200k / 20k tasks"
        };
        if let Some(x) = p.map_default {
            t.info(
                &format!("Python mp.Pool(fork).map default chunks (read; {n})"),
                Some(x),
                Unit::TasksPerSec,
                Some((x / sb, "spawn_blocking")),
            );
        }
        if let Some(x) = p.map_cs1 {
            t.info(
                "Python mp.Pool(fork).map chunk size 1 (read)",
                Some(x),
                Unit::TasksPerSec,
                Some((x / sb, "spawn_blocking")),
            );
        }
    }
}

fn cpu(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table) {
    let iters = procpool_bench::calibrate_spin(Duration::from_millis(25));
    let n = s.cpu_tasks;
    t.section(&format!(
        "cpu scaling: {n} tasks of ~25 ms integer work (map, chunk size 1); speedup over the serial loop, median of {}",
        s.cpu_reps
    ));
    say("CPU scaling (serial, forked children, rayon, pool of 1 and 2)");
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon pool");
    let (p1, p2) = rt.block_on(async {
        (
            pool_of(1, StartMethod::default()).await,
            pool_of(2, StartMethod::default()).await,
        )
    });
    let on_pool = |pool: &Pool| {
        rt.block_on(async {
            let start = Instant::now();
            let out = pool
                .map(spin, vec![iters; n as usize])
                .chunk_size(1)
                .await
                .expect("map");
            black_box(out);
            start.elapsed()
        })
    };
    let (mut serial, mut forked, mut ray, mut w1, mut w2) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so that a busy moment hits every contestant alike.
    for _ in 0..s.cpu_reps {
        let start = Instant::now();
        let mut acc = 0u64;
        for _ in 0..n {
            acc = acc.wrapping_add(spin(black_box(iters)));
        }
        black_box(acc);
        serial.push(start.elapsed());
        forked.push(procpool_bench::forked_spin(&[n / 2, n - n / 2], iters));
        let start = Instant::now();
        let sum: u64 = rayon.install(|| {
            (0..n as usize)
                .into_par_iter()
                .with_max_len(1)
                .map(|_| spin(black_box(iters)))
                .reduce(|| 0, u64::wrapping_add)
        });
        black_box(sum);
        ray.push(start.elapsed());
        w1.push(on_pool(&p1));
        w2.push(on_pool(&p2));
    }
    rt.block_on(async {
        p1.terminate().await;
        p2.terminate().await;
    });
    let serial = median(serial).as_secs_f64();
    let sp = |xs: Vec<Duration>| serial / median(xs).as_secs_f64();
    let forked = sp(forked);
    t.info(
        "serial loop in this process",
        Some(serial),
        Unit::Seconds,
        None,
    );
    t.reference("2 forked children, no IPC: speedup", forked, Unit::Speedup);
    let v = sp(ray);
    t.info(
        "rayon, 2 threads: speedup",
        Some(v),
        Unit::Speedup,
        Some((v / forked, "forked")),
    );
    let v = sp(w1);
    t.info(
        "procpool, 1 worker: speedup",
        Some(v),
        Unit::Speedup,
        Some((v / forked, "forked")),
    );
    let v = sp(w2);
    t.judged(
        "procpool, 2 workers: speedup",
        v,
        Unit::Speedup,
        Some((v / forked, "forked")),
        ">= 0.95x forked children",
        Some(v >= 0.95 * forked),
    );
}

fn payload(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table, py: Option<&Python>) {
    t.section(
        "payload: sequential round trips on 1 worker; MiB/s = payload size per round trip (both ways)",
    );
    const M16: usize = 16 << 20;
    const M1: usize = 1 << 20;
    say("raw socketpair and pipe bandwidth");
    let raw = |channel, size, resp, calls| {
        let mut peer = RawPeer::start(channel, size, resp).expect("fork the raw peer");
        let out = vec![7u8; size];
        let mut back = vec![0u8; resp];
        let d = median_of(1, calls, || peer.round_trip(black_box(&out), &mut back));
        (size as f64 / (1 << 20) as f64) / d.as_secs_f64()
    };
    let calls = s.pay_16m_calls * 2;
    let sock_one = raw(Channel::SocketPair, M16, 1, calls);
    let pipe_one = raw(Channel::Pipe, M16, 1, calls);
    let sock_rt = raw(Channel::SocketPair, M16, M16, calls);
    let sock_rt_1m = raw(Channel::SocketPair, M1, M1, s.pay_1m_calls);
    let shm_rt = raw(Channel::SharedMemory, M16, M16, calls);
    t.reference("raw socketpair 16 MiB round trip", sock_rt, Unit::MibPerSec);
    t.info(
        "raw shared memory (memfd) 16 MiB round trip, copied in and out",
        Some(shm_rt),
        Unit::MibPerSec,
        Some((shm_rt / sock_rt, "raw RT")),
    );
    t.info(
        "raw socketpair 16 MiB one way",
        Some(sock_one),
        Unit::MibPerSec,
        Some((sock_one / sock_rt, "raw RT")),
    );
    t.info(
        "raw pipe 16 MiB one way (default 64 KiB pipe)",
        Some(pipe_one),
        Unit::MibPerSec,
        Some((pipe_one / sock_rt, "raw RT")),
    );

    say("procpool echo of Vec<u8> and Bytes");
    let mut note = String::new();
    let fault_note = &mut note;
    // The `Bytes` echoes again with shared memory on (`shared_memory_min`, off by
    // default), measured in turn with the default pool's, for the ratio.
    let mut shared_on = (0.0, 0.0);
    let (vec16, bytes16, vec1, bytes1) = rt.block_on(async {
        let pool = pool_of(1, StartMethod::default()).await;
        let on = Pool::builder()
            .processes(1)
            .shared_memory_min(M1)
            .build()
            .await
            .expect("build a pool");
        let vec = |pool: &Pool, size: usize, calls: usize| {
            let pool = pool.clone();
            async move {
                let data = vec![7u8; size];
                let mut xs = Vec::new();
                for i in 0..calls + 1 {
                    let arg = data.clone();
                    let start = Instant::now();
                    let r = pool.apply(echo_vec, arg).await.expect("echo");
                    if i > 0 {
                        xs.push(start.elapsed());
                    }
                    assert_eq!(r.len(), size);
                }
                (size as f64 / (1 << 20) as f64) / median(xs).as_secs_f64()
            }
        };
        let bytes = |pool: &Pool, size: usize, calls: usize| {
            let pool = pool.clone();
            async move {
                let data = Bytes::from(vec![7u8; size]);
                let d = median_of_async(1, calls, || async {
                    let r = pool.apply(echo_bytes, data.clone()).await.expect("echo");
                    assert_eq!(r.len(), size);
                })
                .await;
                (size as f64 / (1 << 20) as f64) / d.as_secs_f64()
            }
        };
        let worker = pool.stats().workers.first().map(|w| w.pid);
        let faults = || {
            (
                procpool_bench::minor_faults(std::process::id()).unwrap_or(0),
                worker.and_then(procpool_bench::minor_faults).unwrap_or(0),
            )
        };
        let f0 = faults();
        let v16 = vec(&pool, M16, s.pay_16m_calls).await;
        let f1 = faults();
        let f2 = faults();
        let b16 = bytes(&pool, M16, s.pay_16m_calls).await;
        let f3 = faults();
        let per = (s.pay_16m_calls + 1) as u64;
        *fault_note = format!(
            "  (minor page faults per 16 MiB round trip, this process / the worker: Vec<u8> {} / {}, \
             Bytes {} / {}; a 16 MiB buffer is 4096 pages)",
            (f1.0 - f0.0) / per,
            (f1.1 - f0.1) / per,
            (f3.0 - f2.0) / per,
            (f3.1 - f2.1) / per
        );
        let v1 = vec(&pool, M1, s.pay_1m_calls).await;
        let b1 = bytes(&pool, M1, s.pay_1m_calls).await;
        shared_on = (
            bytes(&on, M16, s.pay_16m_calls).await,
            bytes(&on, M1, s.pay_1m_calls).await,
        );
        pool.terminate().await;
        on.terminate().await;
        (v16, b16, v1, b1)
    });
    let py16 = py.and_then(|p| p.mpire_16m);
    for (figure, v) in [
        ("procpool echo Vec<u8> 16 MiB", vec16),
        ("procpool echo Bytes 16 MiB", bytes16),
    ] {
        t.judged(
            figure,
            v,
            Unit::MibPerSec,
            Some((v / sock_rt, "raw RT")),
            &match py16 {
                Some(x) => format!(">= 0.5x raw RT (vs mpire: {:.2}x)", v / x),
                None => ">= 0.5x raw RT".into(),
            },
            Some(v >= 0.5 * sock_rt),
        );
    }
    t.note(&note);
    for (figure, v, default) in [
        (
            "  the same, shared memory on: Bytes 16 MiB",
            shared_on.0,
            bytes16,
        ),
        (
            "  the same, shared memory on: Bytes 1 MiB",
            shared_on.1,
            bytes1,
        ),
    ] {
        t.info(
            figure,
            Some(v),
            Unit::MibPerSec,
            Some((v / default, "x the default")),
        );
    }
    t.info(
        "raw socketpair 1 MiB round trip",
        Some(sock_rt_1m),
        Unit::MibPerSec,
        Some((sock_rt_1m / sock_rt, "raw RT")),
    );
    for (figure, v) in [
        ("procpool echo Vec<u8> 1 MiB", vec1),
        ("procpool echo Bytes 1 MiB", bytes1),
    ] {
        t.info(
            figure,
            Some(v),
            Unit::MibPerSec,
            Some((v / sock_rt_1m, "raw 1 MiB RT")),
        );
    }

    say("procspawn echo of 1 MiB (ByteBuf), with a 10 s guard");
    let pool = procspawn::Pool::new(1).expect("procspawn pool");
    let data = ByteBuf::from(vec![7u8; M1]);
    let mut xs = Vec::new();
    let mut hung = false;
    for i in 0..s.pay_1m_calls.min(16) + 1 {
        let start = Instant::now();
        let mut h = pool.spawn(data.clone(), |b: ByteBuf| b);
        match h.join_timeout(Duration::from_secs(10)) {
            Ok(r) => {
                assert_eq!(r.len(), M1);
                if i > 0 {
                    xs.push(start.elapsed());
                }
            }
            Err(_) => {
                hung = true;
                break;
            }
        }
    }
    pool.kill();
    drop(pool);
    if hung || xs.is_empty() {
        t.info(
            "procspawn Pool(1) echo 1 MiB: HUNG or failed",
            None,
            Unit::MibPerSec,
            None,
        );
    } else {
        let v = 1.0 / median(xs).as_secs_f64();
        t.info(
            "procspawn Pool(1) echo 1 MiB",
            Some(v),
            Unit::MibPerSec,
            Some((v / sock_rt_1m, "raw 1 MiB RT")),
        );
    }
    if let Some(p) = py {
        if let Some(x) = p.mpire_16m {
            t.info(
                "Python mpire 16 MiB echo (read)",
                Some(x),
                Unit::MibPerSec,
                Some((x / sock_rt, "raw RT")),
            );
        }
        if let Some(x) = p.mp_16m {
            t.info(
                "Python mp.Pool(fork) 16 MiB echo (read)",
                Some(x),
                Unit::MibPerSec,
                Some((x / sock_rt, "raw RT")),
            );
        }
    }
}

/// Measures exec'ing this binary and forking this process, adds the reference row
/// (two execs) and the rows beside it; returns the reference in ms.
fn exec_reference(s: &Sizes, t: &mut Table, with_one_exec: bool) -> f64 {
    let exec1 = ms(median_of(2, s.startup_reps * 2, procpool_bench::exec_self));
    let fork = ms(median_of(
        2,
        s.startup_reps * 2,
        procpool_bench::fork_and_wait,
    ));
    let exec2 = 2.0 * exec1;
    t.reference(
        "exec of this binary, twice (2 x median)",
        exec2,
        Unit::Millis,
    );
    if with_one_exec {
        t.info(
            "exec of this binary, once",
            Some(exec1),
            Unit::Millis,
            Some((exec1 / exec2, "exec x2")),
        );
    }
    t.info(
        "fork() + waitpid of this process",
        Some(fork),
        Unit::Millis,
        Some((fork / exec2, "exec x2")),
    );
    exec2
}

/// The median time, in ms, to a ready pool of 2 with `method`.
fn ready_pool_ms(rt: &tokio::runtime::Runtime, s: &Sizes, method: StartMethod) -> f64 {
    ms(rt.block_on(async {
        let mut xs = Vec::new();
        for _ in 0..s.startup_reps {
            let start = Instant::now();
            let pool = pool_of(2, method).await;
            xs.push(start.elapsed());
            pool.terminate().await;
        }
        median(xs)
    }))
}

/// The median time, in ms, of a task's round trip on a one-worker pool with `method`
/// that replaces its worker after every task: the replacement plus one round trip.
fn replace_ms(rt: &tokio::runtime::Runtime, s: &Sizes, method: StartMethod) -> f64 {
    ms(rt.block_on(async {
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .max_tasks_per_child(1)
            .build()
            .await
            .expect("build a pool");
        let d = median_of_async(3, s.replace_reps, || async {
            black_box(pool.apply(identity, 1u64).await.expect("apply"));
        })
        .await;
        pool.terminate().await;
        d
    }))
}

/// What the opt-in sandbox costs: a ready pool of 2 and the round trip of an `apply`
/// on one worker, each with and without it (fork server, median).
fn sandbox(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table) {
    t.section("sandbox: a ready pool of 2 and an apply round trip, with and without, median");
    let build = |n: usize, sandboxed: bool| async move {
        let builder = Pool::builder().processes(n);
        let builder = if sandboxed {
            // (Weaker where the kernel lacks a feature, so that the figure is there.)
            builder.sandbox(procpool::Sandbox::new().allow_weaker(true))
        } else {
            builder
        };
        builder.build().await.expect("build a pool")
    };
    let mut ready = [0.0; 2];
    let mut trip = [0.0; 2];
    for (i, sandboxed) in [false, true].into_iter().enumerate() {
        say(&format!("sandbox cost (sandboxed: {sandboxed})"));
        ready[i] = ms(rt.block_on(async {
            let mut xs = Vec::new();
            for _ in 0..s.startup_reps {
                let start = Instant::now();
                let pool = build(2, sandboxed).await;
                xs.push(start.elapsed());
                pool.terminate().await;
            }
            median(xs)
        }));
        trip[i] = us(rt.block_on(async {
            let pool = build(1, sandboxed).await;
            let d = median_of_async(s.lat_warm, s.lat_calls, || async {
                black_box(pool.apply(identity, black_box(1u64)).await.expect("apply"));
            })
            .await;
            pool.terminate().await;
            d
        }));
    }
    t.info(
        "ready pool of 2, no sandbox",
        Some(ready[0]),
        Unit::Millis,
        None,
    );
    t.info(
        "ready pool of 2, sandboxed",
        Some(ready[1]),
        Unit::Millis,
        Some((ready[1] / ready[0], "no sandbox")),
    );
    t.info(
        "apply round trip, no sandbox",
        Some(trip[0]),
        Unit::Micros,
        None,
    );
    t.info(
        "apply round trip, sandboxed",
        Some(trip[1]),
        Unit::Micros,
        Some((trip[1] / trip[0], "no sandbox")),
    );
}

fn startup(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table, py: Option<&Python>) {
    let rss = procpool_bench::rss_mib(std::process::id()).unwrap_or(0.0);
    t.section(&format!(
        "start-up: time to a ready pool (every worker has answered), this process at {rss:.0} MiB RSS, median"
    ));
    say("exec of this binary, fork + waitpid");
    let exec2 = exec_reference(s, t, true);
    let exec1 = exec2 / 2.0;
    for (name, method) in METHODS {
        say(&format!("ready pool of 2 ({name})"));
        let d = ready_pool_ms(rt, s, method);
        let figure = format!("procpool ready pool of 2, {name}");
        if method == StartMethod::Spawn {
            t.judged(
                &figure,
                d,
                Unit::Millis,
                Some((d / exec2, "exec x2")),
                "<= 1.5x exec x2",
                Some(d <= 1.5 * exec2),
            );
        } else {
            t.info(&figure, Some(d), Unit::Millis, Some((d / exec2, "exec x2")));
        }
    }
    say("ready pool of 2 + first result (as Python's start-up figure)");
    let d = ms(rt.block_on(async {
        let mut xs = Vec::new();
        for _ in 0..s.startup_reps {
            let start = Instant::now();
            let pool = pool_of(2, StartMethod::default()).await;
            pool.apply(identity, 7).await.expect("apply");
            xs.push(start.elapsed());
            pool.terminate().await;
        }
        median(xs)
    }));
    t.info(
        "procpool pool of 2 + first result, forkserver",
        Some(d),
        Unit::Millis,
        Some((d / exec2, "exec x2")),
    );
    for (name, method) in METHODS {
        say(&format!("worker replacement ({name})"));
        let d = replace_ms(rt, s, method);
        let figure = format!("replace a worker, {name} (next task's round trip)");
        if method == StartMethod::ForkServer {
            t.judged(
                &figure,
                d,
                Unit::Millis,
                Some((d / exec1, "exec x1")),
                "< 1 ms",
                Some(d < 1.0),
            );
        } else {
            t.info(&figure, Some(d), Unit::Millis, Some((d / exec1, "exec x1")));
        }
    }
    say("procspawn Pool(2) + first result");
    let mut xs = Vec::new();
    for _ in 0..s.startup_reps.min(5) {
        let start = Instant::now();
        let pool = procspawn::Pool::new(2).expect("procspawn pool");
        let h = pool.spawn(7u64, identity);
        black_box(h.join().expect("procspawn"));
        xs.push(start.elapsed());
        pool.kill();
    }
    let d = ms(median(xs));
    t.info(
        "procspawn Pool(2) + first result",
        Some(d),
        Unit::Millis,
        Some((d / exec2, "exec x2")),
    );
    if let Some(x) = py.and_then(|p| p.startup_ms) {
        t.info(
            "Python mp.Pool(fork)(2) + first result (read)",
            Some(x),
            Unit::Millis,
            Some((x / exec2, "exec x2")),
        );
    }
}

/// The resident size that [`grown`] brings this process to before it measures.
const GROWN_MIB: usize = 1024;

/// Grows this process to at least `mib` MiB resident: a buffer of the difference,
/// every page written (an untouched allocation is mapped but not resident). The caller
/// keeps it alive while it measures.
fn grow_to(mib: usize) -> Vec<u8> {
    let now = procpool_bench::rss_mib(std::process::id()).unwrap_or(0.0) as usize;
    let bytes = mib.saturating_sub(now) << 20;
    let mut buf = vec![0u8; bytes];
    for page in buf.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&buf);
    buf
}

/// Start-up again at the end of the run, with this process grown to 1 GiB resident:
/// `fork` copies the page tables of the whole parent, and so would every way of
/// starting a child that forks this process (`StartMethod::Fork`, and a `Command`
/// with a `pre_exec` hook, which cannot use `vfork`/`posix_spawn`). A spawned worker
/// (`posix_spawn`) and a fork-server worker (forked by the small server) should not
/// care how large the parent is.
fn grown(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table) {
    let ballast = grow_to(GROWN_MIB);
    let rss = procpool_bench::rss_mib(std::process::id()).unwrap_or(0.0);
    t.section(&format!(
        "start-up again at the end of the run, this process grown to {rss:.0} MiB RSS, median"
    ));
    say("start-up again with a grown parent");
    let exec2 = exec_reference(s, t, false);
    for (name, method) in METHODS {
        say(&format!("ready pool of 2 ({name}, grown parent)"));
        let d = ready_pool_ms(rt, s, method);
        let figure = format!("procpool ready pool of 2, {name}");
        if method == StartMethod::Spawn {
            t.judged(
                &figure,
                d,
                Unit::Millis,
                Some((d / exec2, "exec x2")),
                "<= 1.5x exec x2",
                Some(d <= 1.5 * exec2),
            );
        } else {
            t.info(&figure, Some(d), Unit::Millis, Some((d / exec2, "exec x2")));
        }
    }
    for (name, method) in METHODS {
        say(&format!("worker replacement ({name}, grown parent)"));
        let d = replace_ms(rt, s, method);
        let figure = format!("replace a worker, {name} (next task's round trip)");
        if method == StartMethod::ForkServer {
            t.judged(
                &figure,
                d,
                Unit::Millis,
                Some((d / (exec2 / 2.0), "exec x1")),
                "< 1 ms",
                Some(d < 1.0),
            );
        } else {
            t.info(
                &figure,
                Some(d),
                Unit::Millis,
                Some((d / (exec2 / 2.0), "exec x1")),
            );
        }
    }
    drop(black_box(ballast));
}

// ---------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------

/// (busy in processes, total) jiffies of the whole machine.
fn machine_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0, 1);
    }
    // user + nice + system: what processes ran (not idle, iowait, interrupts, steal).
    let total: u64 = v[..8].iter().sum();
    (v[0] + v[1] + v[2], total)
}

/// CPU jiffies used by this process and its reaped children.
fn own_jiffies() -> u64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // After the state letter (not a number): ppid pgrp session tty tpgid flags minflt
    // cminflt majflt cmajflt utime stime cutime cstime.
    f.get(10..14).map_or(0, |x| x.iter().sum())
}

fn busy_pct(window: Duration) -> f64 {
    let (b0, t0) = machine_jiffies();
    std::thread::sleep(window);
    let (b1, t1) = machine_jiffies();
    100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64
}

// ---------------------------------------------------------------------------------

struct Args {
    quick: bool,
    grown_only: bool,
    remote_only: bool,
    payload_only: bool,
    python: Option<String>,
    /// `--runs N`: how many runs of this program to lay side by side.
    runs: Option<usize>,
    /// `--out DIR`: where to keep each run's output.
    out: Option<String>,
    /// The arguments other than `--runs` and `--out`, for each of those runs.
    per_run: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        grown_only: false,
        remote_only: false,
        payload_only: false,
        python: None,
        runs: None,
        out: None,
        per_run: Vec::new(),
    };
    let usage_error = |msg: String| -> ! {
        eprintln!("{msg}; try --help");
        std::process::exit(2);
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--grown-only" => args.grown_only = true,
            "--remote-only" => args.remote_only = true,
            "--payload-only" => args.payload_only = true,
            "--python" => {
                args.python = it.next();
                args.per_run.push(a);
                args.per_run.extend(args.python.clone());
                continue;
            }
            "--runs" => {
                let n = it.next();
                match n.as_deref().map(str::parse::<usize>) {
                    Some(Ok(n)) if n >= 1 => args.runs = Some(n),
                    _ => usage_error(format!(
                        "--runs takes a count of at least 1, not {:?}",
                        n.unwrap_or_default()
                    )),
                }
                continue;
            }
            "--out" => {
                match it.next() {
                    Some(dir) => args.out = Some(dir),
                    None => usage_error("--out takes a directory".into()),
                }
                continue;
            }
            "-h" | "--help" => {
                println!(
                    "usage: compare [--quick] [--grown-only] [--remote-only] [--payload-only] [--python FILE] [--out DIR [--runs N]]\n\n  --quick        a ~30 s run (CI)\n  \
                     --payload-only only the payloads (1 and 16 MiB echoes)\n  \
                     --grown-only   only the start-up with this process grown to 1 GiB\n  \
                     --remote-only  only the workers on other machines (ssh, srun)\n  \
                     --python FILE  judge Python-relative targets with bench_pools.py's JSON\n  \
                     --out DIR      run the comparison N times (--runs, default 5) with the other\n                 \
                     arguments, one after the other, keep each run's output in DIR/run-K.txt,\n                 \
                     and print the runs side by side with their spread (markdown, also in\n                 \
                     DIR/spread.md)"
                );
                std::process::exit(0);
            }
            other => usage_error(format!("unknown argument {other:?}")),
        }
        args.per_run.push(a);
    }
    if args.runs.is_some() && args.out.is_none() {
        usage_error("--runs needs --out DIR, where each run's output is kept".into());
    }
    args
}

/// `--out DIR [--runs N]`: runs this binary `runs` times with `per_run`, keeps the
/// outputs in `out`, and prints the runs side by side (also into `out/spread.md`).
/// Exits with 1 if a run has no table.
fn repeated(per_run: &[String], runs: usize, out: &str) -> ! {
    let exe = std::env::current_exe().unwrap_or_else(|e| {
        eprintln!("cannot find this program's executable: {e}");
        std::process::exit(1);
    });
    let out = std::path::Path::new(out);
    eprintln!(
        "{runs} runs of compare {}, one after the other; outputs in {}",
        per_run.join(" "),
        out.display()
    );
    let results =
        procpool_bench::runs::run_repeatedly(&exe, per_run, runs, out, |k, wall, r| match r {
            Ok(run) => eprintln!(
                "  run {k}/{runs}: {wall:.0} s, {} rows; targets: {}",
                run.rows.len(),
                run.summary.targets.as_deref().unwrap_or("?")
            ),
            Err(why) => eprintln!("  run {k}/{runs}: {wall:.0} s, no table: {why}"),
        });
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            eprintln!("could not run the comparison: {e}");
            std::process::exit(1);
        }
    };
    let table = procpool_bench::runs::markdown(&results);
    let path = out.join("spread.md");
    if let Err(e) = std::fs::write(&path, &table) {
        eprintln!("could not write {}: {e}", path.display());
        std::process::exit(1);
    }
    print!("{table}");
    std::process::exit(if results.iter().all(Result::is_ok) {
        0
    } else {
        1
    });
}

fn main() {
    // The exec'd copy that measures the cost of exec: leave at once.
    if procpool_bench::is_exec_probe() {
        return;
    }
    // procspawn's children re-enter main: this must come before anything else runs.
    procspawn::init();
    // Explicit form of procpool's worker entry (its constructor already did it).
    procpool::init();

    let args = parse_args();
    if let Some(out) = &args.out {
        repeated(&args.per_run, args.runs.unwrap_or(5), out);
    }
    let s = if args.quick { QUICK } else { FULL };
    let py = args.python.as_deref().map(|p| match read_python(p) {
        Ok(py) => py,
        Err(e) => {
            eprintln!("could not read Python's results: {e}");
            std::process::exit(2);
        }
    });

    let started = Instant::now();
    let wait_max = if args.quick { 3.0 } else { 10.0 };
    let mut pre = busy_pct(Duration::from_millis(500));
    while pre > 20.0 && started.elapsed().as_secs_f64() < wait_max {
        eprintln!("  the machine is {pre:.0}% busy; waiting for it to quieten ...");
        pre = busy_pct(Duration::from_secs(1));
    }
    let (b0, t0) = machine_jiffies();
    let own0 = own_jiffies();
    let run_start = Instant::now();

    let rt = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let mut t = Table::default();
    eprintln!(
        "procpool comparison ({}), {} CPUs",
        if args.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Memory first: a forked worker's RSS counts the parent's pages, so measure it
    // while the parent is small.
    if args.payload_only {
        payload(&rt, &s, &mut t, py.as_ref());
    } else if args.remote_only {
        remote_section::remote(&rt, &s, &mut t);
    } else if !args.grown_only {
        memory(&rt, &s, &mut t, py.as_ref());
        startup(&rt, &s, &mut t, py.as_ref());
        latency(&rt, &s, &mut t, py.as_ref());
        service(&rt, args.quick, &mut t);
        throughput(&rt, &s, &mut t, py.as_ref());
        cpu(&rt, &s, &mut t);
        payload(&rt, &s, &mut t, py.as_ref());
        sandbox(&rt, &s, &mut t);
        remote_section::remote(&rt, &s, &mut t);
    }
    if !args.remote_only && !args.payload_only {
        grown(&rt, &s, &mut t);
    }
    drop(rt);

    let wall = run_start.elapsed().as_secs_f64();
    let (b1, t1) = machine_jiffies();
    let own = own_jiffies().saturating_sub(own0);
    let foreign = 100.0 * (b1 - b0).saturating_sub(own) as f64 / (t1 - t0).max(1) as f64;

    println!(
        "procpool {} comparison: {} CPUs, {}, {:.0} s; the machine was {pre:.0}% busy before the run, \
         and other processes used at most about {foreign:.0}% of its CPU during it",
        if args.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        match &py {
            Some(p) => format!(
                "Python figures read from {} (bench_pools.py{})",
                p.file,
                if p.quick { " --quick" } else { "" }
            ),
            None => "no Python figures (--python FILE to judge those targets)".into(),
        },
        wall
    );
    println!();
    print!("{}", t.render());
    let (met, not, na) = t.count();
    println!();
    println!("targets: {met} met, {not} not met, {na} not judged");
    if foreign > 15.0 {
        println!(
            "note: other processes used up to {foreign:.0}% of the CPU during this run (an upper bound: \
             descendants of ours that we did not reap ourselves, such as fork-server workers, count \
             as other); figures may be disturbed"
        );
    }
}
