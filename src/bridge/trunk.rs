//! 802.1Q trunk ports: the networks a trunk carries ([`TrunkSpec`], resolved to a [`Trunk`]),
//! the tag popped on ingress ([`Trunk::classify`]) and pushed on egress ([`Trunk::tag`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BridgeError, DropReason, NetworkId, Topology, security};
use crate::frame::Frame;

/// The networks an 802.1Q trunk port carries: `{ net0 = 10, net1 = 20 }` and, optionally,
/// the network of its untagged frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TrunkSpec {
    /// Network name → VLAN id (1-4094, each at most once).
    pub vlans: std::collections::BTreeMap<String, u16>,
    /// The network of untagged frames (not one of `vlans`); `None`: untagged frames are
    /// dropped (`unmapped_vlan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native: Option<String>,
}

impl TrunkSpec {
    /// A trunk carrying `vlans` (network name, VLAN id), with `native` for untagged frames.
    pub fn new<'a>(vlans: impl IntoIterator<Item = (&'a str, u16)>, native: Option<&str>) -> Self {
        TrunkSpec {
            vlans: vlans.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
            native: native.map(String::from),
        }
    }

    /// Checks the VLAN ids (1-4094, none twice), that some network is carried and that the
    /// native network is not also tagged. The error names the key under `prefix` (e.g.
    /// `port[0].trunk.net0`).
    pub fn check(&self, prefix: &str) -> Result<(), (String, String)> {
        if self.vlans.is_empty() && self.native.is_none() {
            return Err((
                prefix.to_string(),
                "empty: map at least one network to a VLAN id".into(),
            ));
        }
        let mut seen: std::collections::BTreeMap<u16, &str> = Default::default();
        for (net, &vid) in &self.vlans {
            let key = format!("{prefix}.{net}");
            if !(1..=4094).contains(&vid) {
                return Err((key, format!("VLAN id {vid} is outside 1..=4094")));
            }
            if let Some(other) = seen.insert(vid, net) {
                return Err((key, format!("VLAN id {vid} is also the one of {other:?}")));
            }
        }
        if let Some(n) = &self.native
            && self.vlans.contains_key(n)
        {
            return Err((
                format!("{prefix}.native"),
                format!("{n:?} is also in the trunk map: a network is either tagged or native"),
            ));
        }
        Ok(())
    }

    /// Every network name it carries, tagged ones first.
    pub fn networks(&self) -> impl Iterator<Item = &str> {
        self.vlans
            .keys()
            .map(String::as_str)
            .chain(self.native.as_deref())
    }
}

/// One network of a trunk port, resolved.
#[derive(Debug)]
pub struct TrunkVlan {
    /// VLAN id on the wire (0 for the native network: untagged).
    pub vid: u16,
    /// The network.
    pub network: NetworkId,
    /// What the port owns in that network (port security is per network).
    pub owned: Arc<security::PortOwned>,
}

/// A trunk port's networks (the bridge side of a [`TrunkSpec`]).
#[derive(Debug)]
pub struct Trunk {
    /// Tagged networks, sorted by VLAN id.
    pub vlans: Vec<TrunkVlan>,
    /// The network of untagged frames.
    pub native: Option<TrunkVlan>,
}

/// TPID of an 802.1Q tag.
const TPID_8021Q: [u8; 2] = [0x81, 0x00];

impl Trunk {
    /// The network of a frame received on the trunk, popping its 802.1Q tag (in place). Only
    /// the 802.1Q TPID (0x8100) is a trunk tag; any other frame (802.1ad too) is untagged.
    pub(super) fn classify(&self, frame: &mut Frame) -> Result<&TrunkVlan, DropReason> {
        let d = frame.data();
        if d.len() < 14 {
            return Err(DropReason::Runt);
        }
        if d[12..14] != TPID_8021Q {
            return self.native.as_ref().ok_or(DropReason::UnmappedVlan);
        }
        if d.len() < 18 {
            return Err(DropReason::Runt);
        }
        let vid = u16::from_be_bytes([d[14], d[15]]) & 0x0fff;
        let v = if vid == 0 {
            // Priority-tagged: untagged as far as VLANs go.
            self.native.as_ref()
        } else {
            self.vlans
                .binary_search_by_key(&vid, |v| v.vid)
                .ok()
                .and_then(|i| self.vlans.get(i))
        }
        .ok_or(DropReason::UnmappedVlan)?;
        frame.pop_vlan();
        Ok(v)
    }

    /// Tags a frame leaving on the trunk for `net` (none for the native network, where an
    /// already 802.1Q-tagged frame is refused: `native_tagged`). `link_error` when the trunk
    /// does not carry `net` or the frame cannot take a tag.
    pub(super) fn tag(&self, net: NetworkId, frame: &mut Frame) -> Result<(), DropReason> {
        if self.native.as_ref().is_some_and(|n| n.network == net) {
            return match frame.data().get(12..14) {
                Some(et) if et == TPID_8021Q => Err(DropReason::NativeTagged),
                _ => Ok(()),
            };
        }
        match self.vlans.iter().find(|v| v.network == net) {
            Some(v) if frame.push_vlan(u16::from_be_bytes(TPID_8021Q), v.vid) => Ok(()),
            _ => Err(DropReason::LinkError),
        }
    }

    /// Every network it carries, with what the port owns there.
    pub fn all(&self) -> impl Iterator<Item = &TrunkVlan> {
        self.vlans.iter().chain(self.native.as_ref())
    }
}

/// Resolves a trunk's network names and checks its VLAN ids.
pub(super) fn resolve_trunk(
    t: &Topology,
    port: &str,
    spec: &TrunkSpec,
) -> Result<Trunk, BridgeError> {
    let field = format!("port {port:?}.trunk");
    spec.check(&field)
        .map_err(|(f, why)| BridgeError::BadTrunk(f, why))?;
    let net = |name: &str, key: String| {
        t.network_by_name(name)
            .map(|n| n.net.id)
            .ok_or_else(|| BridgeError::BadTrunk(key, format!("no network named {name:?}")))
    };
    let mut vlans = Vec::with_capacity(spec.vlans.len());
    for (name, &vid) in &spec.vlans {
        vlans.push(TrunkVlan {
            vid,
            network: net(name, format!("{field}.{name}"))?,
            owned: Arc::default(),
        });
    }
    vlans.sort_by_key(|v| v.vid);
    let native = match &spec.native {
        None => None,
        Some(name) => Some(TrunkVlan {
            vid: 0,
            network: net(name, format!("{field}.native"))?,
            owned: Arc::default(),
        }),
    };
    Ok(Trunk { vlans, native })
}
