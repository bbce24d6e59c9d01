//! [`Sshd`]: an OpenSSH server on loopback with throwaway keys, and its client
//! configuration.

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{
    fixture_dir, free_port, is_executable, is_root, log_tail, run_bounded, spawn_daemon,
    still_running, stop_child, sweep, tools, user_name, write_file, DirGuard, Skip, ATTEMPTS,
    READY_WITHIN, STOP_GRACE, TAG_VAR,
};

/// An OpenSSH server on `127.0.0.1` and a client configuration for it.
///
/// Two host aliases: [`Sshd::host`] (`procpool-test`, logs in as the current user with
/// a throwaway key, `ControlMaster auto` with `ControlPersist 60`) and
/// [`Sshd::refused_host`] (`procpool-refused`, the same server with a key that is not
/// authorized: every login fails). Both use `BatchMode`, no host key checks and no
/// known-hosts file.
#[derive(Debug)]
pub struct Sshd {
    dir: PathBuf,
    child: Child,
    port: u16,
    ssh: PathBuf,
    started_in: Duration,
}

impl Sshd {
    /// The alias that logs in.
    pub const HOST: &'static str = "procpool-test";
    /// The alias whose key is not authorized.
    pub const REFUSED_HOST: &'static str = "procpool-refused";

    /// Starts `/usr/sbin/sshd` (or `sshd` on `PATH`) and waits until a login through
    /// [`Sshd::HOST`] works.
    ///
    /// # Errors
    ///
    /// A [`Skip`] when sshd, ssh or ssh-keygen is missing, or the server does not
    /// accept a login within 30 s (with sshd's log).
    pub fn start() -> Result<Self, Skip> {
        let [sshd] = tools([("sshd", "openssh-server")])?;
        Self::start_with(&sshd)
    }

    /// [`Sshd::start`] with the server binary given.
    ///
    /// # Errors
    ///
    /// As [`Sshd::start`].
    pub fn start_with(sshd: &Path) -> Result<Self, Skip> {
        if !is_executable(sshd) {
            return Err(Skip::new(format!(
                "sshd not installed at {} (apt-get install openssh-server)",
                sshd.display()
            )));
        }
        let [ssh, keygen] = tools([("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")])?;
        let started = Instant::now();
        let mut last = Skip::new("sshd: no attempt");
        for _ in 0..ATTEMPTS {
            match Self::attempt(sshd, &ssh, &keygen) {
                Ok(mut fixture) => {
                    fixture.started_in = started.elapsed();
                    return Ok(fixture);
                }
                Err(skip) => last = skip,
            }
        }
        Err(last)
    }

    fn attempt(sshd: &Path, ssh: &Path, keygen: &Path) -> Result<Self, Skip> {
        let dir = fixture_dir("sshd")?;
        // From here on the directory is removed (and its processes swept) on failure.
        let mut guard = DirGuard(Some(dir.clone()));
        for key in ["host_key", "user_key", "refused_key"] {
            let (ok, _, err) = run_bounded(
                Command::new(keygen)
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                    .arg(dir.join(key)),
                READY_WITHIN,
            )
            .map_err(Skip::new)?;
            if !ok {
                return Err(Skip::new(format!("ssh-keygen {key}: {err}")));
            }
        }
        fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))
            .map_err(|e| Skip::new(format!("authorized_keys: {e}")))?;
        if is_root() {
            // The privilege separation directory, which sshd run as root insists on.
            fs::create_dir_all("/run/sshd")
                .map_err(|e| Skip::new(format!("create /run/sshd: {e}")))?;
        }
        let port = free_port()?;
        let root_login = if is_root() {
            "PermitRootLogin prohibit-password\n"
        } else {
            ""
        };
        let d = dir.display();
        write_file(
            &dir.join("sshd_config"),
            &format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 {root_login}\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PrintMotd no\n\
                 X11Forwarding no\n\
                 MaxStartups 100:30:200\n\
                 PidFile {d}/sshd.pid\n\
                 SetEnv {TAG_VAR}={d}\n"
            ),
        )?;
        let user = user_name()?;
        let common = format!(
            "  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  \
             BatchMode yes\n  ConnectTimeout 10\n"
        );
        write_file(
            &dir.join("ssh_config"),
            &format!(
                "Host {host}\n{common}  IdentityFile {d}/user_key\n  ControlMaster auto\n  \
                 ControlPath {d}/cm-%C\n  ControlPersist 60\n\n\
                 Host {refused}\n{common}  IdentityFile {d}/refused_key\n  ControlMaster no\n  \
                 ControlPath none\n",
                host = Self::HOST,
                refused = Self::REFUSED_HOST,
            ),
        )?;
        let log = dir.join("sshd.log");
        let child = spawn_daemon(
            Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config")),
            &log,
            &dir,
        )?;
        let mut fixture = Sshd {
            dir: guard.0.take().expect("dir"),
            child,
            port,
            ssh: ssh.to_path_buf(),
            started_in: Duration::ZERO,
        };
        fixture.wait_ready()?;
        Ok(fixture)
    }

    /// Waits until the port accepts a connection, then until a login runs `true`
    /// (without the ControlMaster, so that no master outlives a failed start).
    fn wait_ready(&mut self) -> Result<(), Skip> {
        let log = self.dir.join("sshd.log");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            still_running(&mut self.child, "sshd", &log)?;
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Skip::new(format!(
                    "sshd did not listen on port {} within {READY_WITHIN:?}; its log:\n{}",
                    self.port,
                    log_tail(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let login = run_bounded(
            self.ssh()
                .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
                .arg(Self::HOST)
                .arg("true"),
            READY_WITHIN,
        );
        match login {
            Ok((true, _, _)) => Ok(()),
            Ok((false, _, err)) | Err(err) => Err(Skip::new(format!(
                "a login to the test sshd failed: {err}; sshd's log:\n{}",
                log_tail(&log)
            ))),
        }
    }

    /// The client's arguments that select this server's configuration:
    /// `["-F", <dir>/ssh_config]`.
    pub fn ssh_args(&self) -> Vec<String> {
        vec!["-F".into(), self.config().display().to_string()]
    }

    /// An `ssh` command with [`Sshd::ssh_args`], tagged as this fixture's (so that
    /// drop ends it and the ControlMaster it may start); add the host and the command.
    pub fn ssh(&self) -> Command {
        let mut cmd = Command::new(&self.ssh);
        cmd.args(self.ssh_args()).env(TAG_VAR, &self.dir);
        cmd
    }

    /// The client configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The alias that logs in: `procpool-test`.
    pub fn host(&self) -> &'static str {
        Self::HOST
    }

    /// The alias whose login is refused: `procpool-refused`.
    pub fn refused_host(&self) -> &'static str {
        Self::REFUSED_HOST
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listening sshd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The fixture's directory (keys, configurations, sshd's log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Sshd::start`] took, from the keys to the first login.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// sshd's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The ControlMaster first (it is not our child), then the server.
        let _ = run_bounded(self.ssh().args(["-O", "exit"]).arg(Self::HOST), STOP_GRACE);
        stop_child(&mut self.child);
        sweep(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
