//! Start method `ForkServer`: a clean, single-threaded process that forks workers. This
//! is the pool's side; the server's own loop is [`crate::worker::server`].
//!
//! The server is this executable run again (like a spawned worker, but in the
//! fork-server role). It never starts Tokio or any thread, so forking it is safe: no
//! lock can be held by a thread that the child lacks. A preload hook runs once in it,
//! so every worker starts with what the hook loaded, shared copy-on-write.
//!
//! For each worker the pool makes a socketpair and sends one end to the server with
//! `SCM_RIGHTS` in a `Fork` request; the server forks, the child becomes a worker on
//! that end, and the server answers `Forked { pid }`. The server is the workers'
//! parent: it reaps them (it learns of exits through a signalfd for `SIGCHLD`) and
//! reports each `Exited { pid, exit }`. The pool watches each worker through a pidfd,
//! and signals it through that pidfd, which cannot reach a process that reused the pid.
//!
//! If the server dies, its workers die with it (their parent-death signal), and the
//! next fork request starts a new server.
//!
//! The server is a child subreaper (see [`tree`](crate::start::tree)): what a dead
//! worker left running is reparented to it. Its only legitimate children are its live
//! workers, so at each `SIGCHLD` it kills every other child (and that child's group),
//! and it kills each worker's group between the worker's exit and its reap. When it
//! exits it kills its whole subtree and reaps it (within `REAP_BOUND`). It starts with
//! only stdio and its control socket (everything else was marked close-on-exec before
//! its exec), and each worker it forks closes all but its own channel.

use std::collections::HashMap;
use std::io::{self};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_util::codec::Decoder;
use tokio_util::task::AbortOnDropHandle;

use crate::error::WorkerExit;
use crate::fdpass::send_with_fds;
use crate::image::build_id;
use crate::output::{ChildStdio, WorkerOutput};
use crate::protocol::codec::{decode_frame, encode_frame, frame_codec};
use crate::protocol::FnRef;
use crate::protocol::{
    FromServer, InitFailure, ToServer, HANDSHAKE_FRAME_LIMIT, MAGIC, PROTOCOL_VERSION,
};
use crate::start::child::{ChildProc, REAP_BOUND};
use crate::start::spawn::{spawn_self, ROLE_FORKSERVER};
use crate::start::ChildOptions;

type ForkReply = Result<(u32, oneshot::Receiver<WorkerExit>), String>;

/// What the reader of a server's replies shares with the requesters.
#[derive(Default)]
struct Book {
    forks: HashMap<u64, oneshot::Sender<ForkReply>>,
    exits: HashMap<u32, oneshot::Sender<WorkerExit>>,
    dead: bool,
}

struct Conn {
    server: ChildProc,
    stream: Arc<tokio::net::UnixStream>,
    book: Arc<Mutex<Book>>,
    next_req: u64,
    _reader: AbortOnDropHandle<()>,
}

impl Conn {
    /// Whether the server is gone, or the task reading it is (its runtime shut down).
    fn is_dead(&self) -> bool {
        self._reader.is_finished() || self.book.lock().map_or(true, |b| b.dead)
    }
}

/// A pool's fork server, started on first use and again after it dies.
pub(crate) struct ForkServer {
    preload: Option<(FnRef, Bytes)>,
    startup_timeout: Duration,
    /// Where the server's own stdout and stderr go.
    output: (WorkerOutput, WorkerOutput),
    conn: tokio::sync::Mutex<Option<Conn>>,
    pid: std::sync::atomic::AtomicU32,
    /// The name in the server's argv[0]; `None`: the one its fork requests carry (the
    /// pool's).
    label: Option<crate::start::Label>,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer").finish_non_exhaustive()
    }
}

impl ForkServer {
    pub(crate) fn new(
        preload: Option<(FnRef, Bytes)>,
        startup_timeout: Duration,
        output: (WorkerOutput, WorkerOutput),
    ) -> Self {
        ForkServer {
            preload,
            startup_timeout,
            output,
            conn: tokio::sync::Mutex::new(None),
            pid: std::sync::atomic::AtomicU32::new(0),
            label: None,
        }
    }

