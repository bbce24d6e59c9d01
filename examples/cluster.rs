//! The main job across machines: count the primes near 10^12 on a pool whose workers
//! are started by `ssh` and by Slurm's `srun`, beside a local one, and check the count
//! against one process's.
//!
//! ```text
//! cargo run --release --example cluster                       # on loopback: see below
//! cargo run --release --example cluster -- --ssh host1 --ssh host2 --span 5000000
//! cargo run --release --example cluster -- --srun 8           # inside an allocation
//! ```
//!
//! With no `--ssh` host, it starts a throwaway sshd on loopback (its own port and keys,
//! the tests' fixture) if `sshd` is installed; with no `--srun`, it uses `srun` inside
//! an allocation (`SLURM_JOB_ID` set), or else starts a throwaway one-node Slurm if
//! `slurmctld` is installed and this is root. It says which it used, and which it could
//! not and why.

#[path = "common/primes.rs"]
mod primes;
use primes::is_prime;

// The tests' loopback daemons: sshd with throwaway keys, a one-node Slurm.
#[allow(dead_code, unused_imports, unreachable_pub)]
#[path = "../tests/support/cluster/mod.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::time::Instant;

use procpool::{Launcher, Pool};

/// The task: how many primes lie in `[start, end)`, and which worker counted them.
fn count_primes((start, end): (u64, u64)) -> (u64, u32) {
    let n = (start..end).filter(|&n| is_prime(n)).count() as u64;
    (n, std::process::id())
}

struct Args {
    ssh: Vec<String>,
    srun: Option<usize>,
    span: u64,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        ssh: Vec::new(),
        srun: None,
        span: 2_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--ssh" => args.ssh.push(value()?),
            "--srun" => args.srun = Some(value()?.parse().map_err(|e| format!("--srun: {e}"))?),
            "--span" => args.span = value()?.parse().map_err(|e| format!("--span: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let mut builder = Pool::builder().processes(1);
    let mut said = Vec::new();
    // How each slot's worker is started, in slot order (the local one first).
    let mut slots = vec!["local".to_string()];
    // Held until the end: the loopback daemons, if this run started them.
    let mut sshd = None;
    let mut slurm = None;

    if args.ssh.is_empty() {
        match cluster::Sshd::start() {
            Ok(d) => {
                builder = builder.remote(Launcher::ssh(cluster::Sshd::HOST).args(d.ssh_args()), 2);
                slots.extend(["ssh".to_string(), "ssh".to_string()]);
                said.push(format!(
                    "ssh: 2 workers through a throwaway sshd on 127.0.0.1:{} (started in {:?})",
                    d.port(),
                    d.started_in()
                ));
                sshd = Some(d);
            }
            Err(skip) => said.push(format!("ssh: not used: {skip}")),
        }
    } else {
        for host in &args.ssh {
            builder = builder.remote(Launcher::ssh(host), 2);
            slots.extend([format!("ssh {host}"), format!("ssh {host}")]);
        }
        said.push(format!("ssh: 2 workers on each of {}", args.ssh.join(", ")));
    }

    let in_allocation = std::env::var_os("SLURM_JOB_ID").is_some();
    match (args.srun, in_allocation) {
        (Some(n), _) => {
            builder = builder.remote(Launcher::srun(), n);
            slots.extend(std::iter::repeat_n("srun".to_string(), n));
            said.push(format!("srun: {n} workers, one job step each"));
        }
        (None, true) => {
            builder = builder.remote(Launcher::srun(), 2);
            slots.extend(["srun".to_string(), "srun".to_string()]);
            said.push("srun: 2 workers in this allocation".to_string());
        }
        (None, false) => match cluster::Slurm::start() {
            Ok(s) => {
                let launcher = s
                    .env()
                    .into_iter()
                    .fold(Launcher::srun(), |l, (k, v)| l.env(k, v));
                builder = builder.remote(launcher, 2);
                slots.extend(["srun".to_string(), "srun".to_string()]);
                said.push(format!(
                    "srun: 2 workers on a throwaway one-node Slurm (node {}, started in {:?})",
                    s.node(),
                    s.started_in()
                ));
                slurm = Some(s);
            }
            Err(skip) => said.push(format!("srun: not used: {skip}")),
        },
    }

    let first = 1_000_000_000_000u64;
    let pieces = 120u64;
    let step = args.span.div_ceil(pieces);
    let ranges: Vec<(u64, u64)> = (0..pieces)
        .map(|i| {
            (
                first + i * step,
                (first + (i + 1) * step).min(first + args.span),
            )
        })
        .filter(|(a, b)| a < b)
        .collect();

    let started = Instant::now();
    let pool = builder.build().await?;
    let build = started.elapsed();
    for line in &said {
        println!("{line}");
    }
    let stats = pool.stats();
    // Each worker's pid, with how it was started and where it runs.
    let who: BTreeMap<u32, String> = stats
        .workers
        .iter()
        .map(|w| {
            let how = slots.get(w.index).map_or("?", String::as_str);
            let host = w.host.as_deref().unwrap_or("here");
            (w.pid, format!("{how}, on {host}"))
        })
        .collect();
    println!(
        "a pool of {} workers ready in {build:.2?}",
        pool.processes()
    );

    let started = Instant::now();
    let counted: Vec<(u64, u32)> = pool.map(count_primes, ranges.clone()).chunk_size(1).await?;
    let took = started.elapsed();
    let total: u64 = counted.iter().map(|(n, _)| n).sum();
    let mut by_worker: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, pid) in &counted {
        *by_worker.entry(*pid).or_default() += 1;
    }
    println!(
        "{total} primes in [{first}, {}) in {took:.2?}; ranges per worker:",
        first + args.span
    );
    for (pid, n) in &by_worker {
        let who = who.get(pid).map_or("a replacement", String::as_str);
        println!("  worker {pid} ({who}): {n}");
    }
    pool.terminate().await;

    // The same count in this one process: the pool's answer must be the same.
    let alone: u64 = ranges.iter().map(|&r| count_primes(r).0).sum();
    if alone != total {
        return Err(format!("the pool counted {total}, one process {alone}").into());
    }
    println!("checked: one process counts the same {alone}");
    drop((sshd, slurm));
    Ok(())
}
