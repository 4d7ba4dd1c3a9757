//! usernet: container and VM networking in userspace.
#![warn(missing_docs)]

pub mod bridge;
pub mod config;
pub mod control;
pub mod engine;
pub mod error;
pub mod frame;
pub mod link;
pub mod wire;

pub use control::{Handle, PortSpec};
pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
