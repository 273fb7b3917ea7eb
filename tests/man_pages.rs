//! The man pages are written by hand, but they cannot drift from the program: these
//! tests walk the command line as clap knows it and the config file as the parser knows
//! it, and fail when a command, a flag, a possible value, an exit code or a config key is
//! missing from docs/man/pgzfs.8 or docs/man/pgzfs.toml.5, when a page names a flag or a key that no
//! longer exists, or when a documented default is not the built-in one. mandoc checks
//! that both pages are well-formed mdoc.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use pgzfs::config::{Config, NODE_KEYS};
use pgzfs::error::Error;

fn page(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/man")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between a `.Sh`/`.Ss` line titled `title` and the next heading of the same
/// kind (or a `.Sh`, which ends a subsection too).
fn part<'a>(text: &'a str, macro_: &str, title: &str) -> Option<&'a str> {
    let heading = format!(".{macro_} {title}\n");
    let start = text.find(&heading)? + heading.len();
    let rest = &text[start..];
    let end = [".Sh ", ".Ss "]
        .iter()
        .take(if macro_ == "Sh" { 1 } else { 2 })
        .filter_map(|next| rest.find(&format!("\n{next}")))
        .min()
        .map_or(rest.len(), |i| i + 1);
    Some(&rest[..end])
}

fn section<'a>(text: &'a str, title: &str) -> &'a str {
    part(text, "Sh", title).unwrap_or_else(|| panic!("no section .Sh {title}"))
}

/// The titles of the `.Ss` subsections in `text`.
fn subsection_titles(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(".Ss "))
        .collect()
}

/// Whether an mdoc line of `text` has the macro `macro_` followed by the word `word`
/// (`Fl -json`, `Cm MASTER`, `Ev PGZFS_NODE`), wherever on the line it stands.
fn has_macro_word(text: &str, macro_: &str, word: &str) -> bool {
    text.lines().filter(|l| l.starts_with('.')).any(|line| {
        let tokens: Vec<&str> = line[1..].split_whitespace().collect();
        tokens
            .windows(2)
            .any(|w| w[0] == macro_ && w[1].trim_end_matches([',', '.']) == word)
            || (tokens.first() == Some(&macro_) && tokens.get(1) == Some(&word))
    })
}

/// Every word that follows `Fl` on an mdoc line of `text`: the flags a page names.
fn flags_named(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with('.')) {
        let tokens: Vec<&str> = line[1..].split_whitespace().collect();
        for w in tokens.windows(2) {
            if w[0] == "Fl" {
                flags.insert(w[1].trim_end_matches([',', '.']).to_string());
            }
        }
    }
    flags
}

fn cli() -> clap::Command {
    let mut cmd = pgzfs::cli::Cli::command();
    cmd.build();
    cmd
}

/// The ways a page writes an argument in `Fl`: `-v` as "v", `--verbose` as "-verbose".
fn flag_words(arg: &clap::Arg) -> Vec<String> {
    let mut words = Vec::new();
    if let Some(long) = arg.get_long() {
        words.push(format!("-{long}"));
    }
    if let Some(short) = arg.get_short() {
        words.push(short.to_string());
    }
    words
}

fn is_own_arg(arg: &clap::Arg) -> bool {
    !arg.is_global_set() && arg.get_id() != "help" && arg.get_id() != "version"
}

#[test]
fn every_command_of_the_command_line_has_its_subsection_in_pgzfs_8() {
    let text = page("pgzfs.8");
    let commands = section(&text, "COMMANDS");
    let synopsis = section(&text, "SYNOPSIS");
    let mut missing = Vec::new();
    let mut documented = BTreeSet::new();
    for sub in cli().get_subcommands() {
        let name = sub.get_name();
        // clap's own `help` subcommand is the --help flag in another spelling.
        if name == "help" {
            continue;
        }
        assert!(
            sub.get_subcommands().next().is_none(),
            "{name} has subcommands of its own; teach this test to walk them"
        );
        documented.insert(name.to_string());
        if part(commands, "Ss", name).is_none() {
            missing.push(format!("COMMANDS: no .Ss {name}"));
        }
        // The SYNOPSIS lists what an operator runs; only serve's helper stays out.
        if (!sub.is_hide_set() || name == "completions") && !has_macro_word(synopsis, "Cm", name) {
            missing.push(format!("SYNOPSIS: no Cm {name}"));
        }
    }
    for title in subsection_titles(commands) {
        if !documented.contains(title) {
            missing.push(format!(
                "COMMANDS: .Ss {title} describes a command pgzfs does not have"
            ));
        }
    }
    assert!(missing.is_empty(), "pgzfs.8:\n{}", missing.join("\n"));
}

