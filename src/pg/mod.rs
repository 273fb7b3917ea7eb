//! PostgreSQL behind one narrow interface: the version-aware queries pgzfs needs on a
//! primary or a standby (`Pg`), the local server's files (`control`), pg_ctl (`ctl`) and
//! the standby configuration (`standby`).

pub mod control;
pub mod ctl;
pub mod standby;

use std::path::PathBuf;
use std::time::Duration;

use postgres::{Client, NoTls};

use crate::error::{Error, Result};

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
        let mut client = config.connect(NoTls).map_err(|e| {
            Error::failed(format!(
                "cannot connect to {} as {}: {}",
                target.describe(),
                target.user,
                describe_pg_error(&e)
            ))
        })?;
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

    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<postgres::Row> {
        self.client.query_one(sql, params).map_err(|e| {
            Error::failed(format!(
                "{}: {}",
                self.target.describe(),
                describe_pg_error(&e)
            ))
        })
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<postgres::Row>> {
        self.client.query_opt(sql, params).map_err(|e| {
            Error::failed(format!(
                "{}: {}",
                self.target.describe(),
                describe_pg_error(&e)
            ))
        })
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
