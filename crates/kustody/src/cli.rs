//! Command-line flags (phase one of argument handling: only parsing, no I/O).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kustody_model::Priority;

#[derive(Parser, Debug)]
#[command(
    name = "kustody",
    version,
    about = "Kubernetes incident response: hunt audit logs with Falco-compatible rules",
    after_help = "As in kubectl, `-o` (`--output`) chooses the output format and `--output-file` the file to \
                  write; `-f`/`--format` are accepted for `-o`. Installed as `kubectl-kustody` (a link or \
                  copy), the same binary runs as `kubectl kustody ...`."
)]
pub struct Cli {
    /// Log level, as kubectl's `-v N`: 1 says how the connection was chosen (configuration,
    /// context, server, authentication, impersonation) and how long things took, 2 adds the
    /// Kubernetes client's warnings, 4 its information, 6 each API request (method, URL, status),
    /// 8 response headers. `-v` alone is `-v 1`. Request bodies and credentials are never
    /// logged.
    #[arg(
        short = 'v',
        long = "v",
        visible_alias = "verbose",
        global = true,
        value_name = "N",
        num_args = 0..=1,
        default_missing_value = "1",
        default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=10)
    )]
    pub verbosity: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run detection rules over Kubernetes audit logs.
    ///
    /// Exit codes: 0 = no detections, 1 = detections, 2 = error.
    Hunt(HuntArgs),
    /// Every event that touches one identity, in time order, marked with its detections.
    ///
    /// Exit codes: 0 = events found, 1 = no event matched, 2 = error.
    Timeline(TimelineArgs),
    /// Learn what is normal from audit logs: each identity's behaviour (verb and target) and on
    /// how many days it was seen; `hunt --baseline FILE` then demotes the known.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Who an IP was: the pods that held it (from pod bodies in the audit events), or at one
    /// time with `--at`.
    ///
    /// Exit codes: 0 = known, 1 = no pod is known to have held it (then), 2 = error.
    Whois(WhoisArgs),
    /// Watch: ingest the audit webhook, audit log files and Falco alerts into a durable store,
    /// detect live, serve search, a finding stream and metrics (docs/SERVE.md).
    Serve(Box<ServeArgs>),
    /// Search what `kustody serve` stored: events, findings or runtime alerts, by identity,
    /// pod, IP, namespace, verb, resource, rule, time, or a Falco condition (`--where`).
    ///
    /// Exit codes: 0 = something found, 1 = nothing matched, 2 = error.
    Search(SearchArgs),
    /// Incidents that `kustody serve` grouped findings into: list, show, acknowledge, resolve,
    /// assign, note.
    ///
    /// Reads work on a data directory or a server; changes go to the running server (which
    /// owns open incidents and sends the notifications they call for).
    Incidents(IncidentsArgs),
    /// Response actions that playbooks took or wait to take: list, approve, reject.
    #[command(subcommand)]
    Actions(ActionsCommand),
    /// Check or list rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Who kustody is on the cluster, and how it got there.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Run a command in a container (exec over WebSocket), stdout streamed and hashed.
    ///
    /// Exit codes: the command's own (0-255), or 2 when it could not run.
    Exec(ExecArgs),
    /// Isolate a suspect pod without destroying the evidence: deny-all NetworkPolicy, labels that
    /// take it out of its Services and controller (a clean replacement starts), verified by
    /// reading back. Every action is appended to the action log.
    ///
    /// Exit codes: 0 = quarantined and verified (or dry run), 1 = applied but a check failed,
    /// 2 = refused or error (nothing changed unless the message says otherwise).
    Quarantine(QuarantineArgs),
    /// Undo a quarantine: remove the quarantine labels, and kustody's NetworkPolicies once no
    /// quarantined pod in the namespace needs them.
    ///
    /// Exit codes: 0 = released (or dry run), 1 = the pod was not quarantined, 2 = error.
    Release(ReleaseArgs),
    /// Acquire evidence from a pod (or every pod a selector matches) without changing it:
    /// processes, sockets, environment names, mounts, logs, a hashed file listing with drift
    /// since start, copies of --paths, and the cluster context, into a bundle whose MANIFEST.json
    /// records who collected what, when and how.
    ///
    /// Exit codes: 0 = everything collected, 3 = bundle written but some items failed (listed, and
    /// in the manifest), 2 = error (no bundle).
    Collect(CollectArgs),
    /// Recompute every hash of an evidence bundle (directory or .tar.zst) and report changed,
    /// missing or extra files.
    ///
    /// Exit codes: 0 = intact, 1 = changed, missing or extra files, 2 = unreadable.
    Verify(VerifyArgs),
    /// Is a managed cluster's audit log on and reaching kustody? What is it blind to, and the
    /// exact commands that would fix it (printed, never run).
    #[command(subcommand)]
    Setup(SetupCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    ///
    /// bash: `source <(kustody completion bash)`; zsh: `kustody completion zsh >
    /// "${fpath[1]}/_kustody"`; fish: `kustody completion fish >
    /// ~/.config/fish/completions/kustody.fish`.
    Completion(CompletionArgs),
    /// Print the man page (roff), or write one page per command into a directory.
    ///
    /// `kustody man | man -l -` reads it; `kustody man --output-dir /usr/local/share/man/man1`
    /// installs kustody.1, kustody-hunt.1, kustody-rules-check.1 and the others.
    Man(ManArgs),
}

