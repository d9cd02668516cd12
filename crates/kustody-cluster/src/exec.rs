//! Running a command in a container: the exec WebSocket protocol (FACTS.md §5), on kube-rs's
//! connection (TLS, authentication, upgrade), with kustody's own message loop.
//!
//! Why not `kube::Api::exec`: it copies every frame into in-memory pipes (1 KiB by default) that
//! the caller then drains; evidence collection wants stdout written straight into a file or
//! archive while it is hashed, stderr kept apart, and the exit code, with one task per exec.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kube::api::AttachParams;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub namespace: String,
    pub pod: String,
    /// The container; the pod's only container when `None`.
    pub container: Option<String>,
    /// argv (not a shell line).
    pub command: Vec<String>,
    /// Bytes to send on stdin, then end of input (v5 closes stdin; v4 can only close the socket).
    pub stdin: Option<Vec<u8>>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Count stdout inside the container too and compare (needs `sh`, `tee` and `wc` there):
    /// catches the silent truncation of kubernetes issue 124571.
    pub verify_size: bool,
    /// Keep at most this much stderr (default 1 MiB); the rest is counted.
    pub max_stderr: Option<usize>,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// 0 on success, the command's exit code otherwise.
    pub exit_code: i32,
    pub stdout_bytes: u64,
    /// SHA-256 of stdout as written to the sink, hex.
    pub stdout_sha256: String,
    pub stderr: Vec<u8>,
    /// Stderr bytes beyond `max_stderr` that were dropped.
    pub stderr_dropped: u64,
    /// `v5.channel.k8s.io` or `v4.channel.k8s.io`.
    pub protocol: &'static str,
    pub elapsed: Duration,
    /// With `verify_size`: the container's own count matched ours.
    pub size_verified: Option<bool>,
}

/// Why an exec failed, precisely enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("forbidden: {message} (exec needs `get` and `create` on `pods/exec` in namespace {namespace})")]
    Forbidden { namespace: String, message: String },
    #[error("pod {namespace}/{pod} not found")]
    PodNotFound { namespace: String, pod: String },
    #[error("{message}")]
    BadContainer { message: String },
    #[error("command `{command}` not found in the container's image: {message}")]
    CommandNotFound { command: String, message: String },
    #[error("the command could not run: {message}")]
    Failed { message: String },
    #[error("stdout was truncated: received {received} bytes, the container wrote {written}")]
    Truncated { received: u64, written: u64 },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection: {0}")]
    Transport(String),
    #[error("writing stdout: {0}")]
    Sink(#[from] std::io::Error),
}

const TRAILER: &str = "kustody-stdout-bytes:";

/// On v4, how long a command with stdin may stay quiet before stdin is ended by closing.
pub const V4_STDIN_GRACE: Duration = Duration::from_secs(2);

/// The command wrapped so the container reports how many bytes it wrote to stdout, on stderr
/// after everything else, keeping the command's exit status (`pipefail`).
fn with_size_report(command: &[String]) -> Vec<String> {
    let script = format!(
        "set -o pipefail 2>/dev/null; exec 3>&1; n=$(\"$@\" | tee /dev/fd/3 | wc -c); rc=$?; printf '\\n{TRAILER}%s\\n' \"$n\" >&2; exit $rc"
    );
    let mut v = vec!["sh".to_owned(), "-c".to_owned(), script, "kustody-exec".to_owned()];
    v.extend(command.iter().cloned());
    v
}

/// The `Status` on the error channel (fields kustody reads).
#[derive(Debug, Default, serde::Deserialize)]
struct ExecStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    details: Option<StatusDetails>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct StatusDetails {
    #[serde(default)]
    causes: Vec<StatusCause>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct StatusCause {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

fn exit_code(status: &ExecStatus) -> Option<i32> {
    status.details.as_ref()?.causes.iter().find(|c| c.reason == "ExitCode")?.message.parse().ok()
}

fn classify_connect(e: kube::Error, spec: &ExecSpec) -> ExecError {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            ExecError::Forbidden { namespace: spec.namespace.clone(), message: s.message }
        }
        kube::Error::Api(s) if s.code == 404 => {
            ExecError::PodNotFound { namespace: spec.namespace.clone(), pod: spec.pod.clone() }
        }
        kube::Error::Api(s) if s.code == 400 => ExecError::BadContainer { message: s.message },
        kube::Error::Api(s) => ExecError::Failed { message: format!("{} {}: {}", s.code, s.reason, s.message) },
        other => ExecError::Transport(other.to_string()),
    }
}

