//! Processes: forking a helper, reaping or killing it, `exec`, and the caller's ids.
//!
//! Forked helpers are how the crate enters a user namespace (`setns(CLONE_NEWUSER)` needs a
//! single-threaded process) and how `usernet run` creates its namespaces: see
//! [`crate::link::userns`] and [`crate::spawn`].

use std::ffi::CString;
use std::io;

use rustix::process::{Pid, Signal, WaitOptions};

/// Which side of a [`fork`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fork {
    /// The new process; it must end with [`exit_now`] (or `exec`), never return into the
    /// caller's caller.
    Child,
    /// The caller, with the child's pid.
    Parent(i32),
}

/// Forks.
///
/// # Safety
/// The usual caveat of `fork`: in a multi-threaded process, the child has only the calling
/// thread, and a lock another thread held (the allocator's, say) stays held in it. Call it from
/// a single-threaded process, or make the child run only what tolerates that (simple system
/// calls; the crate's helpers allocate a little, as slirp4netns's do). The child must end with
/// [`exit_now`] or an `exec`, so the parent's destructors do not run twice.
pub(crate) unsafe fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no memory-safety preconditions of its own; the caller accepts the
    // multi-threaded caveat above and ends the child with _exit or exec.
    match unsafe { libc::fork() } {
        pid if pid < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// Ends the process at once with `code` (`_exit`: no destructors, no atexit handlers, no
/// flushing of stdio buffers), as a forked child must.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and does not return.
    unsafe { libc::_exit(code) }
}

/// Waits for child `pid` to end and returns its raw wait status (0 if it cannot be waited
/// for).
pub(crate) fn reap(pid: i32) -> i32 {
    match Pid::from_raw(pid).map(|p| rustix::process::waitpid(Some(p), WaitOptions::empty())) {
        Some(Ok(Some((_, status)))) => status.as_raw(),
        _ => 0,
    }
}

/// Kills child `pid` (`SIGKILL`) and reaps it.
pub(crate) fn kill_and_reap(pid: i32) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
    }
    reap(pid);
}

/// Replaces the process image with `argv[0]` looked up in `PATH` (`execvp`); returns only on
/// failure, with the error.
pub(crate) fn exec(argv: &[CString]) -> io::Error {
    let Some(first) = argv.first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "empty command");
    };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `ptrs` is a NULL-terminated array of valid C strings that outlive the call.
    unsafe { libc::execvp(first.as_ptr(), ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// The real user and group ids of the process.
pub(crate) fn ids() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

/// The effective group id of the process.
pub(crate) fn egid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit where it is lower; returns the soft
/// limit now in force (`u64::MAX` for unlimited).
pub(crate) fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    let (cur, max) = (r.current.unwrap_or(u64::MAX), r.maximum.unwrap_or(u64::MAX));
    if cur < max {
        let want = Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        };
        if setrlimit(Resource::Nofile, want).is_ok() {
            return max;
        }
    }
    cur
}

/// True when the effective user is root (the default control socket's place; tests that need
/// privileges skip without it).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Gives the heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere).
/// glibc keeps freed large blocks for reuse once its mmap threshold has risen past them, so
/// NAT's 1 MiB flow buffers would stay resident after their flows end.
pub(crate) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes glibc serve every allocation of `bytes` or more with a mapping of its own, unmapped
/// when freed (`M_MMAP_THRESHOLD`; fixed, so it no longer rises past blocks once freed).
/// Process-wide; nothing outside glibc.
pub(crate) fn mmap_allocations_from(bytes: usize) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets one of the allocator's parameters.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            i32::try_from(bytes).unwrap_or(i32::MAX),
        );
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = bytes;
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only on CPU time no other thread of the
/// machine wants (a capture's writer: forwarding and the guests' own work come first). An
/// unprivileged thread cannot come back from it, so this is for threads that end with their
/// job.
pub(crate) fn sched_idle_this_thread() -> io::Result<()> {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `p` is a valid `sched_param` for the call.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_moves_to_sched_idle_alone() {
        let policy = std::thread::spawn(|| {
            sched_idle_this_thread().expect("SCHED_IDLE");
            // SAFETY: pid 0 is the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: pid 0 is the calling thread.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[test]
    fn a_forked_child_exits_with_its_code() {
        // SAFETY: the child only calls _exit.
        let pid = match unsafe { fork() }.expect("fork") {
            Fork::Child => exit_now(7),
            Fork::Parent(pid) => pid,
        };
        let status = reap(pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 7);
    }
}
