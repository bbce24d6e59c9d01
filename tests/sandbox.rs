#![cfg(target_os = "linux")]
//! The opt-in sandbox: each test has a task try something a compromised worker would,
//! with the sandbox (refused, and the worker serves on) and without it (it works, so
//! the test can fail).

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use procpool::{Pool, PoolBuilder, Process, Sandbox};
use support::{all_gone, wait_until, whoami, within, Scratch};

/// A variable the service holds and workers should not see.
const SECRET: &str = "PROCPOOL_SANDBOX_TEST_SECRET";
const SECRET_VALUE: &str = "hunter2-7c1f";
/// A variable the tests let through.
const ALLOWED: &str = "PROCPOOL_SANDBOX_TEST_ALLOWED";

fn set_service_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var(SECRET, SECRET_VALUE);
        std::env::set_var(ALLOWED, "yes");
    });
}

/// A builder for the start method under test, with or without a strict sandbox.
fn builder(sandboxed: bool) -> PoolBuilder {
    set_service_env();
    let b = support::builder().processes(2);
    if sandboxed {
        b.sandbox(Sandbox::new())
    } else {
        b
    }
}

async fn make_pool(sandboxed: bool) -> Pool {
    within("build", builder(sandboxed).build())
        .await
        .expect("pool builds")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// Tasks: what a compromised worker would try. Each returns Ok or the errno.
// ---------------------------------------------------------------------------------

/// `kill(getppid(), 0)`: may this worker signal its parent (the service, or the fork
/// server)?
fn signal_parent(_: ()) -> Result<(), i32> {
    // SAFETY: getppid and kill take integers only; signal 0 only checks permission.
    match unsafe { libc::kill(libc::getppid(), 0) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

/// `kill(p, SIGKILL)` for each pid in `pids` that is not this worker: a sibling.
fn kill_siblings(pids: Vec<u32>) -> Result<u32, i32> {
    let me = std::process::id();
    let mut killed = 0;
    for pid in pids.into_iter().filter(|&p| p != me) {
        // SAFETY: kill takes integers only.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            return Err(errno());
        }
        killed += 1;
    }
    Ok(killed)
}

/// Signals the worker's process group (which is the service's): `kill(0, 0)`.
fn signal_group(_: ()) -> Result<(), i32> {
    // SAFETY: kill takes integers only; signal 0 only checks permission.
    match unsafe { libc::kill(0, 0) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

/// Attaches to the parent with `ptrace`; if that works, stops it, waits for the stop
/// and detaches at once, so that the parent runs on.
fn ptrace_parent(_: ()) -> Result<(), i32> {
    // SAFETY: ptrace and waitpid on the parent's pid with integer arguments and null
    // pointers; a successful seize is undone below (interrupt, wait, detach).
    unsafe {
        let parent = libc::getppid();
        let null = std::ptr::null_mut::<libc::c_void>();
        if libc::ptrace(libc::PTRACE_SEIZE, parent, null, null) != 0 {
            return Err(errno());
        }
        libc::ptrace(libc::PTRACE_INTERRUPT, parent, null, null);
        let mut status = 0;
        libc::waitpid(parent, &mut status, libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, parent, null, null);
    }
    Ok(())
}

/// Sets a resource limit to (soft, hard).
fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Result<(), i32> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the rlimit, a live local.
    match unsafe { libc::setrlimit(resource, &limit) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

fn get_limit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the rlimit, a live local.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut limit) }, 0);
    (limit.rlim_cur, limit.rlim_max)
}

/// What a task may try with its limits: raise its soft limit on open files back up to
/// the hard limit after lowering it (any process may, without privileges), likewise its
/// soft limit on the address space (the pool's memory limit), and raise that limit to
/// infinity (only with `CAP_SYS_RESOURCE`). Returns the three outcomes and the
/// address-space limit after them.
#[allow(clippy::type_complexity)]
fn raise_limits(
    _: (),
) -> (
    Result<(), i32>,
    Result<(), i32>,
    Result<(), i32>,
    (u64, u64),
) {
    let nofile = libc::RLIMIT_NOFILE;
    let (soft, hard) = get_limit(nofile);
    let _ = set_limit(nofile, soft - 1, hard);
    let nofile_up = set_limit(nofile, hard, hard);
    let address = libc::RLIMIT_AS;
    let (_, hard) = get_limit(address);
    let _ = set_limit(address, hard / 2, hard);
    let as_up = set_limit(address, hard, hard);
    let as_infinity = set_limit(address, libc::RLIM_INFINITY, libc::RLIM_INFINITY);
    (nofile_up, as_up, as_infinity, get_limit(address))
}

/// Opens an `AF_INET` socket, and connects to `127.0.0.1:port`.
fn tcp_connect(port: u16) -> (Result<(), i32>, Result<(), i32>) {
    // SAFETY: socket takes integers; the descriptor is closed at once.
    let raw = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            Err(errno())
        } else {
            libc::close(fd);
            Ok(())
        }
    };
    let connect = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )
    .map(drop)
    .map_err(|e| e.raw_os_error().unwrap_or(-1));
    (raw, connect)
}

