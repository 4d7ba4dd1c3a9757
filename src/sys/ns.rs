//! Namespaces: joining one (`setns`), finding the user namespace that owns one
//! (`NS_GET_USERNS`), creating new ones (`unshare`), and the two mounts `usernet run` makes in
//! its own mount namespace.
//!
//! `setns` changes the namespace of the calling *thread* only; the callers run it on a helper
//! thread ([`crate::link::netns::run_in_netns`]) or in a forked, single-threaded helper process
//! (joining a user namespace needs one: [`crate::link::userns`], [`crate::spawn`]).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub(crate) use rustix::mount::MountFlags;
use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// `NS_GET_USERNS` (`_IO(0xb7, 0x1)`): the user namespace that owns a namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// Moves the calling thread into the network namespace `ns` (`setns(CLONE_NEWNET)`).
pub(crate) fn enter_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    Ok(move_into_link_name_space(
        ns,
        Some(LinkNameSpaceType::Network),
    )?)
}

/// Moves the calling process into the user namespace `ns` (`setns(CLONE_NEWUSER)`; the kernel
/// refuses it to a multi-threaded process, and with `EINVAL` for the caller's own namespace).
pub(crate) fn enter_user(ns: BorrowedFd<'_>) -> io::Result<()> {
    Ok(move_into_link_name_space(
        ns,
        Some(LinkNameSpaceType::User),
    )?)
}

/// The user namespace that owns namespace `ns`, as a new descriptor (`NS_GET_USERNS`).
pub(crate) fn owner_userns(ns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling process into new user, network and mount namespaces
/// (`unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)`).
pub(crate) fn unshare_user_net_mount() -> io::Result<()> {
    // SAFETY: unshare takes flags only; these namespace flags change which namespaces the
    // process is in, not its memory or descriptors.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Moves the calling process into a new mount namespace (`unshare(CLONE_NEWNS)`).
pub(crate) fn unshare_mount() -> io::Result<()> {
    // SAFETY: unshare takes flags only; CLONE_NEWNS changes the mount namespace, not the
    // process's memory or descriptors.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes every mount in the caller's mount namespace private (`MS_REC | MS_PRIVATE` on `/`), so
/// mounts made from now on stay in this namespace.
pub(crate) fn make_mounts_private() -> io::Result<()> {
    Ok(rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?)
}

/// Bind-mounts `src` over `dst` (`MS_BIND`).
pub(crate) fn bind_mount(src: &CStr, dst: &CStr) -> io::Result<()> {
    Ok(rustix::mount::mount_bind(src, dst)?)
}

/// Makes `target` and every mount below it a slave (`MS_SLAVE | MS_REC`): mounts made here do
/// not propagate back, new ones from the peer group still show.
pub(crate) fn make_mounts_slave(target: &str) -> io::Result<()> {
    Ok(rustix::mount::mount_change(
        target,
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )?)
}

/// Mounts a new file system: `mount(src, target, fstype, flags, data)`.
pub(crate) fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &CStr,
) -> io::Result<()> {
    Ok(rustix::mount::mount(src, target, fstype, flags, data)?)
}

/// Remounts `target` with `flags` (`MS_REMOUNT | flags`; add [`MountFlags::BIND`] to change
/// only the per-mount flags of a bind mount).
pub(crate) fn remount(target: &str, flags: MountFlags, data: &CStr) -> io::Result<()> {
    Ok(rustix::mount::mount_remount(target, flags, data)?)
}

/// `pivot_root(new_root, put_old)`.
pub(crate) fn pivot_root(new_root: &str, put_old: &str) -> io::Result<()> {
    Ok(rustix::process::pivot_root(new_root, put_old)?)
}

/// Detaches the mount at `target` (`umount2(MNT_DETACH)`).
pub(crate) fn detach(target: &str) -> io::Result<()> {
    Ok(rustix::mount::unmount(target, UnmountFlags::DETACH)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_thread_can_rejoin_its_own_netns_and_find_its_owner() {
        let net = std::fs::File::open("/proc/self/ns/net").expect("own netns");
        // Re-entering one's own network namespace needs CAP_SYS_ADMIN; owner lookup does not.
        let owner = owner_userns(net.as_fd());
        assert!(owner.is_ok(), "NS_GET_USERNS: {owner:?}");
        let r = std::thread::spawn(move || enter_net(net.as_fd()))
            .join()
            .expect("thread");
        if !crate::sys::process::is_root() {
            assert!(r.is_err());
        } else {
            assert!(r.is_ok(), "setns(own netns): {r:?}");
        }
    }
}
