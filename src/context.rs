//! The composition root: the loaded config, this node, and the one place where the
//! handles to the outside world are built (this node's ZFS, another node's ZFS over SSH,
//! the transport of a re-seed's stream, PostgreSQL). Commands and the domain layer ask
//! the context instead of building transports themselves, so a setting such as
//! `zfs_backend`, `ssh_data_path` or `ssh_compress` is honoured by every caller alike.

use std::path::PathBuf;

use crate::cluster::{pg_target, ssh_target};
use crate::compress::Compressing;
use crate::compress::SshCompress;
use crate::config::{config_path, Config, Node};
use crate::error::{Error, Result};
use crate::exec::remote_pgzfs;
use crate::failover::seam::RealPostgres;
use crate::failover::Role;
use crate::pg::ctl::PgCtl;
use crate::pg::Pg;
use crate::ssh::SshHost;
use crate::ssh_openssh::OpenSshHost;
use crate::ssh_openssh::SshDataPath;
use crate::zfs::cli::ZfsCli;
use crate::zfs::Zfs;

/// Where the config is and which node this is, as the operator said it (flags or
/// environment): a plain value, so nothing below the command line depends on clap.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub config: Option<PathBuf>,
    pub node: Option<String>,
    pub verbose: bool,
}

impl Invocation {
    /// Load the config, pick the local node and start logging to its log file.
    pub fn load(&self) -> Result<Context> {
        let path = config_path(self.config.as_deref());
        let config = Config::load(&path)?;
        let local = config.local_node(self.node.as_deref())?.clone();
        crate::log::init(&config.log_file, &local.name, self.verbose);
        Ok(Context { config, local })
    }
}

/// The part of the composition root that depends only on this node's settings: plain
/// data, `Send` and `Clone`, so that code running on its own thread (promote's epoch
/// lookup, status's and check's probes of every node) builds its ZFS and SSH handles
/// here too, the same way the `Context` does.
#[derive(Debug, Clone)]
pub struct Handles {
    local: Node,
}

impl Handles {
    pub fn new(local: &Node) -> Self {
        Handles {
            local: local.clone(),
        }
    }

    /// This node's ZFS, honouring `zfs_backend` (see `Context::local_zfs`).
    pub fn local_zfs(&self) -> Result<Box<dyn Zfs>> {
        crate::zfs::local_backend(&self.local)
    }

    /// `node`'s ZFS over SSH (libssh2), with this node's key and known_hosts.
    pub fn remote_zfs(&self, node: &Node) -> Result<ZfsCli<SshHost>> {
        Ok(ZfsCli::new(self.remote_shell(node)?))
    }

    /// A libssh2 session with `node`, as this node's `ssh_user` with its key.
    pub fn remote_shell(&self, node: &Node) -> Result<SshHost> {
        SshHost::connect(&ssh_target(&self.local, node))
    }
}

/// What every command works with: the parsed config and this node.
pub struct Context {
    pub config: Config,
    pub local: Node,
}

impl Context {
    /// Another configured node, named by `flag` (e.g. `--to`): a usage error when it is
    /// unknown or names this node.
    pub fn peer(&self, name: &str, flag: &str) -> Result<Node> {
        let node = self.config.node(name).map_err(|e| e.context(flag))?;
        if node.name == self.local.name {
            return Err(Error::usage(format!("{flag} {name} names this node")));
        }
        Ok(node.clone())
    }

    /// The handles that need only this node's settings, for a helper thread that has
    /// no `Context` (promote's epoch lookup while PostgreSQL promotes).
    pub fn handles(&self) -> Handles {
        Handles::new(&self.local)
    }

    /// This node's ZFS: zfs(8), or libzfs_core where `zfs_backend` asks for it (or
    /// allows it and it is compiled in and /dev/zfs opens).
    pub fn local_zfs(&self) -> Result<Box<dyn Zfs>> {
        self.handles().local_zfs()
    }

    /// `node`'s ZFS over SSH (libssh2), with this node's key and known_hosts.
    pub fn remote_zfs(&self, node: &Node) -> Result<ZfsCli<SshHost>> {
        self.handles().remote_zfs(node)
    }

    /// A libssh2 session with `node`, for running pgzfs there.
    pub fn remote_shell(&self, node: &Node) -> Result<SshHost> {
        self.handles().remote_shell(node)
    }

    /// The transport of a re-seed's `zfs send` stream from `source`, when it differs
    /// from `remote` (the libssh2 session every other remote command uses):
    /// `ssh_data_path = "openssh"` sends the stream through ssh(1), and `ssh_compress`
    /// has the source's pgzfs compress it. None: the stream goes through `remote`.
    pub fn stream_zfs<'a>(
        &self,
        source: &Node,
        remote: &'a ZfsCli<SshHost>,
    ) -> Option<Box<dyn Zfs + 'a>> {
        let local = &self.local;
        let compress = match local.ssh.ssh_compress {
            SshCompress::None => None,
            SshCompress::Zstd(level) => {
                tracing::info!("the stream comes zstd-compressed at level {level} (ssh_compress)");
                Some((
                    remote_pgzfs(&local.ssh.pgzfs_bin, &self.config.path, &source.name),
                    level,
                ))
            }
        };
        // Asked for before the cut: the connection is opened while the cut is taken.
        let openssh = || OpenSshHost::connecting_ahead(ssh_target(local, source));
        match (local.ssh.ssh_data_path, compress) {
            (SshDataPath::OpenSsh, None) => Some(Box::new(ZfsCli::new(openssh()))),
            (SshDataPath::OpenSsh, Some((pgzfs, level))) => Some(Box::new(ZfsCli::new(
                Compressing::new(openssh(), pgzfs, level),
            ))),
            (_, Some((pgzfs, level))) => Some(Box::new(ZfsCli::new(Compressing::new(
                remote.runner(),
                pgzfs,
                level,
            )))),
            (_, None) => None,
        }
    }

    /// A session with `node`'s PostgreSQL, as the replication role.
    pub fn pg(&self, node: &Node) -> Result<Pg> {
        Pg::connect(&pg_target(node))
    }

    /// pg_ctl for this node's server.
    pub fn pgctl(&self) -> Result<PgCtl> {
        PgCtl::for_node(&self.local)
    }

    /// What this node's PostgreSQL is now: primary, standby, stopped, or running but not
    /// answering (`failover::role`, with its one fallback policy: unknown is never "not a
    /// primary").
    pub fn local_role(&self, pgctl: &PgCtl) -> Result<Role> {
        crate::failover::local_role(&RealPostgres, pgctl, &self.local)
    }
}
