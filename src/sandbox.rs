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
//! [`enter_minimal_root`] is the file-system half of slirp4netns's `--enable-sandbox` (a
//! private mount namespace whose root holds only `/etc` and `/run`); [`apply_keeping`] keeps a
//! capability such as `CAP_NET_BIND_SERVICE`, as slirp4netns does.
//!
//! The list names only system calls every supported architecture has, or gates them: aarch64
//! has no `poll`, `epoll_wait`, `unlink` (its libc uses `ppoll`, `epoll_pwait`, `unlinkat`).
//! `restart_syscall` is on the list: the kernel uses it to resume a sleep or a poll interrupted
//! by SIGSTOP/SIGCONT; refusing it would make `nanosleep` fail (and the standard library
//! panic) in a process that was merely stopped and continued.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys::caps;
use crate::sys::ns::{self, MountFlags};

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
pub(crate) fn refused(feature: &str) -> String {
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
    // A capture's writer thread moves itself to SCHED_IDLE (a lower priority only).
    libc::SYS_sched_setscheduler,
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
    apply_keeping(&[])
}

/// Like [`apply`], but keeps the capabilities numbered in `keep` (e.g. `CAP_NET_BIND_SERVICE`,
/// 10, as slirp4netns's `--enable-sandbox` does, so port forwards below 1024 still bind).
pub fn apply_keeping(keep: &[u32]) -> io::Result<()> {
    drop_capabilities_except(keep)?;
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
    drop_capabilities_except(&[])
}

/// Like [`drop_capabilities`], but keeps the capabilities numbered in `keep` (in every set the
/// process has them in; the ambient set is cleared).
pub fn drop_capabilities_except(keep: &[u32]) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // Needs CAP_SETPCAP; without it (rootless) there is nothing to drop anyway.
        let _ = caps::drop_bounding(cap);
    }
    let _ = caps::clear_ambient();
    caps::set_no_new_privs()?;
    // Keep only what the process has: capset refuses to add to the permitted set.
    let cur = caps::get()?;
    let mut d = caps::Caps::default();
    for &cap in keep.iter().filter(|c| **c < 64) {
        let bit = 1u64 << cap;
        d.permitted |= cur.permitted & bit;
        d.effective |= cur.permitted & bit;
        d.inheritable |= cur.inheritable & bit;
    }
    caps::set(d)
}

/// Adds `what` to an error.
fn check(r: io::Result<()>, what: &str) -> io::Result<()> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// slirp4netns's `--enable-sandbox` file system: a new mount namespace whose root is an empty
/// read-only tmpfs holding only `/etc` and `/run` of the host (bind mounts, read-only, nosuid,
/// nodev, noexec: resolv.conf stays readable), entered with `pivot_root`; the old root is
/// detached. Every mount is made a slave first, so nothing done here propagates back to the
/// caller's namespace (a shared `/run/foo` stays mounted there), while new host mounts under
/// `/etc` and `/run` still show.
///
/// Call it while the process is single-threaded (a mount namespace is per thread: threads
/// started before keep the old root) and after opening every file the process needs.
pub fn enter_minimal_root() -> io::Result<()> {
    check(ns::unshare_mount(), "unshare(CLONE_NEWNS)")?;
    check(ns::make_mounts_slave("/"), "making / a slave mount")?;
    let hard = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    check(
        ns::mount("tmpfs", "/tmp", "tmpfs", hard, c"size=1k"),
        "mounting a tmpfs on /tmp",
    )?;
    for d in ["/tmp/etc", "/tmp/run", "/tmp/old"] {
        std::fs::create_dir(d).map_err(|e| io::Error::new(e.kind(), format!("mkdir {d}: {e}")))?;
    }
    for (from, to) in [("/etc", "/tmp/etc"), ("/run", "/tmp/run")] {
        check(
            ns::mount(from, to, "", MountFlags::BIND | MountFlags::REC | hard, c""),
            &format!("bind-mounting {from}"),
        )?;
        check(
            ns::make_mounts_slave(to),
            &format!("making {to} a slave mount"),
        )?;
        check(
            ns::remount(to, MountFlags::BIND | MountFlags::RDONLY | hard, c""),
            &format!("remounting {to} read-only"),
        )?;
    }
    std::env::set_current_dir("/tmp")?;
    check(ns::pivot_root(".", "old"), "pivot_root to /tmp")?;
    std::env::set_current_dir("/")?;
    check(ns::detach("/old"), "detaching the old root")?;
    std::fs::remove_dir("/old")?;
    check(
        ns::remount("/", MountFlags::RDONLY | hard, c"size=0k"),
        "remounting / read-only",
    )
}
