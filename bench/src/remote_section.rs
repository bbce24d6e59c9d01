//! The comparison's section on workers on other machines (issue 14): what a link costs.
//! One worker each, started locally, through a local command prefix (the keeper and
//! its pipes without a network: the link's own cost), through `ssh` to a throwaway
//! sshd on loopback, and through `srun` on a throwaway one-node Slurm (the tests'
//! fixtures; each is left out, saying why, where its daemons are missing). Round trip
//! of `apply`, and `map` throughput with chunk size 1 and automatic chunks, as ratios
//! to the local worker measured in the same run.

use super::{say, us, Sizes, Table, Unit};
use procpool::{Launcher, Pool};
use procpool_bench::{identity, median_of_async};
use std::hint::black_box;
use std::time::Instant;

// The tests' loopback daemons.
#[allow(dead_code, unused_imports, unreachable_pub)]
#[path = "../../tests/support/cluster/mod.rs"]
mod cluster;

async fn measure(pool: &Pool, s: &Sizes) -> (f64, f64, f64) {
    let rt = us(median_of_async(s.lat_warm / 3, s.lat_calls / 5, || async {
        black_box(pool.apply(identity, black_box(1u64)).await.expect("apply"));
    })
    .await);
    let n = s.cs1_n / 10;
    let t = Instant::now();
    let out = pool
        .map(identity, 0..n as u64)
        .chunk_size(1)
        .await
        .expect("map");
    let cs1 = n as f64 / t.elapsed().as_secs_f64();
    black_box(out);
    let n = s.map_auto_n;
    let t = Instant::now();
    let out = pool.map(identity, 0..n as u64).await.expect("map");
    let auto = n as f64 / t.elapsed().as_secs_f64();
    black_box(out);
    (rt, cs1, auto)
}

/// The section: see the module's docs.
pub(crate) fn remote(rt: &tokio::runtime::Runtime, s: &Sizes, t: &mut Table) {
    t.section("remote workers: 1 worker, apply round trip (median) and map throughput");
    let mut launchers: Vec<(String, Launcher)> = vec![(
        "local command prefix (keeper, pipes, no network)".into(),
        Launcher::command(["sh", "-c", "\"$@\"; exit $?", "sh"]),
    )];
    let sshd = cluster::Sshd::start();
    match &sshd {
        Ok(d) => launchers.push((
            "ssh to sshd on loopback (ControlMaster)".into(),
            Launcher::ssh(cluster::Sshd::HOST).args(d.ssh_args()),
        )),
        Err(skip) => t.note(&format!("ssh: not measured: {skip}")),
    }
    let slurm = cluster::Slurm::start();
    match &slurm {
        Ok(sl) => launchers.push((
            "srun on a one-node Slurm".into(),
            sl.env()
                .into_iter()
                .fold(Launcher::srun(), |l, (k, v)| l.env(k, v)),
        )),
        Err(skip) => t.note(&format!("srun: not measured: {skip}")),
    }
    say("remote workers: the local reference");
    let (base_rt, base_cs1, base_auto) = rt.block_on(async {
        let pool = Pool::builder().processes(1).build().await.expect("pool");
        let m = measure(&pool, s).await;
        pool.terminate().await;
        m
    });
    t.reference("local worker: apply round trip", base_rt, Unit::Micros);
    t.reference(
        "local worker: map, chunk size 1",
        base_cs1,
        Unit::TasksPerSec,
    );
    t.reference(
        "local worker: map, automatic chunks",
        base_auto,
        Unit::TasksPerSec,
    );
    for (name, launcher) in launchers {
        say(&format!("remote workers: {name}"));
        let measured = rt.block_on(async {
            let pool = Pool::builder()
                .processes(0)
                .remote(launcher, 1)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let m = measure(&pool, s).await;
            pool.terminate().await;
            Ok::<_, String>(m)
        });
        match measured {
            Ok((r, c, a)) => {
                t.info(
                    &format!("{name}: apply round trip"),
                    Some(r),
                    Unit::Micros,
                    Some((r / base_rt, "local worker")),
                );
                t.info(
                    &format!("{name}: map, chunk size 1"),
                    Some(c),
                    Unit::TasksPerSec,
                    Some((c / base_cs1, "local worker")),
                );
                t.info(
                    &format!("{name}: map, automatic chunks"),
                    Some(a),
                    Unit::TasksPerSec,
                    Some((a / base_auto, "local worker")),
                );
            }
            Err(e) => t.note(&format!("{name}: not measured: {e}")),
        }
    }
    drop((sshd, slurm));
}