/// Where AWS calls go and whose credentials sign them.
#[derive(Args, Debug, Clone, Default)]
pub struct AwsArgs {
    /// AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's).
    #[arg(long, value_name = "REGION")]
    pub aws_region: Option<String>,
    /// Shared-config profile whose credentials sign the calls (default: AWS_PROFILE, then
    /// `default`; the environment's keys win, as in the AWS CLI).
    #[arg(long, value_name = "NAME")]
    pub aws_profile: Option<String>,
    /// Assume this role first (needs a kustody built with --features aws-chain).
    #[arg(long, value_name = "ARN")]
    pub aws_role_arn: Option<String>,
    /// Send every AWS call to this base URL (a VPC endpoint, or a local implementation such as
    /// moto); plain http only to loopback addresses.
    #[arg(long, value_name = "URL")]
    pub aws_endpoint: Option<String>,
}

/// Check and explain a managed cluster's audit logging.
#[derive(Subcommand, Debug)]
pub enum SetupCommand {
    /// EKS: are the audit (and authenticator) logs on, is the audit log reaching CloudWatch
    /// Logs, how long is it kept; prints the commands that would fix what is missing (never
    /// runs them).
    ///
    /// Exit codes: 0 = checked (with --check: and everything is in order), 1 = with --check,
    /// something is missing, 2 = error.
    Eks(SetupEksArgs),
}

#[derive(Args, Debug)]
pub struct SetupEksArgs {
    /// The EKS cluster's name.
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// Exit 1 when something is missing (for scripts and CI).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[arg(long = "output", short = 'o', value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write kustody.1 and one page per subcommand (kustody-hunt.1, ...) into this directory
    /// instead of printing kustody.1.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileArg {
    /// Volatile state, listing with hashes, logs, cluster context.
    Triage,
    /// Triage plus a tar of every file changed since the container started.
    Full,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViaArg {
    /// Exec a shell in the container; an ephemeral debug container when it has none.
    Auto,
    /// Only exec in the container.
    Exec,
    /// Always use an ephemeral debug container (the container's own binaries are not trusted).
    Debug,
}

#[derive(Args, Debug)]
pub struct CollectArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The pod: `pod/NAME` or `NAME` (or use -l).
    #[arg(conflicts_with = "selector")]
    pub target: Option<String>,
    /// Every pod matching this label selector (in -n's namespace, or all with -A).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// With -l: pods in every namespace.
    #[arg(long, short = 'A', requires = "selector")]
    pub all_namespaces: bool,
    /// Only this container (default: all of the pod's containers).
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Bundle: a new directory, or a FILE.tar.zst (default: ./kustody-evidence-WHAT-TIME).
    /// Not `-o`: as in kubectl, `-o` is an output format, and collect writes a bundle, not a
    /// format.
    #[arg(long = "output-file", visible_alias = "bundle", value_name = "DIR|FILE.tar.zst")]
    pub output: Option<PathBuf>,
    /// `-o`/`--output` as the bundle path (the earlier spelling): refused with a pointer to --output-file.
    #[arg(short = 'o', long = "output", hide = true, value_name = "DIR|FILE.tar.zst")]
    pub old_output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "triage")]
    pub profile: ProfileArg,
    /// Absolute paths or globs to copy as a tar stream (repeatable).
    #[arg(long, value_name = "GLOB", num_args = 1..)]
    pub paths: Vec<String>,
    /// Case identifier, recorded in the manifest.
    #[arg(long, value_name = "ID")]
    pub case: Option<String>,
    /// Keep environment variable values (default: names only; values may be credentials).
    #[arg(long)]
    pub include_env_values: bool,
    /// Image of the ephemeral debug container for containers without a shell.
    #[arg(long, value_name = "IMAGE", default_value = kustody_collect::acquire::DEFAULT_DEBUG_IMAGE)]
    pub debug_image: String,
    #[arg(long, value_enum, default_value = "auto")]
    pub via: ViaArg,
    /// Pods collected at once (with -l).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Give up on one exec after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
    /// At most this many bytes per container log.
    #[arg(long, default_value_t = 256 << 20, value_name = "BYTES")]
    pub max_log_bytes: u64,
    /// Files larger than this are listed but not hashed.
    #[arg(long, default_value_t = 512 << 20, value_name = "BYTES")]
    pub max_hash_bytes: u64,
    /// No per-pod progress.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The bundle: a directory or a .tar.zst.
    pub bundle: PathBuf,
    /// The manifest SHA-256 printed at collection time (recorded out of band): also checked.
    #[arg(long, value_name = "SHA256")]
    pub expect: Option<String>,
    /// Output format of the report.
    #[arg(long = "output", short = 'o', visible_alias = "format", visible_short_alias = 'f', value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Print the report as JSON (the same as `-o json`).
    #[arg(long, hide = true)]
    pub json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object.
    Json,
}