/// Run `spec`, writing stdout into `stdout` as it arrives.
pub async fn exec<W: AsyncWrite + Unpin + Send>(
    client: &kube::Client,
    spec: &ExecSpec,
    stdout: &mut W,
) -> Result<ExecOutcome, ExecError> {
    let started = Instant::now();
    let run = run(client, spec, None, stdout, started);
    match spec.timeout {
        Some(t) => tokio::time::timeout(t, run).await.map_err(|_| ExecError::Timeout(t))?,
        None => run.await,
    }
}

/// Run `spec` with stdin fed from `stdin` as the caller produces it (a conversation: the caller
/// reads `stdout` through a pipe and decides what to send next). `spec.stdin` is ignored; the
/// channel closing ends stdin. Needs v5 to end stdin cleanly (v4: see [`V4_STDIN_GRACE`]).
pub async fn exec_interactive<W: AsyncWrite + Unpin + Send>(
    client: &kube::Client,
    spec: &ExecSpec,
    stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
    stdout: &mut W,
) -> Result<ExecOutcome, ExecError> {
    let started = Instant::now();
    let run = run(client, spec, Some(stdin), stdout, started);
    match spec.timeout {
        Some(t) => tokio::time::timeout(t, run).await.map_err(|_| ExecError::Timeout(t))?,
        None => run.await,
    }
}

async fn send_stdin<S>(ws: &mut S, data: &[u8]) -> Result<(), ExecError>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    for chunk in data.chunks(32 * 1024) {
        let mut frame = Vec::with_capacity(chunk.len() + 1);
        frame.push(0);
        frame.extend_from_slice(chunk);
        ws.send(Message::binary(frame)).await.map_err(|e| ExecError::Transport(e.to_string()))?;
    }
    Ok(())
}

async fn run<W: AsyncWrite + Unpin + Send>(
    client: &kube::Client,
    spec: &ExecSpec,
    mut live_stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    stdout: &mut W,
    started: Instant,
) -> Result<ExecOutcome, ExecError> {
    let command = if spec.verify_size { with_size_report(&spec.command) } else { spec.command.clone() };
    let has_stdin = spec.stdin.is_some() || live_stdin.is_some();
    let mut ap = AttachParams::default().stdin(has_stdin).stdout(true).stderr(true);
    if let Some(c) = &spec.container {
        ap = ap.container(c.clone());
    }
    let req = kube::core::Request::new(format!("/api/v1/namespaces/{}/pods", spec.namespace))
        .exec(&spec.pod, command, &ap)
        .map_err(|e| ExecError::Failed { message: e.to_string() })?;
    let conn = client.connect(req).await.map_err(|e| classify_connect(e, spec))?;
    let v5 = conn.supports_stream_close();
    let protocol = if v5 { "v5.channel.k8s.io" } else { "v4.channel.k8s.io" };
    let mut ws = conn.into_stream();
    if live_stdin.is_none() {
        if let Some(input) = &spec.stdin {
            send_stdin(&mut ws, input).await?;
            if v5 {
                ws.send(Message::binary(vec![255u8, 0])).await.map_err(|e| ExecError::Transport(e.to_string()))?;
            }
        }
    }
    // v4 has no way to end stdin but closing the connection, after which output still in flight
    // can be lost. So on v4 the connection is closed only once the command has been quiet for
    // `V4_STDIN_GRACE` without finishing: a command that ends on its own (a collector reading
    // a known length) delivers everything; one waiting for end of input gets it late.
    let mut v4_open_stdin = !v5 && spec.stdin.is_some() && live_stdin.is_none();
    let max_stderr = spec.max_stderr.unwrap_or(1 << 20);
    let mut hasher = Sha256::new();
    let mut stdout_bytes = 0u64;
    let mut stderr = Vec::new();
    let mut stderr_dropped = 0u64;
    let mut status: Option<ExecStatus> = None;
    loop {
        let next = if let Some(rx) = live_stdin.as_mut() {
            // whichever comes first: output to read, or input the caller wants sent
            let input = tokio::select! {
                biased;
                m = ws.next() => Err(m),
                i = rx.recv() => Ok(i),
            };
            match input {
                Ok(Some(data)) => {
                    send_stdin(&mut ws, &data).await?;
                    continue;
                }
                Ok(None) => {
                    live_stdin = None;
                    if v5 {
                        ws.send(Message::binary(vec![255u8, 0]))
                            .await
                            .map_err(|e| ExecError::Transport(e.to_string()))?;
                    } else {
                        v4_open_stdin = true;
                    }
                    continue;
                }
                Err(m) => m,
            }
        } else if v4_open_stdin {
            match tokio::time::timeout(V4_STDIN_GRACE, ws.next()).await {
                Ok(m) => m,
                Err(_) => {
                    v4_open_stdin = false;
                    let _ = ws.close(None).await;
                    continue;
                }
            }
        } else {
            ws.next().await
        };
        let Some(msg) = next else { break };
        let msg = match msg {
            Ok(m) => m,
            Err(e) if status.is_some() => {
                let _ = e;
                break;
            }
            Err(e) => return Err(ExecError::Transport(e.to_string())),
        };
        if handle(
            msg,
            stdout,
            &mut hasher,
            &mut stdout_bytes,
            &mut stderr,
            &mut stderr_dropped,
            max_stderr,
            &mut status,
        )
        .await?
        {
            break;
        }
    }
    stdout.flush().await?;
    let mut size_verified = None;
    if spec.verify_size {
        // the trailer is the last line of stderr
        let text = String::from_utf8_lossy(&stderr).into_owned();
        if let Some(pos) = text.rfind(&format!("\n{TRAILER}")) {
            let written = text.get(pos + 1 + TRAILER.len()..).unwrap_or("").trim().parse::<u64>().ok();
            stderr.truncate(pos);
            match written {
                Some(w) if w == stdout_bytes => size_verified = Some(true),
                Some(w) => return Err(ExecError::Truncated { received: stdout_bytes, written: w }),
                None => size_verified = Some(false),
            }
        } else {
            size_verified = Some(false);
        }
    }
    let status = status.ok_or_else(|| {
        ExecError::Transport(format!("the stream ended without an exit status after {stdout_bytes} bytes of stdout"))
    })?;
    let exit = match status.status.as_str() {
        "Success" => 0,
        _ if status.reason == "NonZeroExitCode" => exit_code(&status).unwrap_or(-1),
        _ => {
            let message = status.message.clone();
            if message.contains("executable file not found") || message.contains("no such file or directory") {
                return Err(ExecError::CommandNotFound {
                    command: spec.command.first().cloned().unwrap_or_default(),
                    message,
                });
            }
            return Err(ExecError::Failed { message });
        }
    };
    Ok(ExecOutcome {
        exit_code: exit,
        stdout_bytes,
        stdout_sha256: format!("{:x}", hasher.finalize()),
        stderr,
        stderr_dropped,
        protocol,
        elapsed: started.elapsed(),
        size_verified,
    })
}

