//! pgzfs: parse the command line, run the command, turn the outcome into an exit code.

use clap::Parser;

fn main() {
    let cli = pgzfs::cli::Cli::parse();
    let code = match cli.run() {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err}");
            // Logging may not be set up yet (a config error), so always say it on stderr too.
            if !pgzfs::log::is_initialized() {
                eprintln!("pgzfs: {err}");
            }
            err.exit_code()
        }
    };
    std::process::exit(code);
}