/// Which cluster, as whom, where (kubectl's flags and precedence).
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the pod's service account).
    #[arg(long, value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current-context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's, else `default`).
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
    /// Impersonate this user or service account (`system:serviceaccount:NS:NAME`), as kubectl's
    /// `--as`: the API server checks that you may.
    #[arg(long = "as", value_name = "USER", global = true)]
    pub as_user: Option<String>,
    /// Impersonate this group too (repeatable; needs --as).
    #[arg(long = "as-group", value_name = "GROUP", global = true, requires = "as_user")]
    pub as_group: Vec<String>,
    /// Give up on a request after this long without progress (`30`, `30s`, `2m`, `1h`; 0 = never,
    /// kubectl's default). As in kubectl, an exec or a log read that receives nothing for this
    /// long fails too.
    #[arg(long, value_name = "DURATION", global = true, value_parser = parse_request_timeout)]
    pub request_timeout: Option<std::time::Duration>,
    /// Set from the global `-v N` (1 or more): explain how the connection was chosen.
    #[arg(skip)]
    pub verbose: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Print the identity the cluster sees (SelfSubjectReview) and how kustody authenticated.
    Whoami(WhoamiArgs),
    /// Mint a managed-cloud token in-process and print it as a client.authentication.k8s.io
    /// ExecCredential: a fast drop-in for `aws eks get-token` in a kubeconfig.
    Token(TokenArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Eks,
    Gke,
    Aks,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The cloud.
    #[arg(long, value_enum)]
    pub provider: Provider,
    /// EKS: the cluster name (as `aws eks get-token --cluster-name`).
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// EKS: the region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's).
    #[arg(long)]
    pub region: Option<String>,
    /// EKS: the AWS profile (default: AWS_PROFILE, then `default`).
    #[arg(long)]
    pub profile: Option<String>,
    /// EKS: assume this role first (as `aws eks get-token --role-arn`; needs the aws-chain feature).
    #[arg(long)]
    pub role_arn: Option<String>,
    /// AKS: the server id (scope `<id>/.default`).
    #[arg(long, default_value = kustody_cluster::aks::AKS_SERVER_ID)]
    pub server_id: String,
    /// AKS: kubelogin's login mode: spn, workloadidentity, msi or azurecli.
    #[arg(long, short = 'l')]
    pub login: Option<String>,
    /// AKS: tenant (default: AZURE_TENANT_ID).
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// AKS: client id of the service principal or identity (default: AZURE_CLIENT_ID).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Set from the global `-v N` (1 or more): print how long minting took, on stderr.
    #[arg(skip)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format: `json` prints the SelfSubjectReview as `kubectl auth whoami -o json` does
    /// (plus `connection`: server, context, authentication).
    #[arg(long = "output", short = 'o', visible_alias = "format", visible_short_alias = 'f', value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The pod: `pod/NAME` or `NAME`.
    pub target: String,
    /// Container (default: the pod's only container).
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Send this file on stdin, then end of input.
    #[arg(long, value_name = "FILE")]
    pub stdin_file: Option<PathBuf>,
    /// Write stdout to this file instead of standard output.
    #[arg(long = "output-file", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `-o`/`--output` as a file (the earlier spelling): refused with a pointer to --output-file.
    #[arg(short = 'o', long = "output", hide = true, value_name = "FILE")]
    pub old_output: Option<PathBuf>,
    /// Have the container count its stdout too, and fail on a mismatch (needs sh, tee, wc).
    #[arg(long)]
    pub verify_size: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct QuarantineArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The pod: `pod/NAME` or `NAME` (not with --list).
    #[arg(required_unless_present = "list")]
    pub target: Option<String>,
    /// Allow egress only to a honeypot: namespace, optionally `/key=value,...` selecting its pods.
    /// An ingress policy admitting the quarantined pod is created on the honeypot's side.
    #[arg(long, value_name = "NS[/SELECTOR]")]
    pub honeypot: Option<String>,
    /// Also allow DNS queries to kube-system/k8s-app=kube-dns (UDP and TCP 53).
    #[arg(long)]
    pub allow_dns: bool,
    /// Also cordon the pod's node (no new pods are scheduled there).
    #[arg(long)]
    pub cordon: bool,
    /// Print the exact API requests and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the exact API requests, then ask for confirmation (needs a terminal).
    #[arg(long, conflicts_with = "dry_run")]
    pub plan: bool,
    /// Why (recorded on the pod and in the action log).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Quarantine even kube-system, control-plane, static/mirror and hostNetwork pods.
    #[arg(long)]
    pub force: bool,
    /// List quarantined pods (in the namespace, or all with -A) with when, why and by whom.
    #[arg(long, conflicts_with_all = ["dry_run", "plan", "honeypot", "allow_dns", "cordon", "force"])]
    pub list: bool,
    /// With --list: every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Output format of --list.
    #[arg(long = "output", short = 'o', visible_alias = "format", visible_short_alias = 'f', value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// Wait at most this long for verification (EndpointSlices, replacement) to settle.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub wait: u64,
    /// Action log (JSONL; default $KUSTODY_ACTION_LOG, else ~/.local/state/kustody/actions.jsonl).
    #[arg(long, value_name = "FILE")]
    pub action_log: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The pod: `pod/NAME` or `NAME`.
    pub target: String,
    /// Put back the labels quarantine removed. Its controller will then adopt the pod again.
    #[arg(long)]
    pub restore_labels: bool,
    /// Uncordon the node, if this quarantine cordoned it.
    #[arg(long)]
    pub uncordon: bool,
    /// Print the exact API requests and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why (recorded on the pod and in the action log).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Action log (JSONL; default $KUSTODY_ACTION_LOG, else ~/.local/state/kustody/actions.jsonl).
    #[arg(long, value_name = "FILE")]
    pub action_log: Option<PathBuf>,
    /// Wait at most this long for what happens next to be verified (the pod still running
    /// unowned, or adopted by its controller and the surplus replica gone).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub wait: u64,
}

#[derive(Args, Debug, Clone)]
pub struct RuleArgs {
    /// Falco rule file or directory of *.yaml/*.yml files (repeatable; loaded after the
    /// built-in rules, in the order given).
    #[arg(long = "rules", short = 'r', value_name = "FILE|DIR")]
    pub rules: Vec<PathBuf>,
    /// Do not load kustody's built-in rules.
    #[arg(long)]
    pub no_default_rules: bool,
}