    /// A server named `label` whatever its requests say (the one that every `Process`
    /// shares, say, whose requests carry each process's name).
    pub(crate) fn with_label(mut self, label: crate::start::Label) -> Self {
        self.label = Some(label);
        self
    }

    /// Starts the server now if it is not running (so that a failing preload fails the
    /// pool's build).
    pub(crate) async fn ensure_started(&self, label: crate::start::Label) -> io::Result<()> {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_none_or(Conn::is_dead) {
            *conn = Some(self.start_server(label).await?);
        }
        Ok(())
    }

    /// The pid of the server last started, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        match self.pid.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Asks the server for a worker with `stdio` as its standard descriptors.
    pub(crate) async fn fork_worker(
        &self,
        opts: ChildOptions,
        stdio: ChildStdio,
    ) -> io::Result<(ChildProc, UnixStream)> {
        let (ours, theirs) = crate::start::channel_pair()?;
        let mut leaf = crate::start::cgroup::Leaf::create();
        let mut opts = opts;
        opts.cgroup_procs = leaf.as_ref().and_then(|l| l.procs_fd());
        let reply = {
            let mut guard = self.conn.lock().await;
            if guard.as_ref().is_none_or(Conn::is_dead) {
                *guard = Some(self.start_server(opts.label).await?);
            }
            let Some(conn) = guard.as_mut() else {
                return Err(io::Error::other("no fork server"));
            };
            request_fork(conn, opts, theirs.as_fd(), &stdio).await?
        };
        drop(theirs);
        drop(stdio);
        if let Some(leaf) = &mut leaf {
            leaf.close_procs();
        }
        let (pid, status) = tokio::time::timeout(self.startup_timeout, reply)
            .await
            .map_err(|_| io::Error::other("the fork server did not answer in time"))?
            .map_err(|_| io::Error::other("the fork server died"))?
            .map_err(io::Error::other)?;
        Ok((ChildProc::remote(pid, status)?.with_leaf(leaf), ours))
    }

    /// Lets the server go: it exits when its channel closes; killed if it lingers.
    pub(crate) async fn shutdown(&self) {
        self.shutdown_if(|| true).await;
    }

    /// Lets the server go if `idle()`, asked while no fork request can be under way.
    pub(crate) async fn shutdown_if(&self, idle: impl FnOnce() -> bool) {
        let conn = {
            let mut conn = self.conn.lock().await;
            if !idle() {
                return;
            }
            self.pid.store(0, std::sync::atomic::Ordering::Relaxed);
            conn.take()
        };
        if let Some(mut conn) = conn {
            let _ = nix::sys::socket::shutdown(
                conn.stream.as_raw_fd(),
                nix::sys::socket::Shutdown::Both,
            );
            if tokio::time::timeout(REAP_BOUND, conn.server.wait())
                .await
                .is_err()
            {
                conn.server.kill_and_reap(REAP_BOUND).await;
            }
        }
    }

