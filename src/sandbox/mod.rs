//! [`Sandbox`]: an opt-in jail for workers that handle hostile input.
//!
//! A worker that runs a task on hostile input (an image decoder, a parser, a C library)
//! may be taken over by it. Without a sandbox such a worker can do whatever the service
//! can: it runs as the same user. With one, it is shut in before its first task:
//!
//! - **no new privileges** (`PR_SET_NO_NEW_PRIVS`): nothing it executes gains any, and
//!   it keeps **no capabilities** (root's are dropped: effective, permitted,
//!   inheritable, ambient, and the bounding set where it may be changed);
//! - a **Landlock** ruleset (the kernel's unprivileged access control, through the
//!   `landlock` crate of the Landlock project): no access to the filesystem at all but
//!   reading (and executing) under [`allow_read`](Sandbox::allow_read) paths and full
//!   access under [`allow_write`](Sandbox::allow_write) paths; no TCP bind or connect
//!   unless [`allow_network`](Sandbox::allow_network); no signal to a process outside
//!   its own sandbox, no connection to an abstract Unix socket made outside it; no
//!   `ptrace` of a process outside it (Landlock always denies that), which also closes
//!   `/proc/<pid>/mem` and `/proc/<pid>/environ` of the service and its siblings;
//! - a **seccomp** filter (compiled by the `seccompiler` crate of rust-vmm, which
//!   Firecracker uses) that makes these system calls fail with `EPERM`:
//!   - signals to any process but itself: `kill`, `tkill`, `tgkill`,
//!     `rt_sigqueueinfo`, `rt_tgsigqueueinfo` unless the target is the worker's own
//!     pid (so `raise`, `abort` and signals between its own threads work; a process
//!     group or `-1` never is), `pidfd_open` of another pid, `pidfd_send_signal`,
//!     `pidfd_getfd`;
//!   - reaching into other processes: `ptrace`, `process_vm_readv`/`writev`,
//!     `process_madvise`, `process_mrelease`, `kcmp`; changing another process's
//!     priority, I/O priority, CPU placement, scheduling or memory placement
//!     (`setpriority`, `ioprio_set`, `sched_set*`, `migrate_pages`, `move_pages`
//!     where the target is not itself);
//!   - resource limits: every change (`setrlimit`, `prlimit64` with a new limit), not
//!     only raising: seccomp cannot read the new limit, which sits behind a pointer,
//!     and a worker has no need to change its limits (the pool sets them before it
//!     runs); reading limits, and `prlimit64` of itself, still work;
//!   - sockets: `socket()` for every family, `AF_UNIX` included, unless
//!     [`allow_network`](Sandbox::allow_network): the worker's channel exists already,
//!     and a Unix socket could reach a service on the host by its path (Landlock does
//!     not guard connecting to one); `socketpair` still works;
//!   - the kernel's wider surfaces: `mount` and the new mount API, `umount2`,
//!     `pivot_root`, `chroot`, `unshare`, `setns`, `clone` into new namespaces,
//!     `bpf`, `perf_event_open`, `userfaultfd`, `keyctl`, `add_key`, `request_key`,
//!     `io_uring_*` (its operations would bypass this filter), module and `kexec`
//!     loading, `reboot`, `swapon`/`swapoff`, `acct`, `quotactl`, setting the clocks,
//!     host and domain names, `syslog`, `iopl`/`ioperm`, `open_by_handle_at`,
//!     `name_to_handle_at`, `fanotify_init`, `vhangup`, and the terminal-injecting
//!     `ioctl`s `TIOCSTI` and `TIOCLINUX`;
//!   - `clone3` fails with `ENOSYS` (its flags sit behind a pointer the filter cannot
//!     read), so that the C library falls back to `clone`, whose flags it checks; on
//!     x86-64 every x32 system call fails with `ENOSYS`, as they would otherwise slip
//!     past a filter keyed on system call numbers.
//!
//! Everything else is allowed (the filter is a deny-list): a task may allocate, start
//! threads, read and write the descriptors it has, take locks, read the clock, and
//! start processes of its own, which inherit every restriction above.
//!
//! Where it is applied: in the worker, after its handshake has attached its channel and
//! reply ring and after the pool's initializer has run (so the initializer runs outside
//! the sandbox and may load what the tasks need), before the first task. Landlock binds
//! only the thread that applies it, so a worker refuses to start if its initializer
//! left threads running. A worker's process (and any it starts) can never leave its
//! sandbox. The fork server is not sandboxed, only its workers.
//!
//! Subprocesses a task starts stay in the sandbox; the signal rule compares with the
//! worker's pid, fixed when the filter is installed, so such a child cannot signal even
//! itself with `kill` (it may still exit, and `raise` in it fails), and the worker
//! cannot signal it either: end it by closing its pipes, or let it end with the worker.

