//! Workers' standard output and error: where they go, and the relays that carry them.
//!
//! A worker never shares an open file description with the service. File status flags
//! (`O_NONBLOCK`, `O_APPEND`) and the file offset belong to the description, not to the
//! descriptor: a worker that shared the parent's stdout could set `O_NONBLOCK` on it and
//! make the service's next `println!` panic once the pipe behind it filled. So every
//! child gets descriptors made for it before it starts ([`prepare`]):
//!
//! - [`WorkerOutput::Inherit`] gives the same file, opened again (`/proc/self/fd/N`) for
//!   ttys, pipes, FIFOs and character devices, and for regular files the service
//!   writes with `O_APPEND`. Where that cannot be done without harm (a socket, such as
//!   the journal's stdout, cannot be opened again; a regular file written without
//!   `O_APPEND` would be written at two offsets, each overwriting the other), the child
//!   gets a pipe whose bytes the pool relays to its own descriptor.
//! - [`WorkerOutput::Discard`] gives `/dev/null`.
//! - [`WorkerOutput::Capture`] and [`WorkerOutput::capture_with`] give a pipe whose lines
//!   the pool reads and hands to a sink, tagged with the child's pid.
//!
//! Every child's stdin is `/dev/null`, opened for it.
//!
//! The pool reads the pipes on its runtime and hands what it read to one thread, the
//! output thread, which does the writing (or calls the callback): a slow sink never
//! blocks the pool's tasks. The hand-over is a bounded queue. A line that does not fit
//! in it is dropped and counted ([`OutputLine::dropped`]); bytes relayed for `Inherit`
//! wait for room instead (the worker then waits in its `write`, as it would on a full
//! pipe of its own). A line is cut at [`MAX_LINE`] bytes: the pool never holds more of
//! a worker's output than one line per stream plus the queue.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::per_process::PerProcess;

/// The longest line, in bytes, that a capture delivers whole; longer lines are cut.
pub const MAX_LINE: usize = 8 << 10;

/// How many lines or relayed chunks may wait for the output thread.
const QUEUE: usize = 256;

/// The most bytes read from a pipe at a time (and so the largest relayed chunk).
const CHUNK: usize = 16 << 10;

/// Where a worker's standard output (or standard error) goes. Set with
/// [`PoolBuilder::stdout`](crate::PoolBuilder::stdout) and
/// [`stderr`](crate::PoolBuilder::stderr), or the same methods of
/// [`ProcessBuilder`](crate::ProcessBuilder).
///
/// Whatever the choice, a worker never shares an open file description with the
/// service: what it does to its descriptors (`fcntl(1, F_SETFL, O_NONBLOCK)`, say)
/// cannot change the service's. (It can still change the device behind a reopened
/// tty, such as its terminal modes, as any process writing to that tty can.)
///
/// Output that goes through a pipe the pool reads (a capture, or `Inherit` relayed)
/// lasts as long as this process reads it: a non-daemon
/// [`Process`](crate::Process) that outlives this process gets `EPIPE` on such
/// writes (and `println!` panics), so give it `Inherit` on a tty, pipe or `O_APPEND`
/// file, or `Discard`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum WorkerOutput {
    /// Where the service's own stream goes, through a description of the worker's own:
    /// the file opened again for a tty, a pipe, a FIFO, a character device or a
    /// regular file written with `O_APPEND`; otherwise (a socket, or a regular file
    /// written at an offset) a pipe whose bytes the pool copies to its own stream.
    /// The default: output keeps going where it went, and a worker cannot break it.
    #[default]
    Inherit,
    /// Thrown away (`/dev/null`).
    Discard,
    /// Read line by line by the pool and written to its own standard error as
    /// `[procpool worker <pid> <stream>] <line>`; with the `tracing` feature, emitted
    /// instead as `tracing` events (target `procpool::output`, level `INFO`, fields
    /// `pid`, `stream` and `line`). Lines are cut at [`MAX_LINE`] bytes, and dropped
    /// rather than queued without bound when the sink falls behind.
    Capture,
    /// Read line by line and handed to a function: see
    /// [`capture_with`](WorkerOutput::capture_with).
    CaptureWith(LineSink),
}

