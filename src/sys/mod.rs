//! The thin OS layer: the system calls the rest of the crate needs, behind safe functions.
//!
//! The goal (issue 17) is that this is the only module that calls libc: the links, the
//! namespace helpers, NAT's splicer and the gateway's timers use these wrappers instead of
//! their own `unsafe` blocks. Calls go through `rustix` where it covers them (no `unsafe`
//! here either); what stays raw libc keeps a `// SAFETY:` comment on every block
//! (`clippy::undocumented_unsafe_blocks` is enforced crate-wide).
//!
//! - [`scm`]: descriptor passing over UNIX sockets (`SCM_RIGHTS`) and the `SOCK_SEQPACKET`
//!   pairs forked helpers talk over.
//! - [`ifreq`]: the interface `ioctl`s on a `struct ifreq` (flags, MTU, index, name, and the
//!   TUN driver's `TUNSETIFF`/`TUNGETIFF`), and the control socket they are issued on.
//! - [`tun`]: opening `/dev/net/tun` and the TUN driver's integer ioctls (features, offloads,
//!   virtio-net header size, the namespace of a TAP).
//! - [`ns`]: joining a namespace (`setns`), the owner of one (`NS_GET_USERNS`), `unshare`,
//!   private and bind mounts.
//! - [`process`]: fork a helper, `_exit`, reap or kill it, `exec`, the caller's ids, the
//!   descriptor limit; [`random`]: `getrandom`.
//! - [`caps`]: capability sets, the bounding and ambient sets, no-new-privs (the sandbox).
//! - [`timer`]: a one-shot monotonic `timerfd` (the gateway port's timers).
//! - [`pipe`]: pipes and `splice(2)` (spliced port forwards); [`sock`]: ping sockets, `bind`
//!   for them, and `SO_LINGER` 0.
//! - [`packet`]: `AF_PACKET` sockets (open, bind, promiscuous membership, `SOL_PACKET` flags)
//!   and [`packet::MmsgBatch`], batched `recvmmsg`/`sendmmsg` with each frame's VLAN tag from
//!   `PACKET_AUXDATA`.
//! - [`file`]: [`file::DropBehind`], streaming a capture file out without filling the page
//!   cache (`sync_file_range`, `posix_fadvise`).
//! - [`io`]: the links' descriptor I/O: `eventfd` ([`io::EventFd`]), `poll`, `readv`, `write`,
//!   `O_NONBLOCK`.

pub mod caps;
pub mod file;
pub mod ifreq;
pub mod io;
pub mod ns;
pub mod packet;
pub mod pipe;
pub mod process;
pub mod random;
pub mod scm;
pub mod sock;
pub mod timer;
pub mod tun;
