//! [`Slurm`]: a one-node Slurm cluster on loopback (munged, slurmctld, slurmd).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{
    find_tool, fixture_dir, free_port, is_root, log_tail, run_bounded, short_hostname,
    spawn_daemon, still_running, stop_child, sweep, tools, user_name, write_file, DirGuard, Skip,
    ATTEMPTS, READY_WITHIN, TAG_VAR,
};

/// A one-node Slurm cluster on 127.0.0.1: munged on its own socket and key, slurmctld
/// and slurmd in the foreground, `SlurmUser=root`, no cgroups
/// (`proctrack/linuxproc`, `task/none`), one partition `debug` with the node, which is
/// this machine's short host name with every CPU.
///
/// Run the client tools (`srun`, `sinfo`, `squeue`, `scancel`) with [`Slurm::env`],
/// or through [`Slurm::command`].
#[derive(Debug)]
pub struct Slurm {
    dir: PathBuf,
    munged: Child,
    slurmctld: Child,
    slurmd: Child,
    node: String,
    started_in: Duration,
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
    ///
    /// # Errors
    ///
    /// A [`Skip`] when not root (slurmd starts job steps as their user), when a binary
    /// is missing, or when the node is not idle within 30 s (with the daemons' logs).
    pub fn start() -> Result<Self, Skip> {
        if !is_root() {
            return Err(Skip::new(
                "the Slurm fixture needs root (slurmd runs steps as their user)",
            ));
        }
        tools([
            ("munged", "munge"),
            ("slurmctld", "slurm-wlm"),
            ("slurmd", "slurm-wlm"),
            ("srun", "slurm-wlm"),
            ("sinfo", "slurm-wlm"),
            ("squeue", "slurm-wlm"),
            ("scancel", "slurm-wlm"),
        ])?;
        let started = Instant::now();
        let mut last = Skip::new("slurm: no attempt");
        for _ in 0..ATTEMPTS {
            match Self::attempt() {
                Ok(mut fixture) => {
                    fixture.started_in = started.elapsed();
                    return Ok(fixture);
                }
                Err(skip) => last = skip,
            }
        }
        Err(last)
    }