#[derive(Args, Debug)]
pub struct HuntArgs {
    /// Audit log files, directories (read recursively, rotated files oldest first) or `-` for stdin.
    #[arg(required_unless_present = "store", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Hunt over what `kustody serve` stored in this data directory (a retro-hunt: new rules
    /// over stored history; with --since to bound it).
    #[arg(long, value_name = "DATA_DIR", conflicts_with = "paths")]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Output format.
    #[arg(long = "output", short = 'o', visible_alias = "format", visible_short_alias = 'f', value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only report rules at least this severe (emergency … debug).
    #[arg(long, value_name = "PRIORITY", value_parser = parse_priority)]
    pub min_priority: Option<Priority>,
    /// Only events at or after this time: RFC 3339 (`2024-05-01T10:00:00Z`) or a duration ago (`90m`, `12h`, `7d`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Write detections to FILE instead of stdout.
    #[arg(long = "output-file", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Treat any rule diagnostic or bad record as a fatal error.
    #[arg(long)]
    pub strict: bool,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j', value_name = "N")]
    pub threads: Option<usize>,
    /// Record format: detected per record (auto), or forced (records of other formats are then
    /// bad records).
    #[arg(long, value_enum, default_value_t = InputFormatArg::Auto)]
    pub input_format: InputFormatArg,
    /// Records larger than this many bytes are counted as bad and skipped.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_record_bytes: usize,
    /// Also write run statistics as JSON to FILE (used by the benchmark).
    #[arg(long, value_name = "FILE", hide = true)]
    pub stats_json: Option<PathBuf>,
    /// Parse events but evaluate no rules (benchmark baseline).
    #[arg(long, hide = true)]
    pub parse_only: bool,
    /// Colour the table: auto (on a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// No summary on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Allow-list file (repeatable), loaded after kustody's catalogue of well-known operators
    /// and managed-cloud identities: entries that quiet expected activity (docs/RULES-FORMAT.md).
    /// Every quieted match is counted in the summary.
    #[arg(long = "allow", value_name = "FILE")]
    pub allow: Vec<PathBuf>,
    /// Ignore every allow-list, the built-in catalogue included.
    #[arg(long)]
    pub no_allowlist: bool,
    /// A learnt baseline (`kustody baseline learn`): matches on behaviour it has seen on enough
    /// days (this identity, verb and target) are demoted — left out of the alerts and counted
    /// per rule in the summary.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Report every rule match on its own: the table and `-o findings` otherwise fold the
    /// matches of one event, and repeats within --group-window, into findings.
    #[arg(long)]
    pub no_group: bool,
    /// Repeats of a finding (same rule, identity and kind of target) within this long of its
    /// first event fold into it: `30s`, `10m`, `1h`.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub group_window: String,
    /// Succeed on input that holds no audit event (otherwise a run that read none fails:
    /// an empty or unreadable input is not an all-clear).
    #[arg(long)]
    pub allow_empty: bool,
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Load rule files and print every diagnostic (exit 2 on errors, or on warnings with --strict).
    Check(CheckArgs),
    /// List the loaded rules with priority and tags.
    List(ListArgs),
    /// List the fields conditions and outputs can use.
    Fields,
    /// Print the built-in rules' documentation (docs/RULES.md) as Markdown.
    Doc,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Rule files or directories, loaded in order (an overlay goes after its base).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Also load the built-in rules first (so overlays of them can be checked).
    #[arg(long)]
    pub with_default_rules: bool,
    /// Warnings count as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Output format.
    #[arg(long = "output", short = 'o', visible_alias = "format", visible_short_alias = 'f', value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// List MITRE ATT&CK techniques and the rules covering them, instead of rules.
    #[arg(long)]
    pub mitre: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable, fits 80 columns, coloured on a terminal.
    Table,
    /// Falco alert JSON, one per line (falcosidekick-compatible).
    Jsonl,
    /// Falco alert JSON objects in one array.
    Json,
    /// One row per detection.
    Csv,
    /// JSON lines for Timesketch import (message, datetime, timestamp_desc, fields).
    Timesketch,
    /// One JSON object per finding: the lead rule, every rule and tag, count, first and last
    /// seen, sample audit IDs (docs/FINDINGS.md).
    Findings,
}

#[derive(Subcommand, Debug)]
pub enum BaselineCommand {
    /// Learn a baseline from audit logs (or the store of `kustody serve`).
    Learn(BaselineLearnArgs),
}