/// A function that receives captured lines: see [`WorkerOutput::capture_with`].
pub type LineSink = Arc<dyn Fn(&OutputLine<'_>) + Send + Sync>;

impl WorkerOutput {
    /// Captures lines, as [`Capture`](WorkerOutput::Capture) does, and hands each to
    /// `sink`. The sink runs on the pool's output thread, one line at a time; while it
    /// runs, further lines wait in a bounded queue, and lines that do not fit are
    /// dropped (the next line delivered says how many). A panic in the sink is caught
    /// and the line dropped.
    pub fn capture_with(sink: impl Fn(&OutputLine<'_>) + Send + Sync + 'static) -> Self {
        WorkerOutput::CaptureWith(Arc::new(sink))
    }
}

impl fmt::Debug for WorkerOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerOutput::Inherit => f.write_str("Inherit"),
            WorkerOutput::Discard => f.write_str("Discard"),
            WorkerOutput::Capture => f.write_str("Capture"),
            WorkerOutput::CaptureWith(_) => f.write_str("CaptureWith(<fn>)"),
        }
    }
}

/// Which of a worker's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output, descriptor 1.
    Stdout,
    /// Standard error, descriptor 2.
    Stderr,
}

impl OutputStream {
    /// `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }

    fn fd(self) -> RawFd {
        match self {
            OutputStream::Stdout => 1,
            OutputStream::Stderr => 2,
        }
    }
}

/// One line of a worker's output, as a capture delivers it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutputLine<'a> {
    /// The pid of the process that wrote it (a worker, a [`Process`](crate::Process),
    /// or a fork server).
    pub pid: u32,
    /// Which stream it came from.
    pub stream: OutputStream,
    /// The line, without its newline (the bytes as written: not necessarily UTF-8).
    pub line: &'a [u8],
    /// Whether the line was longer than [`MAX_LINE`]: `line` holds its first
    /// `MAX_LINE` bytes, and the rest, up to its newline, was dropped.
    pub truncated: bool,
    /// How many lines of this stream were dropped just before this one because the
    /// sink was behind.
    pub dropped: u64,
}

impl OutputLine<'_> {
    /// The line as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.line)
    }
}

// ---------------------------------------------------------------------------------
// Preparing a child's descriptors.

/// A child's standard descriptors (stdin, stdout, stderr), made for it before it
/// starts. The parent drops its copies once the child has its own.
#[derive(Debug)]
pub(crate) struct ChildStdio {
    pub(crate) fds: [OwnedFd; 3],
}

impl ChildStdio {
    /// Copies of the three descriptors, for a start that may outlive this value (a job
    /// on the spawner thread runs even if its requester has given up).
    pub(crate) fn try_clone(&self) -> std::io::Result<ChildStdio> {
        Ok(ChildStdio {
            fds: [
                self.fds[0].try_clone()?,
                self.fds[1].try_clone()?,
                self.fds[2].try_clone()?,
            ],
        })
    }

    pub(crate) fn raw(&self) -> [RawFd; 3] {
        [
            self.fds[0].as_raw_fd(),
            self.fds[1].as_raw_fd(),
            self.fds[2].as_raw_fd(),
        ]
    }
}

/// The pool's ends of a child's output pipes, to read once its pid is known.
#[derive(Debug, Default)]
#[must_use = "a child's pipes must be read, or its writes block"]
pub(crate) struct Relays(Vec<(OwnedFd, OutputStream, Mode)>);

#[derive(Clone)]
enum Mode {
    /// Bytes copied to this process's own descriptor (stream's number).
    Raw,
    /// Lines to the default sink: stderr, or `tracing`.
    Lines,
    /// Lines to a function.
    LinesTo(LineSink),
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Raw => "Raw",
            Mode::Lines => "Lines",
            Mode::LinesTo(_) => "LinesTo",
        })
    }
}