    fn attempt() -> Result<Self, Skip> {
        let [munged, slurmctld, slurmd] = tools([
            ("munged", "munge"),
            ("slurmctld", "slurm-wlm"),
            ("slurmd", "slurm-wlm"),
        ])?;
        let dir = fixture_dir("slurm")?;
        let mut guard = DirGuard(Some(dir.clone()));
        for sub in ["state", "spool"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| Skip::new(format!("create {sub}: {e}")))?;
        }
        // munged wants a key only its user can read: 1024 random bits.
        let mut key = [0u8; 128];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| Skip::new(format!("read /dev/urandom: {e}")))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("munge.key"))
            .and_then(|mut f| f.write_all(&key))
            .map_err(|e| Skip::new(format!("write munge.key: {e}")))?;

        let node = short_hostname();
        if node.is_empty() {
            return Err(Skip::new("no host name in /proc/sys/kernel/hostname"));
        }
        // Each remote worker is a job step of one CPU, and a test suite runs many pools
        // at once: the node claims 64 CPUs at least (`config_overrides` lets it claim
        // more than it has), so that steps do not queue behind each other.
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(64);
        let (ctld_port, slurmd_port) = (free_port()?, free_port()?);
        let d = dir.display();
        write_file(
            &dir.join("slurm.conf"),
            &format!(
                "ClusterName=procpool\n\
                 SlurmctldHost={node}(127.0.0.1)\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={slurmd_port}\n\
                 AuthType=auth/munge\n\
                 AuthInfo=socket={d}/munge.sock\n\
                 CredType=cred/munge\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 SwitchType=switch/none\n\
                 MpiDefault=none\n\
                 ReturnToService=2\n\
                 SlurmdParameters=config_overrides\n\
                 KillWait=5\n\
                 NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=100 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
            ),
        )?;

        let munged_log = dir.join("munged.log");
        let mut munged = spawn_daemon(
            Command::new(&munged)
                .args(["-F", "--force", "--num-threads=2"])
                .arg(format!("--socket={d}/munge.sock"))
                .arg(format!("--key-file={d}/munge.key"))
                .arg(format!("--pid-file={d}/munged.pid"))
                .arg(format!("--seed-file={d}/munged.seed")),
            &munged_log,
            &dir,
        )?;
        let socket = dir.join("munge.sock");
        let deadline = Instant::now() + READY_WITHIN;
        while !socket.exists() {
            if let Err(skip) = still_running(&mut munged, "munged", &munged_log) {
                let _ = munged.wait();
                return Err(skip);
            }
            if Instant::now() >= deadline {
                stop_child(&mut munged);
                return Err(Skip::new(format!(
                    "munged made no socket within {READY_WITHIN:?}; its log:\n{}",
                    log_tail(&munged_log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        let conf = dir.join("slurm.conf");
        let slurmctld = spawn_daemon(
            Command::new(&slurmctld).arg("-D").arg("-f").arg(&conf),
            &dir.join("slurmctld.log"),
            &dir,
        );
        let slurmctld = match slurmctld {
            Ok(child) => child,
            Err(skip) => {
                stop_child(&mut munged);
                return Err(skip);
            }
        };
        let slurmd = spawn_daemon(
            Command::new(&slurmd)
                .arg("-D")
                .arg("-f")
                .arg(&conf)
                .arg("-N")
                .arg(&node),
            &dir.join("slurmd.log"),
            &dir,
        );
        let slurmd = match slurmd {
            Ok(child) => child,
            Err(skip) => {
                let mut slurmctld = slurmctld;
                stop_child(&mut slurmctld);
                stop_child(&mut munged);
                return Err(skip);
            }
        };
        let mut fixture = Slurm {
            dir: guard.0.take().expect("dir"),
            munged,
            slurmctld,
            slurmd,
            node,
            started_in: Duration::ZERO,
        };
        fixture.wait_idle()?;
        Ok(fixture)
    }

    /// Waits until `sinfo` shows the node `idle`.
    fn wait_idle(&mut self) -> Result<(), Skip> {
        let deadline = Instant::now() + READY_WITHIN;
        let mut last;
        loop {
            still_running(&mut self.munged, "munged", &self.dir.join("munged.log"))?;
            still_running(
                &mut self.slurmctld,
                "slurmctld",
                &self.dir.join("slurmctld.log"),
            )?;
            still_running(&mut self.slurmd, "slurmd", &self.dir.join("slurmd.log"))?;
            let sinfo = run_bounded(
                self.command("sinfo").args(["-h", "-N", "-o", "%t"]),
                READY_WITHIN,
            );
            match sinfo {
                Ok((true, out, _)) if out.trim() == "idle" => return Ok(()),
                Ok((_, out, err)) => last = format!("{}{}", out.trim(), err.trim()),
                Err(err) => last = err,
            }
            if Instant::now() >= deadline {
                return Err(Skip::new(format!(
                    "the Slurm node was not idle within {READY_WITHIN:?} (sinfo: {last}); \
                     slurmctld's log:\n{}\nslurmd's log:\n{}",
                    log_tail(&self.dir.join("slurmctld.log")),
                    log_tail(&self.dir.join("slurmd.log")),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The environment for the client tools and everything they start: `SLURM_CONF`
    /// (this cluster's slurm.conf, which names munged's socket in `AuthInfo`), the
    /// socket itself as `MUNGE_SOCKET` for the `munge` tools, and the fixture's tag.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SLURM_CONF".into(),
                self.dir.join("slurm.conf").display().to_string(),
            ),
            (
                "MUNGE_SOCKET".into(),
                self.dir.join("munge.sock").display().to_string(),
            ),
            (TAG_VAR.into(), self.dir.display().to_string()),
        ]
    }

    /// `program` (e.g. `srun`) with [`Slurm::env`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(find_tool(program).unwrap_or_else(|| program.into()));
        cmd.envs(self.env());
        cmd
    }

    /// The node's name (this machine's short host name).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The daemons' pids: munged, slurmctld, slurmd.
    pub fn pids(&self) -> [u32; 3] {
        [self.munged.id(), self.slurmctld.id(), self.slurmd.id()]
    }

    /// The fixture's directory (slurm.conf, state, the daemons' logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Slurm::start`] took, from the key to the idle node.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The ids of the jobs this cluster knows (`squeue`), in every state.
    pub fn jobs(&self) -> Vec<String> {
        match run_bounded(
            self.command("squeue").args(["-h", "-o", "%i"]),
            READY_WITHIN,
        ) {
            Ok((true, out, _)) => out.lines().map(|l| l.trim().to_string()).collect(),
            _ => Vec::new(),
        }
    }

    /// Cancels every job of this cluster (`scancel --user=<me>`) and waits (bounded)
    /// until `squeue` shows none. Returns whether none is left.
    pub fn cancel_all(&self) -> bool {
        if let Ok(user) = user_name() {
            let _ = run_bounded(
                self.command("scancel").arg(format!("--user={user}")),
                READY_WITHIN,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.jobs().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        self.cancel_all();
        stop_child(&mut self.slurmd);
        stop_child(&mut self.slurmctld);
        stop_child(&mut self.munged);
        sweep(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
