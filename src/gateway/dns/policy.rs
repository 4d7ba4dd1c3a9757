//! DNS name policy of a network's gateway: which names guests may resolve.
//!
//! A policy is a default action plus two lists of names, `allow` and `deny`. An entry is either
//! an exact name (`ads.example.com`) or a suffix (`*.example.com`: every name *below*
//! `example.com`, not `example.com` itself; list both to cover both). Names compare
//! case-insensitively, without the trailing dot.
//!
//! The decision for a query name is made by the most specific entry that matches: an exact entry
//! beats every suffix, and a longer suffix beats a shorter one (so `deny = ["*.example.com"]`
//! with `allow = ["*.cdn.example.com"]` lets the CDN through). With no match, `default` decides.
//! A name cannot be in both lists. A denied query is answered at once, without reaching the local
//! zones, the cache or an upstream, with NXDOMAIN (the default) or REFUSED (`answer`), and counted
//! (`policy_denied`). The policy applies to every question a guest asks the gateway: the
//! network's own endpoint names and reverse (`in-addr.arpa`) names included.
//!
//! Compiling a [`DnsPolicySpec`] into a [`DnsPolicy`] checks every entry once; a lookup then costs
//! one hash lookup per label of the query name, with no allocation beyond lowercasing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most entries (allow and deny together) one policy may hold.
pub const MAX_ENTRIES: usize = 100_000;

/// What a policy does with a name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsAction {
    /// Resolve it as usual.
    #[default]
    Allow,
    /// Answer with the policy's [`DenyAnswer`].
    Deny,
}

/// The answer to a denied query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyAnswer {
    /// NXDOMAIN: the name does not exist (what ad blockers answer).
    #[default]
    Nxdomain,
    /// REFUSED: the server will not answer (the client may try another server).
    Refused,
}

/// A network's DNS policy as written: `dns_policy = { ... }` on `[[network]]`, the API's
/// `dns_policy` op and `usernet ctl dns policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DnsPolicySpec {
    /// The action for names no entry matches (default `allow`).
    #[serde(default)]
    pub default: DnsAction,
    /// Names (exact, or `*.suffix`) resolved even when `default` is deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Names (exact, or `*.suffix`) denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// The answer to a denied query (default `nxdomain`).
    #[serde(default)]
    pub answer: DenyAnswer,
}

impl DnsPolicySpec {
    /// A policy from its four parts (checked by [`DnsPolicy::new`]).
    pub fn new(
        default: DnsAction,
        allow: Vec<String>,
        deny: Vec<String>,
        answer: DenyAnswer,
    ) -> Self {
        DnsPolicySpec {
            default,
            allow,
            deny,
            answer,
        }
    }

    /// True when the policy changes nothing (default allow, no entries).
    pub fn is_noop(&self) -> bool {
        self.default == DnsAction::Allow && self.allow.is_empty() && self.deny.is_empty()
    }
}

/// A checked [`DnsPolicySpec`], ready for lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPolicy {
    spec: DnsPolicySpec,
    exact: HashMap<String, DnsAction>,
    /// Keyed by the suffix without `*.`.
    suffix: HashMap<String, DnsAction>,
}

/// Checks one entry and returns it normalised (lowercase, no trailing dot) and whether it is a
/// suffix (`*.` removed).
fn normalise(entry: &str) -> std::result::Result<(String, bool), String> {
    let e = entry.trim().trim_end_matches('.').to_ascii_lowercase();
    let (name, suffix) = match e.strip_prefix("*.") {
        Some(rest) => (rest.to_string(), true),
        None => (e, false),
    };
    if name.is_empty() {
        return Err("is empty (use `default` for every name)".into());
    }
    if name.len() > 253 {
        return Err("is longer than 253 bytes".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("has an empty label or one over 63 bytes".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "is not a DNS name (letters, digits, '-', '_'; a wildcard only as a leading \"*.\")"
                    .into(),
            );
        }
    }
    Ok((name, suffix))
}

impl DnsPolicy {
    /// Checks `spec`; errors name the entry under `prefix` (e.g. `network[0].dns_policy`).
    pub fn new(spec: DnsPolicySpec, prefix: &str) -> Result<DnsPolicy> {
        let total = spec.allow.len() + spec.deny.len();
        if total > MAX_ENTRIES {
            return Err(Error::invalid(
                prefix,
                format!("{total} entries; at most {MAX_ENTRIES}"),
            ));
        }
        let mut exact = HashMap::new();
        let mut suffix = HashMap::new();
        for (list, action) in [("allow", DnsAction::Allow), ("deny", DnsAction::Deny)] {
            let entries = if action == DnsAction::Allow {
                &spec.allow
            } else {
                &spec.deny
            };
            for (i, entry) in entries.iter().enumerate() {
                let field = || format!("{prefix}.{list}[{i}]");
                let (name, is_suffix) = normalise(entry)
                    .map_err(|why| Error::invalid(field(), format!("{entry:?} {why}")))?;
                let map = if is_suffix { &mut suffix } else { &mut exact };
                if let Some(prev) = map.insert(name, action)
                    && prev != action
                {
                    return Err(Error::invalid(
                        field(),
                        format!("{entry:?} is in both allow and deny"),
                    ));
                }
            }
        }
        Ok(DnsPolicy {
            spec,
            exact,
            suffix,
        })
    }