/// Makes a child's stdin (`/dev/null`), stdout and stderr as `stdout` and `stderr`
/// ask, and the pipes to read for them.
pub(crate) fn prepare(
    stdout: &WorkerOutput,
    stderr: &WorkerOutput,
) -> io::Result<(ChildStdio, Relays)> {
    let mut relays = Relays::default();
    let stdin = open_dev_null(libc::O_RDONLY)?;
    let out = prepare_one(
        stdout,
        OutputStream::Stdout,
        OutputStream::Stdout.fd(),
        &mut relays,
    )?;
    let err = prepare_one(
        stderr,
        OutputStream::Stderr,
        OutputStream::Stderr.fd(),
        &mut relays,
    )?;
    Ok((
        ChildStdio {
            fds: [stdin, out, err],
        },
        relays,
    ))
}

/// The child's descriptor for `stream`; `mirror` is the descriptor of ours that
/// `Inherit` follows.
fn prepare_one(
    how: &WorkerOutput,
    stream: OutputStream,
    mirror: RawFd,
    relays: &mut Relays,
) -> io::Result<OwnedFd> {
    let mode = match how {
        WorkerOutput::Discard => return open_dev_null(libc::O_WRONLY),
        WorkerOutput::Inherit => match reopen(mirror)? {
            Reopened::Fd(fd) => return Ok(fd),
            Reopened::Closed => return open_dev_null(libc::O_WRONLY),
            Reopened::Relay => Mode::Raw,
        },
        WorkerOutput::Capture => Mode::Lines,
        WorkerOutput::CaptureWith(sink) => Mode::LinesTo(sink.clone()),
    };
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    relays.0.push((read, stream, mode));
    Ok(write)
}

/// What `Inherit` gives a child for one of our descriptors.
#[derive(Debug)]
enum Reopened {
    /// The same file, in a description of its own.
    Fd(OwnedFd),
    /// Ours is closed: the child gets `/dev/null`.
    Closed,
    /// It cannot be opened again without harm: relay through a pipe.
    Relay,
}

/// Opens the file behind our descriptor `fd` again, for writing, if that is harmless.
fn reopen(fd: RawFd) -> io::Result<Reopened> {
    // SAFETY: fcntl and fstat take an integer and (fstat) a pointer to a local.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Ok(Reopened::Closed);
    }
    // SAFETY: as above; `st` is a zeroed local the call fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Ok(Reopened::Closed);
    }
    let append = flags & libc::O_APPEND;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => return Ok(Reopened::Relay),
        libc::S_IFREG if append == 0 => return Ok(Reopened::Relay),
        _ => {}
    }
    let path = format!("/proc/self/fd/{fd}\0");
    // O_NONBLOCK: opening a FIFO for writing would otherwise wait for a reader.
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let new = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK | append,
        )
    };
    if new < 0 {
        return Ok(Reopened::Relay);
    }
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    let new = unsafe { OwnedFd::from_raw_fd(new) };
    // SAFETY: fcntl on our own descriptor with integer arguments.
    if unsafe { libc::fcntl(new.as_raw_fd(), libc::F_SETFL, append) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Reopened::Fd(new))
}

fn open_dev_null(access: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated literal path and integer flags.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), access | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------
// Reading the pipes.

impl Relays {
    /// Starts reading the pipes of the child `pid`, on the current runtime. Each
    /// reader ends at the pipe's end of stream (when the child and its descendants
    /// have closed it) or with the runtime.
    ///
    /// Must be called within a Tokio runtime.
    pub(crate) fn start(self, pid: u32) {
        for (fd, stream, mode) in self.0 {
            let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                continue;
            };
            tokio::spawn(relay(pipe, pid, stream, mode));
        }
    }
}

/// What the readers hand the output thread.
enum Msg {
    /// Bytes for our own descriptor `fd`.
    Raw { fd: RawFd, bytes: Vec<u8> },
    Line {
        mode: Mode,
        pid: u32,
        stream: OutputStream,
        line: Vec<u8>,
        truncated: bool,
        dropped: u64,
    },
}

