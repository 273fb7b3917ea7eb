//! `pgzfs check --setup`: the README's install steps, judged one by one from what was
//! observed on this node. Each judgement is a pure function of the facts (gathered by
//! `commands/check.rs`), names the step, and for a wrong one gives the exact command
//! that puts it right. Advice (a recordsize larger than PostgreSQL's pages want) never
//! fails the check.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Wrong,
    Advice,
}

/// One step of the setup as found on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name of the step, e.g. `pgpass.mode` or `postgres.wal_level`.
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// The command (shell or SQL) that fixes it; None when it is right.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn wrong(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            verdict: Verdict::Wrong,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn advice(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            verdict: Verdict::Advice,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What is known about the dataset: None where it does not exist.
pub struct DatasetFacts {
    pub mountpoint: Option<PathBuf>,
    pub canmount: Option<String>,
    pub recordsize: Option<u64>,
}

/// The dataset exists, is mounted where the data directory lies, may be mounted, and
/// has records small enough for incremental sends of changed pages.
pub fn dataset(
    dataset: &str,
    data_dir: &Path,
    configured_mountpoint: Option<&Path>,
    facts: Option<&DatasetFacts>,
) -> Vec<Finding> {
    let wanted_mountpoint = configured_mountpoint.unwrap_or(data_dir);
    let Some(facts) = facts else {
        return vec![Finding::wrong(
            "dataset",
            format!("{dataset} does not exist on this node"),
            format!(
                "zfs create -o recordsize=16k -o mountpoint={} {dataset}",
                wanted_mountpoint.display()
            ),
        )];
    };
    let mut findings = vec![Finding::ok("dataset", format!("{dataset} exists"))];
    findings.push(match &facts.mountpoint {
        Some(mountpoint) if data_dir.starts_with(mountpoint) => Finding::ok(
            "dataset.mountpoint",
            format!(
                "{} holds data_dir {}",
                mountpoint.display(),
                data_dir.display()
            ),
        ),
        other => Finding::wrong(
            "dataset.mountpoint",
            format!(
                "{dataset} is mounted at {}, which does not hold data_dir {}",
                other
                    .as_ref()
                    .map_or("no path".to_string(), |m| m.display().to_string()),
                data_dir.display()
            ),
            format!(
                "zfs set mountpoint={} {dataset}",
                wanted_mountpoint.display()
            ),
        ),
    });
    findings.push(match facts.canmount.as_deref() {
        Some("off") => Finding::wrong(
            "dataset.canmount",
            format!("{dataset} has canmount=off: it is never mounted, so data_dir is not on it"),
            format!("zfs set canmount=on {dataset}"),
        ),
        other => Finding::ok(
            "dataset.canmount",
            format!("canmount={}", other.unwrap_or("unknown")),
        ),
    });
    const SMALL_RECORDS: u64 = 16 * 1024;
    findings.push(match facts.recordsize {
        Some(size) if size > SMALL_RECORDS => Finding::advice(
            "dataset.recordsize",
            format!(
                "recordsize is {}K: each changed 8 kB page sends a whole record in the next \
                 incremental re-seed (affects data written from now on)",
                size / 1024
            ),
            format!("zfs set recordsize=16k {dataset}"),
        ),
        Some(size) => Finding::ok(
            "dataset.recordsize",
            format!("recordsize is {}K", size / 1024),
        ),
        None => Finding::ok("dataset.recordsize", "recordsize unknown"),
    });
    findings
}

/// Owner and permission bits of the pgpass file; None when it does not exist.
pub struct FileFacts {
    pub owner_uid: u32,
    pub mode: u32,
}

