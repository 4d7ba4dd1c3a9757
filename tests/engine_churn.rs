//! Churn leaves nothing behind: a removed port keeps no FDB entry, neighbour entry, DNS name
//! or NAT flow, even when its last frames race with its removal. In-process (memory links, a
//! standalone gateway), deterministic, no root.

use std::collections::VecDeque;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use usernet::bridge::{FdbConfig, PortPolicy};
use usernet::frame::{Frame, FramePool};

use usernet::link::memory::MemoryLink;
use usernet::link::{Link, LinkCaps, LinkError, RecvStats, SendStats};

use usernet::wire::Mac;
use usernet::{Engine, EngineConfig, Handle};

const MAX_FRAME: usize = 1522;
const LIMIT: Duration = Duration::from_secs(5);

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0x77, n])
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// A memory link that, once it has read a frame, holds it until its port is gone from the
/// bridge, then hands it over: exactly the frame "read between the FDB flush and the detach".
struct RacyLink {
    inner: MemoryLink,
    h: Handle,
    name: String,
    /// Set while it holds a frame and waits for the removal.
    holding: Arc<AtomicBool>,
}

impl Link for RacyLink {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
    fn caps(&self) -> LinkCaps {
        self.inner.caps()
    }
    fn recv_batch(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        let st = self.inner.recv_batch(pool, out, max)?;
        if st.frames > 0 {
            self.holding.store(true, Ordering::Release);
            let gone = wait_until(LIMIT, || {
                self.h
                    .bridge()
                    .topology()
                    .port_by_name(&self.name)
                    .is_none()
            });
            assert!(gone, "{}: the port was never removed", self.name);
        }
        Ok(st)
    }
    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        self.inner.send_batch(queue)
    }
}

/// A frame from `src` to the broadcast address (an experimental EtherType).
fn frame_from(src: Mac) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(src.0);
    f.extend([0x88, 0xb5]);
    f.resize(60, 0);
    f
}

#[test]
fn a_frame_read_while_its_port_is_removed_leaves_no_fdb_entry() {
    let engine = Engine::start(EngineConfig::default()).expect("engine");
    let h = engine.handle();
    h.add_network("n", FdbConfig::default()).expect("network");
    // A second port so the network is not empty (the frame has somewhere to go).
    let (other, _other_peer) = MemoryLink::pair(64, MAX_FRAME).expect("pair");
    h.add_port("n", "stay", PortPolicy::default(), Box::new(other))
        .expect("port");
    for round in 0..5u8 {
        let name = format!("c{round}");
        let (end, peer) = MemoryLink::pair(64, MAX_FRAME).expect("pair");
        let holding = Arc::new(AtomicBool::new(false));
        let link = RacyLink {
            inner: end,
            h: h.clone(),
            name: name.clone(),
            holding: holding.clone(),
        };
        let id = h
            .add_port("n", &name, PortPolicy::default(), Box::new(link))
            .expect("port");
        assert!(peer.send_bytes(&frame_from(mac(round))));
        assert!(
            wait_until(LIMIT, || holding.load(Ordering::Acquire)),
            "the loop never read the frame"
        );
        h.remove_port(&name).expect("remove");
        let rows = h.fdb(Some("n")).expect("fdb");
        let stale: Vec<_> = rows
            .iter()
            .filter(|r| r.mac == mac(round) || r.port == format!("#{}", id.0))
            .collect();
        assert!(
            stale.is_empty(),
            "round {round}: FDB keeps entries of removed port {name} ({id:?}): {stale:?}"
        );
        drop(peer);
    }
}
