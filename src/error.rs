//! The one error type. Every failure knows the exit code an operator (or a CARP hook, or
//! rc.d) sees: 1 failure, 2 usage or configuration, 3 refused for safety.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something went wrong while doing the work (exit 1).
    Failed,
    /// The command line, the config file or a name is wrong (exit 2). Nothing was touched.
    Usage,
    /// pgzfs refused because going on could lose data or reset a primary (exit 3).
    Refused,
}

#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    /// The layer that met the failure knows it passes by itself (zfs-fuse's "busy" right
    /// after an unmount): the same step may be tried again.
    transient: bool,
}

impl Error {
    pub fn failed(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Failed,
            message: message.into(),
            transient: false,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Usage,
            message: message.into(),
            transient: false,
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Refused,
            message: message.into(),
            transient: false,
        }
    }

    /// Mark a failure as one that passes by itself, so the step may be tried again.
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Failed => 1,
            Kind::Usage => 2,
            Kind::Refused => 3,
        }
    }

    /// Prefix the message with what we were doing, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
            transient: self.transient,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Refused => write!(f, "refused: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

/// Attach context to any foreign error, turning it into a failure (exit 1).
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::failed(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_its_documented_exit_code() {
        assert_eq!(Error::failed("x").exit_code(), 1);
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::refused("x").exit_code(), 3);
    }

    #[test]
    fn context_keeps_a_transient_failure_transient() {
        let e = Error::failed("dataset is busy")
            .transient()
            .context("the receiver failed");
        assert!(e.is_transient());
        assert!(!Error::failed("dataset is busy").is_transient());
    }

    #[test]
    fn context_keeps_the_kind_and_prefixes_the_message() {
        let e = Error::refused("node is a primary").context("reset-secondary");
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.to_string(), "refused: reset-secondary: node is a primary");
    }
}