/// The queue to the output thread (started on first use).
fn output_thread() -> Option<&'static tokio::sync::mpsc::Sender<Msg>> {
    static QUEUE_TX: PerProcess<Option<tokio::sync::mpsc::Sender<Msg>>> = PerProcess::new();
    QUEUE_TX
        .get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(QUEUE);
            std::thread::Builder::new()
                .name("procpool-output".into())
                .spawn(move || {
                    while let Some(msg) = rx.blocking_recv() {
                        deliver(msg);
                    }
                })
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// Reads one pipe until its end of stream.
async fn relay(
    mut pipe: tokio::net::unix::pipe::Receiver,
    pid: u32,
    stream: OutputStream,
    mode: Mode,
) {
    let Some(queue) = output_thread() else {
        return;
    };
    let mut chunk = vec![0u8; CHUNK];
    let mut lines = LineSplitter::default();
    let mut dropped: u64 = 0;
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if let Mode::Raw = mode {
            if n == 0 {
                return;
            }
            let msg = Msg::Raw {
                fd: stream.fd(),
                bytes: chunk[..n].to_vec(),
            };
            // Waits for room: the worker waits in its `write` meanwhile.
            if queue.send(msg).await.is_err() {
                return;
            }
            continue;
        }
        let mut emit = |line: &[u8], truncated: bool| {
            let msg = Msg::Line {
                mode: mode.clone(),
                pid,
                stream,
                line: line.to_vec(),
                truncated,
                dropped,
            };
            match queue.try_send(msg) {
                Ok(()) => dropped = 0,
                Err(_) => dropped = dropped.saturating_add(1),
            }
        };
        if n == 0 {
            lines.finish(&mut emit);
            return;
        }
        lines.push(&chunk[..n], &mut emit);
    }
}

/// Cuts a stream of bytes into lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
struct LineSplitter {
    line: Vec<u8>,
    /// The current line was cut: skip to its newline.
    skipping: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; calls `emit(line, truncated)` for each line they end (or cut).
    fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let end = newline.unwrap_or(bytes.len());
            if !self.skipping {
                let room = MAX_LINE - self.line.len();
                let take = end.min(room);
                self.line.extend_from_slice(&bytes[..take]);
                if take < end {
                    // Longer than MAX_LINE: deliver what fits now, drop the rest.
                    emit(&self.line, true);
                    self.line.clear();
                    self.skipping = true;
                }
            }
            match newline {
                Some(at) => {
                    if !self.skipping {
                        emit(&self.line, false);
                    }
                    self.line.clear();
                    self.skipping = false;
                    bytes = &bytes[at + 1..];
                }
                None => bytes = &[],
            }
        }
    }

    /// The stream ended: delivers a last line without a newline.
    fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.skipping && !self.line.is_empty() {
            emit(&self.line, false);
        }
        self.line.clear();
        self.skipping = false;
    }
}

/// Runs on the output thread: writes or hands over one message.
fn deliver(msg: Msg) {
    match msg {
        Msg::Raw { fd, bytes } => write_all(fd, &bytes),
        Msg::Line {
            mode,
            pid,
            stream,
            line,
            truncated,
            dropped,
        } => {
            let line = OutputLine {
                pid,
                stream,
                line: &line,
                truncated,
                dropped,
            };
            match mode {
                Mode::LinesTo(sink) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        sink(&line);
                    }));
                }
                Mode::Lines | Mode::Raw => default_sink(&line),
            }
        }
    }
}

#[cfg(feature = "tracing")]
fn default_sink(line: &OutputLine<'_>) {
    tracing::event!(
        target: "procpool::output",
        tracing::Level::INFO,
        pid = line.pid,
        stream = line.stream.as_str(),
        truncated = line.truncated,
        dropped = line.dropped,
        line = %line.text(),
    );
}