    /// The policy as written.
    pub fn spec(&self) -> &DnsPolicySpec {
        &self.spec
    }

    /// The answer to denied queries.
    pub fn answer(&self) -> DenyAnswer {
        self.spec.answer
    }

    /// The action for `name` (any case, with or without the trailing dot).
    pub fn decide(&self, name: &str) -> DnsAction {
        let name = name.trim_end_matches('.');
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(a) = self.exact.get(name) {
            return *a;
        }
        if !self.suffix.is_empty() {
            // Longest suffix first: the parent, then the grandparent...
            let mut rest = name;
            while let Some((_, parent)) = rest.split_once('.') {
                if let Some(a) = self.suffix.get(parent) {
                    return *a;
                }
                rest = parent;
            }
        }
        self.spec.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: DnsAction, allow: &[&str], deny: &[&str]) -> DnsPolicy {
        let spec = DnsPolicySpec {
            default,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            answer: DenyAnswer::Nxdomain,
        };
        DnsPolicy::new(spec, "p").expect("valid")
    }

    #[test]
    fn exact_and_suffix() {
        let p = policy(DnsAction::Allow, &[], &["ads.example.com", "*.tracker.net"]);
        assert_eq!(p.decide("ads.example.com"), DnsAction::Deny);
        assert_eq!(p.decide("ADS.Example.COM."), DnsAction::Deny);
        assert_eq!(p.decide("x.ads.example.com"), DnsAction::Allow);
        assert_eq!(p.decide("example.com"), DnsAction::Allow);
        assert_eq!(p.decide("a.tracker.net"), DnsAction::Deny);
        assert_eq!(p.decide("a.b.tracker.net"), DnsAction::Deny);
        assert_eq!(p.decide("tracker.net"), DnsAction::Allow);
        assert_eq!(p.decide("nottracker.net"), DnsAction::Allow);
        assert_eq!(p.decide(""), DnsAction::Allow);
        assert_eq!(p.decide("."), DnsAction::Allow);
    }

    #[test]
    fn most_specific_wins() {
        let p = policy(
            DnsAction::Deny,
            &["*.corp.example", "*.cdn.ads.example", "ok.ads.example"],
            &["*.ads.example", "secret.corp.example"],
        );
        assert_eq!(p.decide("www.corp.example"), DnsAction::Allow);
        assert_eq!(p.decide("secret.corp.example"), DnsAction::Deny);
        assert_eq!(p.decide("x.secret.corp.example"), DnsAction::Allow);
        assert_eq!(p.decide("a.ads.example"), DnsAction::Deny);
        assert_eq!(p.decide("ok.ads.example"), DnsAction::Allow);
        assert_eq!(p.decide("img.cdn.ads.example"), DnsAction::Allow);
        assert_eq!(p.decide("elsewhere.org"), DnsAction::Deny);
        assert_eq!(p.decide("corp.example"), DnsAction::Deny);
    }

    #[test]
    fn errors_name_the_entry() {
        for (allow, deny, field) in [
            (vec![], vec!["ok.example", "bad name"], "p.deny[1]"),
            (vec!["*"], vec![], "p.allow[0]"),
            (vec!["a..b"], vec![], "p.allow[0]"),
            (vec!["x.*.example"], vec![], "p.allow[0]"),
            (vec!["same.example"], vec!["SAME.example."], "p.deny[0]"),
        ] {
            let spec = DnsPolicySpec {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                deny: deny.iter().map(|s| s.to_string()).collect(),
                ..DnsPolicySpec::default()
            };
            let e = DnsPolicy::new(spec, "p").expect_err(field).to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let long = format!("{}.example", "a".repeat(64));
        let spec = DnsPolicySpec {
            deny: vec![long],
            ..DnsPolicySpec::default()
        };
        assert!(DnsPolicy::new(spec, "p").is_err());
        // Listed twice in the same list is fine.
        policy(DnsAction::Allow, &[], &["a.example", "A.example"]);
    }

    #[test]
    fn noop() {
        assert!(DnsPolicySpec::default().is_noop());
        let spec = DnsPolicySpec {
            default: DnsAction::Deny,
            ..DnsPolicySpec::default()
        };
        assert!(!spec.is_noop());
    }
}
