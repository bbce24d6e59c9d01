//! The service's view of a pool (issue 16): the sequential `apply` round trip of the
//! *default* pool (`processes` = CPUs, so no busy polling) beside `spawn_blocking` and
//! the raw blocking pipe round trip, and an open-loop load (requests arriving at a set
//! rate whether or not earlier ones are done, as at a service) through the default
//! pool and through `spawn_blocking`, in the same run.
//!
//! Every caller is on a multi-thread Tokio runtime of as many threads as CPUs, as under
//! `#[tokio::main]`: the sequential callers run in `Runtime::block_on` (the thread of
//! `#[tokio::main]`'s body), the open loop's requests in tasks spawned onto the
//! runtime as they arrive. An open-loop request is `apply(spin, n)` (or
//! `spawn_blocking(spin(n))`) with `n` calibrated to about 100 µs of CPU; its latency
//! is from its spawn to its result. CPU is the parent's (`getrusage`, every thread)
//! plus every worker's (`/proc/<pid>/task/*/schedstat`), over the measured requests;
//! so are voluntary context switches, a count of the threads put to sleep (each
//! sleep is a wake-up to come).
//!
//! Run on its own with `cargo bench -p procpool-bench --bench openloop`, or as part of
//! the comparison program (`compare`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use procpool::Pool;

use crate::{calibrate_spin, identity, spin, timed, timed_async, Channel, RawPeer};

/// How much to run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Sequential round trips timed per reference, after `warm` untimed ones.
    pub calls: usize,
    /// Untimed round trips first.
    pub warm: usize,
    /// How long each open-loop run issues requests.
    pub run: Duration,
    /// Open-loop runs per rate and per load, alternating the two loads.
    pub rounds: usize,
}

/// About 40 s.
pub const FULL: Sizes = Sizes {
    calls: 10_000,
    warm: 500,
    run: Duration::from_secs(3),
    rounds: 2,
};

/// About 12 s.
pub const QUICK: Sizes = Sizes {
    calls: 3000,
    warm: 300,
    run: Duration::from_secs(1),
    rounds: 2,
};

/// The median, 99th percentile and largest of a sample of latencies, in µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantiles {
    /// The median.
    pub p50: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Quantiles {
    /// Of `xs`; all zero if it is empty.
    pub fn of(mut xs: Vec<Duration>) -> Quantiles {
        if xs.is_empty() {
            return Quantiles::default();
        }
        xs.sort_unstable();
        let at = |q: f64| {
            let i = ((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len()) - 1;
            xs[i].as_secs_f64() * 1e6
        };
        Quantiles {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// CPU time and voluntary context switches, summed over some processes.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_ns: u64,
    switches: u64,
}

impl Usage {
    fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            switches: self.switches.saturating_sub(before.switches),
        }
    }

    fn plus(self, other: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns + other.cpu_ns,
            switches: self.switches + other.switches,
        }
    }
}

/// This process, every thread it has had.
fn self_usage() -> Usage {
    // SAFETY: `getrusage` writes the zeroed struct it is given; nothing else.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Usage {
        cpu_ns: (us(ru.ru_utime) + us(ru.ru_stime)) * 1000,
        switches: ru.ru_nvcsw as u64,
    }
}