mod seccomp;

use std::ffi::{c_char, CStr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a sandboxed worker may still do. Build one with [`Sandbox::new`] (the strictest:
/// no files, no network, a bare environment) and open it up with the `allow_*`
/// methods; give it to [`PoolBuilder::sandbox`](crate::PoolBuilder::sandbox) or
/// [`ProcessBuilder::sandbox`](crate::ProcessBuilder::sandbox).
///
/// # What it does
///
/// Before its first task the worker sets no-new-privileges, drops every capability,
/// restricts itself with Landlock (filesystem, TCP, signals and abstract Unix sockets
/// scoped to itself) and installs a seccomp filter that fails with `EPERM` the system
/// calls that reach other processes (signals but to itself, `ptrace`, reading or writing
/// their memory, changing their priority or placement), change resource limits, open
/// sockets, or reach the kernel's wider surfaces (mounts, namespaces, `bpf`,
/// `perf_event_open`, keyrings, `io_uring`, modules, clocks, ...). A task that tries one
/// gets an error (`EPERM`, or `EACCES` from Landlock), and the worker serves on.
///
/// The worker's environment is cleared too, but for `PATH`, `HOME`, `LANG`, `LC_ALL`
/// and `TZ` and the keys given to [`PoolBuilder::env`](crate::PoolBuilder::env), unless
/// [`allow_parent_env`](Sandbox::allow_parent_env).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), procpool::BuildError> {
/// use procpool::{Pool, Sandbox};
/// let pool = Pool::builder()
///     .processes(2)
///     .sandbox(Sandbox::new().allow_read("/usr/share/fonts").allow_write("/tmp/thumbs"))
///     .build()
///     .await?;
/// # pool.terminate().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    spec: SandboxSpec,
}

/// A sandbox as it travels to the worker in its setup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SandboxSpec {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    network: bool,
    weaker: bool,
    parent_env: bool,
    /// The lowest Landlock ABI the caller requires, above what the features need.
    landlock_abi: Option<u32>,
}

/// The environment a sandboxed worker keeps by default.
pub const SANDBOX_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// The Landlock ABI whose features the sandbox uses: filesystem rules with truncation
/// (3), TCP rules (4), device `ioctl`s (5), signal and abstract-socket scoping (6).
const LANDLOCK_ABI: u32 = 6;

impl Sandbox {
    /// The strictest sandbox: no filesystem access, no network, no signals or
    /// `ptrace` beyond itself, the environment cleared to [`SANDBOX_ENV`], and
    /// `build` fails if the kernel cannot enforce all of it.
    pub fn new() -> Self {
        Sandbox::default()
    }

    /// Lets the worker read (and execute) files under `path`, a file or a directory.
    /// It must exist when the pool is built.
    pub fn allow_read(mut self, path: impl Into<PathBuf>) -> Self {
        self.spec.read.push(path.into());
        self
    }

    /// Lets the worker read, write, create, rename and remove files under `path`, a
    /// file or a directory. It must exist when the pool is built. (Without
    /// capabilities, a worker running as root writes only where the file modes let
    /// its user write.)
    pub fn allow_write(mut self, path: impl Into<PathBuf>) -> Self {
        self.spec.write.push(path.into());
        self
    }

    /// Lets the worker open sockets (every family) and bind and connect TCP ports.
    /// Default: `false`.
    pub fn allow_network(mut self, allow: bool) -> Self {
        self.spec.network = allow;
        self
    }

    /// Lets the worker keep the environment it inherits (with the service's secrets,
    /// if any are in it), rather than only [`SANDBOX_ENV`] and the keys given to
    /// [`PoolBuilder::env`](crate::PoolBuilder::env). Default: `false`.
    pub fn allow_parent_env(mut self, allow: bool) -> Self {
        self.spec.parent_env = allow;
        self
    }

    /// Accepts a weaker sandbox where the kernel lacks a feature (an older Landlock
    /// ABI, no Landlock, no seccomp): the worker then applies what the kernel has.
    /// Default: `false`, and `build` fails naming what is missing.
    pub fn allow_weaker(mut self, allow: bool) -> Self {
        self.spec.weaker = allow;
        self
    }

    /// Requires at least this Landlock ABI (for tests of the missing-feature path).
    #[doc(hidden)]
    pub fn require_landlock_abi(mut self, abi: u32) -> Self {
        self.spec.landlock_abi = Some(abi);
        self
    }

    pub(crate) fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    /// Whether the sandbox lets the worker keep its whole environment.
    pub(crate) fn keeps_parent_env(&self) -> bool {
        self.spec.parent_env
    }
}

