//! An HTTP service on axum that offloads its CPU work to a procpool [`Pool`]: the
//! runtime's threads only route requests, and a task that crashes its worker costs that
//! one request a 500, not the service.
//!
//! - `GET /primes?from=A&to=B[&timeout_ms=T]` counts the primes in `[A, B)` on the pool;
//!   past its timeout (default 10 s) the worker is killed and the request gets a 504.
//! - `POST /hash` hashes the uploaded body (FNV-1a, 64 bits) on the pool.
//! - `GET /crash` runs a task that aborts its worker: a 500 whose body is the
//!   [`TaskError`]'s text ("worker 1234 died running the task (signal 6 (SIGABRT))").
//! - `GET /health` answers at once, without the pool.
//! - `GET /stats` shows the pool's counters, without the pool.
//!
//! **Load shedding.** The pool has a queue bound ([`PoolBuilder::queue_bound`]: at most
//! `4 × processes` tasks, and at least 16, in the pool at once, queued or running), and
//! the handlers submit with [`Pool::try_apply`]: past the bound a request gets a 503
//! with `Retry-After` at once ([`TaskError::QueueFull`]) instead of waiting in a queue
//! that only grows. So a request the service accepts waits behind at most the bound's
//! worth of work: its latency stays near `bound / processes` task times, whatever the
//! load.
//!
//! The workers run at a lower priority ([`PoolBuilder::niceness`]), so on a busy machine
//! the service's own threads still get the CPU when a request comes in.
//!
//! ```text
//! cargo run --release --example service              # serve on 127.0.0.1:3000 until Ctrl-C
//! curl '127.0.0.1:3000/primes?from=1000000000000&to=1000001000000'
//! curl --data-binary @Cargo.toml 127.0.0.1:3000/hash
//! curl -i 127.0.0.1:3000/crash
//!
//! cargo run --release --example service -- --selftest  # what CI runs
//! ```
//!
//! The self-test serves on an ephemeral loopback port and is its own client: it measures
//! `/health` while the service is idle, then while 8 clients keep `/primes` busy (and a
//! ninth crashes workers in the middle of that load), then checks that every crash was a
//! 500 naming the worker's death, that a request past its timeout was a 504, that every
//! other request got the right answer, and that the pool replaced each dead worker.
//! Then it sends a burst of `4 × bound` concurrent `/primes` requests: some must be
//! shed (503), some accepted, and the slowest accepted one must have waited no more
//! than a few times `bound / processes` task times (the task's time measured in the
//! same run). It prints the accepted and rejected counts, the latencies of the
//! accepted requests, and the names the OS gives the pool's processes. It exits 0 only
//! if every check holds.
//!
//! [`PoolBuilder::niceness`]: procpool::PoolBuilder::niceness
//! [`PoolBuilder::queue_bound`]: procpool::PoolBuilder::queue_bound

#[path = "common/primes.rs"]
mod primes;
use primes::is_prime;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;
use procpool::{Pool, TaskError};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------
// The tasks: plain functions, run in the worker processes.
// ---------------------------------------------------------------------------------------

/// How many primes lie in `[from, to)`.
fn count_primes((from, to): (u64, u64)) -> u64 {
    (from..to).filter(|&n| is_prime(n)).count() as u64
}

/// FNV-1a, 64 bits.
fn fnv1a(data: Vec<u8>) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Kills the worker that runs it, as a segfaulting C library or a failed allocation
/// would.
fn crash(_: ()) -> u64 {
    std::process::abort()
}

// ---------------------------------------------------------------------------------------
// The service.
// ---------------------------------------------------------------------------------------

/// How long a request's task may run unless the request asks for less (or more).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct AppState {
    pool: Pool,
    /// Requests answered, any status.
    served: Arc<AtomicU64>,
}

type Reply = HttpResponse;

