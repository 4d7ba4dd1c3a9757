//! usernet: container and VM networking in userspace.
#![warn(missing_docs)]

pub mod bridge;
pub mod frame;
pub mod link;
pub mod wire;
