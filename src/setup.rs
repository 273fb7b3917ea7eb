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
    /// Could not be found out here (a peer that does not answer, a zfs that cannot
    /// show delegations): never counted as right.
    Unknown,
    /// Does not apply on this system (rc.d variables where there is no rc.conf).
    Skipped,
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

    fn unknown(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            verdict: Verdict::Unknown,
            detail: detail.into(),
            fix: None,
        }
    }

    fn skipped(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            verdict: Verdict::Skipped,
            detail: detail.into(),
            fix: None,
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

/// A node about to become a standby has no dataset and no data directory yet: the first
/// `pgzfs reset-secondary` creates the dataset by a full receive, below its parent.
pub fn new_standby_dataset(dataset: &str, parent: Option<&str>, parent_exists: bool) -> Finding {
    match parent {
        Some(parent) if !parent_exists => Finding::wrong(
            "dataset",
            format!("neither {dataset} nor its parent {parent} exists, so nothing can be received"),
            format!("zfs create -p {parent}"),
        ),
        _ => Finding::ok(
            "dataset",
            format!(
                "{dataset} does not exist yet and there is no data directory: a new standby, \
                 whose first `pgzfs reset-secondary` creates it by a full receive"
            ),
        ),
    }
}

/// No PostgreSQL on a new standby yet: its settings and grants come with the re-seed.
pub fn no_server_yet() -> Finding {
    Finding::skipped(
        "postgres",
        "no data directory on this node yet: its settings, pg_hba and grants come with the \
         first re-seed from the primary (run check --setup there too)",
    )
}

/// The permissions `zfs allow` must give the SSH user on a node's dataset so that the
/// other nodes can re-seed from it (the README's set for the sending side; `bookmark`
/// only where the pool can hold bookmarks).
pub fn sending_permissions(bookmarks: bool) -> Vec<&'static str> {
    let mut permissions = vec!["snapshot", "mount", "send", "hold", "release", "userprop"];
    if bookmarks {
        permissions.push("bookmark");
    }
    permissions
}

/// What `zfs allow DATASET` shows for `user`: the permissions given to the user by name
/// or to everyone, and whether any group has some (which this check cannot resolve).
fn delegated(output: &str, user: &str) -> (Vec<String>, bool) {
    let mut permissions = Vec::new();
    let mut groups = false;
    for line in output.lines() {
        // "Create time permissions:" lists what a creator gets, not what anyone has.
        let words: Vec<&str> = line.split_whitespace().collect();
        let granted = match words.as_slice() {
            ["user", name, perms] if *name == user => Some(*perms),
            ["everyone", perms] => Some(*perms),
            ["group", _, _] => {
                groups = true;
                None
            }
            _ => None,
        };
        if let Some(perms) = granted {
            permissions.extend(perms.split(',').map(str::to_string));
        }
    }
    (permissions, groups)
}

/// The SSH user may do on `node`'s dataset what a re-seed from it needs. `output` is what
/// `zfs allow DATASET` printed there, or why it could not be asked.
pub fn zfs_allow(
    node: &str,
    dataset: &str,
    ssh_user: &str,
    needed: &[&str],
    output: std::result::Result<&str, &str>,
) -> Finding {
    let check = format!("zfs_allow.{node}");
    if ssh_user == "root" {
        return Finding::ok(&check, "ssh_user is root, which needs no delegation");
    }
    let output = match output {
        Ok(output) => output,
        Err(why) => {
            return Finding::unknown(
                &check,
                format!("cannot tell what {ssh_user} may do on {dataset} ({node}): {why}"),
            )
        }
    };
    let (granted, groups) = delegated(output, ssh_user);
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|p| !granted.iter().any(|g| g == p))
        .collect();
    if missing.is_empty() {
        return Finding::ok(
            &check,
            format!("{ssh_user} may {} on {dataset}", needed.join(",")),
        );
    }
    let detail = format!(
        "{ssh_user} lacks {} on {dataset} ({node}): the other nodes cannot re-seed from it",
        missing.join(",")
    );
    if groups {
        return Finding::unknown(
            &check,
            format!("{detail}, unless a group it is in has them (zfs allow shows groups; check by hand)"),
        );
    }
    Finding::wrong(
        &check,
        detail,
        format!(
            "on {node}: zfs allow -u {ssh_user} {} {dataset}",
            needed.join(",")
        ),
    )
}

