//! Stream processing in bounded memory: records stream from a file through a procpool
//! [`Pool`] with `imap` (results in input order) and into another file as they come.
//!
//! The example writes a file of `id,text` records to the temp directory (a few of them
//! malformed on purpose), reads it back as a `Stream` of lines (`BufReader` and
//! `LinesStream`), and has the pool process each record: count its words and letters
//! and hash its text. Records go to the workers in chunks, and at most
//! [`max_in_flight`](procpool::Imap::max_in_flight) chunks are out at once: the reader
//! reads only as fast as the writer writes, so memory does not grow with the file. The
//! pool's [`progress`](procpool::Imap::progress) hook prints a line every tenth of the
//! way. At the end it checks the output (every good record, in input order), prints
//! the throughput and the peak resident memory (`VmHWM`) before and after, and deletes
//! both files.
//!
//! ```text
//! cargo run --release --example pipeline            # 200,000 records
//! cargo run --release --example pipeline -- 20000   # a quick run (CI)
//! ```

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use procpool::Pool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio_stream::wrappers::LinesStream;

/// Records per chunk: one message to a worker, one back.
const CHUNK: usize = 512;
/// Every this many records, one is malformed (no comma): the task rejects it.
const MALFORMED_EVERY: u64 = 9_973;

/// The task: `id,text` in, `id,words,letters,hash` out, or why the record is bad.
fn process(record: String) -> Result<String, String> {
    let (id, text) = record
        .split_once(',')
        .ok_or_else(|| format!("no comma in {record:?}"))?;
    let id: u64 = id.parse().map_err(|_| format!("bad id in {record:?}"))?;
    let words = text.split_whitespace().count();
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    // Some CPU work worth a process: 64 rounds of FNV-1a over the text.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for round in 0..64u64 {
        hash ^= round;
        for &b in text.as_bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{id},{words},{letters},{hash:016x}"))
}

/// The input and output files, deleted when this goes, however the example ends.
struct TempFiles {
    input: PathBuf,
    output: PathBuf,
}

impl TempFiles {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let stem = format!("procpool-pipeline-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir();
        TempFiles {
            input: dir.join(format!("{stem}.in.csv")),
            output: dir.join(format!("{stem}.out.csv")),
        }
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.input);
        let _ = std::fs::remove_file(&self.output);
    }
}

/// Writes `records` lines of `id,text`; returns how many are malformed.
fn generate(path: &PathBuf, records: u64) -> std::io::Result<u64> {
    const WORDS: [&str; 16] = [
        "process", "pool", "tokio", "stream", "worker", "chunk", "record", "signal", "future",
        "socket", "frame", "queue", "memory", "bounded", "ordered", "async",
    ];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut malformed = 0;
    for id in 0..records {
        if id % MALFORMED_EVERY == MALFORMED_EVERY - 1 {
            writeln!(out, "{id} this record lost its comma")?;
            malformed += 1;
            continue;
        }
        write!(out, "{id},")?;
        let words = 6 + next() % 12;
        for w in 0..words {
            let sep = if w == 0 { "" } else { " " };
            write!(out, "{sep}{}", WORDS[(next() % 16) as usize])?;
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(malformed)
}

/// This process's peak resident set size (`VmHWM`), in KiB.
fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 200_000,
    };
    let files = TempFiles::new();

    let started = Instant::now();
    let malformed = generate(&files.input, records)?;
    let input_bytes = std::fs::metadata(&files.input)?.len();
    println!(
        "wrote {records} records ({:.1} MiB, {malformed} malformed) to {} in {:.2?}",
        input_bytes as f64 / (1 << 20) as f64,
        files.input.display(),
        started.elapsed()
    );

    let pool = Pool::builder().build().await?;
    // Two chunks per worker: one it runs, one waiting for it.
    let max_in_flight = 2 * pool.processes();
    let peak_before = peak_rss_kib("self").unwrap_or(0);

    // The input: a stream of lines. A read error ends it and is kept for the end.
    let read_error = Arc::new(Mutex::new(None));
    let slot = read_error.clone();
    let reader = BufReader::with_capacity(64 << 10, tokio::fs::File::open(&files.input).await?);
    let lines = tokio_stream::StreamExt::map_while(LinesStream::new(reader.lines()), move |line| {
        line.map_err(|e| *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e))
            .ok()
    });

    // A progress line every tenth of the way.
    let every = (records as usize).div_ceil(10).max(1);
    let printed = Arc::new(AtomicUsize::new(0));
    let clock = Instant::now();
    let mut results = pool
        .imap(process, lines)
        .chunk_size(CHUNK)
        .max_in_flight(max_in_flight)
        .progress(move |p| {
            let step = p.done / every;
            if step > printed.fetch_max(step, Ordering::Relaxed) {
                let secs = clock.elapsed().as_secs_f64();
                println!(
                    "  {:>9} records processed, {:>9.0} records/s",
                    p.done,
                    p.done as f64 / secs.max(1e-9)
                );
            }
        });

    // The output, written as results come.
    let mut out = BufWriter::with_capacity(64 << 10, tokio::fs::File::create(&files.output).await?);
    let (mut written, mut rejected) = (0u64, 0u64);
    while let Some(result) = results.next().await {
        match result? {
            Ok(line) => {
                out.write_all(line.as_bytes()).await?;
                out.write_all(b"\n").await?;
                written += 1;
            }
            Err(_bad_record) => rejected += 1,
        }
    }
    out.flush().await?;
    drop(out);
    let elapsed = clock.elapsed();
    if let Some(e) = read_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(format!("reading {}: {e}", files.input.display()).into());
    }
    let peak_after = peak_rss_kib("self").unwrap_or(0);
    let worker_peaks: Vec<String> = pool
        .stats()
        .workers
        .iter()
        .filter_map(|w| peak_rss_kib(&w.pid.to_string()))
        .map(|kib| format!("{:.1} MiB", mib(kib)))
        .collect();
    drop(results);
    if tokio::time::timeout(Duration::from_secs(10), pool.join())
        .await
        .is_err()
    {
        pool.terminate().await;
    }

    // The checks: every good record once, in input order; the bad ones rejected.
    if written + rejected != records || rejected != malformed {
        return Err(format!(
            "{written} records written and {rejected} rejected, of {records} with {malformed} malformed"
        )
        .into());
    }
    let output = std::io::BufReader::new(std::fs::File::open(&files.output)?);
    let (mut count, mut last) = (0u64, None::<u64>);
    for line in output.lines() {
        let line = line?;
        let id: u64 = line
            .split(',')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| format!("bad output line {line:?}"))?;
        if last.is_some_and(|last| id <= last) {
            return Err(format!("output out of order: {id} after {last:?}").into());
        }
        last = Some(id);
        count += 1;
    }
    if count != written {
        return Err(format!("the output holds {count} lines, not {written}").into());
    }

    println!(
        "{records} records in {elapsed:.2?} on {} worker processes: {:.0} records/s, {:.1} MiB/s; \
         {written} written in input order, {rejected} malformed rejected",
        pool.processes(),
        records as f64 / elapsed.as_secs_f64(),
        input_bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    println!(
        "peak memory (VmHWM) of this process: {:.1} MiB before the pipeline, {:.1} MiB after \
         (+{:.1} MiB, for {:.1} MiB of input; at most {max_in_flight} chunks of {CHUNK} records \
         in flight); workers: {}",
        mib(peak_before),
        mib(peak_after),
        mib(peak_after.saturating_sub(peak_before)),
        input_bytes as f64 / (1 << 20) as f64,
        worker_peaks.join(", ")
    );
    Ok(())
}