#[derive(Args, Debug)]
pub struct BaselineLearnArgs {
    #[arg(required_unless_present = "store", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[arg(long, value_name = "DATA_DIR", conflicts_with = "paths")]
    pub store: Option<PathBuf>,
    /// Where to write it (JSON).
    #[arg(long = "output-file", short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// A behaviour seen on at least this many distinct days (UTC) is known.
    #[arg(long, default_value_t = 2)]
    pub min_days: u32,
    /// Forget behaviours not seen for this many days before the newest event.
    #[arg(long, default_value_t = 30)]
    pub forget_after_days: u32,
    /// Behaviours kept at most (the least recently seen are forgotten first, and counted).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_behaviours: usize,
    /// Learn only from events at or after this time.
    #[arg(long)]
    pub since: Option<String>,
    /// … and before this one.
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Args, Debug)]
pub struct WhoisArgs {
    /// The IP address.
    pub ip: String,
    /// Audit logs (files, directories, `-` for stdin).
    #[arg(required_unless_present = "store", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Read the store of `kustody serve` instead.
    #[arg(long, value_name = "DATA_DIR", conflicts_with = "paths")]
    pub store: Option<PathBuf>,
    /// Who held it at this time (RFC 3339 or a duration ago: 30m, 2h).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    #[arg(long = "output", short = 'o', value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("identity").required(true).args(["pod", "user", "sa", "ip"])))]
pub struct TimelineArgs {
    /// Audit log files, directories or `-` for stdin.
    #[arg(required_unless_present = "store", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Read what `kustody serve` stored in this data directory instead of files.
    #[arg(long, value_name = "DATA_DIR", conflicts_with = "paths")]
    pub store: Option<PathBuf>,
    /// A pod: its creation, exec/attach (with commands), log reads, changes to it and its
    /// owners, and requests made with its service account's token.
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Option<String>,
    /// A user name (as authenticated or impersonated).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// A service account: requests with its token and changes to it.
    #[arg(long, value_name = "NS/NAME")]
    pub sa: Option<String>,
    /// A source IP address.
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<String>,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Record format: auto-detected per record, or forced.
    #[arg(long, value_enum, default_value_t = InputFormatArg::Auto)]
    pub input_format: InputFormatArg,
    /// Only events at or after this time (RFC 3339 or a duration ago: 90m, 12h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Output format.
    #[arg(long = "output", short = 'o', visible_alias = "format", visible_short_alias = 'f', value_enum, default_value_t = TimelineFormat::Table)]
    pub format: TimelineFormat,
    /// Write to FILE instead of stdout.
    #[arg(long = "output-file", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineFormat {
    /// Two or three lines per event, 80 columns.
    Table,
    /// One JSON object per event.
    Jsonl,
    /// One row per event.
    Csv,
    /// JSON lines for Timesketch import.
    Timesketch,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormatArg {
    /// Detect per record.
    Auto,
    /// Native audit.k8s.io Events only.
    Native,
    /// EKS CloudWatch events and S3 export lines.
    Eks,
    /// GKE Cloud Logging LogEntries.
    Gke,
    /// AKS diagnostic-settings records.
    Aks,
}

impl From<InputFormatArg> for kustody_ingest::InputFormat {
    fn from(a: InputFormatArg) -> Self {
        match a {
            InputFormatArg::Auto => Self::Auto,
            InputFormatArg::Native => Self::Native,
            InputFormatArg::Eks => Self::Eks,
            InputFormatArg::Gke => Self::Gke,
            InputFormatArg::Aks => Self::Aks,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    s.parse::<Priority>().map_err(|e| e.to_string())
}

/// kubectl's `--request-timeout`: `0` (none), whole seconds, or a number with a unit (`ms`, `s`,
/// `m`, `h`; combined as Go writes them: `1m30s`).
pub fn parse_request_timeout(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{s}` is not a duration: use seconds (`30`) or a unit (`500ms`, `30s`, `2m`, `1h`, `1m30s`)");
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(std::time::Duration::from_secs).map_err(|_| bad());
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = tail;
    }
    if s.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// `-v` without a number means `-v 1`, but clap would take the next word as its number
/// (`kustody exec -v pod/x`): so a bare `-v`/`--v`/`--verbose` not followed by a number is
/// rewritten to `-v=1` before parsing. Words after `--` are the user's and left alone.
pub fn normalize_verbosity(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let mut out = Vec::with_capacity(args.len());
    let mut rest_is_user = false;
    for (i, a) in args.iter().enumerate() {
        if rest_is_user || i == 0 {
            out.push(a.clone());
            continue;
        }
        if a == "--" {
            rest_is_user = true;
            out.push(a.clone());
            continue;
        }
        let bare = a == "-v" || a == "--v" || a == "--verbose";
        let number_follows = args
            .get(i + 1)
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if bare && !number_follows {
            out.push("-v=1".into());
        } else {
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeouts_read_as_kubectl_writes_them() {
        use std::time::Duration;
        assert_eq!(parse_request_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_request_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_request_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_request_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_request_timeout("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "1x", "1.5s", "-1s", "m1"] {
            assert!(parse_request_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bare_v_means_level_one_and_leaves_the_next_word_alone() {
        let norm = |a: &[&str]| -> Vec<String> {
            normalize_verbosity(a.iter().map(std::ffi::OsString::from))
                .into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            norm(&["k", "exec", "-v", "pod/x", "--", "ls", "-v"]),
            ["k", "exec", "-v=1", "pod/x", "--", "ls", "-v"]
        );
        assert_eq!(norm(&["k", "auth", "whoami", "-v", "6"]), ["k", "auth", "whoami", "-v", "6"]);
        assert_eq!(norm(&["k", "auth", "whoami", "--verbose"]), ["k", "auth", "whoami", "-v=1"]);
        let cli = Cli::try_parse_from(norm(&["kustody", "auth", "whoami", "-v"])).unwrap();
        assert_eq!(cli.verbosity, 1);
        let cli = Cli::try_parse_from(norm(&["kustody", "-v", "6", "auth", "whoami"])).unwrap();
        assert_eq!(cli.verbosity, 6);
        let cli = Cli::try_parse_from(["kustody", "auth", "whoami", "--v=8"]).unwrap();
        assert_eq!(cli.verbosity, 8);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `kustody serve --role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeRole {
    All,
    Receiver,
    Detector,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, args_override_self = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub action: Option<ServeAction>,
    /// A YAML file of these flags (`listen: 0.0.0.0:8443`, `follow: [/var/log/audit.log]`,
    /// `no-allowlist: true`); flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the store, the generated TLS certificate and the token file live.
    #[arg(long, value_name = "DIR", env = "KUSTODY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where events, findings and incidents are kept: `sqlite` (the default: in DATA_DIR) or
    /// a PostgreSQL connection URL (`postgres://kustody@db.example:5432/kustody?sslmode=require`;
    /// give the password with --store-password-file, not in the URL).
    #[arg(long, value_name = "sqlite|URL", env = "KUSTODY_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// A file holding the PostgreSQL password.
    #[arg(long, value_name = "FILE", requires = "store")]
    pub store_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to verify the PostgreSQL server's TLS certificate with (default:
    /// the system's roots).
    #[arg(long, value_name = "FILE", requires = "store")]
    pub store_ca: Option<PathBuf>,
    /// What this process does: `all` (receive, store, detect; the default), `receiver`
    /// (receive and publish to the bus; no store) or `detector` (consume bus partitions, store,
    /// detect, serve searches and the console). Receivers and detectors need --bus.
    #[arg(long, value_enum, default_value_t = ServeRole::All)]
    pub role: ServeRole,
    /// NATS JetStream between receivers and detectors (`nats://host:4222`, `tls://…`; several
    /// comma-separated). The server must run JetStream with `sync_interval: always`.
    #[arg(long, value_name = "URL", env = "KUSTODY_BUS")]
    pub bus: Option<String>,
    /// A file holding the bus token.
    #[arg(long, value_name = "FILE", requires = "bus")]
    pub bus_token_file: Option<PathBuf>,
    /// A NATS credentials file (user JWT and NKey seed).
    #[arg(long, value_name = "FILE", requires = "bus")]
    pub bus_credentials: Option<PathBuf>,
    /// CA certificate(s) (PEM) to verify the bus server with; TLS is then required.
    #[arg(long, value_name = "FILE", requires = "bus")]
    pub bus_ca: Option<PathBuf>,
    /// Event partitions on the bus (the same number on every receiver and detector, for the
    /// stream's life): an identity's events go to one partition, a partition to one detector.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub bus_partitions: u32,
    /// The bus stream's size bound; when full, receivers answer 503 with Retry-After.
    #[arg(long, value_name = "SIZE", default_value = "10G")]
    pub bus_max_bytes: String,
    /// Stream replicas (3 on a three-node JetStream cluster).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub bus_replicas: u32,
    /// A detector's partition lease: another detector takes its partitions when it has not
    /// renewed them for this long.
    #[arg(long, value_name = "DURATION", default_value = "15s")]
    pub bus_lease: String,
    /// Address to listen on (HTTPS).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// Server certificate (PEM); without it one is made in DATA_DIR/tls on first start.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra DNS name or IP for the generated certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_sans: Vec<String>,
    /// CA whose client certificates authenticate senders (mTLS; the webhook kubeconfig's
    /// client certificate). They get the `ingest` role.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Bearer tokens: lines of `TOKEN NAME ROLES` (roles: ingest, read, respond, admin), mode 0600
    /// (0640 when root owns it, as a Secret volume with fsGroup).
    /// Default: DATA_DIR/tokens, made with one admin token on first start.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Follow an audit log (rotation-aware; resumes from its stored offset). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub follow: Vec<PathBuf>,
    /// Feed a file (any format hunt reads) through the live path once: a demo or an import.
    #[arg(long, value_name = "FILE")]
    pub replay: Vec<PathBuf>,
    /// Stop once the --replay files are stored and evaluated.
    #[arg(long, requires = "replay")]
    pub exit_after_replay: bool,
    /// Read this EKS cluster's audit log from CloudWatch Logs (`/aws/eks/NAME/cluster`,
    /// `kube-apiserver-audit-*` streams), resuming from the stored cursor. Repeatable. Its
    /// events carry the cluster's name unless --cluster names another.
    #[arg(long, value_name = "NAME")]
    pub eks_cluster: Vec<String>,
    /// The log group, when not EKS's own (one --eks-cluster only).
    #[arg(long, value_name = "GROUP", requires = "eks_cluster")]
    pub eks_log_group: Option<String>,
    /// Between live reads of the audit log.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub eks_poll: String,
    /// On a first start (no stored cursor), read this far back.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub eks_since: String,
    /// How late an event may reach CloudWatch after its own time and still be read (a settle
    /// pass reads each window again once this long has passed).
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    pub eks_lateness: String,
    /// FilterLogEvents calls a second per account and region (AWS allows 5 for the whole
    /// account, shared with every other tool).
    #[arg(long, value_name = "N", default_value_t = 2.0)]
    pub eks_calls_per_second: f64,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Allow-list file (repeatable), as for hunt.
    #[arg(long = "allow", value_name = "FILE")]
    pub allow: Vec<PathBuf>,
    /// Do not apply allow-lists.
    #[arg(long)]
    pub no_allowlist: bool,
    /// Only detect rules at least this severe.
    #[arg(long, value_name = "PRIORITY")]
    pub min_priority: Option<Priority>,
    /// Repeats within this window fold into one finding.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub group_window: String,
    /// Largest request body accepted (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_request_bytes: usize,
    /// Largest single audit event accepted (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_event_bytes: usize,
    /// Request bytes waiting for their commit before senders get 429.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub queue_bytes: usize,
    /// Delete stored records older than this (e.g. 90d).
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,
    /// Keep the store under this size, deleting the oldest events (e.g. 50G, 500M).
    #[arg(long, value_name = "SIZE")]
    pub max_store_size: Option<String>,
    /// An event that only a followed log file delivered counts as a webhook gap once it is
    /// this old (the webhook's retries last about 90 s).
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    pub webhook_gap_grace: String,
    /// Write the listening URL to this file once ready.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Notification sinks (YAML; docs/NOTIFY.md): Slack, Teams, PagerDuty, syslog, Splunk HEC,
    /// Elasticsearch, SMTP, Falco JSON, webhooks, each with a minimum priority and a route.
    #[arg(long, value_name = "FILE")]
    pub sinks: Option<PathBuf>,
    /// The cluster's name, carried by incidents and notifications.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Findings of one identity and workload within this window are one incident.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub incident_window: String,
    /// Public URL of this server, for links in notifications (and the OpenID Connect
    /// redirect, URL/login/oidc/callback).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// OpenID Connect login for the console: the provider's issuer URL (https; discovery at
    /// ISSUER/.well-known/openid-configuration). Needs --public-url, --oidc-client-id,
    /// --oidc-client-secret-file and at least one --oidc-role or --oidc-default-role.
    #[arg(long, value_name = "URL", requires_all = ["public_url", "oidc_client_id", "oidc_client_secret_file"])]
    pub oidc_issuer: Option<String>,
    #[arg(long, value_name = "ID")]
    pub oidc_client_id: Option<String>,
    /// A file holding the client secret (read once; never logged).
    #[arg(long, value_name = "FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the provider, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub oidc_ca: Option<PathBuf>,
    /// The ID token claim naming the person.
    #[arg(long, value_name = "CLAIM", default_value = "email")]
    pub oidc_username_claim: String,
    /// The ID token claim holding group (or role) values.
    #[arg(long, value_name = "CLAIM", default_value = "groups")]
    pub oidc_roles_claim: String,
    /// VALUE=ROLE: people whose roles claim holds VALUE get ROLE (viewer, responder, admin);
    /// the highest wins. Repeatable.
    #[arg(long, value_name = "VALUE=ROLE")]
    pub oidc_role: Vec<String>,
    /// The role of people no --oidc-role maps (default: refused).
    #[arg(long, value_name = "ROLE")]
    pub oidc_default_role: Option<String>,
    /// Scopes asked for (openid is always asked).
    #[arg(long, value_name = "SCOPE", default_values_t = ["email".to_owned(), "profile".to_owned(), "groups".to_owned()])]
    pub oidc_scope: Vec<String>,
    /// Response playbooks (YAML; docs/PLAYBOOKS.md): collect, quarantine, label, annotate,
    /// notify, release when an incident matches, with guardrails. Dry run unless a playbook
    /// says `dry_run: false`.
    #[arg(long, value_name = "FILE")]
    pub playbooks: Option<PathBuf>,
    /// Kubeconfig playbook actions and --watch-cluster use (default: $KUBECONFIG,
    /// ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context playbook actions and --watch-cluster use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Watch the cluster's pods, nodes and Services (list/watch, cluster-wide) so every
    /// source IP is tied to the pod that held it, even without pod bodies in the audit log.
    #[arg(long)]
    pub watch_cluster: bool,
    /// Most IP holds (IP, pod) kept in memory; the oldest are forgotten first, counted in
    /// /metrics.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub max_ip_intervals: usize,
    /// Turn the live baseline off: no new-behaviour or rate findings, no demotion of matches
    /// on behaviour known for days.
    #[arg(long)]
    pub no_baseline: bool,
    /// How long the baseline learns (the server, and each new identity) before it reports new
    /// behaviour.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub baseline_learn: String,
    /// A value (behaviour, user agent, network) not seen for this long is forgotten: its
    /// return is new again.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub baseline_forget: String,
    /// A rule's match on behaviour seen for this identity and target on this many distinct
    /// days is demoted (counted in /metrics, kept out of findings).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub baseline_min_days: u32,
    /// Width of the normal request-rate band, in standard deviations.
    #[arg(long, value_name = "K", default_value_t = 6.0)]
    pub rate_band: f64,
    /// A minute with fewer requests than this never raises a rate finding.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub rate_min: u32,
}

#[derive(Subcommand, Debug)]
pub enum ServeAction {
    /// The notification outbox: what is pending, delivered or dead, and retrying.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Console users (DATA_DIR/users, argon2-hashed passwords): add, list, remove.
    #[command(subcommand)]
    User(UserCommand),
    /// Print what the apiserver needs to send its audit events here: the webhook kubeconfig,
    /// an audit policy that gives the rules what they need, and the kube-apiserver flags.
    PrintApiserverConfig(ApiserverConfigArgs),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user, or change its role and password. The password is read from standard input
    /// (one line; at least 12 characters), never from the command line.
    Add(UserAddArgs),
    /// Users and their roles.
    List(UserDirArgs),
    /// Remove a user (its open sessions end at the next restart or after 30 minutes idle).
    Remove(UserRemoveArgs),
}

#[derive(Args, Debug)]
pub struct UserDirArgs {
    /// The server's data directory.
    #[arg(long, value_name = "DIR", env = "KUSTODY_DATA_DIR")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct UserAddArgs {
    pub name: String,
    /// viewer (read), responder (also act on incidents), admin.
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    #[command(flatten)]
    pub dir: UserDirArgs,
}

#[derive(Args, Debug)]
pub struct UserRemoveArgs {
    pub name: String,
    #[command(flatten)]
    pub dir: UserDirArgs,
}

#[derive(Args, Debug)]
pub struct ApiserverConfigArgs {
    /// The URL the apiserver reaches kustody at.
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:8443/v1/audit")]
    pub url: String,
    /// The CA (or self-signed certificate) that signed kustody's server certificate.
    #[arg(long, value_name = "FILE", default_value = "/etc/kubernetes/kustody/server.crt")]
    pub ca: String,
    /// Authenticate with a client certificate instead of a token: CERT and KEY paths.
    #[arg(long, value_names = ["CERT", "KEY"], num_args = 2)]
    pub client_cert: Option<Vec<String>>,
}

/// How a command reaches what `kustody serve` stored: its data directory, or the server.
#[derive(Args, Debug, Clone)]
pub struct ServerConn {
    /// Read this data directory directly (the server may be running).
    #[arg(long, value_name = "DIR", env = "KUSTODY_DATA_DIR", conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Ask a running server (https://HOST:PORT) instead.
    #[arg(long, value_name = "URL", env = "KUSTODY_SERVER")]
    pub server: Option<String>,
    /// Bearer token file for --server (the token's first field is used; or $KUSTODY_TOKEN).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
    /// CA certificate of the server (or its certificate, DATA_DIR/tls/server.crt).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca: Option<PathBuf>,
    #[arg(long = "output", short = 'o', value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IncidentsArgs {
    #[command(subcommand)]
    pub action: Option<IncidentsAction>,
    #[command(flatten)]
    pub list: IncidentListArgs,
}

#[derive(Args, Debug, Clone)]
pub struct IncidentListArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// new, acknowledged or resolved.
    #[arg(long)]
    pub status: Option<String>,
    /// Every incident, resolved ones included (default: not resolved).
    #[arg(long, short = 'a', conflicts_with = "status")]
    pub all: bool,
    #[arg(long, value_name = "PRIORITY")]
    pub min_priority: Option<String>,
    /// User or service account (`system:serviceaccount:NS:NAME`).
    #[arg(long)]
    pub identity: Option<String>,
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Incidents of this cluster.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Active at or after (RFC 3339 or a duration ago: 30m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Subcommand, Debug)]
pub enum IncidentsAction {
    /// List incidents (the default).
    List(IncidentListArgs),
    /// One incident: its story, who, where, evidence, next commands, notes, notifications.
    Show(IncidentIdArgs),
    /// Acknowledge: someone is on it.
    Ack(IncidentChangeArgs),
    /// Resolve: sinks that were sent the incident are told (PagerDuty resolves it).
    Resolve(IncidentChangeArgs),
    /// Assign to someone (an empty name clears it).
    Assign(IncidentAssignArgs),
    /// Add a note.
    Note(IncidentNoteArgs),
}

#[derive(Args, Debug)]
pub struct IncidentIdArgs {
    pub id: i64,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Args, Debug)]
pub struct IncidentChangeArgs {
    pub id: i64,
    /// A note recorded with the change.
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub note: Option<String>,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Args, Debug)]
pub struct IncidentAssignArgs {
    pub id: i64,
    pub assignee: String,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Args, Debug)]
pub struct IncidentNoteArgs {
    pub id: i64,
    pub text: String,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Subcommand, Debug)]