/// A task's outcome as an HTTP reply: its value; a 503 with `Retry-After` when the
/// pool's queue is full (the request was shed, nothing ran) or the pool is shutting
/// down; a 504 past its timeout; and a 500 with the error's text for the rest (a dead
/// worker, a panic).
fn reply<T: ToString>(state: &AppState, result: Result<T, TaskError>) -> Reply {
    state.served.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(value) => (StatusCode::OK, value.to_string()).into_response(),
        Err(e @ (TaskError::QueueFull | TaskError::Closed | TaskError::Terminated)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            e.to_string(),
        )
            .into_response(),
        Err(e) if e.is_timeout() => (StatusCode::GATEWAY_TIMEOUT, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The service's queue bound for a pool of `processes`: enough to keep every worker
/// busy with a few requests queued behind each, and at least 16.
fn queue_bound(processes: usize) -> usize {
    (4 * processes).max(16)
}

#[derive(Deserialize)]
struct PrimesQuery {
    from: u64,
    to: u64,
    timeout_ms: Option<u64>,
}

async fn primes(State(state): State<AppState>, Query(q): Query<PrimesQuery>) -> Reply {
    if q.from > q.to {
        state.served.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, "from must not exceed to").into_response();
    }
    let limit = q
        .timeout_ms
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
        .min(MAX_TIMEOUT);
    // `try_apply`: shed the request (503) rather than wait when the pool is full.
    let result = state
        .pool
        .try_apply(count_primes, (q.from, q.to))
        .timeout(limit)
        .await;
    reply(&state, result)
}

async fn hash(State(state): State<AppState>, body: Bytes) -> Reply {
    let result = state
        .pool
        .try_apply(fnv1a, body.to_vec())
        .timeout(DEFAULT_TIMEOUT)
        .await;
    reply(&state, result.map(|h| format!("{h:016x}")))
}

async fn crash_handler(State(state): State<AppState>) -> Reply {
    let result = state
        .pool
        .try_apply(crash, ())
        .timeout(DEFAULT_TIMEOUT)
        .await;
    reply(&state, result)
}

async fn health(State(state): State<AppState>) -> Reply {
    state.served.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, "ok").into_response()
}

async fn stats(State(state): State<AppState>) -> Reply {
    state.served.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, format!("{:#?}\n", state.pool.stats())).into_response()
}

fn app(state: AppState) -> Router {
    Router::new()
        .route("/primes", get(primes))
        .route("/hash", post(hash))
        .route("/crash", get(crash_handler))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .with_state(state)
}

#[tokio::main]
async fn main() {
    let selftest = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--selftest") => true,
        Some(other) => {
            eprintln!("usage: service [--selftest]  (unknown argument {other:?})");
            std::process::exit(2);
        }
    };
    let processes = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = Pool::builder()
        .processes(processes)
        .queue_bound(queue_bound(processes))
        .niceness(10)
        .build()
        .await;
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("could not start the pool: {e}");
            std::process::exit(1);
        }
    };
    let state = AppState {
        pool: pool.clone(),
        served: Arc::new(AtomicU64::new(0)),
    };
    let outcome = if selftest {
        self_test(state).await
    } else {
        serve(state).await
    };
    pool.close();
    if timeout(Duration::from_secs(15), pool.join()).await.is_err() {
        eprintln!("the pool did not finish its work in 15 s; terminating it");
        pool.terminate().await;
    }
    if let Err(why) = outcome {
        eprintln!("FAILED: {why}");
        std::process::exit(1);
    }
}

/// Serves on 127.0.0.1:3000 until Ctrl-C; requests in progress then finish.
async fn serve(state: AppState) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:3000")
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:3000: {e}"))?;
    println!(
        "serving on http://127.0.0.1:3000 with {} worker processes and a queue bound of {}; \
         Ctrl-C stops",
        state.pool.processes(),
        queue_bound(state.pool.processes())
    );
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("\nCtrl-C: finishing the requests in progress");
        })
        .await
        .map_err(|e| format!("server error: {e}"))
}

// ---------------------------------------------------------------------------------------
// The self-test: this process is also the client, over loopback.
// ---------------------------------------------------------------------------------------

/// The range every load request counts: about 60 ms of work for one core.
const LOAD_FROM: u64 = 1_000_000_000_000;
const LOAD_TO: u64 = LOAD_FROM + 250_000;
/// Load: this many clients, each sending this many requests one after another.
const CLIENTS: usize = 8;
const REQUESTS_PER_CLIENT: usize = 10;
/// Health probes, idle and under load, and the pause between two.
const PROBES: usize = 50;
const PROBE_GAP: Duration = Duration::from_millis(10);
/// Crashes sent in the middle of the load, and after it.
const CRASHES_UNDER_LOAD: usize = 2;
const CRASHES_AFTER: usize = 3;
/// The burst: this many concurrent requests per place under the queue bound, each
/// counting the primes in this many numbers (about 20 ms of work for one core); the
/// slowest accepted request may take this many times what the bound allows it (its
/// own task time and `bound / processes` tasks' worth of waiting): room for a busy
/// machine, and still below what an unbounded queue would make the last request of
/// the burst wait (`BURST_PER_PLACE × bound / processes` task times: 64 against 36 on
/// 2 CPUs, 32 against 20 from 4 CPUs on).
const BURST_PER_PLACE: usize = 8;
const BURST_SPAN: u64 = 80_000;
const BURST_SLACK: f64 = 4.0;
/// The bound on any one request of the self-test, and on the whole of it.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);
const SELFTEST_LIMIT: Duration = Duration::from_secs(60);

