//! The fork server's process (start method `ForkServer`, see
//! [`crate::start::forkserver`] for the pool's side): a clean, single-threaded process
//! that forks workers on request, reaps them, and reports their exits.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult};
use tokio_util::codec::Decoder;

use crate::error::WorkerExit;
use crate::fdpass::recv_with_fds;
use crate::image::{build_id, SameBuild};
use crate::protocol::codec::{decode_frame, encode_frame, frame_codec};
use crate::protocol::{FromServer, Hello, InitFailure, ToServer, MAGIC, PROTOCOL_VERSION};
use crate::start::child::REAP_BOUND;
use crate::start::fork::forked_worker;

/// The fork server's life: handshake, preload, then serve fork requests until the pool
/// closes the channel. Returns the exit code.
pub(crate) fn server_main(ctrl: UnixStream) -> i32 {
    // Its workers write their own name over the argv[0] they inherit from it.
    crate::start::names::record_argv_area();
    crate::worker::ignore_interrupts();
    crate::panics::capture_panics();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if mask.thread_block().is_err() {
        return 2;
    }
    let Ok(sigfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    else {
        return 2;
    };
    // The pool and its server are one program: the preload argument may be large.
    let mut server = Server {
        ctrl,
        codec: frame_codec(u32::MAX as usize),
        buf: BytesMut::with_capacity(4096),
        fds: VecDeque::new(),
        workers: HashSet::new(),
    };
    match server.handshake() {
        Ok(true) => {}
        Ok(false) => return 0,
        Err(_) => return 2,
    }
    let code = serve_forks(&mut server, &sigfd);
    // Whatever is left below the server (workers, their descendants, orphans) goes
    // with it, and is reaped, within REAP_BOUND.
    crate::start::tree::kill_own_subtree();
    server.workers.clear();
    let deadline = std::time::Instant::now() + REAP_BOUND;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
    code
}

/// Serves fork requests until the pool closes the channel; returns the exit code.
fn serve_forks(server: &mut Server, sigfd: &SignalFd) -> i32 {
    let me = nix::unistd::getpid();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: server.ctrl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return 2;
        }
        if fds[1].revents != 0 {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            if server.report_exits().is_err() {
                return 0;
            }
            // A worker that died left its orphans to us (we are a subreaper).
            server.kill_orphans();
        }
        if fds[0].revents != 0 {
            match server.read_requests(me) {
                Ok(true) => {}
                Ok(false) | Err(_) => return 0,
            }
        }
    }
}

struct Server {
    ctrl: UnixStream,
    codec: tokio_util::codec::LengthDelimitedCodec,
    buf: BytesMut,
    fds: VecDeque<OwnedFd>,
    /// The live workers: every other child of the server is an orphan.
    workers: HashSet<i32>,
}

impl Server {
    fn send(&mut self, msg: &FromServer) -> io::Result<()> {
        let frame = encode_frame(msg, |_| Ok(())).map_err(io::Error::other)?;
        let mut out = (frame.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&frame);
        self.ctrl.write_all(&out)
    }