pub enum ActionsCommand {
    /// Actions, newest first (state: planned, awaiting-approval, running, applied, dry-run,
    /// failed, skipped, rejected, interrupted).
    List(ActionListArgs),
    /// Let an action waiting for approval run.
    Approve(ActionIdArgs),
    /// Refuse an action waiting for approval.
    Reject(ActionIdArgs),
}

#[derive(Args, Debug)]
pub struct ActionListArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    #[arg(long, value_name = "ID")]
    pub incident: Option<i64>,
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct ActionIdArgs {
    pub id: i64,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Subcommand, Debug)]
pub enum OutboxCommand {
    /// Notifications, newest first.
    List(OutboxListArgs),
    /// One notification with every delivery attempt.
    Show(OutboxShowArgs),
    /// Send dead notifications again: the given ids, or every dead one (of --sink).
    Retry(OutboxRetryArgs),
}

#[derive(Args, Debug)]
pub struct OutboxListArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// pending, delivered or dead.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub sink: Option<String>,
    #[arg(long, value_name = "ID")]
    pub incident: Option<i64>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct OutboxShowArgs {
    pub id: i64,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Args, Debug)]
pub struct OutboxRetryArgs {
    pub ids: Vec<i64>,
    #[arg(long)]
    pub sink: Option<String>,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Read this data directory directly (the server may be running).
    #[arg(long, value_name = "DIR", env = "KUSTODY_DATA_DIR", conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Ask a running server (https://HOST:PORT) instead.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token file for --server (the token's first field is used).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
    /// CA certificate of the server (default: its certificate in DATA_DIR/tls is not known
    /// remotely, so pass it).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca: Option<PathBuf>,
    /// Search findings instead of events.
    #[arg(long, conflicts_with = "alerts")]
    pub findings: bool,
    /// Search Falco runtime alerts instead of events.
    #[arg(long)]
    pub alerts: bool,
    /// Events and findings of this cluster (`kustody serve --cluster`).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Service account, NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    pub sa: Option<String>,
    /// Pod, NAMESPACE/NAME (the pod a bound token was minted for, or the pod acted on).
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Option<String>,
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// Requests from this pod, NAMESPACE/NAME: the pod that held their source IP at the time.
    #[arg(long, value_name = "NS/NAME")]
    pub from_pod: Option<String>,
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    #[arg(long)]
    pub verb: Option<String>,
    #[arg(long)]
    pub resource: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long = "audit-id", value_name = "ID")]
    pub audit_id: Option<String>,
    /// Events a rule matched / findings of a rule / alerts of a Falco rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// RFC 3339 time or a duration ago (30m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// A Falco condition events must satisfy, compiled by the rule engine
    /// (e.g. `ka.verb=create and ka.target.resource=pods`).
    #[arg(long = "where", value_name = "CONDITION")]
    pub where_: Option<String>,
    /// Findings at least this severe.
    #[arg(long, value_name = "PRIORITY")]
    pub min_priority: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Continue after this id (the `next_before` of the previous page).
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
    #[arg(long = "output", short = 'o', value_enum, default_value_t = SearchFormat::Table)]
    pub format: SearchFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchFormat {
    Table,
    /// One JSON object per line (events: the audit event itself).
    Jsonl,
    /// The API's JSON page.
    Json,
}