impl SandboxSpec {
    /// Checks, in the pool's process, what a worker will check before applying it:
    /// that the paths exist and that the kernel has every feature (unless weaker is
    /// allowed).
    ///
    /// # Errors
    ///
    /// A message naming the missing path or kernel features.
    pub(crate) fn check(&self) -> Result<(), String> {
        for path in self.read.iter().chain(&self.write) {
            if let Err(e) = std::fs::symlink_metadata(path) {
                return Err(format!("sandbox path {}: {e}", path.display()));
            }
        }
        let missing = self.missing_features();
        if missing.is_empty() || self.weaker {
            return Ok(());
        }
        Err(format!(
            "the kernel lacks what the sandbox needs: {} (allow_weaker(true) accepts a \
             weaker sandbox)",
            missing.join("; ")
        ))
    }

    /// The kernel features this sandbox needs that the kernel does not have.
    fn missing_features(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !seccomp_available() {
            missing.push("seccomp filters (SECCOMP_SET_MODE_FILTER with SECCOMP_RET_ERRNO)".into());
        }
        let has = landlock_abi();
        let mut need: Vec<(u32, &str)> = vec![
            (1, "Landlock filesystem rules (ABI 1)"),
            (3, "Landlock truncate control (ABI 3)"),
            (5, "Landlock device ioctl control (ABI 5)"),
            (
                6,
                "Landlock signal and abstract Unix socket scoping (ABI 6)",
            ),
        ];
        if !self.network {
            need.push((4, "Landlock TCP rules (ABI 4)"));
        }
        let required = self.landlock_abi.map(|abi| {
            (
                abi,
                format!("Landlock ABI {abi} (required by require_landlock_abi)"),
            )
        });
        for (abi, what) in need {
            if has < abi {
                missing.push(format!("{what}; this kernel has Landlock ABI {has}"));
            }
        }
        if let Some((abi, what)) = required {
            if has < abi {
                missing.push(format!("{what}; this kernel has Landlock ABI {has}"));
            }
        }
        missing
    }
}

/// The kernel's Landlock ABI version; 0 without Landlock.
fn landlock_abi() -> u32 {
    // SAFETY: with a null attribute, size 0 and LANDLOCK_CREATE_RULESET_VERSION, the
    // call only returns the version; it reads and writes no memory of ours.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// Whether the kernel has seccomp filters that can fail a call with an errno.
fn seccomp_available() -> bool {
    if target_arch().is_none() {
        return false;
    }
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which points to
    // a live local.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &action as *const u32,
        )
    };
    rc == 0
}

fn target_arch() -> Option<seccompiler::TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(seccompiler::TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(seccompiler::TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Some(seccompiler::TargetArch::riscv64)
    } else {
        None
    }
}

/// Which environment a worker keeps: `None`, all it inherits; `Some(keys)`, only these.
pub(crate) fn env_policy(
    clear: bool,
    keys: &[String],
    sandbox: Option<&Sandbox>,
) -> Option<Vec<String>> {
    if clear {
        return Some(keys.to_vec());
    }
    match sandbox {
        Some(sandbox) if !sandbox.keeps_parent_env() => {
            let mut keep: Vec<String> = SANDBOX_ENV.iter().map(|k| k.to_string()).collect();
            keep.extend(keys.iter().cloned());
            Some(keep)
        }
        _ => None,
    }
}

extern "C" {
    static mut environ: *mut *mut c_char;
}

/// Removes from this process's environment every variable not in `keep`, and zeroes
/// them where they lie in memory (the block the process started with, which
/// `/proc/self/environ` shows, or the strings the parent set), so that the worker
/// cannot find them in its own memory either.
///
/// It edits the C library's `environ` array in place, taking no lock: in a forked
/// worker, a lock on the environment (Rust's or the C library's) may have been held by
/// another thread of the parent at the fork, and would never be released. Must run
/// while the process has one thread: the worker's handshake, before the initializer.
pub(crate) fn keep_only_env(keep: &[String]) {
    let kept = |key: &[u8]| keep.iter().any(|k| k.as_bytes() == key);
    // SAFETY: the process is single-threaded here (see above), so nothing reads or
    // changes the environment meanwhile. `environ` is the C library's null-terminated
    // array of pointers to NUL-terminated strings, each writable (the start-up block
    // on the stack, or strings `setenv` allocated; the array itself is the start-up
    // block or one `setenv` allocated). Each byte write stays inside a string's own
    // bytes, before its NUL; each pointer write moves a kept entry down to a slot
    // already read, and the null pointer ends the array where the kept ones end, so
    // the array stays null-terminated within its own length. Nothing else holds a
    // pointer into the array: Rust reads the environment through `getenv`.
    unsafe {
        let array = *std::ptr::addr_of!(environ);
        if array.is_null() {
            return;
        }
        let mut read = array;
        let mut write = array;
        while !(*read).is_null() {
            let s = *read;
            let bytes = CStr::from_ptr(s).to_bytes();
            let keep_it = match bytes.iter().position(|&b| b == b'=') {
                Some(eq) => kept(&bytes[..eq]),
                None => false,
            };
            if keep_it {
                *write = s;
                write = write.add(1);
            } else {
                std::ptr::write_bytes(s, 0, bytes.len());
            }
            read = read.add(1);
        }
        *write = std::ptr::null_mut();
    }
}

