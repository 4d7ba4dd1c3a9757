//! Rootless: run a command in new user, network and mount namespaces whose `eth0` is a TAP that
//! usernet drives (the engine of `usernet run`, like `pasta -- CMD`).
//!
//! # Theory of operation
//!
//! [`spawn`] forks. The child `unshare`s a user, a network and a mount namespace; the parent
//! writes the child's uid/gid maps (its own ids mapped to root inside, the only mapping an
//! unprivileged process may write), and from then on the child is root *inside* its namespaces:
//! it creates the TAP `eth0` (this needs `/dev/net/tun` to be usable by the user, mode 0666 as
//! distributions ship it), configures `lo`, the address and the default route over rtnetlink,
//! bind-mounts a `resolv.conf` pointing at the gateway over `/etc/resolv.conf` (in its private
//! mount namespace only), and passes the TAP descriptor back to the parent with `SCM_RIGHTS`.
//! It then waits for [`Spawned::start`] — by then the parent has attached the TAP to a network
//! — and `exec`s the command. IPv6 needs no configuration: the kernel's SLAAC takes the gateway's
//! router advertisement.
//!
//! The parent never needs privileges: every socket NAT opens is an ordinary host socket.
//!
//! `spawn` forks, so call it before starting threads (the engine, signal handlers): the child
//! runs only simple system calls before `exec`, but a fork of a multi-threaded process may
//! inherit held locks.

use std::ffi::{CString, OsString};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::link::ifconfig::{IfConfig as Plan, Route};
use crate::link::netns::if_index;
use crate::link::rtnl::Rtnl;
use crate::link::tap::{TapLink, TapOptions};
use crate::sys::process::{self, Fork};
use crate::sys::{ns, scm};

/// How the new namespace is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SpawnOptions {
    /// Interface name inside (default `eth0`).
    pub ifname: String,
    /// The guest's address (default 10.88.0.100).
    pub addr: Ipv4Addr,
    /// Its prefix length (default 24).
    pub prefix: u8,
    /// Default gateway (default 10.88.0.1).
    pub gateway: Ipv4Addr,
    /// MTU of the interface (default 1500).
    pub mtu: u32,
    /// Contents for `/etc/resolv.conf` inside (None: leave the host's).
    pub resolv_conf: Option<String>,
    /// MAC of the interface (default: the kernel's random one); set it to know it up front.
    pub mac: Option<crate::wire::Mac>,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        SpawnOptions {
            ifname: "eth0".into(),
            addr: Ipv4Addr::new(10, 88, 0, 100),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            mtu: 1500,
            resolv_conf: None,
            mac: None,
        }
    }
}

/// A child waiting in its namespaces for [`Spawned::start`].
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid.
    pub pid: i32,
    /// The TAP inside its network namespace.
    pub tap: Option<TapLink>,
    sock: OwnedFd,
    _resolv: Option<tempfile_path::TempPath>,
}

impl Spawned {
    /// Lets the child `exec` its command.
    pub fn start(&self) -> io::Result<()> {
        scm::write_byte(self.sock.as_fd(), b'G')
    }
}

mod tempfile_path {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;

    use crate::error::{Error, Result};

