//! The `kedge` binary: parse the command line and hand over to [`kedge::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    kedge::cli::main(kedge::cli::Cli::parse())
}
