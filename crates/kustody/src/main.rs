//! The `kustody` binary: parses the command line and dispatches. Everything else lives in the
//! modules below and the library crates.

mod cli;
mod cluster_cmd;
mod collect_cmd;
mod contain_cmd;
mod hunt;
mod render;
mod rules_cmd;
mod ruleset;
mod timeline;
mod timespec;

use std::process::ExitCode;

use clap::Parser;

/// Parsing audit events allocates and frees many small strings per event across worker
/// threads; mimalloc's thread-local free lists measured ~10% faster than glibc malloc on the
/// hunt benchmark (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Hunt(args) => hunt::run(args),
        cli::Command::Timeline(args) => timeline::run(args),
        cli::Command::Rules(cli::RulesCommand::Check(args)) => rules_cmd::check(args),
        cli::Command::Rules(cli::RulesCommand::List(args)) => rules_cmd::list(args),
        cli::Command::Rules(cli::RulesCommand::Fields) => rules_cmd::fields(),
        cli::Command::Rules(cli::RulesCommand::Doc) => rules_cmd::doc(),
        cli::Command::Auth(cli::AuthCommand::Whoami(args)) => cluster_cmd::whoami(args),
        cli::Command::Auth(cli::AuthCommand::Token(args)) => cluster_cmd::token(args),
        cli::Command::Exec(args) => cluster_cmd::exec(args),
        cli::Command::Quarantine(args) => contain_cmd::quarantine(args),
        cli::Command::Release(args) => contain_cmd::release(args),
        cli::Command::Collect(args) => collect_cmd::collect(args),
        cli::Command::Verify(args) => collect_cmd::verify(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kustody: error: {}", render::sanitize(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}
