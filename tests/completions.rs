//! `pgzfs completions SHELL`: the scripts the FreeBSD port installs. Each one is checked
//! by its own shell (syntax), and bash and fish are asked to complete what an operator
//! types, so a script that loads but completes nothing is caught too. The shells come
//! from scripts/install-deps; a missing one fails the test rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

fn script(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pgzfs"))
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgzfs completions {shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.trim().is_empty(),
        "pgzfs completions {shell} printed nothing"
    );
    text
}

/// The commands an operator sees in --help.
fn visible_commands() -> Vec<String> {
    pgzfs::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

fn write_script(shell: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "pgzfs-completion-test-{}.{shell}",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `shell args...`; a shell that is not installed fails the test with the fix.
fn run_shell(shell: &str, args: &[&str]) -> String {
    let out = Command::new(shell)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shell} ({e}); scripts/install-deps installs it"));
    assert!(
        out.status.success(),
        "{shell} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names_every_command(shell: &str, text: &str) {
    for name in visible_commands() {
        assert!(
            text.contains(&name),
            "the {shell} completion does not know {name}"
        );
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn bash_completes_commands_flags_and_carp_states() {
    let text = script("bash");
    names_every_command("bash", &text);
    let path = write_script("bash", &text);
    run_shell("bash", &["-n", path_str(&path)]);
    // What bash does on TAB: COMP_WORDS/COMP_CWORD set, the function called with the
    // command, the current word and the previous one.
    let complete = |words: &[&str]| -> Vec<String> {
        let cword = words.len() - 1;
        let program = format!(
            "source {path}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}; _pgzfs pgzfs '{current}' '{previous}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path = path.display(),
            words = words.join(" "),
            line = words.join(" "),
            current = words[cword],
            previous = words[cword - 1],
        );
        run_shell("bash", &["-c", &program])
            .lines()
            .map(String::from)
            .collect()
    };
    let starting_re = complete(&["pgzfs", "re"]);
    assert_eq!(starting_re, ["reset-secondary", "rejoin"], "pgzfs re<TAB>");
    let dry = complete(&["pgzfs", "reset-secondary", "--dr"]);
    assert_eq!(dry, ["--dry-run"], "pgzfs reset-secondary --dr<TAB>");
    let state = complete(&["pgzfs", "carp-event", "M"]);
    assert_eq!(state, ["MASTER"], "pgzfs carp-event M<TAB>");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn zsh_reads_its_completion_and_it_names_every_command() {
    let text = script("zsh");
    names_every_command("zsh", &text);
    assert!(
        text.starts_with("#compdef pgzfs"),
        "zsh finds completions in $fpath by their #compdef line"
    );
    let path = write_script("zsh", &text);
    run_shell("zsh", &["-n", path_str(&path)]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn fish_completes_commands_and_flags() {
    let text = script("fish");
    names_every_command("fish", &text);
    let path = write_script("fish", &text);
    run_shell("fish", &["--no-execute", path_str(&path)]);
    let complete = |line: &str| -> Vec<String> {
        let program = format!("source {}; complete -C '{line}'", path.display());
        run_shell("fish", &["--no-config", "-c", &program])
            .lines()
            // "candidate<TAB>description"
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect()
    };
    let mut starting_re = complete("pgzfs re");
    starting_re.sort();
    assert_eq!(starting_re, ["rejoin", "reset-secondary"], "pgzfs re<TAB>");
    assert_eq!(complete("pgzfs rejoin --disc"), ["--discard-diverged"]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn sh_is_refused_with_the_shells_that_exist() {
    // FreeBSD's sh(1) has no programmable completion; asking for it is a usage error
    // that lists what there is, not an empty script.
    let out = Command::new(env!("CARGO_BIN_EXE_pgzfs"))
        .args(["completions", "sh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("zsh") && stderr.contains("fish"),
        "{stderr}"
    );
}