#[cfg(not(feature = "tracing"))]
fn default_sink(line: &OutputLine<'_>) {
    let mut out = Vec::with_capacity(line.line.len() + 64);
    if line.dropped > 0 {
        out.extend_from_slice(
            format!(
                "[procpool worker {} {}] ({} lines dropped)\n",
                line.pid,
                line.stream.as_str(),
                line.dropped
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!("[procpool worker {} {}] ", line.pid, line.stream.as_str()).as_bytes(),
    );
    out.extend_from_slice(line.line);
    if line.truncated {
        out.extend_from_slice(b" (truncated)");
    }
    out.push(b'\n');
    write_all(2, &out);
}

/// Writes `bytes` to our descriptor `fd`, waiting (boundedly) if someone made it
/// non-blocking and it is full; gives up on an error.
fn write_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid buffer of its length for the call.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let wait = Duration::from_secs(1).as_millis() as libc::c_int;
                // SAFETY: one valid pollfd for the duration of the call.
                if unsafe { libc::poll(&mut pfd, 1, wait) } <= 0 {
                    return;
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        let mut emit = |l: &[u8], t: bool| out.push((l.to_vec(), t));
        for part in input {
            s.push(part, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn lines_are_cut_at_newlines_across_reads() {
        let got = split(&[b"ab", b"c\nde", b"\n\nf"]);
        let want: Vec<(Vec<u8>, bool)> = vec![
            (b"abc".to_vec(), false),
            (b"de".to_vec(), false),
            (b"".to_vec(), false),
            (b"f".to_vec(), false),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_long_line_is_cut_and_the_rest_skipped() {
        let long = vec![b'x'; MAX_LINE * 3 + 5];
        let got = split(&[&long[..MAX_LINE / 2], &long[MAX_LINE / 2..], b"\nnext\n"]);
        assert_eq!(
            got.len(),
            2,
            "{:?}",
            got.iter().map(|l| l.0.len()).collect::<Vec<_>>()
        );
        assert_eq!(got[0], (vec![b'x'; MAX_LINE], true));
        assert_eq!(got[1], (b"next".to_vec(), false));
        // Exactly MAX_LINE bytes then a newline is a whole line.
        let exact = [vec![b'y'; MAX_LINE], b"\n".to_vec()].concat();
        assert_eq!(split(&[&exact]), vec![(vec![b'y'; MAX_LINE], false)]);
    }

    fn getfl(fd: RawFd) -> i32 {
        // SAFETY: fcntl with integer arguments.
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    }

    /// A pipe is opened again: the copy's flags are its own.
    #[test]
    fn inherit_reopens_a_pipe_in_a_description_of_its_own() {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let Reopened::Fd(copy) = reopen(write.as_raw_fd()).unwrap() else {
            panic!("a pipe should be opened again");
        };
        let before = getfl(write.as_raw_fd());
        // SAFETY: fcntl with integer arguments on our own descriptor.
        unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        assert_eq!(
            getfl(write.as_raw_fd()),
            before,
            "the original's flags changed"
        );
        assert_eq!(getfl(copy.as_raw_fd()) & libc::O_NONBLOCK, libc::O_NONBLOCK);
        // The copy writes into the same pipe.
        nix::unistd::write(&copy, b"hi").unwrap();
        let mut buf = [0u8; 2];
        nix::unistd::read(&read, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    /// Sockets cannot be opened again, and a regular file written at an offset would
    /// be overwritten: both are relayed. A file written with `O_APPEND` is opened
    /// again, appending.
    #[test]
    fn inherit_relays_sockets_and_files_written_at_an_offset() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(reopen(a.as_raw_fd()).unwrap(), Reopened::Relay));
        let dir = std::env::temp_dir().join(format!("procpool-output-{}", std::process::id()));
        let file = std::fs::File::create(&dir).unwrap();
        assert!(matches!(reopen(file.as_raw_fd()).unwrap(), Reopened::Relay));
        let appending = std::fs::OpenOptions::new().append(true).open(&dir).unwrap();
        let Reopened::Fd(copy) = reopen(appending.as_raw_fd()).unwrap() else {
            panic!("an O_APPEND file should be opened again");
        };
        assert_eq!(getfl(copy.as_raw_fd()) & libc::O_APPEND, libc::O_APPEND);
        let _ = std::fs::remove_file(&dir);
        // A closed descriptor: /dev/null for the child.
        assert!(matches!(reopen(-1).unwrap(), Reopened::Closed));
    }
}
