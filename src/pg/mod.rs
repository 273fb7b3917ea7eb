//! PostgreSQL behind one narrow interface: the version-aware queries pgzfs needs on a
//! primary or a standby (`Pg`), the local server's files (`control`), pg_ctl (`ctl`) and
//! the standby configuration (`standby`).

pub mod checks;
pub mod control;
pub mod ctl;
pub mod hba;
pub mod standby;
pub mod tls;
pub mod upgrade;

use std::path::PathBuf;
use std::time::Duration;

use postgres::Client;

use crate::error::{Error, Result};
use tls::PgTls;

/// Where and as whom to connect. The password is looked up in pgpass at connect time and
/// goes nowhere else: not into argv, not into a log line.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub passfile: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub tls: PgTls,
}

impl PgTarget {
    pub fn describe(&self) -> String {
        format!("PostgreSQL on {} ({}:{})", self.node, self.host, self.port)
    }
}

/// The result of ending a non-exclusive backup: what the standby needs to start from the
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStop {
    pub stop_lsn: String,
    pub labelfile: String,
    pub spcmapfile: String,
}

/// What the primary knows about one standby's replication connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationInfo {
    pub state: String,
    /// Bytes between the primary's current WAL position and the standby's replay position.
    pub replay_lag_bytes: Option<i64>,
}

/// One session with one server. Backup start and stop must happen in the same session
/// (non-exclusive backups end when their session does, which is exactly what makes an
/// interrupted run safe), so this wraps a single connection.
pub struct Pg {
    client: Client,
    version_num: i32,
    target: PgTarget,
}

/// Our advisory-lock namespace: "pgzf" as a 32-bit class id, so the lock cannot collide
/// with an application's own advisory locks keyed by a single bigint.
const LOCK_CLASS: i32 = 0x7067_7a66;
/// Object id of the re-seed lock: only one re-seed at a time per primary.
pub const RESEED_LOCK: i32 = 1;

