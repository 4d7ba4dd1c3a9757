//! The crate's error type.

use crate::bridge::BridgeError;
use crate::link::OpenError;

/// Anything a control operation can fail with. Each message names the object and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topology change was refused (duplicate or unknown name).
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// A link could not be opened or configured.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A request or configuration value is invalid; names the field.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field or key, e.g. `port[1].tap`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine has stopped.
    #[error("engine stopped")]
    Stopped,
    /// An event loop did not answer in time.
    #[error("event loop {0} did not answer within 5 s")]
    Timeout(usize),
    /// Other I/O failure, with context.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

impl Error {
    /// An [`Error::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<crate::policy::Invalid> for Error {
    fn from(e: crate::policy::Invalid) -> Self {
        Error::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