    /// Writes `text` to a new file in the temp directory, mode 0644, under an unpredictable
    /// name, created exclusively (`O_EXCL`: a file or symlink planted there in advance by another
    /// user is never followed or reused, the next name is tried).
    pub fn create(text: &str) -> Result<TempPath> {
        let dir = std::env::temp_dir();
        let mut last = None;
        for _ in 0..8 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let p = dir.join(format!(
                "usernet-resolv-{}-{:016x}.conf",
                std::process::id(),
                h.finish()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&p)
            {
                Ok(mut f) => {
                    let tp = TempPath(p);
                    f.write_all(text.as_bytes())
                        .map_err(|e| Error::Io(format!("writing {}", tp.0.display()), e))?;
                    return Ok(tp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(Error::Io(format!("creating {}", p.display()), e)),
            }
        }
        Err(Error::Io(
            format!("creating a resolv.conf in {}", dir.display()),
            last.unwrap_or_else(|| std::io::Error::other("no free name")),
        ))
    }

    /// A file removed on drop.
    #[derive(Debug)]
    pub struct TempPath(pub PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Starts `cmd` in new namespaces (see the module docs); it runs once [`Spawned::start`] is
/// called.
pub fn spawn(cmd: &[OsString], opts: &SpawnOptions) -> Result<Spawned> {
    if cmd.is_empty() {
        return Err(Error::invalid("command", "no command given"));
    }
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::invalid("command", "an argument contains a NUL byte"))?;
    let resolv = match &opts.resolv_conf {
        Some(text) => Some(tempfile_path::create(text)?),
        None => None,
    };
    let resolv_c = resolv
        .as_ref()
        .and_then(|p| CString::new(p.0.as_os_str().as_bytes()).ok());
    let (parent_end, child_end) =
        scm::seqpacket_pair().map_err(|e| Error::Io("socketpair".into(), e))?;
    // SAFETY: the child only runs `child()`, which ends in exec or _exit and never returns into
    // this function (`spawn` is documented to be called before starting threads).
    let pid = match unsafe { process::fork() } {
        Err(e) => return Err(Error::Io("fork".into(), e)),
        Ok(Fork::Child) => {
            drop(parent_end);
            let code = match child(child_end.as_fd(), &argv, opts, resolv_c.as_ref()) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("usernet run: {e}");
                    127
                }
            };
            process::exit_now(code);
        }
        Ok(Fork::Parent(pid)) => pid,
    };
    drop(child_end);
    let fd = parent_end.as_fd();
    let fail = |what: &str, e: io::Error| {
        process::kill_and_reap(pid);
        Error::Io(what.to_string(), e)
    };
    match scm::read_byte(fd) {
        Ok(b'U') => {}
        Ok(_) => return Err(fail("child", io::Error::other("protocol error"))),
        Err(e) => return Err(fail("child did not create its namespaces", e)),
    }
    if let Err(e) = write_maps(pid) {
        return Err(fail("writing the child's uid/gid maps", e));
    }
    scm::write_byte(fd, b'M').map_err(|e| fail("child", e))?;
    let tap_fd = recv_fd(parent_end.as_fd())
        .map_err(|e| fail("child could not set up its network (see above)", e))?;
    let tap = TapLink::from_fd(tap_fd).map_err(|e| fail("adopting the child's TAP", e.source))?;
    Ok(Spawned {
        pid,
        tap: Some(tap),
        sock: parent_end,
        _resolv: resolv,
    })
}

fn write_maps(pid: i32) -> io::Result<()> {
    let (uid, gid) = process::ids();
    let base = PathBuf::from(format!("/proc/{pid}"));
    std::fs::write(base.join("uid_map"), format!("0 {uid} 1\n"))?;
    // Unprivileged writers must deny setgroups before writing gid_map.
    let _ = std::fs::write(base.join("setgroups"), "deny");
    std::fs::write(base.join("gid_map"), format!("0 {gid} 1\n"))?;
    Ok(())
}

enum Never {}

fn child(
    sock: BorrowedFd<'_>,
    argv: &[CString],
    opts: &SpawnOptions,
    resolv: Option<&CString>,
) -> io::Result<Never> {
    if let Err(e) = ns::unshare_user_net_mount() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "unshare(user, net, mount namespaces): {e} (are unprivileged user namespaces allowed?)"
            ),
        ));
    }
    scm::write_byte(sock, b'U')?;
    if scm::read_byte(sock)? != b'M' {
        return Err(io::Error::other("parent did not map our ids"));
    }
    // Mounts stay private to this namespace.
    let _ = ns::make_mounts_private();
    if let Some(src) = resolv
        && let Err(e) = ns::bind_mount(src, c"/etc/resolv.conf")
    {
        eprintln!("usernet run: warning: cannot bind-mount resolv.conf: {e}");
    }
    let tap = TapLink::create(
        &opts.ifname,
        &TapOptions {
            vnet_hdr: true,
            mtu: Some(opts.mtu),
            up: false,
            offload: true,
        },
    )
    .map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
    Plan {
        mtu: Some(opts.mtu),
        addrs: vec![IpNet::V4(
            Ipv4Net::new(opts.addr, opts.prefix).map_err(io::Error::other)?,
        )],
        routes: vec![Route::default_via(IpAddr::V4(opts.gateway))],
        lo_up: true,
        mac: opts.mac,
    }
    .apply(&opts.ifname)?;
    send_fd(sock, std::os::fd::AsFd::as_fd(&tap))?;
    drop(tap);
    if scm::read_byte(sock)? != b'G' {
        return Err(io::Error::other("parent gave up"));
    }
    let e = process::exec(argv);
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("cannot run {:?}: {e}", argv[0]),
    ))
}