/// The pgpass file exists, belongs to the PostgreSQL OS user (whose WAL receiver reads
/// it through `passfile=`) and nobody else can read it (libpq ignores it otherwise).
pub fn pgpass(
    path: Option<&Path>,
    facts: Option<&FileFacts>,
    os_user: &str,
    os_uid: Option<u32>,
    pg_port: u16,
    pg_user: &str,
) -> Vec<Finding> {
    let Some(path) = path else {
        return vec![Finding::wrong(
            "pgpass",
            "no pgpass file: pg_passfile is not set, and neither PGPASSFILE nor HOME is",
            "set pg_passfile in pgzfs.toml, e.g. pg_passfile = \"/var/db/postgres/.pgpass\"",
        )];
    };
    let shown = path.display();
    let Some(facts) = facts else {
        return vec![Finding::wrong(
            "pgpass",
            format!("{shown} does not exist"),
            format!(
                "install -o {os_user} -m 0600 /dev/null {shown} && \
                 echo '*:{pg_port}:*:{pg_user}:PASSWORD' >> {shown}"
            ),
        )];
    };
    let mut findings = vec![Finding::ok("pgpass", format!("{shown} exists"))];
    findings.push(match os_uid {
        Some(uid) if uid == facts.owner_uid => {
            Finding::ok("pgpass.owner", format!("owned by {os_user}"))
        }
        Some(_) => Finding::wrong(
            "pgpass.owner",
            format!(
                "{shown} is owned by uid {}, not by {os_user}, whose WAL receiver reads it",
                facts.owner_uid
            ),
            format!("chown {os_user} {shown}"),
        ),
        None => Finding::wrong(
            "pgpass.owner",
            format!("there is no user {os_user} (pg_os_user) on this node"),
            format!("set pg_os_user to the user PostgreSQL runs as, then chown it {shown}"),
        ),
    });
    findings.push(if facts.mode & 0o077 == 0 {
        Finding::ok("pgpass.mode", format!("mode {:04o}", facts.mode & 0o7777))
    } else {
        Finding::wrong(
            "pgpass.mode",
            format!(
                "{shown} has mode {:04o}: libpq ignores a pgpass file others can read",
                facts.mode & 0o7777
            ),
            format!("chmod 0600 {shown}"),
        )
    });
    findings
}

/// The host key of another node is already trusted. pgzfs never adds one itself, so
/// the fix has the operator compare fingerprints before appending.
pub fn known_host(node: &str, host: &str, port: u16, known_hosts: &Path, present: bool) -> Finding {
    let check = format!("known_hosts.{node}");
    let name = known_hosts_name(host, port);
    if present {
        return Finding::ok(&check, format!("{name} is in {}", known_hosts.display()));
    }
    Finding::wrong(
        &check,
        format!(
            "no host key for {name} (node {node}) in {}; pgzfs will refuse to connect",
            known_hosts.display()
        ),
        format!(
            "ssh-keyscan -p {port} {host} > /tmp/{node}.key && ssh-keygen -lf /tmp/{node}.key; \
             compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on {node}'s console, \
             and only if they match: cat /tmp/{node}.key >> {}",
            known_hosts.display()
        ),
    )
}

/// How known_hosts names a host: the bare name on port 22, `[host]:port` otherwise.
pub fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// What the local PostgreSQL says about replication.
pub struct ServerFacts {
    pub wal_level: String,
    pub max_wal_senders: u32,
    pub max_replication_slots: u32,
}

