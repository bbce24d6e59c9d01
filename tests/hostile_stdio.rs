//! A worker's stdout and stderr cannot break the service's: every mode gives workers
//! descriptions of their own, captures lines tagged with the pid, and bounds what a
//! flooding worker costs. Run under each start method (`PROCPOOL_TEST_START_METHOD`).
#![cfg(target_os = "linux")]

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use procpool::{OutputStream, Process, WorkerOutput, MAX_LINE};

use support::{arrives, collector, within, BOUND};

fn getfl(fd: i32) -> i32 {
    // SAFETY: fcntl with integer arguments.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

/// In a worker: sets `O_NONBLOCK` on its fds 1 and 2; returns their flags after.
fn make_stdio_nonblocking(_: ()) -> (i32, i32) {
    for fd in [1, 2] {
        let flags = getfl(fd);
        // SAFETY: fcntl with integer arguments on the worker's own descriptors.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    }
    (getfl(1), getfl(2))
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// Where the worker's descriptor `fd` leads.
fn fd_target(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

// Tasks write through `io::stdout()` and `io::stderr()`, not `println!`: the test
// harness captures the macros' output in memory for the thread that spawned the
// procpool threads, which a `Fork` worker is a copy of.
fn say(mut to: impl Write, text: &str) {
    to.write_all(text.as_bytes()).expect("write");
    to.flush().expect("flush");
}

fn print_lines(_: ()) -> u32 {
    say(std::io::stdout(), "out one\nout two\n");
    say(std::io::stderr(), "err one\n");
    std::process::id()
}

/// Writes `mb` MiB to stdout without a newline, then a newline and "after".
fn flood(mb: usize) -> u32 {
    let block = vec![b'x'; 1 << 20];
    let mut out = std::io::stdout().lock();
    for _ in 0..mb {
        out.write_all(&block).expect("write");
    }
    out.write_all(b"\nafter\n").expect("write");
    out.flush().expect("flush");
    std::process::id()
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The case: a task sets `O_NONBLOCK` on its fds 1 and 2. Under every output
/// mode, our own stdout and stderr keep their flags (they share no open file
/// description with the worker), and the pool serves on.
#[tokio::test]
async fn a_worker_cannot_change_the_flags_of_our_stdout_or_stderr() {
    let (ours_out, ours_err) = (getfl(1), getfl(2));
    assert!(
        ours_out >= 0 && ours_err >= 0,
        "the test has a stdout and a stderr"
    );
    let modes = [
        WorkerOutput::Inherit,
        WorkerOutput::Discard,
        WorkerOutput::Capture,
    ];
    for mode in modes {
        let pool = within(
            "build",
            support::builder()
                .processes(1)
                .stdout(mode.clone())
                .stderr(mode.clone())
                .build(),
        )
        .await
        .expect("pool builds");
        let (w_out, w_err) = within("task", pool.apply(make_stdio_nonblocking, ()))
            .await
            .expect("task runs");
        assert_ne!(
            w_out & libc::O_NONBLOCK,
            0,
            "{mode:?}: the worker's fd 1 changed"
        );
        assert_ne!(
            w_err & libc::O_NONBLOCK,
            0,
            "{mode:?}: the worker's fd 2 changed"
        );
        let (now_out, now_err) = (getfl(1), getfl(2));
        // Put them back before failing, so that the harness can still print.
        // SAFETY: fcntl with integer arguments on our own descriptors.
        unsafe {
            libc::fcntl(1, libc::F_SETFL, ours_out);
            libc::fcntl(2, libc::F_SETFL, ours_err);
        }
        assert_eq!(now_out, ours_out, "{mode:?}: our stdout's flags changed");
        assert_eq!(now_err, ours_err, "{mode:?}: our stderr's flags changed");
        let worker = within("pid", pool.apply(pid, ())).await.expect("serves on");
        within("terminate", pool.terminate()).await;
        assert!(support::eventually(BOUND, || support::is_gone(worker)));
    }
}

/// The same for a `Process`, under every start method.
#[tokio::test]
async fn a_process_cannot_change_the_flags_of_our_stdout_or_stderr() {
    let (ours_out, ours_err) = (getfl(1), getfl(2));
    for method in [
        procpool::StartMethod::Spawn,
        procpool::StartMethod::Fork,
        procpool::StartMethod::ForkServer,
    ] {
        let child = within(
            "start",
            Process::builder()
                .daemon(true)
                .start_method(method)
                .start(make_stdio_nonblocking, ()),
        )
        .await
        .expect("starts");
        let pid = child.pid();
        let (w_out, _) = within("join", child.join()).await.expect("runs");
        assert_ne!(w_out & libc::O_NONBLOCK, 0);
        let (now_out, now_err) = (getfl(1), getfl(2));
        // SAFETY: fcntl with integer arguments on our own descriptors.
        unsafe {
            libc::fcntl(1, libc::F_SETFL, ours_out);
            libc::fcntl(2, libc::F_SETFL, ours_err);
        }
        assert_eq!((now_out, now_err), (ours_out, ours_err), "{method:?}");
        assert!(support::eventually(BOUND, || support::is_gone(pid)));
    }
}

/// Captured lines come back one by one, each with the pid of the worker that wrote
/// it and the stream it came from.
#[tokio::test]
async fn captured_lines_come_back_tagged_with_the_pid() {
    let (lines, output) = collector();
    let pool = within(
        "build",
        support::builder()
            .processes(2)
            .stdout(output.clone())
            .stderr(output)
            .build(),
    )
    .await
    .expect("pool builds");
    let worker = within("task", pool.apply(print_lines, ()))
        .await
        .expect("runs");
    for (stream, text) in [
        (OutputStream::Stdout, "out one"),
        (OutputStream::Stdout, "out two"),
        (OutputStream::Stderr, "err one"),
    ] {
        assert!(
            arrives(&lines, |l| l.0 == worker
                && l.1 == stream
                && l.2 == text
                && !l.3)
            .await,
            "{stream:?} {text:?} from {worker}: got {:?}",
            lines.lock().unwrap()
        );
    }
    // In the order written.
    let outs: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.0 == worker && l.1 == OutputStream::Stdout)
        .map(|l| l.2.clone())
        .collect();
    assert_eq!(outs, ["out one", "out two"]);
    within("terminate", pool.terminate()).await;
    assert!(support::eventually(BOUND, || support::is_gone(worker)));
}

/// `Discard` gives the worker `/dev/null`; a capture a pipe; `Inherit` never our own
/// description (checked above); every worker's stdin is `/dev/null`.
#[tokio::test]
async fn discard_gives_the_worker_dev_null() {
    // Captured into memory (not `WorkerOutput::Capture`, which would write the line
    // to the test run's stderr).
    let (lines, captured) = collector();
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .stdout(WorkerOutput::Discard)
            .stderr(captured)
            .build(),
    )
    .await
    .expect("pool builds");
    for (fd, want) in [(0, "/dev/null"), (1, "/dev/null"), (2, "pipe:")] {
        let target = within("task", pool.apply(fd_target, fd))
            .await
            .expect("runs");
        assert!(target.starts_with(want), "fd {fd}: {target}");
    }
    // Printing into the void is fine; the stderr line is captured.
    let worker = within("task", pool.apply(print_lines, ()))
        .await
        .expect("runs");
    assert!(
        arrives(&lines, |l| l.0 == worker
            && l.1 == OutputStream::Stderr
            && l.2 == "err one")
        .await,
        "the stderr line: {}",
        support::shown(&lines)
    );
    within("terminate", pool.terminate()).await;
}

fn panic_on_the_task_thread(_: ()) -> u32 {
    panic!("procpool test: a panic on the task thread")
}

/// Panics on a thread of its own, then writes "done" to stderr (through the raw
/// stream: see `say`) once that thread has ended.
fn panic_on_another_thread(_: ()) -> u32 {
    let joined = std::thread::spawn(|| panic!("procpool test: a panic on another thread")).join();
    assert!(joined.is_err(), "the thread panicked");
    say(std::io::stderr(), "done\n");
    std::process::id()
}

/// A task's panic comes back to the caller as `TaskError::Panicked` and is not printed
/// by the worker: nothing of it reaches the worker's stderr (here captured). A panic on
/// a thread the task started is the task's own business and goes to the default hook,
/// which prints it: the capture sees panic messages, so the first check can fail.
#[tokio::test]
async fn a_task_panic_is_returned_not_printed() {
    let (lines, captured) = collector();
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .stdout(WorkerOutput::Discard)
            .stderr(captured)
            .build(),
    )
    .await
    .expect("pool builds");
    let err = within("panic", pool.apply(panic_on_the_task_thread, ()))
        .await
        .expect_err("the task panics");
    assert!(
        matches!(err, procpool::TaskError::Panicked { .. })
            && err.to_string().contains("a panic on the task thread"),
        "{err:?}"
    );
    // A line written after the panic: once it is here, anything the panic printed
    // before it is here too (one pipe, read in order).
    let worker = within("print", pool.apply(print_lines, ()))
        .await
        .expect("runs");
    assert!(
        arrives(&lines, |l| l.0 == worker && l.2 == "err one").await,
        "the line after the panic: {}",
        support::shown(&lines)
    );
    let printed = support::shown(&lines);
    assert!(
        !printed.contains("panicked") && !printed.contains("a panic on the task thread"),
        "the task's panic reached the worker's stderr:\n{printed}"
    );

    // The control. Under `Fork` the default hook of the worker (a copy of a test
    // thread) writes into the test harness's in-memory capture instead of fd 2.
    if support::start_method() != procpool::StartMethod::Fork {
        within("thread panic", pool.apply(panic_on_another_thread, ()))
            .await
            .expect("the task itself returns");
        assert!(
            arrives(&lines, |l| l.0 == worker && l.2 == "done").await,
            "the line after the thread's panic: {}",
            support::shown(&lines)
        );
        let printed = support::shown(&lines);
        assert!(
            printed.contains("a panic on another thread"),
            "a panic on another thread is printed by the default hook:\n{printed}"
        );
    }
    within("terminate", pool.terminate()).await;
    assert!(support::eventually(BOUND, || support::is_gone(worker)));
}

/// A worker that writes 64 MiB without a newline: the capture delivers the line's
/// first MAX_LINE bytes, marked truncated, then the next line; our memory does not
/// grow with the flood; the pool serves on.
#[tokio::test]
async fn a_flooding_worker_is_truncated_not_buffered() {
    const FLOOD_MIB: usize = 64;
    let (lines, output) = collector();
    let pool = within(
        "build",
        support::builder().processes(1).stdout(output).build(),
    )
    .await
    .expect("pool builds");
    let worker = within("pid", pool.apply(pid, ())).await.expect("runs");
    let before = vm_rss_kib();
    let flooder = within("flood", pool.apply(flood, FLOOD_MIB))
        .await
        .expect("the flood is written");
    assert_eq!(flooder, worker);
    assert!(
        arrives(&lines, |l| l.0 == worker && l.2 == "after").await,
        "the line after the flood: got {} lines",
        lines.lock().unwrap().len()
    );
    let after = vm_rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 16,
        "our RSS grew by {grown_mib} MiB for a {FLOOD_MIB} MiB flood"
    );
    {
        let lines = lines.lock().unwrap();
        let flood_lines: Vec<_> = lines.iter().filter(|l| l.0 == worker).collect();
        assert_eq!(flood_lines.len(), 2, "the cut line and the next");
        assert!(flood_lines[0].3, "the flood is marked truncated");
        assert_eq!(flood_lines[0].2.len(), MAX_LINE);
        assert!(flood_lines[0].2.bytes().all(|b| b == b'x'));
    }
    assert_eq!(within("after", pool.apply(pid, ())).await, Ok(worker));
    within("terminate", pool.terminate()).await;
    assert!(support::eventually(BOUND, || support::is_gone(worker)));
}

fn speak_and_break_stdio(_: ()) -> u32 {
    say(
        std::io::stdout(),
        &format!("worker-out {}\n", std::process::id()),
    );
    say(
        std::io::stderr(),
        &format!("worker-err {}\n", std::process::id()),
    );
    make_stdio_nonblocking(());
    std::process::id()
}

#[tokio::test]
#[ignore = "helper: run by another test as a separate process"]
async fn helper_inherit_through_a_socket_and_a_file() {
    if std::env::var_os("PROCPOOL_HELPER_STDIO").is_none() {
        return;
    }
    eprintln!("helper-before");
    let pool = support::builder().processes(1).build().await.unwrap();
    let worker = pool.apply(speak_and_break_stdio, ()).await.unwrap();
    let flags_ok = getfl(1) & libc::O_NONBLOCK == 0 && getfl(2) & libc::O_NONBLOCK == 0;
    pool.join().await;
    eprintln!("helper-after");
    println!("HELPER {worker} {flags_ok}");
    // Lets the relays hand over what they read before the process exits.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// A service whose stdout is a socket (as under systemd's journal) and whose stderr is
/// a file written at an offset (`prog 2>log`): neither can be opened again harmlessly,
/// so workers write through pipes the pool relays. The worker's lines arrive, the
/// service's own lines in the file are not overwritten, and the worker's `O_NONBLOCK`
/// reaches neither.
#[test]
fn inherit_relays_for_a_socket_and_a_file_at_an_offset() {
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let log = std::env::temp_dir().join(format!("procpool-hostile-stdio-{}", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_inherit_through_a_socket_and_a_file",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCPOOL_HELPER_STDIO", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(BOUND)).unwrap();
    let mut out = String::new();
    let read = ours.read_to_string(&mut out);
    let exited = support::eventually(BOUND, || matches!(helper.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = helper.kill();
        let _ = helper.wait();
    }
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(exited, "the helper exits");
    read.expect("the helper's stdout ends");
    let line = out
        .lines()
        .find_map(|l| l.find("HELPER ").map(|at| l[at + 7..].to_string()))
        .unwrap_or_else(|| panic!("no report in {out:?}"));
    let (worker, flags_ok) = line.split_once(' ').unwrap();
    assert_eq!(flags_ok, "true", "the helper's own flags changed");
    assert!(
        out.contains(&format!("worker-out {worker}\n")),
        "stdout: {out:?}"
    );
    for want in [
        "helper-before\n".to_string(),
        format!("worker-err {worker}\n"),
        "helper-after\n".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} in stderr file {err:?}");
    }
}
