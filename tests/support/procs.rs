//! Processes as /proc shows them: state, parent, descendants, zombies, niceness; and
//! reaping orphans that come to this process as their subreaper.

use std::time::Duration;

use super::eventually;

/// The state letter of `pid` from /proc (`R`, `S`, `Z`, ...), or `None` if it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// The parent pid of `pid`, if it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a process that still runs (a zombie does not count as running).
pub fn is_running(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Whether `pid` is gone entirely: neither running nor a zombie.
pub fn is_gone(pid: u32) -> bool {
    proc_state(pid).is_none()
}

/// Zombie children of this process.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me) && proc_state(pid) == Some('Z'))
        .collect()
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`),
/// so that the processes of a helper parent a test kills come to it, not to init, and
/// the test can reap them: no zombie is left behind, whatever init does.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes integers only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Reaps `pid`, an orphan that came to this process (see [`become_subreaper`]), once
/// it has ended; waits at most `within`. Returns whether it is gone.
pub fn reap_orphan(pid: u32, within: Duration) -> bool {
    eventually(within, || {
        if parent_of(pid) == Some(std::process::id()) {
            // SAFETY: waitpid on a child of ours, with a null status pointer.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        }
        is_gone(pid)
    })
}

/// Every descendant of `pid` (children, their children, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|&&p| parent_of(p) == Some(parent)));
        i += 1;
    }
    found.remove(0);
    found
}

/// Reads this process's niceness: field 19 of /proc/self/stat.
pub fn niceness_of(pid: &str) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which is in parentheses) start at field 3.
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(19 - 3)
        .expect("field 19")
        .parse()
        .expect("niceness is a number")
}

/// The pids a helper process printed on a line `PIDS 1 2 3` of its stdout (libtest may
/// print "test name ... " before it on the same line); bounded by [`super::BOUND`].
pub async fn pids_line(stdout: tokio::process::ChildStdout) -> Vec<u32> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(stdout).lines();
    super::within("the helper's PIDS line", async {
        while let Some(line) = lines.next_line().await.expect("read helper stdout") {
            if let Some(at) = line.find("PIDS ") {
                return line[at + "PIDS ".len()..]
                    .split_whitespace()
                    .map(|p| p.parse().expect("a pid"))
                    .collect();
            }
        }
        panic!("the helper ended without printing its pids");
    })
    .await
}

/// This test binary again, running only the ignored test `name` (a helper process),
/// with its stdout piped (see [`pids_line`]) and killed if the command is dropped.
pub fn helper_command(name: &str) -> tokio::process::Command {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "--exact",
        name,
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit())
    .kill_on_drop(true);
    cmd
}
