//! usernet: container and VM networking in userspace.
#![warn(missing_docs)]

pub mod frame;
pub mod link;