#[test]
fn every_flag_and_possible_value_of_each_command_is_in_its_subsection() {
    let text = page("pgzfs.8");
    let commands = section(&text, "COMMANDS");
    let mut missing = Vec::new();
    let mut checked = 0;
    for sub in cli().get_subcommands().filter(|s| s.get_name() != "help") {
        let name = sub.get_name();
        let Some(body) = part(commands, "Ss", name) else {
            continue; // reported by the test above
        };
        for arg in sub.get_arguments().filter(|a| is_own_arg(a)) {
            let words = flag_words(arg);
            for word in &words {
                checked += 1;
                if !has_macro_word(body, "Fl", word) {
                    missing.push(format!("{name}: no Fl {word}"));
                }
            }
            if words.is_empty() && arg.get_possible_values().is_empty() {
                // A positional without fixed values: its value name, as `Ar`.
                let value = arg
                    .get_value_names()
                    .and_then(|names| names.first())
                    .map(|n| n.to_lowercase())
                    .unwrap_or_else(|| arg.get_id().to_string());
                checked += 1;
                if !has_macro_word(body, "Ar", &value) {
                    missing.push(format!("{name}: no Ar {value}"));
                }
            }
            for value in arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
            {
                checked += 1;
                if !has_macro_word(body, "Cm", value.get_name()) {
                    missing.push(format!(
                        "{name}: no Cm {} (a value of {})",
                        value.get_name(),
                        arg.get_id()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} arguments found; is the walk broken?"
    );
    assert!(missing.is_empty(), "pgzfs.8:\n{}", missing.join("\n"));
}

#[test]
fn the_global_flags_are_described_and_every_flag_the_page_names_exists() {
    let text = page("pgzfs.8");
    let description = section(&text, "DESCRIPTION");
    let root = cli();
    let mut missing = Vec::new();
    let mut real = BTreeSet::new();
    // `Fl -` alone is the end of options (compressed-send's "-- zfs send ...").
    real.insert("-".to_string());
    for arg in root.get_arguments() {
        for word in flag_words(arg) {
            if !has_macro_word(description, "Fl", &word) {
                missing.push(format!("DESCRIPTION: no Fl {word} (global)"));
            }
            real.insert(word);
        }
    }
    for sub in root.get_subcommands() {
        for arg in sub.get_arguments() {
            real.extend(flag_words(arg));
        }
    }
    for named in flags_named(&text) {
        if !real.contains(&named) {
            missing.push(format!("names Fl {named}, which no command has"));
        }
    }
    assert!(missing.is_empty(), "pgzfs.8:\n{}", missing.join("\n"));
}

#[test]
fn every_exit_code_and_environment_variable_is_listed() {
    let text = page("pgzfs.8");
    let exit = section(&text, "EXIT STATUS");
    let codes = [
        0,
        Error::failed("x").exit_code(),
        Error::usage("x").exit_code(),
        Error::refused("x").exit_code(),
    ];
    for code in codes {
        assert!(
            exit.lines().any(|l| l == format!(".It {code}")),
            "pgzfs.8 EXIT STATUS has no .It {code}"
        );
    }
    let environment = section(&text, "ENVIRONMENT");
    // Read by the code rather than declared to clap (config::config_path,
    // Config::local_node, pgpass, serve).
    let mut variables: BTreeSet<String> = [
        "PGZFS_CONFIG",
        "PGZFS_NODE",
        "PGPASSFILE",
        "HOME",
        "SSH_ORIGINAL_COMMAND",
    ]
    .map(String::from)
    .into();
    let root = cli();
    for cmd in std::iter::once(&root).chain(root.get_subcommands()) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                variables.insert(env.to_string_lossy().into_owned());
            }
        }
    }
    for variable in variables {
        assert!(
            has_macro_word(environment, "It", &format!("Ev {variable}"))
                || environment.contains(&format!(".It Ev {variable}\n")),
            "pgzfs.8 ENVIRONMENT has no .It Ev {variable}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// pgzfs.toml(5)

const BASE: &str = "cluster = \"t\"\n";
const DEFAULTS: &str = "[defaults]\ndataset = \"tank/pg\"\ndata_dir = \"/var/db/pg\"\n";
const NODES: &str = "[[nodes]]\nname = \"db1\"\nhost = \"db1\"\n";

fn parse(text: &str) -> Result<Config, Error> {
    Config::parse(text, &PathBuf::from("/test/pgzfs.toml"))
}

/// The keys a table accepts, as serde lists them when it refuses an unknown one: the
/// parser's own structs are the source, not a list in this test.
fn keys_accepted(text: &str) -> Vec<String> {
    let err = parse(text)
        .expect_err("an unknown key must be refused")
        .to_string();
    let expected = err
        .split("expected")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// One `.It Cm key Pq type` entry: the type and the lines up to the next item.
struct Entry<'a> {
    kind: String,
    body: Vec<&'a str>,
}

fn entry<'a>(text: &'a str, key: &str) -> Option<Entry<'a>> {
    let mut lines = text.lines();
    let head = format!(".It Cm {key} Pq ");
    let kind = lines.find_map(|l| l.strip_prefix(&head))?.to_string();
    let body = lines
        .take_while(|l| !l.starts_with(".It ") && !l.starts_with(".El"))
        .collect();
    Some(Entry { kind, body })
}

/// The documented default when the page gives it as a value (`Default:` then `.Li X`).
fn default_literal(entry: &Entry) -> Option<String> {
    let at = entry.body.iter().position(|l| *l == "Default:")?;
    let value = entry.body.get(at + 1)?.strip_prefix(".Li ")?;
    Some(value.split_whitespace().next()?.to_string())
}

/// Where a key of `table` goes in a config file, given its TOML value.
fn config_with(table: &str, key: &str, value: &str) -> String {
    match table {
        "" => format!("{BASE}{key} = {value}\n{DEFAULTS}{NODES}"),
        "defaults" => format!("{BASE}{DEFAULTS}{key} = {value}\n{NODES}"),
        // A key only a [[nodes]] entry may set goes into the entry itself.
        "nodes" => format!("{BASE}{DEFAULTS}{NODES}{key} = {value}\n"),
        other => format!("{BASE}{DEFAULTS}{NODES}[{other}]\n{key} = {value}\n"),
    }
}

/// Checks one documented key; returns what is wrong with its entry.
fn check_key(part: &str, table: &str, key: &str) -> Vec<String> {
    let Some(entry) = entry(part, key) else {
        return vec![format!("no `.It Cm {key} Pq TYPE` for {key}")];
    };
    let mut wrong = Vec::new();
    if entry.kind.trim().is_empty() {
        wrong.push(format!("{key}: no type"));
    }
    let says_default = entry.body.iter().any(|l| l.starts_with("Default"));
    let says_required = entry.body.iter().any(|l| l.starts_with("Required"));
    if !says_default && !says_required {
        wrong.push(format!(
            "{key}: says neither its default nor that it is required"
        ));
    }
    if let Some(value) = default_literal(&entry) {
        // Setting a key to its documented default must give the same config as leaving
        // it out. The page writes values bare; TOML wants strings quoted.
        let baseline = format!(
            "{:?}",
            parse(&format!("{BASE}{DEFAULTS}{NODES}")).expect("the baseline config parses")
        );
        let as_written = parse(&config_with(table, key, &value))
            .or_else(|_| parse(&config_with(table, key, &format!("{value:?}"))));
        match as_written {
            Ok(config) if format!("{config:?}") == baseline => {}
            Ok(_) => wrong.push(format!(
                "{key}: the documented default {value} is not the built-in default"
            )),
            Err(e) => wrong.push(format!(
                "{key}: the documented default {value} is refused: {e}"
            )),
        }
    }
    wrong
}

fn toml_page_part<'a>(text: &'a str, title: &str) -> &'a str {
    part(text, "Ss", title).unwrap_or_else(|| panic!("pgzfs.toml.5 has no .Ss {title}"))
}