/// A response: its status code and body.
struct Response {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection, with every wait bounded.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Response, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(REQUEST_LIMIT, exchange)
        .await
        .map_err(|_| format!("{method} {path}: no response within {REQUEST_LIMIT:?}"))?
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let text =
        String::from_utf8(raw).map_err(|_| format!("{method} {path}: response is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: malformed response {text:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(format!("{method} {path}: unexpected chunked response"));
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line in {head:?}"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// Expects a status; returns the body.
async fn expect(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    status: u16,
) -> Result<String, String> {
    let r = request(addr, method, path, body).await?;
    if r.status != status {
        return Err(format!(
            "{method} {path}: expected {status}, got {} with body {:?}",
            r.status, r.body
        ));
    }
    Ok(r.body)
}

/// `PROBES` timed `/health` requests, `PROBE_GAP` apart; the latencies, sorted.
async fn probe_health(addr: SocketAddr) -> Result<Vec<Duration>, String> {
    let mut latencies = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let started = Instant::now();
        let body = expect(addr, "GET", "/health", b"", 200).await?;
        latencies.push(started.elapsed());
        if body != "ok" {
            return Err(format!("/health answered {body:?}"));
        }
        tokio::time::sleep(PROBE_GAP).await;
    }
    latencies.sort();
    Ok(latencies)
}

/// The median and the 99th percentile of sorted latencies.
fn percentiles(sorted: &[Duration]) -> (Duration, Duration) {
    let at =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    (at(0.5), at(0.99))
}

/// A crash request: a 500 whose body names the worker's death.
async fn expect_crash(addr: SocketAddr) -> Result<(), String> {
    let body = expect(addr, "GET", "/crash", b"", 500).await?;
    if body.contains("died running the task") && body.contains("SIGABRT") {
        Ok(())
    } else {
        Err(format!(
            "/crash: the 500's body does not name the worker's death: {body:?}"
        ))
    }
}

async fn self_test(state: AppState) -> Result<(), String> {
    let pool = state.pool.clone();
    let served = state.served.clone();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!(
        "self-test: serving on http://{addr} with {} worker processes",
        pool.processes()
    );

    let started = Instant::now();
    let outcome = timeout(SELFTEST_LIMIT, run_checks(addr, &pool)).await;
    let _ = stop.send(());
    match timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("server error: {e}")),
        Ok(Err(e)) => return Err(format!("server task failed: {e}")),
        Err(_) => return Err("the server did not shut down within 5 s".into()),
    }
    let report =
        outcome.map_err(|_| format!("the self-test took longer than {SELFTEST_LIMIT:?}"))??;
    let stats = pool.stats();
    print!("{report}");
    println!("{}", process_names(&stats));
    println!(
        "requests served: {}; workers started {}, crashed and replaced {}, killed on a timeout and replaced {}; {:.1?} in all",
        served.load(Ordering::Relaxed),
        stats.workers_started,
        stats.workers_crashed,
        stats.workers_killed_on_timeout,
        started.elapsed()
    );
    println!("self-test passed");
    Ok(())
}