/// Shuts this worker in: no new privileges, Landlock, no capabilities, seccomp.
/// Called once, in the worker, before its first task.
///
/// # Errors
///
/// What could not be applied, or which kernel feature is missing (unless weaker is
/// allowed).
pub(crate) fn apply(spec: &SandboxSpec) -> Result<(), String> {
    spec.check()?;
    match std::fs::read_dir("/proc/self/task").map(Iterator::count) {
        Ok(1) => {}
        Ok(n) => {
            return Err(format!(
                "the worker runs {n} threads (did the initializer leave threads running?); \
                 the sandbox binds only the thread that applies it"
            ))
        }
        Err(e) if !spec.weaker => {
            return Err(format!("cannot count the worker's threads in /proc: {e}"))
        }
        Err(_) => {}
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        ));
    }
    let has_landlock = landlock_abi() > 0;
    if has_landlock || !spec.weaker {
        restrict_with_landlock(spec).map_err(|e| format!("Landlock: {e}"))?;
    }
    drop_capabilities()?;
    if seccomp_available() || !spec.weaker {
        seccomp::install_seccomp(spec.network)?;
    }
    Ok(())
}

fn restrict_with_landlock(spec: &SandboxSpec) -> Result<(), landlock::RulesetError> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset,
        RulesetAttr, RulesetCreatedAttr, Scope, ABI,
    };
    let abi = ABI::V6;
    debug_assert_eq!(abi as u32, LANDLOCK_ABI);
    // Best effort: `check` has refused a kernel that lacks a feature, unless the caller
    // accepted a weaker sandbox, which this then is.
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?;
    if !spec.network {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    ruleset = if spec.network {
        ruleset.scope(Scope::Signal)?
    } else {
        ruleset.scope(Scope::from_all(abi))?
    };
    let status = ruleset
        .create()?
        .add_rules(path_beneath_rules(&spec.read, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(&spec.write, AccessFs::from_all(abi)))?
        .no_new_privs(true)
        .restrict_self()?;
    let _ = status;
    Ok(())
}

/// Drops every capability: ambient, the bounding set (where this process may change it;
/// with no-new-privileges it cannot matter), then effective, permitted and inheritable.
fn drop_capabilities() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl with integer arguments only. Errors are expected and ignored:
    // EINVAL past the last capability or without ambient capabilities, EPERM without
    // CAP_SETPCAP (the bounding set then stays, which no-new-privileges makes moot).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
            {
                break;
            }
        }
    }
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads one header and two data structs (version 3), which point to
    // live locals of the layout the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, none.as_ptr()) };
    if rc != 0 {
        return Err(format!(
            "dropping capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn the_environment_policy() {
        let allowed = keys(&["A"]);
        // Nothing asked: inherit.
        assert_eq!(env_policy(false, &allowed, None), None);
        // env_clear: only what env() named, with or without a sandbox.
        assert_eq!(env_policy(true, &allowed, None), Some(keys(&["A"])));
        let strict = Sandbox::new();
        assert_eq!(
            env_policy(true, &allowed, Some(&strict)),
            Some(keys(&["A"]))
        );
        // A sandbox: SANDBOX_ENV and what env() named.
        let mut expected: Vec<String> = SANDBOX_ENV.iter().map(|k| k.to_string()).collect();
        expected.push("A".into());
        assert_eq!(env_policy(false, &allowed, Some(&strict)), Some(expected));
        // One that allows the parent's environment: inherit.
        let open = Sandbox::new().allow_parent_env(true);
        assert_eq!(env_policy(false, &allowed, Some(&open)), None);
    }

    #[test]
    fn the_filters_compile_within_the_kernels_limit() {
        for network in [false, true] {
            let programs = seccomp::seccomp_programs(12345, network).expect("compiles");
            assert!(programs.len() >= 2);
            for p in &programs {
                assert!(!p.is_empty() && p.len() <= 4096, "{} instructions", p.len());
            }
        }
    }

    #[test]
    fn a_feature_the_kernel_lacks_is_named() {
        let spec = Sandbox::new().require_landlock_abi(u32::MAX).spec.clone();
        let err = spec.check().expect_err("no kernel has that ABI");
        assert!(err.contains(&format!("Landlock ABI {}", u32::MAX)), "{err}");
        let weaker = Sandbox::new()
            .require_landlock_abi(u32::MAX)
            .allow_weaker(true)
            .spec
            .clone();
        assert_eq!(weaker.check(), Ok(()));
    }
}