/// Process `pid` (another's child, so not in `getrusage`): its threads' run time in
/// nanoseconds from `schedstat`, their voluntary switches from `status`.
fn proc_usage(pid: u32) -> Usage {
    let mut u = Usage::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return u;
    };
    for task in tasks.flatten() {
        let path = task.path();
        if let Ok(s) = std::fs::read_to_string(path.join("schedstat")) {
            u.cpu_ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(path.join("status")) {
            u.switches += s
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|x| x.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    u
}

fn pool_usage(pool: Option<&Pool>) -> (Usage, Usage) {
    let workers = pool.map_or(Usage::default(), |p| {
        p.stats()
            .workers
            .iter()
            .fold(Usage::default(), |u, w| u.plus(proc_usage(w.pid)))
    });
    (self_usage(), workers)
}

// ---------------------------------------------------------------------------------
// Sequential round trips
// ---------------------------------------------------------------------------------

/// Sequential round trips of one trivial task (8 bytes each way), one caller.
#[derive(Debug, Clone, Copy)]
pub struct Sequential {
    /// `pool.apply(identity, 1u64).await` on the default pool, from `block_on`.
    pub pool: Quantiles,
    /// The same from a task spawned on the runtime.
    pub pool_spawned: Quantiles,
    /// `spawn_blocking(|| identity(1)).await`, from `block_on`.
    pub spawn_blocking: Quantiles,
    /// A forked child echoing 8 bytes over two blocking pipes.
    pub raw_pipe: Quantiles,
    /// The pool's and its workers' voluntary context switches per `apply` from
    /// `block_on`: each is a thread put to sleep, and woken.
    pub pool_switches: f64,
    /// The same for `spawn_blocking`.
    pub spawn_blocking_switches: f64,
}

/// Measures [`Sequential`] on `rt` with the default pool `pool`, in three alternating
/// rounds (so that a busy moment of the machine falls on all of them alike).
pub fn sequential(rt: &tokio::runtime::Runtime, pool: &Pool, s: &Sizes) -> Sequential {
    let rounds = 3;
    let calls = (s.calls / rounds).max(1);
    let (mut raw, mut sb, mut ap, mut sp) = (vec![], vec![], vec![], vec![]);
    let (mut sb_sw, mut ap_sw) = (0u64, 0u64);
    let mut peer = RawPeer::start(Channel::Pipe, 8, 8).expect("fork the raw peer");
    let out = 1u64.to_ne_bytes();
    let mut back = [0u8; 8];
    for _ in 0..rounds {
        raw.extend(timed(s.warm, calls, || {
            peer.round_trip(black_box(&out), &mut back)
        }));
        let u0 = self_usage();
        sb.extend(rt.block_on(timed_async(s.warm, calls, || async {
            black_box(
                tokio::task::spawn_blocking(|| identity(black_box(1)))
                    .await
                    .expect("spawn_blocking"),
            );
        })));
        sb_sw += self_usage().since(u0).switches;
        let (p0, w0) = pool_usage(Some(pool));
        ap.extend(rt.block_on(timed_async(s.warm, calls, || async {
            black_box(pool.apply(identity, black_box(1u64)).await.expect("apply"));
        })));
        let (p1, w1) = pool_usage(Some(pool));
        ap_sw += p1.since(p0).plus(w1.since(w0)).switches;
        let p = pool.clone();
        let (warm, n) = (s.warm, calls);
        sp.extend(
            rt.block_on(rt.spawn(async move {
                timed_async(warm, n, || async {
                    black_box(p.apply(identity, black_box(1u64)).await.expect("apply"));
                })
                .await
            }))
            .expect("the measuring task"),
        );
    }
    let per = |n: u64| n as f64 / ((s.warm + calls) * rounds) as f64;
    Sequential {
        pool: Quantiles::of(ap),
        pool_spawned: Quantiles::of(sp),
        spawn_blocking: Quantiles::of(sb),
        raw_pipe: Quantiles::of(raw),
        pool_switches: per(ap_sw),
        spawn_blocking_switches: per(sb_sw),
    }
}

// ---------------------------------------------------------------------------------
// The open loop
// ---------------------------------------------------------------------------------

/// One open-loop run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenLoop {
    /// Requests measured.
    pub requests: usize,
    /// The rate they were issued at, per second (as achieved).
    pub rate: f64,
    /// From each request's spawn to its result.
    pub latency: Quantiles,
    /// CPU per request of this process (every thread), µs.
    pub parent_cpu_us: f64,
    /// CPU per request of the pool's workers, µs.
    pub worker_cpu_us: f64,
    /// Voluntary context switches per request, this process and the workers.
    pub switches: f64,
}

impl OpenLoop {
    /// All the CPU per request, µs.
    pub fn cpu_us(&self) -> f64 {
        self.parent_cpu_us + self.worker_cpu_us
    }

    fn merge(runs: &[(OpenLoop, Vec<Duration>)]) -> OpenLoop {
        let n: usize = runs.iter().map(|(r, _)| r.requests).sum::<usize>().max(1);
        let w = |f: fn(&OpenLoop) -> f64| {
            runs.iter()
                .map(|(r, _)| f(r) * r.requests as f64)
                .sum::<f64>()
                / n as f64
        };
        OpenLoop {
            requests: n,
            rate: w(|r| r.rate),
            latency: Quantiles::of(runs.iter().flat_map(|(_, xs)| xs.clone()).collect()),
            parent_cpu_us: w(|r| r.parent_cpu_us),
            worker_cpu_us: w(|r| r.worker_cpu_us),
            switches: w(|r| r.switches),
        }
    }
}

/// A small xorshift generator: the same arrivals for both loads.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // In (0, 1].
        ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Sets this thread's timer slack (how late the kernel may wake a sleep); the old one.
fn timer_slack(ns: u64) -> u64 {
    // SAFETY: prctl on the calling thread with integer arguments.
    let old = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    old.max(1) as u64
}

/// Issues requests of `iters` spins as a Poisson process of `rate` per second for
/// `run`, each through `pool` (or `spawn_blocking` if `None`) in a task spawned on
/// `rt`, from this thread; waits for all and measures.
fn open_loop_run(
    rt: &tokio::runtime::Runtime,
    pool: Option<&Pool>,
    rate: f64,
    run: Duration,
    iters: u64,
    seed: u64,
) -> (OpenLoop, Vec<Duration>) {
    let handle = rt.handle().clone();
    let n = (rate * run.as_secs_f64()).ceil() as usize;
    let mut rng = Rng(seed | 1);
    let slack = timer_slack(1);
    let mut tasks = Vec::with_capacity(n);
    let (p0, w0) = pool_usage(pool);
    let start = Instant::now();
    let mut next = start;
    for _ in 0..n {
        next += Duration::from_secs_f64(-rng.unit().ln() / rate);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let t0 = Instant::now();
        tasks.push(match pool {
            Some(pool) => {
                let pool = pool.clone();
                handle.spawn(async move {
                    black_box(pool.apply(spin, iters).await.expect("apply"));
                    t0.elapsed()
                })
            }
            None => handle.spawn(async move {
                black_box(
                    tokio::task::spawn_blocking(move || spin(iters))
                        .await
                        .expect("spawn_blocking"),
                );
                t0.elapsed()
            }),
        });
    }
    let issued = start.elapsed();
    timer_slack(slack);
    let xs: Vec<Duration> = rt.block_on(async {
        let mut xs = Vec::with_capacity(n);
        for t in tasks {
            xs.push(t.await.expect("a request"));
        }
        xs
    });
    let (p1, w1) = pool_usage(pool);
    let (parent, workers) = (p1.since(p0), w1.since(w0));
    let per = |ns: u64| ns as f64 / 1e3 / n as f64;
    let r = OpenLoop {
        requests: n,
        rate: n as f64 / issued.as_secs_f64(),
        latency: Quantiles::of(xs.clone()),
        parent_cpu_us: per(parent.cpu_ns),
        worker_cpu_us: per(workers.cpu_ns),
        switches: parent.plus(workers).switches as f64 / n as f64,
    };
    (r, xs)
}

/// The open loop at one rate, through the pool and through `spawn_blocking`.
#[derive(Debug, Clone, Copy)]
pub struct AtRate {
    /// The rate asked for, per second.
    pub rate: f64,
    /// Through the default pool.
    pub pool: OpenLoop,
    /// Through `spawn_blocking`.
    pub spawn_blocking: OpenLoop,
}

/// Runs the open loop at `rate` through `pool` and `spawn_blocking`, `s.rounds` times
/// each, alternating, after a short untimed run of each.
pub fn open_loop(
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    rate: f64,
    iters: u64,
    s: &Sizes,
) -> AtRate {
    let warm = s.run / 5;
    open_loop_run(rt, Some(pool), rate, warm, iters, 7);
    open_loop_run(rt, None, rate, warm, iters, 7);
    let (mut p, mut b) = (vec![], vec![]);
    for round in 0..s.rounds {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ round as u64;
        if round % 2 == 0 {
            b.push(open_loop_run(rt, None, rate, s.run, iters, seed));
            p.push(open_loop_run(rt, Some(pool), rate, s.run, iters, seed));
        } else {
            p.push(open_loop_run(rt, Some(pool), rate, s.run, iters, seed));
            b.push(open_loop_run(rt, None, rate, s.run, iters, seed));
        }
    }
    AtRate {
        rate,
        pool: OpenLoop::merge(&p),
        spawn_blocking: OpenLoop::merge(&b),
    }
}

// ---------------------------------------------------------------------------------
// All of it
// ---------------------------------------------------------------------------------

/// Issue 16's figures, all measured in one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The default pool's `processes`.
    pub processes: usize,
    /// The open loop's task, µs of CPU (calibrated).
    pub task_us: f64,
    /// The sequential round trips.
    pub sequential: Sequential,
    /// The open loop at 2,000 requests/s and at 80% of the pool's capacity
    /// (`processes` / `task_us`).
    pub loads: Vec<AtRate>,
}