/// Any node may become the primary, so each one needs the settings of a primary: WAL
/// for standbys, a sender for each of them, and a slot for each when slots are used.
pub fn server(facts: &ServerFacts, standbys: u32, use_slots: bool) -> Vec<Finding> {
    let restart = "service postgresql restart";
    let mut findings = Vec::new();
    findings.push(match facts.wal_level.as_str() {
        "replica" | "logical" | "archive" | "hot_standby" => Finding::ok(
            "postgres.wal_level",
            format!("wal_level = {}", facts.wal_level),
        ),
        other => Finding::wrong(
            "postgres.wal_level",
            format!("wal_level = {other}: standbys cannot replay WAL this server writes"),
            format!("psql -c \"ALTER SYSTEM SET wal_level = replica\" && {restart}"),
        ),
    });
    findings.push(if facts.max_wal_senders >= standbys.max(1) {
        Finding::ok(
            "postgres.max_wal_senders",
            format!("max_wal_senders = {}", facts.max_wal_senders),
        )
    } else {
        Finding::wrong(
            "postgres.max_wal_senders",
            format!(
                "max_wal_senders = {}: fewer than the {standbys} standby(s) this node serves as primary",
                facts.max_wal_senders
            ),
            format!(
                "psql -c \"ALTER SYSTEM SET max_wal_senders = {}\" && {restart}",
                standbys.max(1) + 2
            ),
        )
    });
    if use_slots {
        findings.push(if facts.max_replication_slots >= standbys.max(1) {
            Finding::ok(
                "postgres.max_replication_slots",
                format!("max_replication_slots = {}", facts.max_replication_slots),
            )
        } else {
            Finding::wrong(
                "postgres.max_replication_slots",
                format!(
                    "max_replication_slots = {}: fewer than the {standbys} standby slot(s) (use_slots)",
                    facts.max_replication_slots
                ),
                format!(
                    "psql -c \"ALTER SYSTEM SET max_replication_slots = {}\" && {restart}",
                    standbys.max(1) + 2
                ),
            )
        });
    }
    findings
}

/// What the replication role may do on the local server.
pub struct RoleFacts {
    pub role: String,
    pub superuser: bool,
    pub replication: bool,
    pub pg_monitor: bool,
    /// The backup functions of this major and whether the role may execute each.
    pub functions: Vec<(String, bool)>,
}

/// The role logs in for replication, reads the monitoring views and runs the backup
/// functions (revoked from PUBLIC, so granted one by one).
pub fn role(facts: &RoleFacts) -> Finding {
    let role = &facts.role;
    if facts.superuser {
        return Finding::ok("postgres.role", format!("{role} is a superuser"));
    }
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    if !facts.replication {
        missing.push("REPLICATION".to_string());
        fixes.push(format!("ALTER ROLE {role} REPLICATION;"));
    }
    if !facts.pg_monitor {
        missing.push("pg_monitor".to_string());
        fixes.push(format!("GRANT pg_monitor TO {role};"));
    }
    for (function, granted) in &facts.functions {
        if !granted {
            missing.push(format!("EXECUTE on {function}"));
            fixes.push(format!("GRANT EXECUTE ON FUNCTION {function} TO {role};"));
        }
    }
    if missing.is_empty() {
        Finding::ok(
            "postgres.role",
            format!("{role} has REPLICATION, pg_monitor and the backup functions"),
        )
    } else {
        Finding::wrong(
            "postgres.role",
            format!("{role} lacks {}", missing.join(", ")),
            format!("psql -U postgres -c \"{}\"", fixes.join(" ")),
        )
    }
}