/// Every check of the self-test; a report of what it measured.
async fn run_checks(addr: SocketAddr, pool: &Pool) -> Result<String, String> {
    let mut report = String::new();
    let expected_load = count_primes((LOAD_FROM, LOAD_TO)).to_string();
    let load_path = format!("/primes?from={LOAD_FROM}&to={LOAD_TO}");

    // The cheap endpoint, idle.
    let idle = probe_health(addr).await?;

    // Load: 8 clients keep /primes busy.
    let load_started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (path, expected) = (load_path.clone(), expected_load.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..REQUESTS_PER_CLIENT {
                let body = expect(addr, "GET", &path, b"", 200).await?;
                if body != expected {
                    return Err(format!("GET {path}: counted {body}, expected {expected}"));
                }
            }
            Ok::<_, String>(Instant::now())
        }));
    }
    // Workers crash in the middle of the load: only the crashing requests may notice.
    let crasher = tokio::spawn(async move {
        for _ in 0..CRASHES_UNDER_LOAD {
            tokio::time::sleep(Duration::from_millis(300)).await;
            expect_crash(addr).await?;
        }
        Ok::<_, String>(())
    });
    // The cheap endpoint, under that load (once the load has reached the pool).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = probe_health(addr).await?;
    let probes_done = Instant::now();

    let mut load_done = load_started;
    for client in clients {
        let finished = client
            .await
            .map_err(|e| format!("a load client failed: {e}"))??;
        load_done = load_done.max(finished);
    }
    crasher
        .await
        .map_err(|e| format!("the crash client failed: {e}"))??;
    if load_done < probes_done {
        return Err(format!(
            "the load ended before the health probes did ({:?} of load): the \
             under-load latencies were not all measured under load",
            load_done - load_started
        ));
    }
    let load_time = load_done - load_started;
    let load_requests = CLIENTS * REQUESTS_PER_CLIENT;

    let (idle_p50, idle_p99) = percentiles(&idle);
    let (busy_p50, busy_p99) = percentiles(&busy);
    let _ = writeln!(
        report,
        "/health latency, {PROBES} probes each: idle median {idle_p50:.2?}, p99 {idle_p99:.2?}; \
         under load median {busy_p50:.2?}, p99 {busy_p99:.2?}"
    );
    let _ = writeln!(
        report,
        "load: {load_requests} /primes requests ({CLIENTS} clients x {REQUESTS_PER_CLIENT}), \
         each counting {} primes in {} numbers, all correct, in {load_time:.2?} \
         ({:.1} requests/s); {CRASHES_UNDER_LOAD} crashes in the middle of it cost no other request",
        expected_load,
        LOAD_TO - LOAD_FROM,
        load_requests as f64 / load_time.as_secs_f64()
    );
    // "Low" here: a health check stays far below one /primes request's own service
    // time, though every core is busy with the pool's work.
    if busy_p50 > Duration::from_millis(20) || busy_p99 > Duration::from_millis(200) {
        return Err(format!(
            "/health was slow under load: median {busy_p50:.2?} (limit 20 ms), \
             p99 {busy_p99:.2?} (limit 200 ms)"
        ));
    }

    // Crashes, one after another: each a 500 naming the death, and then the service
    // still answers right.
    for _ in 0..CRASHES_AFTER {
        expect_crash(addr).await?;
    }
    let body = expect(addr, "GET", "/primes?from=0&to=1000000", b"", 200).await?;
    if body != "78498" {
        return Err(format!(
            "after the crashes, /primes counted {body} primes below 10^6, not 78498"
        ));
    }

    // A request past its timeout: its worker is killed, the request gets a 504.
    let body = expect(
        addr,
        "GET",
        &format!(
            "/primes?from={LOAD_FROM}&to={}&timeout_ms=200",
            LOAD_FROM + 10_000_000_000
        ),
        b"",
        504,
    )
    .await?;
    if !body.contains("timed out") {
        return Err(format!(
            "the 504's body does not say the task timed out: {body:?}"
        ));
    }

    // The pool's other work still goes through: a hash of an uploaded body.
    let upload: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected_hash = format!("{:016x}", fnv1a(upload.clone()));
    let body = expect(addr, "POST", "/hash", &upload, 200).await?;
    if body != expected_hash {
        return Err(format!("/hash answered {body}, expected {expected_hash}"));
    }

    // Every dead worker was replaced: the pool is back to full strength.
    let crashes = (CRASHES_UNDER_LOAD + CRASHES_AFTER) as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats = pool.stats();
        if stats.workers.len() == pool.processes() || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if stats.workers.len() != pool.processes() {
        return Err(format!(
            "{} live workers of {} after the crashes: {stats:?}",
            stats.workers.len(),
            pool.processes()
        ));
    }
    if stats.workers_crashed < crashes || stats.timed_out < 1 || stats.workers_killed_on_timeout < 1
    {
        return Err(format!(
            "the pool counted {} crashed workers, {} timeouts and {} workers killed on a timeout; expected at least {}, 1 and 1",
            stats.workers_crashed,
            stats.timed_out,
            stats.workers_killed_on_timeout,
            crashes
        ));
    }
    if stats.workers_started < pool.processes() as u64 + crashes + 1 {
        return Err(format!(
            "only {} workers started for {} slots, {crashes} crashes and a timeout",
            stats.workers_started,
            pool.processes()
        ));
    }
    let _ = writeln!(
        report,
        "crashes survived: {crashes} (each a 500 naming the worker's death), 1 timeout (504); \
         afterwards /primes and /hash answered right and all {} workers are alive",
        pool.processes()
    );
    report.push_str(&burst(addr, pool).await?);
    Ok(report)
}

