//! Entering a rootless container's namespaces from a forked helper, to create and configure its
//! TAP (the client side of a rootless `usernet attach`; see [`crate::control::rootless`]).
//!
//! A rootless container's network namespace is owned by the container's user namespace: only a
//! process with `CAP_NET_ADMIN`/`CAP_SYS_ADMIN` *there* may create an interface in it, and an
//! unprivileged process gets them only by joining that user namespace (its creator's uid owns
//! it, so the same user may). `setns(CLONE_NEWUSER)` needs a single-threaded process, which a
//! multi-threaded daemon never is; so each operation forks a helper that joins the user
//! namespace, then the network namespace, does its work, and hands its result (a TAP
//! descriptor, or an error message) back over a `SOCK_SEQPACKET` pair, as slirp4netns does.
//!
//! Each call forks: make it from a single-threaded process (the `usernet attach` CLI is one), or
//! accept the usual caveats of forking a multi-threaded one (the helper allocates).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::OpenError;
use super::ifconfig::IfConfig;
use super::netns::if_index;
use super::rtnl::Rtnl;
use super::tap::{TapLink, TapOptions};
use crate::sys::ns;
use crate::sys::process::{self, Fork};
use crate::sys::scm::{recv_with_fds, send_with_fd, seqpacket_pair};
use crate::wire::Mac;

/// A network namespace and the user namespace to join before it.
#[derive(Debug)]
pub struct NsTarget {
    net: OwnedFd,
    user: Option<OwnedFd>,
    label: String,
}

fn ns_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let f = File::from(fd.try_clone()?);
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

impl NsTarget {
    /// Opens the network namespace at `netns` and the user namespace to join first: `userns`
    /// when given, else the one that owns `netns` (`NS_GET_USERNS`). A user namespace that is
    /// the caller's own is not joined (the kernel refuses that).
    pub fn open(netns: &Path, userns: Option<&Path>) -> Result<NsTarget, OpenError> {
        let label = netns.display().to_string();
        let net: OwnedFd = File::open(netns)
            .map_err(|e| OpenError::new(format!("opening netns {label}"), e))?
            .into();
        let user: OwnedFd = match userns {
            Some(p) => File::open(p)
                .map_err(|e| OpenError::new(format!("opening userns {}", p.display()), e))?
                .into(),
            None => ns::owner_userns(net.as_fd()).map_err(|e| {
                OpenError::new(
                    format!("finding the user namespace that owns netns {label} (NS_GET_USERNS)"),
                    e,
                )
            })?,
        };
        let own = std::fs::metadata("/proc/self/ns/user").map(|m| (m.dev(), m.ino()));
        let theirs =
            ns_id(&user).map_err(|e| OpenError::new(format!("userns of netns {label}"), e))?;
        let user = match own {
            Ok(o) if o == theirs => None,
            _ => Some(user),
        };
        Ok(NsTarget { net, user, label })
    }

    /// True when a user namespace other than the caller's is joined first.
    pub fn joins_userns(&self) -> bool {
        self.user.is_some()
    }

    /// Creates the TAP `ifname` inside (virtio-net headers, offloads, down), with `mac` and
    /// `mtu` set, and returns its descriptor. The interface lives as long as a descriptor of it
    /// is open.
    pub fn create_tap(
        &self,
        ifname: &str,
        mtu: Option<u32>,
        mac: Option<Mac>,
    ) -> Result<OwnedFd, OpenError> {
        let what = format!("creating TAP {ifname} in {}", self.label);
        let fd = self.run(&what, || {
            let tap = TapLink::create(
                ifname,
                &TapOptions {
                    vnet_hdr: true,
                    mtu,
                    up: false,
                    offload: true,
                },
            )
            .map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
            if let Some(m) = mac {
                let idx =
                    if_index(ifname).map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
                Rtnl::open()?.set_mac(idx, m.0)?;
            }
            Ok(Some(tap.into_fd()))
        })?;
        fd.ok_or_else(|| OpenError::new(what, io::Error::other("the helper sent no descriptor")))
    }

    /// Applies `cfg` to `ifname` inside (see [`IfConfig::apply`]).
    pub fn configure(&self, ifname: &str, cfg: &IfConfig) -> Result<(), OpenError> {
        let what = format!("configuring {ifname} in {}", self.label);
        self.run(&what, || cfg.apply(ifname).map(|()| None))
            .map(|_| ())
    }

    /// Forks a helper that joins the namespaces and runs `f`; returns the descriptor `f`
    /// returned, or its error (with `what`).
    fn run(
        &self,
        what: &str,
        f: impl FnOnce() -> io::Result<Option<OwnedFd>>,
    ) -> Result<Option<OwnedFd>, OpenError> {
        let err = |e: io::Error| OpenError::new(what.to_string(), e);
        let (parent, child) = seqpacket_pair().map_err(err)?;
        // SAFETY: the child only runs `helper` below and _exits; it never returns here. (The
        // multi-threaded caveat is the module's: see its docs.)
        let pid = match unsafe { process::fork() }.map_err(err)? {
            Fork::Child => {
                drop(parent);
                let r = self.helper(f);
                let sent = match &r {
                    Ok(Some(fd)) => send_with_fd(child.as_fd(), b"T", Some(fd.as_fd())),
                    Ok(None) => send_with_fd(child.as_fd(), b"K", None),
                    Err(e) => {
                        let msg = format!("E{}:{e}", e.raw_os_error().unwrap_or(0));
                        send_with_fd(child.as_fd(), msg.as_bytes(), None)
                    }
                };
                process::exit_now(i32::from(r.is_err() || sent.is_err()));
            }
            Fork::Parent(pid) => pid,
        };
        drop(child);
        let mut buf = [0u8; 2048];
        let got = recv_with_fds(parent.as_fd(), &mut buf);
        let status = process::reap(pid);
        let mut got = got.map_err(err)?;
        match buf.first() {
            Some(b'T') if got.len == 1 && got.fds.len() == 1 => Ok(got.fds.pop()),
            Some(b'K') if got.len == 1 => Ok(None),
            Some(b'E') if got.len > 0 => {
                let text = String::from_utf8_lossy(&buf[1..got.len]).into_owned();
                let (errno, msg) = text.split_once(':').unwrap_or(("0", &text));
                let kind = match errno.parse::<i32>() {
                    Ok(n) if n > 0 => io::Error::from_raw_os_error(n).kind(),
                    _ => io::ErrorKind::Other,
                };
                Err(err(io::Error::new(kind, msg.to_string())))
            }
            _ => Err(err(io::Error::other(format!(
                "the helper ended without an answer (wait status {status:#x})"
            )))),
        }
    }

    /// In the forked helper: joins the namespaces, runs `f`.
    fn helper(
        &self,
        f: impl FnOnce() -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<Option<OwnedFd>> {
        if let Some(u) = &self.user {
            // The helper is single-threaded, as joining a user namespace requires.
            if let Err(e) = ns::enter_user(u.as_fd()) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("joining the user namespace that owns the netns: {e}"),
                ));
            }
        }
        if let Err(e) = ns::enter_net(self.net.as_fd()) {
            return Err(io::Error::new(e.kind(), format!("joining the netns: {e}")));
        }
        f()
    }
}