/// One message of the stream; `true` when the stream is closed.
#[allow(clippy::too_many_arguments)]
async fn handle<W: AsyncWrite + Unpin + Send>(
    msg: Message,
    stdout: &mut W,
    hasher: &mut Sha256,
    stdout_bytes: &mut u64,
    stderr: &mut Vec<u8>,
    stderr_dropped: &mut u64,
    max_stderr: usize,
    status: &mut Option<ExecStatus>,
) -> Result<bool, ExecError> {
    match msg {
        Message::Binary(b) => {
            let Some((&ch, data)) = b.split_first() else { return Ok(false) };
            match ch {
                1 => {
                    stdout.write_all(data).await?;
                    hasher.update(data);
                    *stdout_bytes += data.len() as u64;
                }
                2 => {
                    let room = max_stderr.saturating_sub(stderr.len());
                    stderr.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
                    *stderr_dropped += data.len().saturating_sub(room) as u64;
                }
                3 if !data.is_empty() => {
                    *status = Some(serde_json::from_slice(data).unwrap_or_else(|_| ExecStatus {
                        // v1-v3 send the error as text
                        status: "Failure".into(),
                        message: String::from_utf8_lossy(data).into_owned(),
                        ..ExecStatus::default()
                    }));
                }
                _ => {}
            }
            Ok(false)
        }
        Message::Close(_) => Ok(true),
        _ => Ok(false),
    }
}

/// Many execs through one client, at most `limit` at a time.
#[derive(Clone)]
pub struct ExecPool {
    client: kube::Client,
    permits: Arc<tokio::sync::Semaphore>,
}

impl ExecPool {
    pub fn new(client: kube::Client, limit: usize) -> ExecPool {
        ExecPool { client, permits: Arc::new(tokio::sync::Semaphore::new(limit.max(1))) }
    }

    /// Run one exec when a slot is free, collecting stdout in memory.
    pub async fn run(&self, spec: ExecSpec) -> Result<(ExecOutcome, Vec<u8>), ExecError> {
        let _permit = self.permits.acquire().await.map_err(|e| ExecError::Transport(e.to_string()))?;
        let mut out = Vec::new();
        let o = exec(&self.client, &spec, &mut out).await?;
        Ok((o, out))
    }
}