    /// Reads what is available (blocking if nothing is), keeping passed descriptors.
    /// `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = recv_with_fds(self.ctrl.as_raw_fd(), &mut chunk, &mut self.fds)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn next_frame(&mut self) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    fn handshake(&mut self) -> io::Result<bool> {
        self.send(&FromServer::Hello(Hello {
            magic: MAGIC,
            protocol: PROTOCOL_VERSION,
            build_id: build_id().to_vec(),
            pid: std::process::id(),
        }))?;
        let Some(frame) = self.next_frame()? else {
            return Ok(false);
        };
        let refused = |why: &str| FromServer::SetupFailed(InitFailure::Refused(why.into()));
        let (preload, payload, same) = match decode_frame::<ToServer>(&frame) {
            Ok((
                ToServer::Setup {
                    protocol,
                    build_id: theirs,
                    preload,
                },
                payload,
            )) if protocol == PROTOCOL_VERSION => match SameBuild::check(&theirs) {
                Some(same) => (preload, payload, same),
                None => {
                    self.send(&refused("the pool runs another build or protocol version"))?;
                    return Err(io::Error::other("refused"));
                }
            },
            _ => {
                self.send(&refused("the pool runs another build or protocol version"))?;
                return Err(io::Error::other("refused"));
            }
        };
        if let Some(preload) = preload {
            if let Some(failure) = crate::worker::run_initializer(preload, payload, same) {
                self.send(&FromServer::SetupFailed(failure))?;
                return Err(io::Error::other("preload failed"));
            }
        }
        self.send(&FromServer::Ready)?;
        Ok(true)
    }

    /// Serves the fork requests that have arrived. `Ok(false)`: the pool is gone.
    fn read_requests(&mut self, me: nix::unistd::Pid) -> io::Result<bool> {
        if !self.fill()? {
            return Ok(false);
        }
        while let Some(frame) = self.codec.decode(&mut self.buf)? {
            let Ok((ToServer::Fork { req, mut opts }, _)) = decode_frame::<ToServer>(&frame) else {
                return Err(io::Error::other("unexpected request"));
            };
            // The channel, then the worker's stdin, stdout and stderr, then its cgroup
            // leaf's `cgroup.procs` if it has one.
            let count = if opts.cgroup_procs.is_some() { 5 } else { 4 };
            if self.fds.len() < count {
                self.fds.clear();
                let error = "the descriptors did not come with the request".to_string();
                self.send(&FromServer::ForkFailed { req, error })?;
                continue;
            }
            let fds: Vec<OwnedFd> = self.fds.drain(..count).collect();
            opts.cgroup_procs = fds.get(4).map(AsRawFd::as_raw_fd);
            let stdio = [fds[1].as_raw_fd(), fds[2].as_raw_fd(), fds[3].as_raw_fd()];
            // SAFETY: this process is single-threaded (it never starts a thread), so
            // the child inherits no lock held by another thread.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    // Its own argv[0], not the server's (the command name is set in
                    // `forked_worker`).
                    crate::start::names::rename_argv(opts.kind.role(), &opts.label);
                    // No Tokio here: no signal pipe to replace.
                    forked_worker(
                        fds[0].as_raw_fd(),
                        stdio,
                        me,
                        &opts,
                        None,
                        None,
                        super::serve,
                    )
                }
                Ok(ForkResult::Parent { child }) => {
                    drop(fds);
                    self.workers.insert(child.as_raw());
                    let pid = child.as_raw() as u32;
                    self.send(&FromServer::Forked { req, pid })?;
                }
                Err(e) => {
                    let error = format!("fork failed: {e}");
                    self.send(&FromServer::ForkFailed { req, error })?;
                }
            }
        }
        Ok(true)
    }

    /// Reaps every child that has ended and reports the workers among them. Each
    /// child's process group is killed before it is reaped (while its pid, the group's
    /// id, is still its own).
    fn report_exits(&mut self) -> io::Result<()> {
        loop {
            // SAFETY: waitid writes into `info`, a zeroed local; WNOWAIT leaves the
            // child unreaped.
            let pid = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let rc = libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                );
                if rc < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Ok(());
                }
                info.si_pid()
            };
            if pid <= 0 {
                return Ok(());
            }
            crate::start::tree::kill_group(pid);
            let pid = nix::unistd::Pid::from_raw(pid);
            let exit = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => WorkerExit::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => WorkerExit::Signal(signal as i32),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return Ok(()),
            };
            if self.workers.remove(&pid.as_raw()) {
                self.send(&FromServer::Exited {
                    pid: pid.as_raw() as u32,
                    exit,
                })?;
            }
        }
    }

    /// Kills every child that is not a live worker: an orphan of a dead worker,
    /// reparented to the server. Its group dies with it (its pid, unreaped, is still
    /// its own); its own children come to us in turn, and go at its `SIGCHLD`.
    fn kill_orphans(&mut self) {
        for pid in crate::start::tree::children(nix::unistd::getpid().as_raw()) {
            if !self.workers.contains(&pid) {
                crate::start::tree::kill_group(pid);
                // SAFETY: kill takes integers; `pid` is an unreaped child of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