/// Logging in to a peer as pgzfs does (its key, strict host key checking).
pub fn ssh_login(peer: &str, who: &str, result: std::result::Result<(), &str>) -> Finding {
    let check = format!("ssh.{peer}");
    match result {
        Ok(()) => Finding::ok(&check, format!("logged in as {who}")),
        Err(why) => Finding::wrong(
            &check,
            format!("cannot log in as {who}: {why}"),
            format!(
                "append this node's ssh_key .pub to the ssh_user's ~/.ssh/authorized_keys on {peer}, \
                 and check that its sshd listens on the replication_host"
            ),
        ),
    }
}

/// The peer could not be reached over SSH, so what only it can show stays unknown.
pub fn unreachable_peer(check: &str, peer: &str) -> Finding {
    Finding::unknown(
        check,
        format!("{peer} cannot be reached over SSH (see ssh.{peer})"),
    )
}

/// What running `pgzfs_bin --version` on a peer gave.
pub enum RemoteRun<'a> {
    Ran {
        success: bool,
        stdout: &'a str,
        stderr: &'a str,
    },
    Failed(&'a str),
}

/// `pgzfs_bin` runs on the peer (switchover, `ssh_compress` and `backup_via = "ssh"`
/// start it there). A key bound to `pgzfs serve` only lets serve's own commands through,
/// so a refusal from serve leaves it unknown rather than wrong.
pub fn pgzfs_bin(peer: &str, path: &Path, run: RemoteRun) -> Finding {
    let check = format!("pgzfs_bin.{peer}");
    let shown = path.display();
    match run {
        RemoteRun::Ran { success: true, stdout, .. } if stdout.starts_with("pgzfs ") => {
            Finding::ok(&check, format!("{shown} on {peer} is {}", stdout.trim()))
        }
        RemoteRun::Ran { stderr, .. } if stderr.contains("serve: refused") => Finding::unknown(
            &check,
            format!("{peer}'s key runs the forced command `pgzfs serve`, which does not run {shown} --version"),
        ),
        RemoteRun::Ran { stdout, stderr, .. } => Finding::wrong(
            &check,
            format!(
                "{shown} does not run on {peer}: {}",
                if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() }
            ),
            format!("on {peer}: pkg install pgzfs (or set pgzfs_bin to where pgzfs is installed there)"),
        ),
        RemoteRun::Failed(why) => Finding::unknown(&check, format!("could not run {shown} on {peer}: {why}")),
    }
}

/// What a peer's PostgreSQL said to a replication connection from this node.
pub enum HbaAnswer {
    /// It asked for a password (or let us in): a pg_hba line matches.
    Accepted,
    /// "no pg_hba.conf entry for replication connection ...", or "rejects".
    NoEntry(String),
    /// It did not answer, or answered something else.
    Unknown(String),
}

/// The peer's pg_hba.conf lets this node's WAL receiver in as the replication role from
/// this node's `replication_host`.
pub fn pg_hba(
    peer: &str,
    peer_data_dir: &Path,
    role: &str,
    from: &str,
    answer: HbaAnswer,
) -> Finding {
    let check = format!("pg_hba.{peer}");
    match answer {
        HbaAnswer::Accepted => Finding::ok(
            &check,
            format!("{peer} accepts replication connections as {role} from {from}"),
        ),
        HbaAnswer::NoEntry(message) => {
            let address = match from.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => format!("{from}/32"),
                Ok(std::net::IpAddr::V6(_)) => format!("{from}/128"),
                Err(_) => from.to_string(),
            };
            Finding::wrong(
                &check,
                format!("{peer} refuses replication as {role} from {from}: {message}"),
                format!(
                    "on {peer}: echo 'host replication {role} {address} scram-sha-256' >> {}/pg_hba.conf \
                     && psql -U postgres -c 'SELECT pg_reload_conf()' (pg_hba.conf travels with \
                     re-seeds: add every node's replication address)",
                    peer_data_dir.display()
                ),
            )
        }
        HbaAnswer::Unknown(why) => Finding::unknown(
            &check,
            format!("cannot tell whether {peer} accepts replication from {from}: {why}"),
        ),
    }
}