fn describe_pg_error(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl Pg {
    pub fn connect(target: &PgTarget) -> Result<Pg> {
        let mut config = postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .user(&target.user)
            .dbname(&target.database)
            .application_name("pgzfs")
            .connect_timeout(target.connect_timeout);
        let passfile = crate::pgpass::passfile_path(target.passfile.as_deref());
        if let Some(passfile) = &passfile {
            if let Some(password) = crate::pgpass::find_password(
                passfile,
                &target.host,
                target.port,
                &target.database,
                &target.user,
            )? {
                config.password(password);
            }
        }
        let cannot = |why: String| {
            Error::failed(format!(
                "cannot connect to {} as {}: {why}",
                target.describe(),
                target.user,
            ))
        };
        let mut attempts = target.tls.attempts().into_iter().peekable();
        let mut client = loop {
            let attempt = attempts.next().expect("at least one attempt");
            let connector = target.tls.connector(attempt).map_err(cannot)?;
            config.ssl_mode(attempt.negotiation);
            match config.connect(connector) {
                Ok(client) => break client,
                // sslmode=allow: the server refused a plaintext session; try TLS.
                Err(e) if e.as_db_error().is_some() && attempts.peek().is_some() => continue,
                Err(e) => {
                    let detail = describe_pg_error(&e);
                    return Err(cannot(match target.tls.explain(&detail) {
                        Some(why) => format!("{why}: {detail}"),
                        None => detail,
                    }));
                }
            }
        };
        let version_num = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .map_err(|e| {
                Error::failed(format!("{}: {}", target.describe(), describe_pg_error(&e)))
            })?
            .get(0);
        Ok(Pg {
            client,
            version_num,
            target: target.clone(),
        })
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// 10, 11, ..., 17.
    pub fn major(&self) -> u32 {
        (self.version_num / 10000) as u32
    }

    /// A failed statement, named with the server it went to.
    fn failed(&self, e: &postgres::Error) -> Error {
        Error::failed(format!(
            "{}: {}",
            self.target.describe(),
            describe_pg_error(e)
        ))
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>> {
        self.client.query(sql, params).map_err(|e| self.failed(&e))
    }

    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<postgres::Row> {
        self.client
            .query_one(sql, params)
            .map_err(|e| self.failed(&e))
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<postgres::Row>> {
        self.client
            .query_opt(sql, params)
            .map_err(|e| self.failed(&e))
    }

    /// Whether this session is encrypted, as the server sees it.
    pub fn session_encrypted(&mut self) -> Result<bool> {
        Ok(self
            .query_one(
                "SELECT coalesce(bool_or(ssl), false) FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?
            .get(0))
    }

    pub fn is_in_recovery(&mut self) -> Result<bool> {
        Ok(self.query_one("SELECT pg_is_in_recovery()", &[])?.get(0))
    }

    pub fn system_identifier(&mut self) -> Result<u64> {
        let text: String = self
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )?
            .get(0);
        text.parse().map_err(|_| {
            Error::failed(format!(
                "{}: odd system identifier {text:?}",
                self.target.describe()
            ))
        })
    }

    /// The timeline the primary writes on now.
    pub fn current_timeline(&mut self) -> Result<u32> {
        let name: String = self
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])?
            .get(0);
        u32::from_str_radix(name.get(..8).unwrap_or(""), 16)
            .map_err(|_| Error::failed(format!("odd WAL file name {name:?}")))
    }

    pub fn try_advisory_lock(&mut self, key: i32) -> Result<bool> {
        Ok(self
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &key])?
            .get(0))
    }

    /// Make sure a physical slot with reserved WAL exists for the standby. An existing slot
    /// is kept unless it lost its WAL or never reserved any: then it is recreated, because
    /// a slot that retains nothing would only pretend to protect the re-seed.
    pub fn ensure_physical_slot(&mut self, name: &str) -> Result<&'static str> {
        let lost_column = if self.major() >= 13 {
            "wal_status = 'lost'"
        } else {
            "false"
        };
        let sql = format!("SELECT active, restart_lsn IS NULL OR {lost_column} FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'");
        match self.query_opt(&sql, &[&name])? {
            Some(row) if !row.get::<_, bool>(1) => Ok("kept"),
            Some(row) if row.get::<_, bool>(0) => Ok("kept (in use)"),
            Some(_) => {
                self.query_one("SELECT pg_drop_replication_slot($1)::text", &[&name])?;
                self.query_one(
                    "SELECT pg_create_physical_replication_slot($1, true)::text",
                    &[&name],
                )?;
                Ok("recreated (it retained no WAL)")
            }
            None => {
                self.query_one(
                    "SELECT pg_create_physical_replication_slot($1, true)::text",
                    &[&name],
                )?;
                Ok("created")
            }
        }
    }

    /// Start a non-exclusive backup with an immediate checkpoint; returns the start LSN.
    pub fn backup_start(&mut self, label: &str) -> Result<String> {
        let sql = if self.major() >= 15 {
            "SELECT pg_backup_start($1, true)::text"
        } else {
            "SELECT pg_start_backup($1, true, false)::text"
        };
        Ok(self.query_one(sql, &[&label])?.get(0))
    }

    /// End the backup without waiting for WAL archiving: the replication slot created
    /// before the snapshot already keeps every WAL file the standby needs, and waiting on
    /// a broken archive_command would hang the re-seed.
    pub fn backup_stop(&mut self) -> Result<BackupStop> {
        let sql = if self.major() >= 15 {
            "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_stop_backup(false, false)"
        };
        let row = self.query_one(sql, &[])?;
        Ok(BackupStop {
            stop_lsn: row.get(0),
            labelfile: row.get(1),
            spcmapfile: row.get(2),
        })
    }

    /// `pg_stat_wal_receiver.status` on a standby; None when no WAL receiver runs.
    pub fn wal_receiver_status(&mut self) -> Result<Option<String>> {
        Ok(self
            .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])?
            .and_then(|row| row.get(0)))
    }

    /// How the primary sees the standby that connects as `application_name`.
    pub fn replication_info(&mut self, application_name: &str) -> Result<Option<ReplicationInfo>> {
        let row = self.query_opt(
            "SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication \
             WHERE application_name = $1 ORDER BY state = 'streaming' DESC LIMIT 1",
            &[&application_name],
        )?;
        Ok(row.map(|row| ReplicationInfo {
            state: row.get::<_, Option<String>>(0).unwrap_or_default(),
            replay_lag_bytes: row.get(1),
        }))
    }
}

impl Pg {
    pub fn advisory_unlock(&mut self, key: i32) -> Result<()> {
        self.query_one("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_CLASS, &key])
            .map(drop)
    }
}

impl Pg {
    pub fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        self.query_one("SELECT pg_notify($1, $2)::text", &[&channel, &payload])
            .map(drop)
    }

    /// A primary that accepts writes: not in recovery and not fenced read-only.
    pub fn is_writable(&mut self) -> Result<bool> {
        Ok(self
            .query_one("SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'", &[])?
            .get(0))
    }

