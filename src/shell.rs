//! Quoting for commands that cross SSH. The remote side runs our argv through a shell, so
//! every word is single-quoted even though the names in it were already validated: two
//! independent defences are cheaper than one incident.

/// Quote one word for a POSIX shell.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%,+".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Join argv into one shell command line.
pub fn join(argv: &[String]) -> String {
    argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_zfs_words_stay_readable() {
        let argv = ["zfs", "send", "-i", "tank/pg@pgzfs-1", "tank/pg@pgzfs-2"].map(String::from);
        assert_eq!(join(&argv), "zfs send -i tank/pg@pgzfs-1 tank/pg@pgzfs-2");
    }

    #[test]
    fn metacharacters_are_neutralised() {
        assert_eq!(quote("a;rm -rf /"), "'a;rm -rf /'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
    }
}