/// rc.conf-style assignments (`name="value"`, `name='value'`, `name=value`), the last
/// one winning as when /bin/sh reads them; comments and anything else are skipped.
pub fn rc_assignments(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut values = std::collections::BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line.split_once('=') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => match rest[1..].find(quote) {
                Some(end) => rest[1..1 + end].to_string(),
                None => continue,
            },
            _ => rest.split('#').next().unwrap_or("").trim().to_string(),
        };
        values.insert(name.to_string(), value);
    }
    values
}

/// The rc.d variables that start the daemon at boot with this config and this node.
/// `files`: the rc.conf files that exist, in the order rc.subr reads them.
pub fn rc_d(
    files: &[(PathBuf, String)],
    config: &Path,
    default_config: &Path,
    node: &str,
) -> Vec<Finding> {
    if files.is_empty() {
        return vec![Finding::skipped(
            "rc.d",
            "no /etc/rc.conf: not FreeBSD, so the rc.d variables are not checked",
        )];
    }
    let mut values = std::collections::BTreeMap::new();
    for (_, text) in files {
        values.extend(rc_assignments(text));
    }
    let read: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
    let read = read.join(", ");
    let mut findings = Vec::new();
    let enable = values.get("pgzfs_enable").map(String::as_str).unwrap_or("");
    findings.push(
        if matches!(
            enable.to_ascii_lowercase().as_str(),
            "yes" | "true" | "on" | "1"
        ) {
            Finding::ok("rc.pgzfs_enable", format!("pgzfs_enable={enable}"))
        } else {
            Finding::wrong(
                "rc.pgzfs_enable",
                format!(
                    "pgzfs_enable is {:?} in {read}: the daemon does not start at boot",
                    enable
                ),
                "sysrc pgzfs_enable=YES",
            )
        },
    );
    let configured = values
        .get("pgzfs_config")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_config.to_path_buf());
    findings.push(if configured == config {
        Finding::ok(
            "rc.pgzfs_config",
            format!("the daemon reads {}", config.display()),
        )
    } else {
        Finding::wrong(
            "rc.pgzfs_config",
            format!(
                "the daemon would read {}, not {} which this check read",
                configured.display(),
                config.display()
            ),
            format!("sysrc pgzfs_config={}", config.display()),
        )
    });
    let flags = values.get("pgzfs_flags").map(String::as_str).unwrap_or("");
    let words: Vec<&str> = flags.split_whitespace().collect();
    let named = words
        .windows(2)
        .find(|w| w[0] == "--node")
        .map(|w| w[1])
        .or_else(|| words.iter().find_map(|w| w.strip_prefix("--node=")));
    findings.push(match named {
        Some(other) if other != node => Finding::wrong(
            "rc.pgzfs_flags",
            format!("pgzfs_flags names --node {other}, but this node is {node}"),
            format!("sysrc pgzfs_flags=\"--node {node}\""),
        ),
        _ => Finding::ok("rc.pgzfs_flags", format!("pgzfs_flags={flags:?}")),
    });
    findings
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

    #[test]
    fn a_missing_delegation_gets_the_readme_set_and_an_unreadable_one_is_unknown() {
        let shown = "---- Permissions on tank/pgdata ----\nLocal+Descendent permissions:\n\
                     \tuser zfssync hold,release,send,snapshot\n";
        let finding = zfs_allow(
            "db1",
            "tank/pgdata",
            "zfssync",
            &sending_permissions(true),
            Ok(shown),
        );
        assert_eq!(finding.verdict, Verdict::Wrong);
        assert!(
            finding.detail.contains("lacks mount,userprop,bookmark"),
            "{}",
            finding.detail
        );
        assert_eq!(
            finding.fix.as_deref(),
            Some("on db1: zfs allow -u zfssync snapshot,mount,send,hold,release,userprop,bookmark tank/pgdata")
        );
        let all = "Local+Descendent permissions:\n\teveryone bookmark,mount,userprop\n\
                   \tuser zfssync hold,release,send,snapshot\n";
        assert_eq!(
            zfs_allow(
                "db1",
                "tank/pgdata",
                "zfssync",
                &sending_permissions(true),
                Ok(all)
            )
            .verdict,
            Verdict::Ok
        );
        assert_eq!(
            zfs_allow(
                "db1",
                "tank/pgdata",
                "zfssync",
                &sending_permissions(true),
                Err("unsupported")
            )
            .verdict,
            Verdict::Unknown
        );
        let by_group = "Local+Descendent permissions:\n\tgroup wheel send\n";
        assert_eq!(
            zfs_allow(
                "db1",
                "tank/pgdata",
                "zfssync",
                &sending_permissions(true),
                Ok(by_group)
            )
            .verdict,
            Verdict::Unknown,
            "permissions through a group are not judged"
        );
        assert_eq!(
            zfs_allow("db1", "tank/pgdata", "root", &[], Err("x")).verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn rc_conf_is_read_like_sh_reads_it_and_each_wrong_variable_gets_sysrc() {
        let values = rc_assignments(
            "# pgzfs\npgzfs_enable=\"YES\"\nhostname='db1.example.net'\npgzfs_flags=--node\\ db1 # x\n\
             not an assignment\npgzfs_enable=\"NO\"\n",
        );
        assert_eq!(values["pgzfs_enable"], "NO", "the last one wins");
        assert_eq!(values["hostname"], "db1.example.net");

        let config = Path::new("/usr/local/etc/pgzfs.toml");
        let files = vec![
            (
                PathBuf::from("/etc/rc.conf"),
                "pgzfs_enable=\"YES\"\n".to_string(),
            ),
            (
                PathBuf::from("/etc/rc.conf.d/pgzfs"),
                "pgzfs_config=\"/etc/other.toml\"\npgzfs_flags=\"--node db2\"\n".to_string(),
            ),
        ];
        let findings = rc_d(&files, config, config, "db1");
        assert_eq!(
            wrong_checks(&findings),
            ["rc.pgzfs_config", "rc.pgzfs_flags"]
        );
        assert_eq!(
            findings[1].fix.as_deref(),
            Some("sysrc pgzfs_config=/usr/local/etc/pgzfs.toml")
        );
        assert_eq!(
            findings[2].fix.as_deref(),
            Some("sysrc pgzfs_flags=\"--node db1\"")
        );

        let off = vec![(
            PathBuf::from("/etc/rc.conf"),
            "sshd_enable=YES\n".to_string(),
        )];
        let findings = rc_d(&off, config, config, "db1");
        assert_eq!(wrong_checks(&findings), ["rc.pgzfs_enable"]);
        assert_eq!(findings[0].fix.as_deref(), Some("sysrc pgzfs_enable=YES"));

        let linux = rc_d(&[], config, config, "db1");
        assert_eq!(linux.len(), 1);
        assert_eq!(linux[0].verdict, Verdict::Skipped, "no rc.conf, no verdict");
    }

    #[test]
    fn a_peer_without_a_replication_line_gets_one_for_this_nodes_address() {
        let finding = pg_hba(
            "db2",
            Path::new("/var/db/postgres/data17"),
            "replicator",
            "10.1.0.1",
            HbaAnswer::NoEntry("no pg_hba.conf entry for replication connection".into()),
        );
        assert_eq!(finding.verdict, Verdict::Wrong);
        assert!(finding
            .fix
            .unwrap()
            .starts_with("on db2: echo 'host replication replicator 10.1.0.1/32 scram-sha-256' >> /var/db/postgres/data17/pg_hba.conf"));
        let unknown = pg_hba(
            "db2",
            Path::new("/d"),
            "replicator",
            "10.1.0.1",
            HbaAnswer::Unknown("connection refused".into()),
        );
        assert_eq!(unknown.verdict, Verdict::Unknown);
    }

    #[test]
    fn pgzfs_bin_behind_a_forced_command_is_unknown_and_a_missing_one_wrong() {
        let path = Path::new("/usr/local/bin/pgzfs");
        let ok = pgzfs_bin(
            "db2",
            path,
            RemoteRun::Ran {
                success: true,
                stdout: "pgzfs 0.1.0\n",
                stderr: "",
            },
        );
        assert_eq!(ok.verdict, Verdict::Ok);
        let missing = pgzfs_bin(
            "db2",
            path,
            RemoteRun::Ran {
                success: false,
                stdout: "",
                stderr: "sh: /usr/local/bin/pgzfs: not found",
            },
        );
        assert_eq!(missing.verdict, Verdict::Wrong);
        let serve = pgzfs_bin(
            "db2",
            path,
            RemoteRun::Ran {
                success: false,
                stdout: "",
                stderr: "pgzfs: serve: refused pgzfs --version from 10.0.0.1: ...",
            },
        );
        assert_eq!(serve.verdict, Verdict::Unknown);
    }
}
