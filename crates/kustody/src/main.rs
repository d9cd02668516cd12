//! The `kustody` binary: parses the command line and dispatches. Everything else lives in the
//! modules below and the library crates.

mod cli;
mod cluster_cmd;
mod collect_cmd;
mod contain_cmd;
mod hunt;
mod incidents_cmd;
mod render;
mod rules_cmd;
mod ruleset;
mod serve_cmd;
mod setup_cmd;
mod source;
mod timeline;
mod timespec;
mod whois;

use std::process::ExitCode;

/// Parsing audit events allocates and frees many small strings per event across worker
/// threads; mimalloc's thread-local free lists measured ~10% faster than glibc malloc on the
/// hunt benchmark (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    logging(cli.verbosity, matches!(cli.command, cli::Command::Serve(_)));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kustody: error: {}", render::sanitize(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// Invoked as `kubectl-kustody` (a link, a copy, or krew's shim), kustody is the kubectl plugin
/// `kubectl kustody`: the same commands, named that way in help and errors.
fn invoked_as_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_stem())
        .and_then(|s| s.to_str())
        .is_some_and(|s| s.starts_with("kubectl-kustody"))
}

fn command() -> clap::Command {
    use clap::CommandFactory;
    cli::Cli::command()
}

fn parse() -> Result<cli::Cli, clap::Error> {
    use clap::FromArgMatches;
    let args = cli::normalize_verbosity(std::env::args_os());
    let mut cmd = command();
    if invoked_as_plugin(args.first().map(|a| a.as_os_str())) {
        cmd = cmd.name("kubectl-kustody").bin_name("kubectl kustody").display_name("kubectl kustody");
    }
    let matches = cmd.clone().try_get_matches_from(args)?;
    cli::Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// `-v N` as kubectl counts it, mapped to the tracing output of the Kubernetes client
/// (`kube_client`): nothing below 2, warnings from 2, information from 4, two lines per request
/// from 6, response headers from 8. Other libraries (hyper, rustls, h2) stay at warnings: their
/// debug output is noise, and nothing that could hold a credential is ever enabled.
///
/// `kustody serve` always logs its own structured events (`kustody_serve`) at information level,
/// debug from `-v 6`.
fn logging(verbosity: u8, serving: bool) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let serve = if verbosity >= 6 { LevelFilter::DEBUG } else { LevelFilter::INFO };
    let kube = match verbosity {
        0 | 1 if serving => LevelFilter::WARN,
        0 | 1 => return,
        2 | 3 => LevelFilter::WARN,
        4 | 5 => LevelFilter::INFO,
        6 | 7 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = Targets::new()
        .with_target("kube_client", kube)
        .with_target("kube", kube)
        .with_target("kustody", kube)
        .with_target("kustody_serve", if serving { serve } else { kube })
        .with_default(LevelFilter::WARN);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    // A second subscriber cannot be installed; there is none before this one.
    let _ = tracing_subscriber::registry().with(fmt).with(filter).try_init();
}

/// The global flags that subcommands read as plain values.
fn spread_globals(command: &mut cli::Command, verbosity: u8) {
    let verbose = verbosity >= 1;
    match command {
        cli::Command::Auth(cli::AuthCommand::Whoami(a)) => a.cluster.verbose = verbose,
        cli::Command::Auth(cli::AuthCommand::Token(a)) => a.verbose = verbose,
        cli::Command::Exec(a) => a.cluster.verbose = verbose,
        cli::Command::Quarantine(a) => a.cluster.verbose = verbose,
        cli::Command::Release(a) => a.cluster.verbose = verbose,
        cli::Command::Collect(a) => a.cluster.verbose = verbose,
        cli::Command::Verify(a) => a.json |= a.format == cli::ReportFormat::Json,
        _ => {}
    }
}

fn refuse_old_output(flag: Option<&std::path::PathBuf>, what: &str) -> anyhow::Result<()> {
    if let Some(p) = flag {
        anyhow::bail!(
            "`-o {}`: -o is the output format, as in kubectl, and {what} has none; write {what}'s output with --output-file {}",
            p.display(),
            p.display()
        );
    }
    Ok(())
}

fn run(mut cli: cli::Cli) -> anyhow::Result<ExitCode> {
    spread_globals(&mut cli.command, cli.verbosity);
    match cli.command {
        cli::Command::Hunt(args) => hunt::run(args),
        cli::Command::Timeline(args) => timeline::run(args),
        cli::Command::Serve(args) => serve_cmd::run(*args),
        cli::Command::Search(args) => serve_cmd::search(args),
        cli::Command::Incidents(args) => incidents_cmd::run(args),
        cli::Command::Whois(args) => whois::run(args),
        cli::Command::Baseline(cli::BaselineCommand::Learn(args)) => whois::learn_baseline(args),
        cli::Command::Actions(cmd) => incidents_cmd::actions(cmd),
        cli::Command::Rules(cli::RulesCommand::Check(args)) => rules_cmd::check(args),
        cli::Command::Rules(cli::RulesCommand::List(args)) => rules_cmd::list(args),
        cli::Command::Rules(cli::RulesCommand::Fields) => rules_cmd::fields(),
        cli::Command::Rules(cli::RulesCommand::Doc) => rules_cmd::doc(),
        cli::Command::Auth(cli::AuthCommand::Whoami(args)) => cluster_cmd::whoami(args),
        cli::Command::Auth(cli::AuthCommand::Token(args)) => cluster_cmd::token(args),
        cli::Command::Exec(args) => {
            refuse_old_output(args.old_output.as_ref(), "exec")?;
            cluster_cmd::exec(args)
        }
        cli::Command::Quarantine(args) => contain_cmd::quarantine(args),
        cli::Command::Release(args) => contain_cmd::release(args),
        cli::Command::Collect(args) => {
            refuse_old_output(args.old_output.as_ref(), "collect")?;
            collect_cmd::collect(args)
        }
        cli::Command::Verify(args) => collect_cmd::verify(args),
        cli::Command::Setup(cli::SetupCommand::Eks(args)) => setup_cmd::eks(args),
        cli::Command::Completion(args) => {
            let mut cmd = command();
            clap_complete::generate(args.shell, &mut cmd, "kustody", &mut std::io::stdout().lock());
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Man(args) => man(args),
    }
}

/// `kustody man`: kustody.1 on stdout, or every page into `--output-dir`.
fn man(args: cli::ManArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use std::io::Write;
    let cmd = command();
    let Some(dir) = args.output_dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd).render(&mut out).context("writing the man page")?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    clap_mangen::generate_to(cmd, &dir).with_context(|| format!("cannot write man pages into `{}`", dir.display()))?;
    eprintln!("kustody: wrote kustody.1 and a page per subcommand into {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
