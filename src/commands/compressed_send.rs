//! `pgzfs compressed-send --zstd N -- zfs send ARGS...` (hidden): the sending end of
//! `ssh_compress`. A standby that re-seeds with compression asks the source for this
//! instead of the bare `zfs send`; it runs the send here and writes its stream to stdout
//! zstd-compressed (crate::compress). Through `pgzfs serve` the `zfs send` must be one
//! serve would allow on its own.
//!
//! It needs nothing from the config: it is a stage of a pipe, and its failures belong on
//! stderr, which the client reads back into its error message.

use std::os::fd::AsFd;

use clap::Args;

use crate::compress::ZstdLevel;
use crate::error::{Error, Result};
use crate::exec::{spawn_source, Cmd};

#[derive(Debug, Args)]
pub struct CompressedSend {
    /// zstd compression level, 1 to 19
    #[arg(long, value_name = "LEVEL", value_parser = ZstdLevel::parse)]
    pub zstd: ZstdLevel,
    /// The `zfs send` command line, after `--`
    #[arg(last = true, required = true, value_name = "ZFS_SEND")]
    pub send: Vec<String>,
}

impl CompressedSend {
    pub fn run(&self) -> Result<i32> {
        let send = zfs_send(&self.send)?;
        // The raw descriptor: Stdout's line buffering would split the binary stream at
        // every newline byte, and the encoder buffers its output already.
        let stdout = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::failed(format!("compressed-send: no stdout: {e}")))?;
        let source = spawn_source(&send)?;
        crate::compress::compress(Box::new(source), std::fs::File::from(stdout), self.zstd)?;
        Ok(0)
    }
}

/// Only `zfs send`, whose output is the stream; zfs from the system's directories, as
/// serve runs it.
fn zfs_send(argv: &[String]) -> Result<Cmd> {
    if !crate::compress::is_zfs_send(argv) {
        return Err(Error::usage(format!(
            "compressed-send runs `zfs send ...` only, not {}",
            crate::shell::join(argv)
        )));
    }
    Ok(Cmd::new(crate::exec::find_program("zfs")).args(argv[1..].iter().cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(line: &str) -> std::result::Result<CompressedSend, clap::Error> {
        let argv = std::iter::once("pgzfs").chain(line.split(' '));
        match Cli::try_parse_from(argv)?.command {
            Command::CompressedSend(cmd) => Ok(cmd),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_form_the_client_sends_parses_with_everything_after_the_double_dash() {
        let cmd = parse(
            "--config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs send -t 1-abc-de",
        )
        .unwrap();
        assert_eq!(cmd.zstd.get(), 3);
        assert_eq!(cmd.send, ["zfs", "send", "-t", "1-abc-de"]);
        let run = zfs_send(&cmd.send).unwrap();
        assert!(run.program().ends_with("zfs"), "{}", run.display());
        assert_eq!(run.argv[1..], ["send", "-t", "1-abc-de"]);
    }

    #[test]
    fn bad_levels_a_missing_double_dash_and_other_programs_are_refused() {
        for line in [
            "compressed-send --zstd 0 -- zfs send tank/pg@a",
            "compressed-send --zstd 20 -- zfs send tank/pg@a",
            "compressed-send --zstd 03 -- zfs send tank/pg@a",
            "compressed-send -- zfs send tank/pg@a",
            "compressed-send --zstd 3 zfs send tank/pg@a",
            "compressed-send --zstd 3 --",
        ] {
            assert!(parse(line).is_err(), "{line:?} must not parse");
        }
        for line in [
            "compressed-send --zstd 3 -- zfs destroy tank/pg@a",
            "compressed-send --zstd 3 -- zfs send",
            "compressed-send --zstd 3 -- zfs receive tank/pg",
            "compressed-send --zstd 3 -- sh -c id",
            "compressed-send --zstd 3 -- /sbin/zfs send tank/pg@a",
        ] {
            let cmd = parse(line).unwrap();
            let err = zfs_send(&cmd.send).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{line}: {err}");
        }
    }
}