    async fn start_server(&self, label: crate::start::Label) -> io::Result<Conn> {
        let (stdio, relays) = crate::output::prepare(&self.output.0, &self.output.1)?;
        let opts = ChildOptions {
            label: self.label.unwrap_or(label),
            ..ChildOptions::default()
        };
        // A server with a fixed name serves children with names of their own, which
        // may be longer than its own: they need room.
        let room = self.label.is_some();
        let (mut server, sock) = spawn_self(ROLE_FORKSERVER, opts, stdio, None, room).await?;
        relays.start(server.pid());
        sock.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(sock)?;
        let handshake = async {
            let mut framed = tokio_util::codec::Framed::new(stream, frame_codec(u32::MAX as usize));
            let frame = framed
                .next()
                .await
                .ok_or("it closed its channel before the handshake (does main call procpool::init() first?)")?
                .map_err(|e| e.to_string())?;
            match decode_frame::<FromServer>(&frame) {
                Ok((FromServer::Hello(h), _))
                    if h.magic == MAGIC
                        && h.protocol == PROTOCOL_VERSION
                        && h.build_id == build_id() => {}
                _ => return Err("it is not a fork server of this build".to_string()),
            }
            let (preload, args) = match &self.preload {
                Some((f, args)) => (Some(*f), args.clone()),
                None => (None, Bytes::new()),
            };
            let setup = ToServer::Setup {
                protocol: PROTOCOL_VERSION,
                build_id: build_id().to_vec(),
                preload,
            };
            let setup = encode_frame(&setup, |out| {
                out.extend_from_slice(&args);
                Ok(())
            })?;
            framed
                .send(Bytes::from(setup))
                .await
                .map_err(|e| e.to_string())?;
            let frame = framed
                .next()
                .await
                .ok_or("it exited during its setup")?
                .map_err(|e| e.to_string())?;
            match decode_frame::<FromServer>(&frame) {
                Ok((FromServer::Ready, _)) => {}
                Ok((FromServer::SetupFailed(InitFailure::Panicked(p)), _)) => {
                    return Err(format!("its preload hook {p}"))
                }
                Ok((FromServer::SetupFailed(InitFailure::Refused(why)), _)) => return Err(why),
                _ => return Err("unexpected message during its setup".to_string()),
            }
            let parts = framed.into_parts();
            Ok((parts.io, parts.read_buf))
        };
        let (stream, leftover) = match tokio::time::timeout(self.startup_timeout, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err(why)) => {
                server.kill_and_reap(REAP_BOUND).await;
                return Err(io::Error::other(format!(
                    "fork server failed to start: {why}"
                )));
            }
            Err(_) => {
                server.kill_and_reap(REAP_BOUND).await;
                return Err(io::Error::other(
                    "fork server did not finish its handshake in time",
                ));
            }
        };
        let stream = Arc::new(stream);
        let book = Arc::new(Mutex::new(Book::default()));
        let reader = tokio::spawn(read_replies(stream.clone(), leftover, book.clone()));
        self.pid
            .store(server.pid(), std::sync::atomic::Ordering::Relaxed);
        Ok(Conn {
            server,
            stream,
            book,
            next_req: 0,
            _reader: AbortOnDropHandle::new(reader),
        })
    }
}

/// Sends a fork request with `channel` attached; returns where the answer will come.
async fn request_fork(
    conn: &mut Conn,
    opts: ChildOptions,
    channel: BorrowedFd<'_>,
    stdio: &ChildStdio,
) -> io::Result<oneshot::Receiver<ForkReply>> {
    conn.next_req += 1;
    let req = conn.next_req;
    let frame =
        encode_frame(&ToServer::Fork { req, opts }, |_| Ok(())).map_err(io::Error::other)?;
    let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&frame);
    let (tx, rx) = oneshot::channel();
    conn.book
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .forks
        .insert(req, tx);
    let [stdin, stdout, stderr] = stdio.raw();
    let mut fds = vec![channel.as_raw_fd(), stdin, stdout, stderr];
    fds.extend(opts.cgroup_procs);
    send_with_fds(&conn.stream, &wire, &fds).await?;
    Ok(rx)
}

/// Dispatches the server's replies until its channel closes; then marks it dead, which
/// fails the forks still waiting and ends the exit reports.
async fn read_replies(
    stream: Arc<tokio::net::UnixStream>,
    leftover: BytesMut,
    book: Arc<Mutex<Book>>,
) {
    let mut codec = frame_codec(HANDSHAKE_FRAME_LIMIT);
    let mut buf = leftover;
    'read: loop {
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            let Ok((msg, _)) = decode_frame::<FromServer>(&frame) else {
                break 'read;
            };
            let Ok(mut book) = book.lock() else {
                break 'read;
            };
            match msg {
                FromServer::Forked { req, pid } => {
                    let (tx, rx) = oneshot::channel();
                    book.exits.insert(pid, tx);
                    if let Some(waiter) = book.forks.remove(&req) {
                        let _ = waiter.send(Ok((pid, rx)));
                    }
                }
                FromServer::ForkFailed { req, error } => {
                    if let Some(waiter) = book.forks.remove(&req) {
                        let _ = waiter.send(Err(error));
                    }
                }
                FromServer::Exited { pid, exit } => {
                    if let Some(tx) = book.exits.remove(&pid) {
                        let _ = tx.send(exit);
                    }
                }
                _ => break 'read,
            }
        }
        if stream.readable().await.is_err() {
            break;
        }
        let mut chunk = [0u8; 4096];
        match stream.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
    if let Ok(mut book) = book.lock() {
        book.dead = true;
        book.forks.clear();
        book.exits.clear();
    }
}
