//! Property tests of the parsers that read what a less trusted party wrote: the config
//! file, the command line a standby sends to `pgzfs serve`, the resume token contents a
//! receiving zfs prints, and the pgpass file. Whatever the input: no panic, and what is
//! accepted has the shape pgzfs itself builds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pgzfs::commands::serve;
use pgzfs::config::Config;
use pgzfs::zfs::features::{parse_resume_token_contents, ResumeToken};
use pgzfs::zfs::names::DatasetName;
use proptest::prelude::*;

/// Words a zfs command line pgzfs builds is made of, plus some that it never uses, so
/// that generated command lines are often near misses rather than noise.
fn zfs_word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("zfs".to_string()),
        Just("send".to_string()),
        Just("receive".to_string()),
        Just("get".to_string()),
        Just("set".to_string()),
        Just("hold".to_string()),
        Just("release".to_string()),
        Just("destroy".to_string()),
        Just("snapshot".to_string()),
        Just("list".to_string()),
        Just("-H".to_string()),
        Just("-p".to_string()),
        Just("-o".to_string()),
        Just("-r".to_string()),
        Just("-t".to_string()),
        Just("-i".to_string()),
        Just("-L".to_string()),
        Just("name,property,value".to_string()),
        Just("tank/pgdata".to_string()),
        Just("tank/pgdata@pgzfs-20260101T000000Z".to_string()),
        Just("tank/other@pgzfs-20260101T000000Z".to_string()),
        // pg_wal's child dataset is within reach, a look-alike sibling is not.
        Just("tank/pgdata/wal@pgzfs-20260101T000000Z".to_string()),
        Just("tank/pgdataX@pgzfs-20260101T000000Z".to_string()),
        Just("pgzfs-db2".to_string()),
        "[a-z/@:=,.-]{1,12}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_serve_command_splitter_never_panics(line in any::<String>()) {
        let _ = serve::split(&line);
    }

    #[test]
    fn a_command_line_quoted_by_pgzfs_splits_back_into_its_words(
        words in prop::collection::vec("[ -~]{0,12}", 1..8)
    ) {
        let line = pgzfs::shell::join(&words);
        prop_assert_eq!(serve::split(&line), Ok(words));
    }

    #[test]
    fn serve_allows_only_zfs_commands_on_its_own_dataset(
        (template, position, word) in (0..TEMPLATES.len(), 0..12usize, zfs_word())
    ) {
        // A command pgzfs really sends, with one word replaced: a near miss.
        let mut words: Vec<String> = TEMPLATES[template].iter().map(|w| w.to_string()).collect();
        let position = position % (words.len() + 1);
        if position == words.len() {
            words.push(word);
        } else {
            words[position] = word;
        }
        let ours = DatasetName::parse("tank/pgdata").unwrap();
        if let Ok(allowed) = serve::check(&words, &ours) {
            prop_assert_eq!(allowed.argv[0].as_str(), "zfs");
            for word in &allowed.argv {
                // Never a shell's business, never another dataset (the datasets below
                // ours are part of the cluster: pg_wal on its own child).
                prop_assert!(
                    !word.chars().any(|c| c.is_control() || "`$;|&<>(){}\\\"'*?".contains(c)),
                    "{:?} in {:?}", word, allowed.argv
                );
                if word.starts_with("tank/") {
                    prop_assert!(
                        word == "tank/pgdata" || word.starts_with("tank/pgdata@")
                            || word.starts_with("tank/pgdata#") || word.starts_with("tank/pgdata/"),
                        "{:?} reaches past tank/pgdata: {:?}", word, allowed.argv
                    );
                }
            }
        }
    }

    #[test]
    fn a_resume_token_and_its_printed_contents_never_panic_the_parsers(
        token in any::<String>(),
        contents in prop::collection::vec(
            prop_oneof![
                Just("resume token contents:".to_string()),
                Just("nvlist version: 0".to_string()),
                "\t(fromguid|toguid|toname|object|offset|bytes|embedok) = [ -~]{0,40}",
                "\t\t(toname|toguid) = [ -~]{0,40}",
                any::<String>(),
            ],
            0..12,
        )
    ) {
        let _ = ResumeToken::parse(&token);
        let _ = parse_resume_token_contents(&contents.join("\n"));
    }

    #[test]
    fn any_config_text_is_loaded_or_refused_as_a_usage_error(text in config_text()) {
        if let Err(e) = Config::parse(&text, Path::new("/etc/pgzfs.toml")) {
            prop_assert_eq!(e.exit_code(), 2, "{}", e);
            prop_assert!(e.to_string().starts_with("/etc/pgzfs.toml: "), "{}", e);
        }
    }

    #[test]
    fn any_pgpass_file_is_read_or_refused_without_panic(
        lines in prop::collection::vec(
            prop_oneof![
                "[*a-z0-9:\\\\#. ]{0,40}",
                Just("*:*:*:replicator:secret".to_string()),
                Just("db1:5432:postgres:replicator:pa\\:ss".to_string()),
                any::<String>(),
            ],
            0..8,
        ),
        port in any::<u16>(),
    ) {
        let dir = std::env::temp_dir().join(format!("pgzfs-prop-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, lines.join("\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let _ = pgzfs::pgpass::find_password(&file, "db1", port, "postgres", "replicator");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Commands a standby's re-seed sends to its source (see serve's own tests).
const TEMPLATES: &[&[&str]] = &[
    &[
        "zfs",
        "get",
        "-H",
        "-p",
        "-o",
        "name,property,value",
        "type",
        "tank/pgdata",
    ],
    &[
        "zfs",
        "send",
        "-i",
        "tank/pgdata@pgzfs-20261121T003000Z",
        "tank/pgdata@pgzfs-20261122T003000Z",
    ],
    &["zfs", "send", "tank/pgdata@pgzfs-20261122T003000Z"],
    &[
        "zfs",
        "hold",
        "pgzfs-db2",
        "tank/pgdata@pgzfs-20261122T003000Z",
    ],
    &[
        "zfs",
        "release",
        "pgzfs-db2",
        "tank/pgdata@pgzfs-20261122T003000Z",
    ],
];

#[test]
fn the_templates_are_commands_serve_allows_as_they_are() {
    let ours = DatasetName::parse("tank/pgdata").unwrap();
    for template in TEMPLATES {
        let words: Vec<String> = template.iter().map(|w| w.to_string()).collect();
        assert!(serve::check(&words, &ours).is_ok(), "{words:?}");
    }
}

/// Config files that are mostly well formed, with values and keys drawn to hit the
/// checks: valid TOML with odd values, and now and then no TOML at all.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("dataset"),
        Just("data_dir"),
        Just("pg_port"),
        Just("ssh_port"),
        Just("keep_common"),
        Just("lock_timeout"),
        Just("bwlimit"),
        Just("slot_name"),
        Just("pg_user"),
        Just("ssh_compress"),
        Just("http_listen"),
        Just("mountpoint"),
        Just("quarantine_dir"),
        Just("pg_sslmode"),
        Just("promote_check_attempts"),
        Just("no_such_key"),
    ];
    let value = prop_oneof![
        Just("\"tank/pgdata\"".to_string()),
        Just("\"/var/db/postgres/data15\"".to_string()),
        Just("\"99999999999999999999d\"".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("9223372036854775807".to_string()),
        Just("\"zstd:99\"".to_string()),
        Just("\"1e300M\"".to_string()),
        Just("true".to_string()),
        "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "")),
        "-?[0-9]{1,22}",
    ];
    let line = (key, value).prop_map(|(k, v)| format!("{k} = {v}"));
    (prop::collection::vec(line, 0..6), any::<bool>(), "[ -~\n]{0,40}").prop_map(
        |(lines, garbage, noise)| {
            let body = lines.join("\n");
            if garbage {
                format!("cluster = \"pg\"\n{noise}\n[[nodes]]\nname = \"db1\"\nhost = \"127.0.0.1\"\n{body}\n")
            } else {
                format!(
                    "cluster = \"pg\"\n[defaults]\ndataset = \"tank/pgdata\"\ndata_dir = \"/var/db/postgres/data15\"\n\
                     [[nodes]]\nname = \"db1\"\nhost = \"127.0.0.1\"\n{body}\n"
                )
            }
        },
    )
}
