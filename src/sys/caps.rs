//! Capabilities and no-new-privs: what the sandbox ([`crate::sandbox`]) drops before it
//! installs its seccomp filter.

use std::io;

use rustix::thread::{CapabilitySet, CapabilitySets};

/// A process's effective, permitted and inheritable capability sets, one bit per capability
/// number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Caps {
    /// The effective set.
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
    /// The inheritable set.
    pub inheritable: u64,
}

/// Drops capability number `cap` from the bounding set (`PR_CAPBSET_DROP`; needs
/// `CAP_SETPCAP`). Raw prctl: rustix takes only the capabilities it names, and the sandbox drops
/// every number below 64.
pub(crate) fn drop_bounding(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Empties the ambient set (`PR_CAP_AMBIENT_CLEAR_ALL`).
pub(crate) fn clear_ambient() -> io::Result<()> {
    Ok(rustix::thread::clear_ambient_capability_set()?)
}

/// Sets no-new-privs (`PR_SET_NO_NEW_PRIVS`): `exec` can never grant privileges again.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    Ok(rustix::thread::set_no_new_privs(true)?)
}

/// The calling thread's capability sets (`capget`, version 3).
pub(crate) fn get() -> io::Result<Caps> {
    let s = rustix::thread::capabilities(None)?;
    Ok(Caps {
        effective: s.effective.bits(),
        permitted: s.permitted.bits(),
        inheritable: s.inheritable.bits(),
    })
}

/// Sets the calling thread's capability sets (`capset`, version 3; the kernel refuses to add
/// to the permitted set).
pub(crate) fn set(c: Caps) -> io::Result<()> {
    Ok(rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::from_bits_retain(c.effective),
            permitted: CapabilitySet::from_bits_retain(c.permitted),
            inheritable: CapabilitySet::from_bits_retain(c.inheritable),
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_and_writing_back_the_same_sets_works() {
        let c = get().expect("capget");
        assert_eq!(
            c.effective & !c.permitted,
            0,
            "effective is within permitted"
        );
        set(c).expect("capset of the same sets");
        assert_eq!(get().expect("capget"), c);
    }
}
