//! The sandbox's seccomp filters (see the parent module's docs for what they deny and
//! why), compiled by `seccompiler`.

use std::collections::BTreeMap;

use super::target_arch;

/// The filters that fail with `EPERM` (the deny-list) and with `ENOSYS` (`clone3`),
/// compiled for a worker whose pid is `me`.
pub(super) fn seccomp_programs(
    me: u32,
    network: bool,
) -> Result<Vec<seccompiler::BpfProgram>, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
        SeccompFilter, SeccompRule,
    };
    let arch = target_arch().ok_or("seccomp: this architecture is not supported")?;
    let err = |e: seccompiler::BackendError| format!("seccomp: {e}");
    let cond = |arg: u8, len: Len, op: Op, value: u64| {
        SeccompCondition::new(arg, len, op, value).map_err(err)
    };
    let rule = |conds: Vec<SeccompCondition>| SeccompRule::new(conds).map_err(err);
    let me = u64::from(me);
    // Argument `arg`, an int pid, is neither 0 (the caller itself, for the calls where
    // 0 means that) nor the worker.
    let other_pid = |arg: u8| -> Result<SeccompRule, String> {
        rule(vec![
            cond(arg, Len::Dword, Op::Ne, 0)?,
            cond(arg, Len::Dword, Op::Ne, me)?,
        ])
    };
    let not_me =
        |arg: u8| -> Result<SeccompRule, String> { rule(vec![cond(arg, Len::Dword, Op::Ne, me)?]) };

    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Signals to any process but itself.
    for nr in [
        libc::SYS_kill,
        libc::SYS_tkill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_pidfd_open,
    ] {
        deny.insert(nr, vec![not_me(0)?]);
    }
    // Other processes' memory, state, scheduling and placement.
    for nr in [
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setattr,
        libc::SYS_migrate_pages,
        libc::SYS_move_pages,
    ] {
        deny.insert(nr, vec![other_pid(0)?]);
    }
    deny.insert(
        libc::SYS_setpriority,
        vec![
            rule(vec![cond(
                0,
                Len::Dword,
                Op::Ne,
                libc::PRIO_PROCESS as u64,
            )?])?,
            other_pid(1)?,
        ],
    );
    const IOPRIO_WHO_PROCESS: u64 = 1;
    deny.insert(
        libc::SYS_ioprio_set,
        vec![
            rule(vec![cond(0, Len::Dword, Op::Ne, IOPRIO_WHO_PROCESS)?])?,
            other_pid(1)?,
        ],
    );
    // Limits: any change (the new limit is behind a pointer), or another process's.
    deny.insert(
        libc::SYS_prlimit64,
        vec![rule(vec![cond(2, Len::Qword, Op::Ne, 0)?])?, other_pid(0)?],
    );
    // Terminal injection through an inherited terminal. (The request's type differs
    // between targets.)
    #[allow(clippy::unnecessary_cast)]
    deny.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCSTI as u64)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCLINUX as u64)?])?,
        ],
    );
    // New namespaces through clone.
    let mut clone_rules = Vec::new();
    for flag in [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        0x80, // CLONE_NEWTIME
    ] {
        let flag = flag as u64;
        clone_rules.push(rule(vec![cond(0, Len::Qword, Op::MaskedEq(flag), flag)?])?);
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let mut always = vec![
        libc::SYS_pidfd_send_signal,
        libc::SYS_pidfd_getfd,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_process_madvise,
        libc::SYS_process_mrelease,
        libc::SYS_kcmp,
        libc::SYS_setrlimit,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_syslog,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fanotify_init,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    always.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    if !network {
        always.push(libc::SYS_socket);
    }
    for nr in always {
        deny.insert(nr, Vec::new());
    }
    let eperm = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    let enosys = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    let mut programs: Vec<seccompiler::BpfProgram> = vec![
        eperm.try_into().map_err(|e| format!("seccomp: {e}"))?,
        enosys.try_into().map_err(|e| format!("seccomp: {e}"))?,
    ];
    #[cfg(target_arch = "x86_64")]
    programs.push(x32_guard());
    Ok(programs)
}

/// On x86-64, a system call number with the x32 bit set is another call the filters
/// above would not recognise: fail them all with `ENOSYS`.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> seccompiler::BpfProgram {
    use seccompiler::sock_filter;
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JGE | BPF_K,
    // BPF_RET | BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const JGE_K: u16 = 0x05 | 0x30;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let op = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.arch
        op(LD_W_ABS, 4, 0, 0),
        op(JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        // seccomp_data.nr
        op(LD_W_ABS, 0, 0, 0),
        op(JGE_K, X32_SYSCALL_BIT, 0, 1),
        op(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, 0, 0),
        op(RET_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
}

pub(super) fn install_seccomp(network: bool) -> Result<(), String> {
    let programs = seccomp_programs(std::process::id(), network)?;
    for program in &programs {
        seccompiler::apply_filter_all_threads(program).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}