/// A burst of concurrent `/primes` requests, many more than the queue bound: some are
/// shed with a 503 at once, the rest answered right, within what the bound allows.
async fn burst(addr: SocketAddr, pool: &Pool) -> Result<String, String> {
    let bound = queue_bound(pool.processes());
    let path = format!("/primes?from={LOAD_FROM}&to={}", LOAD_FROM + BURST_SPAN);
    let expected = count_primes((LOAD_FROM, LOAD_FROM + BURST_SPAN)).to_string();
    // One request's time, alone (the median of 5): the unit of the latency bound.
    let mut alone = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let body = expect(addr, "GET", &path, b"", 200).await?;
        alone.push(started.elapsed());
        if body != expected {
            return Err(format!("GET {path}: counted {body}, expected {expected}"));
        }
    }
    alone.sort();
    let task = alone[alone.len() / 2];
    let rejected_before = pool.stats().rejected;

    // Two descriptors per request in flight (the client's and the server's end): on a
    // machine of many CPUs (a large bound) the burst may need more than the soft
    // limit, so raise it to the hard one, and shrink the burst to what fits.
    let files = open_files_limit();
    let requests = (BURST_PER_PLACE * bound).min(files.saturating_sub(256) / 2);
    if requests < 2 * bound {
        return Err(format!(
            "a burst needs twice the queue bound of {bound} in requests at once, but the \
             limit of {files} open files allows only {requests}"
        ));
    }
    let mut all = Vec::with_capacity(requests);
    for _ in 0..requests {
        let path = path.clone();
        all.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = request(addr, "GET", &path, b"").await?;
            Ok::<_, String>((response, started.elapsed()))
        }));
    }
    let mut accepted = Vec::new();
    let mut rejected = 0u64;
    for one in all {
        let (response, latency) = one
            .await
            .map_err(|e| format!("a burst client failed: {e}"))??;
        match response.status {
            200 if response.body == expected => accepted.push(latency),
            503 if response.body == TaskError::QueueFull.to_string() => rejected += 1,
            status => {
                return Err(format!(
                    "GET {path} in the burst: {status} with body {:?}",
                    response.body
                ))
            }
        }
    }
    accepted.sort();
    let stats = pool.stats();
    if rejected == 0 || accepted.is_empty() {
        return Err(format!(
            "a burst of {requests} requests against a bound of {bound}: {} accepted and \
             {rejected} rejected; expected some of each",
            accepted.len()
        ));
    }
    // Refused only while `bound` tasks were in the pool, and those were accepted.
    if accepted.len() < bound {
        return Err(format!(
            "only {} requests of the burst accepted, under a bound of {bound}",
            accepted.len()
        ));
    }
    if stats.rejected - rejected_before != rejected {
        return Err(format!(
            "{rejected} requests got a 503 but the pool counted {} rejected",
            stats.rejected - rejected_before
        ));
    }
    // An accepted request waits for at most the bound's worth of work ahead of it,
    // shared by the workers, then runs.
    let allowed = task.mul_f64(BURST_SLACK * (bound.div_ceil(pool.processes()) + 1) as f64);
    let (p50, p99) = percentiles(&accepted);
    let max = accepted[accepted.len() - 1];
    let mut report = format!(
        "burst: {requests} concurrent /primes requests (about {task:.1?} each alone) against a \
         queue bound of {bound} on {} workers: {} accepted (latency median {p50:.1?}, p99 \
         {p99:.1?}, max {max:.1?}: {:.1} task times at most, allowed {:.0}, where an \
         unbounded queue would take about {}), {rejected} rejected with a 503 at once\n",
        pool.processes(),
        accepted.len(),
        max.as_secs_f64() / task.as_secs_f64(),
        allowed.as_secs_f64() / task.as_secs_f64(),
        requests.div_ceil(pool.processes()),
    );
    if max > allowed {
        return Err(format!(
            "{report}the slowest accepted request took {max:.1?}, over the {allowed:.1?} \
             that the bound allows"
        ));
    }
    // Every place is free again once the burst is answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().admitted != 0 {
        if Instant::now() > deadline {
            return Err(format!(
                "places still taken after the burst: {:?}",
                pool.stats()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = writeln!(report, "all places free again after the burst");
    Ok(report)
}

/// Raises this process's soft limit of open files to its hard limit; the limit now.
fn open_files_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let now = match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(_) => soft,
    };
    usize::try_from(now).unwrap_or(usize::MAX)
}

/// The names the OS gives the pool's processes (`/proc/PID/comm`, what `ps` and
/// `top` show).
fn process_names(stats: &procpool::PoolStats) -> String {
    let comm = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|e| format!("<{e}>"))
    };
    let names: Vec<String> = stats
        .workers
        .iter()
        .map(|w| format!("{} {}", w.pid, comm(w.pid)))
        .collect();
    let mut out = format!("worker processes: {}", names.join(", "));
    if let Some(pid) = stats.forkserver_pid {
        let _ = write!(out, "; fork server: {pid} {}", comm(pid));
    }
    out
}