/// Sends the TAP `fd` to the parent with one byte (`T`).
fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    scm::send_with_fd(sock, b"T", Some(fd))
}

/// Receives the TAP the child sent with [`send_fd`].
fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut byte = [0u8];
    let got = scm::recv_with_fds(sock, &mut byte)?;
    if got.len == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "child exited"));
    }
    got.fds
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no descriptor received"))
}

/// Address settings for [`tap_in_namespace`]'s `configure` (applied as an
/// [`crate::link::ifconfig::IfConfig`]).
#[derive(Debug, Clone)]
pub struct IfConfig {
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// An IPv6 address and prefix length too (the IPv6 default route comes from the gateway's
    /// router advertisements).
    pub addr6: Option<(std::net::Ipv6Addr, u8)>,
}

/// Creates a TAP named `ifname` inside an existing network namespace (`netns` path), entering
/// its user namespace first when `userns` is given (as slirp4netns does for rootless
/// containers: that is what gives the right to create devices there), optionally configures
/// it (`lo` up, then the TAP up, MTU, address, default route, over rtnetlink), and returns it. Forks a helper process
/// for the `setns` calls (a user namespace can only be joined by a single-threaded process), so
/// call it before starting threads.
pub fn tap_in_namespace(
    netns: &std::path::Path,
    userns: Option<&std::path::Path>,
    ifname: &str,
    mtu: u32,
    mac: Option<crate::wire::Mac>,
    configure: Option<IfConfig>,
) -> Result<TapLink> {
    use std::fs::File;
    let net = File::open(netns)
        .map_err(|e| Error::Io(format!("opening netns {}", netns.display()), e))?;
    let user = match userns {
        Some(p) => Some(
            File::open(p).map_err(|e| Error::Io(format!("opening userns {}", p.display()), e))?,
        ),
        None => None,
    };
    let (parent_end, child_end) =
        scm::seqpacket_pair().map_err(|e| Error::Io("socketpair".into(), e))?;
    // SAFETY: the child only runs the closure below and _exits (`tap_in_namespace` is
    // documented to be called before starting threads).
    let forked = unsafe { process::fork() }.map_err(|e| Error::Io("fork".into(), e))?;
    if let Fork::Parent(pid) = forked {
        drop(child_end);
        let fd = recv_fd(parent_end.as_fd());
        process::reap(pid);
        let fd = fd.map_err(|e| {
            Error::Io(
                format!("creating TAP {ifname} in {} (see above)", netns.display()),
                e,
            )
        })?;
        return TapLink::from_fd(fd).map_err(Error::from);
    }
    // The child.
    drop(parent_end);
    let r = (|| -> io::Result<()> {
        if let Some(u) = &user {
            // Joining our own user namespace fails with EINVAL: fine (slirp4netns ignores it).
            let _ = ns::enter_user(u.as_fd());
        }
        if let Err(e) = ns::enter_net(net.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("setns(net): {e}"),
            ));
        }
        let tap = TapLink::create(
            ifname,
            &TapOptions {
                vnet_hdr: true,
                mtu: Some(mtu),
                up: false,
                offload: true,
            },
        )
        .map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
        if let (Some(m), None) = (mac, &configure) {
            let idx =
                if_index(ifname).map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
            Rtnl::open()?.set_mac(idx, m.0)?;
        }
        if let Some(c) = &configure {
            // `lo` too, as slirp4netns does: servers in the namespace bind 127.0.0.1, and
            // Podman's rootlessport connects to the container from inside.
            let mut addrs = vec![IpNet::V4(
                Ipv4Net::new(c.addr, c.prefix).map_err(io::Error::other)?,
            )];
            if let Some((a6, p6)) = c.addr6 {
                addrs.push(IpNet::V6(
                    ipnet::Ipv6Net::new(a6, p6).map_err(io::Error::other)?,
                ));
            }
            Plan {
                mtu: Some(mtu),
                addrs,
                routes: vec![Route::default_via(IpAddr::V4(c.gateway))],
                lo_up: true,
                mac,
            }
            .apply(ifname)?;
        }
        send_fd(child_end.as_fd(), std::os::fd::AsFd::as_fd(&tap))
    })();
    let code = match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("usernet: creating {ifname} in {}: {e}", netns.display());
            1
        }
    };
    process::exit_now(code);
}
