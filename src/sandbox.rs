//! Sandbox after setup: no capabilities, no new privileges, a seccomp allowlist of the system
//! calls the datapath uses (seccompiler), and so no new files opened.
//!
//! Applied once every descriptor the process needs is open (TAPs, control and API sockets).
//! After that, a system call outside the list fails with `EPERM` instead of running: the
//! datapath keeps working (it only polls, reads, writes, and opens sockets for NAT flows), but
//! `open`, `execve`, `mount`, `ptrace` and the like are refused. `EPERM` rather than killing the
//! process, so a call we did not foresee degrades one feature (it is logged by the caller as an
//! I/O error) instead of taking every guest's network down. One thing degrades by design:
//! re-reading `/etc/resolv.conf` when it changes (the last upstreams are kept).
//!
//! Features that need what the sandbox takes away are refused once it is on, with an error
//! naming the feature (see [`is_applied`]): ports that open a new TAP, enter a namespace or open
//! an `AF_PACKET` socket, and spliced forwards (they enter the guest's namespace for every
//! connection). Stream ports, NAT, DNS and ordinary port forwards keep working.
//!
//! The list names only system calls every supported architecture has, or gates them: aarch64
//! has no `poll`, `epoll_wait`, `unlink` (its libc uses `ppoll`, `epoll_pwait`, `unlinkat`).
//! `restart_syscall` is on the list: the kernel uses it to resume a sleep or a poll interrupted
//! by SIGSTOP/SIGCONT; refusing it would make `nanosleep` fail (and the standard library
//! panic) in a process that was merely stopped and continued.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Set once [`apply`] has installed the filter in this process.
static APPLIED: AtomicBool = AtomicBool::new(false);

/// True once [`apply`] succeeded in this process: callers refuse features that cannot work
/// under the sandbox (new TAP, namespace or packet ports; spliced forwards) with a clear error.
pub fn is_applied() -> bool {
    APPLIED.load(Ordering::Acquire)
}

/// The error for a `feature` that cannot work once the sandbox is on.
pub fn refused(feature: &str) -> String {
    format!(
        "{feature} is not available: the sandbox is on (no new files, namespaces or capabilities); \
         set it up before the sandbox is applied (config file, command line) or run without the sandbox"
    )
}

/// System calls the running datapath makes (event loops, NAT sockets, DNS workers, control
/// threads, timers, memory, signals, thread creation).
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_pipe2,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_prctl,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_lseek,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "aarch64")]
    libc::SYS_unlinkat,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Drops every capability, sets no-new-privs and installs the seccomp allowlist on all threads.
pub fn apply() -> io::Result<()> {
    drop_capabilities()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&n| (n, Vec::new())).collect();
    // fchmod only to 0600: a UNIX socket is made private before its bind (a stream port added
    // under the sandbox, see `control::server::bind_private`); nothing may be opened up.
    let private = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0o600)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| io::Error::other(format!("seccomp rule: {e}")))?;
    rules.insert(libc::SYS_fchmod, vec![private]);
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| io::Error::other(format!("seccomp filter: {e}")))?;
    let prog: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| {
        io::Error::other(format!("seccomp compile: {e}"))
    })?;
    seccompiler::apply_filter_all_threads(&prog)
        .map_err(|e| io::Error::other(format!("seccomp install: {e}")))?;
    APPLIED.store(true, Ordering::Release);
    Ok(())
}

/// Empties the effective, permitted and inheritable sets and the bounding set (as far as the
/// process may), and sets no-new-privs.
pub fn drop_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        for cap in 0..64 {
            // Needs CAP_SETPCAP; without it (rootless) there is nothing to drop anyway.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let d = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset with a valid version-3 header and two data words.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
