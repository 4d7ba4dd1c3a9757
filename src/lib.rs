//! usernet: container and VM networking in userspace.
//!
//! One process gives any number of containers, VMs and namespaces a switched network with no
//! kernel bridge and no iptables: ports over real file descriptors (TAP devices, AF_PACKET on
//! veth or any interface, in-memory links), a learning L2 bridge per network, and mio event
//! loops with lock-free per-port queues so one slow port never stalls the others.
//!
//! ```text
//!  netns c1 ─ TAP ┐
//!  netns c2 ─ TAP ┼─ [ bridge "net0" ]     several networks per process,
//!  veth/eth ─ AF_PACKET ┘                   no frame ever crosses between them
//!  embedder ─ memory ┘
//! ```
//!
//! The frame path (`docs/ARCHITECTURE.md` in the repository is the full map):
//!
//! ```text
//! fd readable ─► Link::recv_batch ─► parse L2 once ─► policy ─► learn ─► decide ─► per-port TX ring ─► Link::send_batch
//! ```
//!
//! The rooms, bottom up (each imports only rooms below it):
//!
//! - `sys` (crate-private): the thin OS layer, where the system calls live (descriptor
//!   passing so far; the rest of the crate's libc calls move there step by step).
//! - [`wire`]: Ethernet/IP views and the packet builders the gateway and NAT share.
//! - [`frame`]: pooled frame buffers with their offload metadata; [`offload`]: GSO
//!   segmentation and checksums for links that cannot take offloaded frames.
//! - [`capture`]: live packet capture of a port (pcapng/pcap), fed by the loops without
//!   blocking them.
//! - [`link`]: the OS shims (TAP, AF_PACKET, stream, memory; rtnetlink and namespace entry), the
//!   only code that touches descriptors.
//! - [`bridge`]: the pure switching core (FDB with aging and fair eviction, forwarding rules,
//!   port security, counters), unit-tested and fuzzed without a kernel.
//! - [`engine`]: the mio event loops and the narrow [`engine::Datapath`] handle.
//! - [`nat`]: userspace NAT (guest TCP/UDP/ICMP as host sockets) and port forwards.
//! - [`gateway`]: each network's virtual gateway (ARP, ICMP, DHCP, DNS, NDP/RA, NAT) as a port.
//! - [`control`]: the [`Handle`] for embedders (ports, addresses, networks, forwards, views),
//!   the public [`Engine`], and the JSON API of the `usernet` daemon.
//! - [`config`]: the TOML file of `usernet up`.
//! - [`spawn`], [`sandbox`]: `usernet run`'s namespaces, and the seccomp/capability sandbox.
//! - [`error`]: the crate's [`Error`].
//!
//! # Embedding
//!
//! A runtime links the crate, starts an [`Engine`] and drives it through its [`Handle`]. Here two
//! in-memory ports (an embedder's own network stacks, say) share a network; a broadcast from one
//! reaches the other:
//!
//! ```
//! use std::time::Duration;
//! use usernet::bridge::PortPolicy;
//! use usernet::link::memory::MemoryLink;
//! use usernet::{Engine, EngineConfig};
//!
//! let engine = Engine::start(EngineConfig::default())?;
//! let h = engine.handle();
//! h.add_network("net0", Default::default())?;
//!
//! // Each pair: one end for the switch, one for us.
//! let (a_switch, a) = MemoryLink::pair(256, 1518)?;
//! let (b_switch, b) = MemoryLink::pair(256, 1518)?;
//! h.add_port("net0", "a", PortPolicy::default(), Box::new(a_switch))?;
//! h.add_port("net0", "b", PortPolicy::default(), Box::new(b_switch))?;
//!
//! let mut frame = vec![0xff; 6]; // broadcast
//! frame.extend([0x02, 0, 0, 0, 0, 0x0a]); // source MAC
//! frame.extend([0x88, 0xb5]); // EtherType (local experimental)
//! frame.extend([0u8; 46]);
//! assert!(a.send_bytes(&frame));
//! let got = b.recv_timeout(Duration::from_secs(2)).expect("b receives the broadcast");
//! assert_eq!(got.data(), &frame[..]);
//!
//! // The MAC was learned on port a.
//! let fdb = h.fdb(Some("net0"))?;
//! assert_eq!((fdb[0].port.as_str(), fdb[0].mac.to_string().as_str()), ("a", "02:00:00:00:00:0a"));
//! engine.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With root (or a runtime-provided namespace), a port is a TAP created inside a container's
//! network namespace, or an fd the runtime hands over:
//!
//! ```no_run
//! # use usernet::{Engine, EngineConfig, PortSpec};
//! # let engine = Engine::start(EngineConfig::default())?;
//! # let h = engine.handle();
//! # h.add_network("net0", Default::default())?;
//! let mut spec = PortSpec::new("net0", "web");
//! spec.netns = Some("/run/netns/c1".into()); // TAP "eth0" is created inside it
//! h.open_port(&spec)?;
//!
//! # let fd: std::os::fd::OwnedFd = std::fs::File::open("/dev/null")?.into();
//! // A TAP fd opened by the runtime (IFF_TAP | IFF_NO_PI, optionally IFF_VNET_HDR):
//! let tap = usernet::link::tap::TapLink::from_fd(fd)?;
//! h.add_port("net0", "vm1", Default::default(), Box::new(tap))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bridge;
pub mod capture;
pub mod config;
pub mod control;
pub mod engine;
pub mod error;
pub mod frame;
pub mod gateway;
pub mod link;
pub mod nat;
pub mod offload;
pub mod policy;
mod queue_device;
pub mod sandbox;
pub mod spawn;
pub(crate) mod sys;
pub mod wire;

pub use control::node::Engine;
pub use control::{Handle, PortSpec};
pub use engine::EngineConfig;
pub use error::{Error, Result};