/// Opens an `AF_UNIX` socket.
fn unix_socket(_: ()) -> Result<(), i32> {
    // SAFETY: socket takes integers; the descriptor is closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(errno());
        }
        libc::close(fd);
    }
    Ok(())
}

/// Creates and writes the file `path`.
fn write_file(path: String) -> Result<(), i32> {
    std::fs::write(&path, b"written by a worker").map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Reads the file `path`.
fn read_file(path: String) -> Result<usize, i32> {
    std::fs::read(&path)
        .map(|b| b.len())
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// The value of the variable `key` in this worker's environment.
fn env_var(key: String) -> Option<String> {
    std::env::var(key).ok()
}

/// Whether the secret's value is anywhere in the block the process started with.
fn secret_in_proc_environ(_: ()) -> bool {
    let block = std::fs::read("/proc/self/environ").expect("read /proc/self/environ");
    block
        .windows(SECRET_VALUE.len())
        .any(|w| w == SECRET_VALUE.as_bytes())
}

/// Starts a thread that outlives the initializer.
fn leave_a_thread(_: ()) {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_secs(3600));
    });
}

// ---------------------------------------------------------------------------------

/// The pool's workers are the ones it started with and none has crashed: every
/// refusal left its worker serving.
async fn assert_served_on(pool: &Pool, pids: &[u32]) {
    let mut now = support::worker_pids(pool);
    now.sort_unstable();
    let mut before = pids.to_vec();
    before.sort_unstable();
    assert_eq!(now, before, "the same workers serve");
    assert_eq!(pool.stats().workers_crashed, 0);
    for _ in 0..4 {
        let pid = within("whoami", pool.apply(whoami, ()))
            .await
            .expect("task");
        assert!(pids.contains(&pid));
    }
}

async fn finish(pool: Pool) {
    let pids = support::worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert!(
        all_gone(pids, Duration::from_secs(10)).await,
        "workers left"
    );
}

#[tokio::test]
async fn signals_to_the_parent_and_the_process_group_are_refused() {
    let pool = make_pool(true).await;
    let pids = support::worker_pids(&pool);
    let r = within("signal", pool.apply(signal_parent, ()))
        .await
        .unwrap();
    assert_eq!(r, Err(libc::EPERM));
    let r = within("signal", pool.apply(signal_group, ()))
        .await
        .unwrap();
    assert_eq!(r, Err(libc::EPERM));
    assert_served_on(&pool, &pids).await;
    finish(pool).await;

    let pool = make_pool(false).await;
    let r = within("signal", pool.apply(signal_parent, ()))
        .await
        .unwrap();
    assert_eq!(
        r,
        Ok(()),
        "without a sandbox a worker may signal its parent"
    );
    let r = within("signal", pool.apply(signal_group, ()))
        .await
        .unwrap();
    assert_eq!(r, Ok(()));
    finish(pool).await;
}