    /// On a standby: bytes received from the primary but not replayed yet.
    pub fn replay_lag_bytes(&mut self) -> Result<u64> {
        let row = self.query_one(
            "SELECT coalesce(pg_wal_lsn_diff(greatest(pg_last_wal_receive_lsn(), \
             (SELECT latest_end_lsn FROM pg_stat_wal_receiver)), pg_last_wal_replay_lsn()), 0)::bigint",
            &[],
        )?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    pub fn replay_lsn(&mut self) -> Result<Option<control::Lsn>> {
        let text: Option<String> = self
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])?
            .get(0);
        text.map(|t| t.parse().map_err(Error::failed)).transpose()
    }

    /// Where the cluster's own tablespaces live (pg_default and pg_global are in the
    /// data directory).
    pub fn tablespace_locations(&mut self) -> Result<Vec<std::path::PathBuf>> {
        let rows = self.query(
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|row| std::path::PathBuf::from(row.get::<_, String>(0)))
            .collect())
    }

    /// The primary's current WAL write position.
    pub fn current_lsn(&mut self) -> Result<control::Lsn> {
        let text: String = self
            .query_one("SELECT pg_current_wal_lsn()::text", &[])?
            .get(0);
        text.parse().map_err(Error::failed)
    }

    /// The timeline of the server's latest checkpoint (after promotion: the new one).
    pub fn checkpoint_timeline(&mut self) -> Result<u32> {
        let tli: i32 = self
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])?
            .get(0);
        Ok(tli as u32)
    }

    /// `pg_promote(wait => true)`, PostgreSQL 12 and later.
    pub fn promote(&mut self, timeout: Duration) -> Result<bool> {
        let seconds = timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
        Ok(self
            .query_one("SELECT pg_promote(true, $1)", &[&seconds])?
            .get(0))
    }

    pub fn checkpoint(&mut self) -> Result<()> {
        self.client
            .batch_execute("CHECKPOINT")
            .map_err(|e| self.failed(&e))
    }
}

/// What a server says about itself, for `status`, the health checks and the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerState {
    pub in_recovery: bool,
    /// Not in recovery and not fenced read-only.
    pub writable: bool,
    /// `server_version`, such as "15.18 (Debian 15.18-0+deb12u1)".
    pub version: String,
    /// The timeline written (primary) or received or last checkpointed on (standby).
    pub timeline: Option<u32>,
    /// The current WAL position (primary) or the last replayed one (standby).
    pub lsn: Option<String>,
}

/// One row of the primary's pg_stat_replication.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyConnection {
    pub application_name: String,
    pub state: String,
    /// Between the primary's current WAL position and the standby's replay position.
    pub lag_bytes: Option<i64>,
    /// `replay_lag`: how long the primary waited for the standby to replay recent WAL.
    pub replay_lag_seconds: Option<f64>,
}

/// One replication slot on the primary.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotInfo {
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<String>,
    /// WAL the slot keeps from being recycled: current position minus restart_lsn.
    pub retained_bytes: Option<i64>,
    /// `wal_status` (PostgreSQL 13 and later): reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
}

/// The standby's WAL receiver, as pg_stat_wal_receiver shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalReceiver {
    /// Every attempt to connect is a new process: a pid seen twice is a connection that
    /// lasted, not one that started and failed in between.
    pub pid: i32,
    /// None when the role may not see it (it needs pg_monitor or pg_read_all_stats).
    pub status: Option<String>,
}

impl Pg {
    /// Role, version, timeline and WAL position in as few round trips as the role needs.
    pub fn server_state(&mut self) -> Result<ServerState> {
        let row = self.query_one(
            "SELECT pg_is_in_recovery(), \
             NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off', \
             current_setting('server_version')",
            &[],
        )?;
        let (in_recovery, writable, version): (bool, bool, String) =
            (row.get(0), row.get(1), row.get(2));
        let (timeline, lsn) = if in_recovery {
            // A standby has no WAL file of its own to name its timeline: the WAL
            // receiver's received timeline is the live answer, the last restartpoint's
            // the one that works without a receiver.
            let row = self.query_one(
                "SELECT coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                 (SELECT timeline_id FROM pg_control_checkpoint()))::int, \
                 pg_last_wal_replay_lsn()::text",
                &[],
            )?;
            (
                row.get::<_, Option<i32>>(0).map(|t| t as u32),
                row.get::<_, Option<String>>(1),
            )
        } else {
            let lsn = self.current_lsn()?.to_string();
            (Some(self.current_timeline()?), Some(lsn))
        };
        Ok(ServerState {
            in_recovery,
            writable,
            version,
            timeline,
            lsn,
        })
    }