#[test]
fn every_top_level_key_and_table_of_the_config_is_in_pgzfs_toml_5() {
    let text = page("pgzfs.toml.5");
    let top = toml_page_part(&text, "Top level");
    let tables: Vec<&str> = subsection_titles(&text);
    let mut wrong = Vec::new();
    let keys = keys_accepted(&format!("{BASE}not_a_key = 1\n{DEFAULTS}{NODES}"));
    assert!(keys.len() >= 6, "too few top-level keys found: {keys:?}");
    for key in keys {
        let as_table = [format!("[{key}]"), format!("[[{key}]]")];
        if tables
            .iter()
            .any(|t| as_table.iter().any(|a| t.contains(a.as_str())))
        {
            continue;
        }
        wrong.extend(check_key(top, "", &key));
    }
    assert!(wrong.is_empty(), "pgzfs.toml.5:\n{}", wrong.join("\n"));
}

#[test]
fn every_node_key_is_in_pgzfs_toml_5_with_type_default_and_scope() {
    let text = page("pgzfs.toml.5");
    let nodes = toml_page_part(&text, "Node keys: [defaults] and [[nodes]]");
    let pg_settings = toml_page_part(&text, "Node PostgreSQL settings: pg_settings");
    // What [defaults] accepts must be node keys: the page says every node key but name
    // and host may be set in both.
    let in_defaults = keys_accepted(&format!("{BASE}{DEFAULTS}not_a_key = 1\n{NODES}"));
    let node_keys: BTreeSet<&str> = NODE_KEYS.iter().copied().collect();
    for key in &in_defaults {
        assert!(
            node_keys.contains(key.as_str()),
            "[defaults] accepts {key}, which NODE_KEYS lacks"
        );
    }
    let mut wrong = Vec::new();
    for key in NODE_KEYS {
        let documented_in = if *key == "pg_settings" {
            pg_settings
        } else {
            nodes
        };
        if *key == "pg_settings" {
            // A table: its entry says what it is and that it defaults to empty.
            if entry(documented_in, key).is_none() {
                wrong.push("no `.It Cm pg_settings Pq table`".to_string());
            }
            continue;
        }
        let only_in_nodes = !in_defaults.iter().any(|k| k == key);
        let table = if only_in_nodes { "nodes" } else { "defaults" };
        wrong.extend(check_key(documented_in, table, key));
        if only_in_nodes {
            // Only a [[nodes]] entry has it: its entry must say so.
            let says = entry(documented_in, key).is_some_and(|e| {
                e.body
                    .windows(2)
                    .any(|w| w[0] == "Only in" && w[1].contains("[[nodes]]"))
            });
            if !says {
                wrong.push(format!(
                    "{key}: only [[nodes]] has it, and its entry does not say so"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "pgzfs.toml.5:\n{}", wrong.join("\n"));
}

#[test]
fn every_key_of_retention_and_events_is_in_pgzfs_toml_5() {
    let text = page("pgzfs.toml.5");
    let mut wrong = Vec::new();
    for (table, title) in [
        ("retention", "Retention: [retention]"),
        ("events", "Events: [events]"),
    ] {
        let documented = toml_page_part(&text, title);
        let keys = keys_accepted(&format!(
            "{BASE}{DEFAULTS}{NODES}[{table}]\nnot_a_key = 1\n"
        ));
        assert!(!keys.is_empty(), "no keys found for [{table}]");
        for key in keys {
            wrong.extend(check_key(documented, table, &key));
        }
    }
    assert!(wrong.is_empty(), "pgzfs.toml.5:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_of_documented_defaults_catches_a_wrong_one() {
    // The default check above must be able to fail: a page that claimed pg_port 5433
    // is caught.
    let page = ".It Cm pg_port Pq integer\nThe port.\nDefault:\n.Li 5433 .\n";
    let wrong = check_key(page, "defaults", "pg_port");
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].contains("not the built-in default"), "{wrong:?}");
    let right = ".It Cm pg_port Pq integer\nThe port.\nDefault:\n.Li 5432 .\n";
    assert!(check_key(right, "defaults", "pg_port").is_empty());
}

// ---------------------------------------------------------------------------------------

#[test]
fn mandoc_finds_no_warnings_in_either_page() {
    for name in ["pgzfs.8", "pgzfs.toml.5"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs/man")
            .join(name);
        // -Wwarning: real mistakes, not style hints such as long source lines or
        // cross-references to FreeBSD pages this Linux machine does not have.
        let out = Command::new("mandoc")
            .args(["-Tlint", "-Wwarning"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run mandoc ({e}); scripts/install-deps installs it (Debian package mandoc)")
            });
        assert!(
            out.status.success(),
            "mandoc -Tlint {name}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