#[tokio::test]
async fn a_worker_cannot_kill_its_sibling() {
    let pool = make_pool(true).await;
    let pids = support::worker_pids(&pool);
    assert_eq!(pids.len(), 2);
    let r = within("kill", pool.apply(kill_siblings, pids.clone()))
        .await
        .unwrap();
    assert_eq!(r, Err(libc::EPERM));
    assert!(pids.iter().all(|&p| support::is_running(p)));
    assert_served_on(&pool, &pids).await;
    finish(pool).await;

    let pool = make_pool(false).await;
    let pids = support::worker_pids(&pool);
    let r = within("kill", pool.apply(kill_siblings, pids.clone()))
        .await
        .unwrap();
    assert_eq!(r, Ok(1), "without a sandbox a worker kills its sibling");
    let victims = pids.clone();
    assert!(
        wait_until(Duration::from_secs(10), move || victims
            .iter()
            .any(|&p| !support::is_running(p)))
        .await
    );
    finish(pool).await;
    assert!(all_gone(pids, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn ptrace_of_the_parent_is_refused() {
    let pool = make_pool(true).await;
    let pids = support::worker_pids(&pool);
    let r = within("ptrace", pool.apply(ptrace_parent, ()))
        .await
        .unwrap();
    assert_eq!(r, Err(libc::EPERM));
    assert_served_on(&pool, &pids).await;
    finish(pool).await;

    // Without the sandbox, root may trace its parent (an unprivileged user only where
    // Yama allows it).
    // SAFETY: geteuid takes no argument.
    if unsafe { libc::geteuid() } == 0 {
        let pool = make_pool(false).await;
        let r = within("ptrace", pool.apply(ptrace_parent, ()))
            .await
            .unwrap();
        assert_eq!(r, Ok(()), "without a sandbox root traces its parent");
        finish(pool).await;
    }
}

#[tokio::test]
async fn limits_cannot_be_changed() {
    const LIMIT: u64 = 16 << 30;
    let limited = |sandboxed| builder(sandboxed).memory_limit(LIMIT).build();
    let pool = within("build", limited(true)).await.expect("pool builds");
    let pids = support::worker_pids(&pool);
    let (nofile, address, infinity, now) = within("limits", pool.apply(raise_limits, ()))
        .await
        .unwrap();
    assert_eq!(nofile, Err(libc::EPERM));
    assert_eq!(address, Err(libc::EPERM));
    assert_eq!(infinity, Err(libc::EPERM));
    assert_eq!(now, (LIMIT, LIMIT), "the pool's memory limit holds");
    assert_served_on(&pool, &pids).await;
    finish(pool).await;

    let pool = within("build", limited(false)).await.expect("pool builds");
    let (nofile, address, _, _) = within("limits", pool.apply(raise_limits, ()))
        .await
        .unwrap();
    assert_eq!(
        nofile,
        Ok(()),
        "without a sandbox a task raises its soft limits"
    );
    assert_eq!(address, Ok(()));
    finish(pool).await;
}

#[tokio::test]
async fn sockets_and_tcp_are_refused_unless_the_network_is_allowed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().unwrap().port();

    let pool = make_pool(true).await;
    let pids = support::worker_pids(&pool);
    let (raw, connect) = within("tcp", pool.apply(tcp_connect, port)).await.unwrap();
    assert_eq!(raw, Err(libc::EPERM));
    assert_eq!(connect, Err(libc::EPERM));
    let r = within("unix", pool.apply(unix_socket, ())).await.unwrap();
    assert_eq!(r, Err(libc::EPERM));
    assert_served_on(&pool, &pids).await;
    finish(pool).await;

    for sandbox in [None, Some(Sandbox::new().allow_network(true))] {
        let mut b = builder(false);
        if let Some(sandbox) = sandbox {
            b = b.sandbox(sandbox);
        }
        let pool = within("build", b.build()).await.expect("pool builds");
        let (raw, connect) = within("tcp", pool.apply(tcp_connect, port)).await.unwrap();
        assert_eq!((raw, connect), (Ok(()), Ok(())));
        let r = within("unix", pool.apply(unix_socket, ())).await.unwrap();
        assert_eq!(r, Ok(()));
        finish(pool).await;
    }
}

#[tokio::test]
async fn files_are_written_only_under_allowed_paths() {
    let allowed = Scratch::new("sandbox-allowed");
    let outside = Scratch::new("sandbox-outside");
    let sandbox = Sandbox::new()
        .allow_write(allowed.dir())
        .allow_read(outside.path("readable"));
    std::fs::write(outside.path("readable"), b"abc").unwrap();
    std::fs::write(outside.path("secret"), b"abcd").unwrap();
    let pool = within("build", builder(false).sandbox(sandbox).build())
        .await
        .expect("pool builds");
    let pids = support::worker_pids(&pool);
    let write = |path: String| pool.apply(write_file, path);
    assert_eq!(
        within("write", write(allowed.path("in"))).await.unwrap(),
        Ok(())
    );
    assert!(allowed.exists("in"));
    let r = within("write", write(outside.path("out"))).await.unwrap();
    assert_eq!(r, Err(libc::EACCES));
    assert!(!outside.exists("out"));
    let r = within("write", write(outside.path("readable")))
        .await
        .unwrap();
    assert_eq!(
        r,
        Err(libc::EACCES),
        "read access does not give write access"
    );
    let read = |path: String| pool.apply(read_file, path);
    assert_eq!(
        within("read", read(outside.path("readable")))
            .await
            .unwrap(),
        Ok(3)
    );
    let r = within("read", read(outside.path("secret"))).await.unwrap();
    assert_eq!(r, Err(libc::EACCES));
    assert_served_on(&pool, &pids).await;
    finish(pool).await;

    let pool = make_pool(false).await;
    let r = within("write", pool.apply(write_file, outside.path("out"))).await;
    assert_eq!(r.unwrap(), Ok(()), "without a sandbox it writes anywhere");
    assert!(outside.exists("out"));
    finish(pool).await;
}

#[tokio::test]
async fn the_environment_is_cleared_in_a_sandbox() {
    let key = |k: &str| k.to_string();
    // The strict sandbox: only SANDBOX_ENV, and what the builder lets through.
    let pool = within("build", builder(true).env(ALLOWED).build())
        .await
        .expect("pool builds");
    assert_eq!(
        within("env", pool.apply(env_var, key(SECRET)))
            .await
            .unwrap(),
        None
    );
    let allowed = within("env", pool.apply(env_var, key(ALLOWED)))
        .await
        .unwrap();
    assert_eq!(allowed.as_deref(), Some("yes"));
    let path = within("env", pool.apply(env_var, key("PATH")))
        .await
        .unwrap();
    assert_eq!(path, std::env::var("PATH").ok(), "PATH is kept by default");
    finish(pool).await;

    let b = builder(false).sandbox(Sandbox::new().allow_parent_env(true));
    let pool = within("build", b.build()).await.expect("pool builds");
    let secret = within("env", pool.apply(env_var, key(SECRET)))
        .await
        .unwrap();
    assert_eq!(secret.as_deref(), Some(SECRET_VALUE), "allowed: inherited");
    finish(pool).await;

    let pool = make_pool(false).await;
    let secret = within("env", pool.apply(env_var, key(SECRET)))
        .await
        .unwrap();
    assert_eq!(
        secret.as_deref(),
        Some(SECRET_VALUE),
        "no sandbox: inherited"
    );
    finish(pool).await;
}

#[tokio::test]
async fn env_clear_without_a_sandbox_scrubs_the_secret_from_the_worker() {
    let key = |k: &str| k.to_string();
    let pool = within("build", builder(false).env_clear().env(ALLOWED).build())
        .await
        .expect("pool builds");
    assert_eq!(
        within("env", pool.apply(env_var, key(SECRET)))
            .await
            .unwrap(),
        None
    );
    let allowed = within("env", pool.apply(env_var, key(ALLOWED)))
        .await
        .unwrap();
    assert_eq!(allowed.as_deref(), Some("yes"));
    let path = within("env", pool.apply(env_var, key("PATH")))
        .await
        .unwrap();
    assert_eq!(path, None, "env_clear keeps only what env() names");
    let found = within("environ", pool.apply(secret_in_proc_environ, ()))
        .await
        .unwrap();
    assert!(!found, "the secret is blanked in /proc/self/environ too");
    finish(pool).await;

    let pool = make_pool(false).await;
    let found = within("environ", pool.apply(secret_in_proc_environ, ()))
        .await
        .unwrap();
    // Spawned workers and fork-server workers start from an environment block that
    // holds it; forked workers, from the test binary's own block, which holds it only
    // if the variable was set before the binary started (it is set at run time here).
    if support::start_method() != procpool::StartMethod::Fork {
        assert!(
            found,
            "without env_clear the secret is in the worker's block"
        );
    }
    finish(pool).await;
}

#[tokio::test]
async fn a_missing_kernel_feature_fails_the_build_by_name_unless_weaker_is_allowed() {
    let strict = Sandbox::new().require_landlock_abi(99);
    let err = within("build", builder(false).sandbox(strict.clone()).build())
        .await
        .expect_err("the kernel has no Landlock ABI 99");
    let message = err.to_string();
    assert!(message.contains("Landlock ABI 99"), "{message}");
    assert!(message.contains("allow_weaker"), "{message}");

    let start = Process::builder()
        .start_method(support::start_method())
        .sandbox(strict.clone())
        .start(whoami, ())
        .await;
    let message = start.expect_err("no Landlock ABI 99").to_string();
    assert!(message.contains("Landlock ABI 99"), "{message}");

    let weaker = strict.allow_weaker(true);
    let pool = within("build", builder(false).sandbox(weaker).build())
        .await
        .expect("a weaker sandbox is accepted");
    let r = within("signal", pool.apply(signal_parent, ()))
        .await
        .unwrap();
    assert_eq!(r, Err(libc::EPERM), "what the kernel has still applies");
    finish(pool).await;
}

#[tokio::test]
async fn a_missing_path_fails_the_build() {
    let err = within(
        "build",
        builder(false)
            .sandbox(Sandbox::new().allow_write("/nonexistent/procpool-sandbox"))
            .build(),
    )
    .await
    .expect_err("no such path");
    assert!(
        err.to_string().contains("/nonexistent/procpool-sandbox"),
        "{err}"
    );
}

#[tokio::test]
async fn an_initializer_that_leaves_threads_fails_the_build() {
    let b = builder(true).initializer(leave_a_thread, ());
    let err = within("build", b.build()).await.expect_err("threads left");
    assert!(err.to_string().contains("threads"), "{err}");
    // Without a sandbox the same initializer is fine.
    let b = builder(false).initializer(leave_a_thread, ());
    let pool = within("build", b.build()).await.expect("pool builds");
    finish(pool).await;
}

#[tokio::test]
async fn a_sandboxed_process_cannot_signal_its_parent() {
    set_service_env();
    let run = |sandbox: Option<Sandbox>| {
        let mut b = Process::builder()
            .start_method(support::start_method())
            .daemon(true);
        if let Some(sandbox) = sandbox {
            b = b.sandbox(sandbox);
        }
        b.start(signal_parent, ())
    };
    let child = within("start", run(Some(Sandbox::new())))
        .await
        .expect("starts");
    let pid = child.pid();
    assert_eq!(
        within("join", child.join()).await.unwrap(),
        Err(libc::EPERM)
    );
    assert!(wait_until(Duration::from_secs(10), move || support::is_gone(pid)).await);

    let child = within("start", run(None)).await.expect("starts");
    let pid = child.pid();
    assert_eq!(within("join", child.join()).await.unwrap(), Ok(()));
    assert!(wait_until(Duration::from_secs(10), move || support::is_gone(pid)).await);
}
