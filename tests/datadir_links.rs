//! The data directory is the PostgreSQL user's, and a standby's is a copy of the
//! primary's: whatever that user plants on the primary reaches every standby, where
//! pgzfs runs as root. End to end on real zfs-fuse, sshd and PostgreSQL 15.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{stderr_of, Lab};

const SECRET: &str = "root-only: this must never be rewritten, chowned or read\n";

/// The confirmed attack of issue 9: postgres on the primary replaces postgresql.auto.conf
/// (and tablespace_map) with links to a root-only file; `zfs send` copies the links; the
/// re-seed on the standby, as root, used to write the standby settings through the link
/// and chown the root file to postgres.
#[test]
fn postgres_linking_auto_conf_to_a_root_file_on_the_primary_cannot_make_the_reseed_write_it() {
    let lab = Lab::up("autoconflink");
    // A root-only file on the standby host (one machine here, so the same path on both).
    let victim = lab.dir.join("root-only.conf");
    std::fs::write(&victim, SECRET).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&victim, Some(0.into()), Some(0.into())).unwrap();

    let primary = lab.data_dir("db1");
    let out = lab.as_postgres(&format!(
        "ln -sf {v} {d}/postgresql.auto.conf && ln -sf {v} {d}/tablespace_map",
        v = victim.display(),
        d = primary.display()
    ));
    assert!(
        out.status.success(),
        "postgres plants the links: {}",
        stderr_of(&out)
    );
    assert!(
        std::fs::symlink_metadata(primary.join("postgresql.auto.conf"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let out = lab.pgzfs("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));

    // The root file is exactly as it was.
    let meta = std::fs::symlink_metadata(&victim).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), SECRET);
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "still owned by root");
    assert_eq!(meta.mode() & 0o7777, 0o600, "mode unchanged");

    // On the standby the links were replaced by the directory owner's regular files,
    // and nothing of the root file was read into them.
    let standby = lab.data_dir("db2");
    let owner = std::fs::metadata(&standby).unwrap().uid();
    let auto_conf = standby.join("postgresql.auto.conf");
    let meta = std::fs::symlink_metadata(&auto_conf).unwrap();
    assert!(
        meta.file_type().is_file(),
        "auto.conf is a regular file now"
    );
    assert_eq!(meta.uid(), owner, "owned like the data directory");
    let text = std::fs::read_to_string(&auto_conf).unwrap();
    assert!(
        !text.contains("root-only"),
        "the root file was not read: {text}"
    );
    assert!(text.contains("primary_conninfo"), "{text}");
    assert!(
        std::fs::symlink_metadata(standby.join("tablespace_map")).is_err(),
        "the linked tablespace_map is removed (the link, not its target)"
    );
    assert!(
        stderr_of(&out).contains("postgresql.auto.conf"),
        "the operator is told about the link: {}",
        stderr_of(&out)
    );

    // And the standby is a standby all the same.
    lab.assert_streaming("db2");
}
