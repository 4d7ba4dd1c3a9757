//! `config`: `usernet::config::Config::parse` on arbitrary text.
//!
//! Invariants: it never panics; when it succeeds, `validate()` succeeds again, every network's
//! `gateway_config` succeeds, and the configuration serialized back to TOML parses to an equal
//! configuration.

use usernet::config::Config;

/// One input (not UTF-8: ignored, as `Config::load` would refuse it).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text) else {
        return;
    };
    if let Err(e) = cfg.validate() {
        panic!("Config::parse accepted what validate refuses: {e}; {cfg:?}");
    }
    for (i, n) in cfg.network.iter().enumerate() {
        if let Err(e) = n.gateway_config(&format!("network[{i}]"), cfg.engine.mtu) {
            panic!("valid config, but network[{i}] has no gateway config: {e}");
        }
    }
    let _ = cfg.engine_config();
    let toml = match toml::to_string(&cfg) {
        Ok(t) => t,
        Err(e) => panic!("a parsed config does not serialize: {e}; {cfg:?}"),
    };
    match Config::parse(&toml) {
        Ok(back) => assert_eq!(back, cfg, "round trip through\n{toml}"),
        Err(e) => panic!("a parsed config serialized as\n{toml}\ndoes not parse: {e}"),
    }
}