/// The local server could not be asked: the settings and grants stay unknown.
pub fn unreachable(target: &str, why: &str, pg_user: &str, passfile: Option<&Path>) -> Finding {
    Finding::wrong(
        "postgres.connect",
        format!("cannot connect to {target} as {pg_user}: {why}"),
        format!(
            "start PostgreSQL, allow {pg_user} from this host in pg_hba.conf, and put its \
             password in {}",
            passfile.map_or("the pgpass file".to_string(), |p| p.display().to_string())
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrong_checks(findings: &[Finding]) -> Vec<&str> {
        findings
            .iter()
            .filter(|f| f.verdict == Verdict::Wrong)
            .map(|f| f.check.as_str())
            .collect()
    }

    #[test]
    fn a_missing_dataset_is_created_where_data_dir_will_lie() {
        let findings = dataset(
            "tank/pg",
            Path::new("/var/db/pg/data"),
            Some(Path::new("/var/db/pg")),
            None,
        );
        assert_eq!(wrong_checks(&findings), ["dataset"]);
        assert_eq!(
            findings[0].fix.as_deref(),
            Some("zfs create -o recordsize=16k -o mountpoint=/var/db/pg tank/pg")
        );
    }

    #[test]
    fn a_dataset_mounted_elsewhere_or_never_is_wrong_and_big_records_are_advice() {
        let facts = DatasetFacts {
            mountpoint: Some(PathBuf::from("/mnt/other")),
            canmount: Some("off".into()),
            recordsize: Some(128 * 1024),
        };
        let findings = dataset("tank/pg", Path::new("/var/db/pg"), None, Some(&facts));
        assert_eq!(
            wrong_checks(&findings),
            ["dataset.mountpoint", "dataset.canmount"]
        );
        let advice = findings
            .iter()
            .find(|f| f.check == "dataset.recordsize")
            .unwrap();
        assert_eq!(advice.verdict, Verdict::Advice);
        assert_eq!(
            advice.fix.as_deref(),
            Some("zfs set recordsize=16k tank/pg")
        );
    }

    #[test]
    fn a_pgpass_others_can_read_or_root_owns_is_named_with_its_fix() {
        let path = Path::new("/var/db/postgres/.pgpass");
        let facts = FileFacts {
            owner_uid: 0,
            mode: 0o100644,
        };
        let findings = pgpass(
            Some(path),
            Some(&facts),
            "postgres",
            Some(770),
            5432,
            "replicator",
        );
        assert_eq!(wrong_checks(&findings), ["pgpass.owner", "pgpass.mode"]);
        assert_eq!(
            findings[1].fix.as_deref(),
            Some("chown postgres /var/db/postgres/.pgpass")
        );
        assert_eq!(
            findings[2].fix.as_deref(),
            Some("chmod 0600 /var/db/postgres/.pgpass")
        );
        let right = FileFacts {
            owner_uid: 770,
            mode: 0o100600,
        };
        let findings = pgpass(
            Some(path),
            Some(&right),
            "postgres",
            Some(770),
            5432,
            "replicator",
        );
        assert!(wrong_checks(&findings).is_empty(), "{findings:?}");
    }

    #[test]
    fn known_hosts_names_a_non_default_port_in_brackets() {
        assert_eq!(known_hosts_name("db2.example.net", 22), "db2.example.net");
        assert_eq!(known_hosts_name("10.0.0.2", 2222), "[10.0.0.2]:2222");
        let finding = known_host(
            "db2",
            "10.0.0.2",
            2222,
            Path::new("/root/.ssh/known_hosts"),
            false,
        );
        assert_eq!(finding.verdict, Verdict::Wrong);
        assert!(finding
            .fix
            .unwrap()
            .starts_with("ssh-keyscan -p 2222 10.0.0.2"));
    }

    #[test]
    fn minimal_wal_and_too_few_senders_or_slots_are_wrong() {
        let facts = ServerFacts {
            wal_level: "minimal".into(),
            max_wal_senders: 0,
            max_replication_slots: 1,
        };
        let findings = server(&facts, 2, true);
        assert_eq!(
            wrong_checks(&findings),
            [
                "postgres.wal_level",
                "postgres.max_wal_senders",
                "postgres.max_replication_slots"
            ]
        );
        assert_eq!(
            server(&facts, 2, false).len(),
            2,
            "no slot check without use_slots"
        );
    }

    #[test]
    fn a_role_without_a_grant_gets_exactly_the_missing_grants() {
        let facts = RoleFacts {
            role: "replicator".into(),
            superuser: false,
            replication: true,
            pg_monitor: false,
            functions: vec![
                ("pg_backup_start(text, boolean)".into(), false),
                ("pg_backup_stop(boolean)".into(), true),
            ],
        };
        let finding = role(&facts);
        assert_eq!(finding.verdict, Verdict::Wrong);
        assert_eq!(
            finding.fix.as_deref(),
            Some(
                "psql -U postgres -c \"GRANT pg_monitor TO replicator; GRANT EXECUTE ON FUNCTION \
                 pg_backup_start(text, boolean) TO replicator;\""
            )
        );
    }
}