/// Builds a default pool on `rt` and measures everything of [`Report`].
pub fn measure(rt: &tokio::runtime::Runtime, s: &Sizes) -> Report {
    let pool = rt.block_on(async { Pool::builder().build().await.expect("a default pool") });
    let processes = pool.stats().workers.len();
    let task = Duration::from_micros(100);
    let iters = calibrate_spin(task);
    let sequential = sequential(rt, &pool, s);
    let capacity = processes as f64 / task.as_secs_f64();
    let loads = [2000.0, 0.8 * capacity]
        .into_iter()
        .map(|rate| open_loop(rt, &pool, rate, iters, s))
        .collect();
    rt.block_on(pool.terminate());
    Report {
        processes,
        task_us: task.as_secs_f64() * 1e6,
        sequential,
        loads,
    }
}

/// One line of a report: a figure, its value, its ratio to a reference, and a target
/// if it has one (`Some(met)`).
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// µs, or a count per request (see `figure`).
    pub value: f64,
    /// The ratio to the reference, and the reference's name.
    pub ratio: Option<(f64, &'static str)>,
    /// The target, if any, and whether it was met.
    pub target: Option<(&'static str, bool)>,
    /// Whether `value` is in µs (else a count per call).
    pub micros: bool,
}

fn row(figure: String, value: f64, ratio: Option<(f64, &'static str)>) -> Row {
    let figure_is_count = figure.contains("switches");
    Row {
        figure,
        value,
        ratio,
        target: None,
        micros: !figure_is_count,
    }
}

impl Report {
    /// The report as rows, with issue 16's targets judged.
    pub fn rows(&self) -> Vec<Row> {
        let q = &self.sequential;
        let (sb, raw) = (q.spawn_blocking, q.raw_pipe);
        let mut rows = vec![
            row("raw blocking pipe round trip, p50".into(), raw.p50, None),
            row("raw blocking pipe round trip, p99".into(), raw.p99, None),
            row(
                "spawn_blocking round trip, p50".into(),
                sb.p50,
                Some((sb.p50 / raw.p50, "raw pipe")),
            ),
            row(
                "spawn_blocking round trip, p99".into(),
                sb.p99,
                Some((sb.p99 / raw.p99, "raw pipe")),
            ),
            Row {
                figure: format!("default pool ({}) apply, p50", self.processes),
                value: q.pool.p50,
                ratio: Some((q.pool.p50 / sb.p50, "spawn_blocking")),
                target: Some((
                    "<= 1.0x spawn_blocking, <= 1.25x raw pipe",
                    q.pool.p50 <= sb.p50 && q.pool.p50 <= 1.25 * raw.p50,
                )),
                micros: true,
            },
            row(
                "  the same, ratio to the raw pipe".into(),
                q.pool.p50,
                Some((q.pool.p50 / raw.p50, "raw pipe")),
            ),
            Row {
                figure: "default pool apply, p99".into(),
                value: q.pool.p99,
                ratio: Some((q.pool.p99 / sb.p99, "spawn_blocking")),
                target: Some(("<= 1.5x spawn_blocking", q.pool.p99 <= 1.5 * sb.p99)),
                micros: true,
            },
            row(
                "default pool apply, max".into(),
                q.pool.max,
                Some((q.pool.max / sb.max, "spawn_blocking")),
            ),
            row(
                "default pool apply from a spawned task, p50".into(),
                q.pool_spawned.p50,
                Some((q.pool_spawned.p50 / sb.p50, "spawn_blocking")),
            ),
            row(
                "default pool apply from a spawned task, p99".into(),
                q.pool_spawned.p99,
                Some((q.pool_spawned.p99 / sb.p99, "spawn_blocking")),
            ),
            row(
                "voluntary switches per apply, pool and workers".into(),
                q.pool_switches,
                Some((
                    q.pool_switches / q.spawn_blocking_switches.max(1e-9),
                    "spawn_blocking",
                )),
            ),
            row(
                "voluntary switches per spawn_blocking".into(),
                q.spawn_blocking_switches,
                None,
            ),
        ];
        for l in &self.loads {
            let (p, b) = (&l.pool, &l.spawn_blocking);
            let at = format!("open loop {:.0}/s × {:.0} µs", l.rate, self.task_us);
            rows.extend([
                row(format!("{at}: spawn_blocking p50"), b.latency.p50, None),
                row(format!("{at}: spawn_blocking p99"), b.latency.p99, None),
                Row {
                    figure: format!("{at}: pool p50"),
                    value: p.latency.p50,
                    ratio: Some((p.latency.p50 / b.latency.p50, "spawn_blocking")),
                    target: Some(("<= 1.0x spawn_blocking", p.latency.p50 <= b.latency.p50)),
                    micros: true,
                },
                Row {
                    figure: format!("{at}: pool p99"),
                    value: p.latency.p99,
                    ratio: Some((p.latency.p99 / b.latency.p99, "spawn_blocking")),
                    target: Some((
                        "<= 1.5x spawn_blocking",
                        p.latency.p99 <= 1.5 * b.latency.p99,
                    )),
                    micros: true,
                },
                row(
                    format!("{at}: pool max"),
                    p.latency.max,
                    Some((p.latency.max / b.latency.max, "spawn_blocking")),
                ),
                row(
                    format!("{at}: spawn_blocking CPU per request"),
                    b.cpu_us(),
                    None,
                ),
                Row {
                    figure: format!(
                        "{at}: pool CPU per request (µs; parent {:.1}, workers {:.1}; {:+.1} µs)",
                        p.parent_cpu_us,
                        p.worker_cpu_us,
                        p.cpu_us() - b.cpu_us()
                    ),
                    value: p.cpu_us(),
                    ratio: Some((p.cpu_us() / b.cpu_us(), "spawn_blocking")),
                    target: Some((
                        "<= 10 µs more than spawn_blocking",
                        p.cpu_us() - b.cpu_us() <= 10.0,
                    )),
                    micros: true,
                },
                row(
                    format!("{at}: voluntary switches per request, pool"),
                    p.switches,
                    Some((p.switches / b.switches.max(1e-9), "spawn_blocking")),
                ),
            ]);
        }
        rows
    }

    /// The rows as a plain table.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for r in self.rows() {
            let ratio = match r.ratio {
                Some((x, of)) => format!("{x:.2}x {of}"),
                None => String::new(),
            };
            let target = match r.target {
                Some((t, met)) => format!("{t}: {}", if met { "met" } else { "NOT MET" }),
                None => String::new(),
            };
            let value = match r.micros {
                true => format!("{:.1} µs", r.value),
                false => format!("{:.2}", r.value),
            };
            let _ = writeln!(out, "{:<80} {value:>10}  {ratio:<24} {target}", r.figure);
        }
        out
    }
}