    /// On the primary: every standby connection it serves.
    pub fn standby_connections(&mut self) -> Result<Vec<StandbyConnection>> {
        let rows = self.query(
            "SELECT coalesce(application_name, ''), coalesce(state, ''), \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, \
                 extract(epoch FROM replay_lag)::float8 \
                 FROM pg_stat_replication ORDER BY application_name, state = 'streaming' DESC",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|row| StandbyConnection {
                application_name: row.get(0),
                state: row.get(1),
                lag_bytes: row.get(2),
                replay_lag_seconds: row.get(3),
            })
            .collect())
    }

    /// On the primary: its replication slots, with the WAL each one retains.
    pub fn replication_slots(&mut self) -> Result<Vec<SlotInfo>> {
        let wal_status = if self.major() >= 13 {
            "wal_status::text"
        } else {
            "NULL::text"
        };
        let sql = format!(
            "SELECT slot_name::text, slot_type, active, restart_lsn::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, {wal_status} \
             FROM pg_replication_slots ORDER BY slot_name"
        );
        let rows = self.query(&sql, &[])?;
        Ok(rows
            .iter()
            .map(|row| SlotInfo {
                name: row.get(0),
                slot_type: row.get(1),
                active: row.get(2),
                restart_lsn: row.get(3),
                retained_bytes: row.get(4),
                wal_status: row.get(5),
            })
            .collect())
    }

    /// On a standby: its WAL receiver, None when none runs.
    pub fn wal_receiver(&mut self) -> Result<Option<WalReceiver>> {
        Ok(self
            .query_opt("SELECT pid, status FROM pg_stat_wal_receiver", &[])?
            .and_then(|row| {
                Some(WalReceiver {
                    pid: row.get::<_, Option<i32>>(0)?,
                    status: row.get(1),
                })
            }))
    }

    /// On a standby: how far replay is behind in time. Zero when everything received is
    /// replayed (an idle primary sends nothing, and the last replayed transaction then
    /// only tells how long nobody wrote); None when nothing was ever replayed.
    pub fn replay_delay_seconds(&mut self) -> Result<Option<f64>> {
        Ok(self
            .query_one(
                "SELECT CASE WHEN coalesce(pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn(), false) THEN 0 \
                 ELSE greatest(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8",
                &[],
            )?
            .get(0))
    }
}

impl Pg {
    /// End every other client session, for fencing the server read-only: (sessions
    /// found, sessions ended). The server ends them itself with pg_terminate_backend(): a
    /// PID that came over the wire is never signalled by root. Needs superuser or
    /// pg_signal_backend (and superuser to end a superuser's session); without it this
    /// fails as a whole, and the caller falls back to stopping the server.
    pub fn terminate_client_sessions(&mut self) -> Result<(i64, i64)> {
        let row = self.query_one(
            "SELECT count(*), count(*) FILTER (WHERE pg_terminate_backend(pid)) \
             FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )?;
        Ok((row.get(0), row.get(1)))
    }
}

/// What the connected role may do, for `pgzfs check --setup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnGrants {
    pub role: String,
    pub superuser: bool,
    pub replication: bool,
    pub pg_monitor: bool,
    /// The backup start and stop functions of this major, and whether the role may
    /// execute each.
    pub backup_functions: Vec<(String, bool)>,
}

/// What a new cluster must share with the old one for pg_upgrade: the bootstrap
/// superuser, template0's encoding and locale, and whether data checksums are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub superuser: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    pub checksums: bool,
}

impl Pg {
    /// [`ClusterIdentity`], from catalogs every role may read.
    pub fn cluster_identity(&mut self) -> Result<ClusterIdentity> {
        let row = self.query_one(
            "SELECT (SELECT rolname::text FROM pg_roles WHERE oid = 10), \
             pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text, \
             current_setting('data_checksums') = 'on' \
             FROM pg_database WHERE datname = 'template0'",
            &[],
        )?;
        Ok(ClusterIdentity {
            superuser: row.get(0),
            encoding: row.get(1),
            collate: row.get(2),
            ctype: row.get(3),
            checksums: row.get(4),
        })
    }

    /// A server setting as `SHOW` prints it.
    pub fn setting(&mut self, name: &str) -> Result<String> {
        Ok(self
            .query_one("SELECT current_setting($1)", &[&name])?
            .get(0))
    }

    /// The connected role's attributes and the grants a re-seed needs of it.
    pub fn own_grants(&mut self) -> Result<OwnGrants> {
        let (start, stop) = if self.version_num >= 150000 {
            ("pg_backup_start(text, boolean)", "pg_backup_stop(boolean)")
        } else {
            (
                "pg_start_backup(text, boolean, boolean)",
                "pg_stop_backup(boolean, boolean)",
            )
        };
        let row = self.query_one(
            "SELECT current_user::text, r.rolsuper, r.rolreplication, \
             pg_has_role(current_user, 'pg_monitor', 'MEMBER'), \
             has_function_privilege($1, 'EXECUTE'), has_function_privilege($2, 'EXECUTE') \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&start, &stop],
        )?;
        Ok(OwnGrants {
            role: row.get(0),
            superuser: row.get(1),
            replication: row.get(2),
            pg_monitor: row.get(3),
            backup_functions: vec![
                (start.to_string(), row.get(4)),
                (stop.to_string(), row.get(5)),
            ],
        })
    }
}
