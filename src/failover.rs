//! Settings of role changes that promote, carp-event, switchover and the daemon share.

/// How a primary that must stop taking writes is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// Stop PostgreSQL: the hard fence, and the default.
    Stop,
    /// Keep serving reads: default_transaction_read_only = on, reload, end client sessions.
    ReadOnly,
}

/// What a primary does when its CARP address goes to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackup {
    Fence,
    Rejoin,
}

impl FenceMode {
    pub(crate) fn parse(value: &str) -> Result<FenceMode, String> {
        match value {
            "stop" => Ok(FenceMode::Stop),
            "read-only" => Ok(FenceMode::ReadOnly),
            _ => Err(format!("{value:?} must be \"stop\" or \"read-only\"")),
        }
    }
}

impl OnBackup {
    pub(crate) fn parse(value: &str) -> Result<OnBackup, String> {
        match value {
            "fence" => Ok(OnBackup::Fence),
            "rejoin" => Ok(OnBackup::Rejoin),
            _ => Err(format!("{value:?} must be \"fence\" or \"rejoin\"")),
        }
    }
}
