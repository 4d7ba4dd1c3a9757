//! The measured ceiling (issue 18): a minimal TAP-to-TAP copy loop built from usernet's own
//! link code, so it makes the same syscalls (`readv`/`write` with virtio-net headers, 64 KiB
//! TSO frames passed through as they are) but has no bridge, no FDB, no rings between loops and
//! no second thread. `bench/run.py` runs it beside usernet as the system `copyloop`, so each L2
//! figure also reads as "usernet = X of what a userspace switch on a TAP can do on this
//! machine".
//!
//! `copyloop NETNS_A NETNS_B [MTU]` (as root): creates the TAP `eth0` (up, that MTU, default
//! 1500) in the namespaces `/run/netns/NETNS_A` and `/run/netns/NETNS_B`, prints `ready`, then
//! copies frames both ways until it is killed (the TAPs go with it). With `-` for NETNS_B the
//! frames from A go back to A (a one-port reflector, for smoke tests).
//!
//! Build: `cargo build --release --example copyloop`.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use usernet::frame::{Frame, FramePool};
use usernet::link::Link;
use usernet::link::tap::{TapLink, TapOptions};

/// Most frames queued towards one side before reading from the other stops (a port ring's
/// size in usernet).
const QUEUE: usize = 1024;
/// Frames read per `recv_batch` call (usernet's per-port budget).
const BATCH: usize = 64;

/// One direction: frames read from `from` wait in `q` for `to`.
struct Way {
    from: usize,
    to: usize,
    q: VecDeque<Frame>,
}

fn open(ns: &str, mtu: u32) -> Result<TapLink, Box<dyn std::error::Error>> {
    let mut opts = TapOptions::default();
    opts.mtu = Some(mtu);
    Ok(TapLink::create_in_netns(
        &Path::new("/run/netns").join(ns),
        "eth0",
        &opts,
    )?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        return Err("usage: copyloop NETNS_A NETNS_B|- [MTU]".into());
    };
    let mtu: u32 = args.get(2).map_or(Ok(1500), |m| m.parse())?;
    let mut links: Vec<TapLink> = vec![open(a, mtu)?];
    if b != "-" {
        links.push(open(b, mtu)?);
    }
    // As the engine sizes it: the MTU plus Ethernet and one VLAN tag, and GSO buffers.
    let pool = FramePool::with_gso(mtu as usize + 14 + 8, 1024, 256);
    let mut poll = Poll::new()?;
    for (i, l) in links.iter().enumerate() {
        let fd: RawFd = l.as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&fd),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    let n = links.len();
    let mut ways: Vec<Way> = (0..n)
        .map(|i| Way {
            from: i,
            to: (i + 1) % n,
            q: VecDeque::with_capacity(QUEUE),
        })
        .collect();
    println!("ready");
    std::io::stdout().flush()?;
    let mut events = Events::with_capacity(16);
    let mut batch = Vec::with_capacity(BATCH);
    let (mut copied, mut dropped) = (0u64, 0u64);
    loop {
        poll.poll(&mut events, Some(Duration::from_secs(1)))?;
        // Edge-triggered: move frames until no direction makes progress (every read drained
        // or held back by a full queue, every write blocked or done).
        loop {
            let mut moved = 0;
            for w in ways.iter_mut() {
                if !w.q.is_empty() {
                    let st = links[w.to].send_batch(&mut w.q)?;
                    moved += st.frames + st.errors;
                    copied += st.frames as u64;
                    dropped += st.errors as u64;
                }
                while w.q.len() < QUEUE {
                    batch.clear();
                    let st = links[w.from].recv_batch(
                        &pool,
                        &mut batch,
                        BATCH.min(QUEUE - w.q.len()),
                    )?;
                    moved += st.frames;
                    dropped += st.oversize as u64;
                    w.q.extend(batch.drain(..));
                    if st.drained || st.frames == 0 {
                        break;
                    }
                }
                if !w.q.is_empty() {
                    let st = links[w.to].send_batch(&mut w.q)?;
                    moved += st.frames + st.errors;
                    copied += st.frames as u64;
                    dropped += st.errors as u64;
                }
            }
            if moved == 0 {
                break;
            }
        }
        if events.is_empty() && std::env::var_os("COPYLOOP_VERBOSE").is_some() {
            eprintln!("copyloop: {copied} frames copied, {dropped} dropped");
        }
    }
}
