//! Streamed artifacts: container logs (`pods/log`) and tar copies (an exec whose stdout is a
//! tar stream), hashed as they arrive. A stream that fails — the API, the exec, or the write
//! (a full disk) — leaves no partial file and a recorded failure.

use std::time::Instant;

use kustody_cluster::exec::{self, ExecSpec};
use kustody_cluster::ClusterError;
use serde_json::Value;

use super::session::{source_exec, Session};
use crate::bundle::{now, Source};
use crate::error::{CollectError, Result};

impl Session {
    /// The current log, and the previous instance's when the container restarted.
    pub(super) async fn logs(&self, ns: &str, name: &str, c: &str, cdir: &str, status: &Value) {
        let restarts = status.get("restartCount").and_then(Value::as_u64).unwrap_or(0);
        let mut which = vec![false];
        if restarts > 0 || status.pointer("/lastState/terminated").is_some() {
            which.push(true);
        }
        for previous in which {
            let t0 = Instant::now();
            let url = format!(
                "/api/v1/namespaces/{ns}/pods/{name}/log?container={c}&timestamps=true&limitBytes={}{}",
                self.opts.max_log_bytes,
                if previous { "&previous=true" } else { "" }
            );
            let rel = format!("{cdir}/log{}.txt", if previous { ".previous" } else { "" });
            let started = now();
            let src = Source::Api { method: "GET".into(), url: url.clone() };
            let max = self.opts.max_log_bytes;
            let res = self.log_stream(&url, &rel).await.map(|(sha, size)| {
                let notes =
                    if size >= max { vec![format!("limited to {max} bytes (--max-log-bytes)")] } else { vec![] };
                (sha, size, notes)
            });
            self.bundle.settle(&rel, res, src, started);
            self.time("logs", t0.elapsed());
        }
    }

    /// Stream `url` into `rel`; its SHA-256 and size.
    async fn log_stream(&self, url: &str, rel: &str) -> Result<(String, u64)> {
        let req = http::Request::get(url).body(Vec::new()).map_err(|e| CollectError::InvalidOption {
            option: "url",
            value: url.into(),
            reason: e.to_string(),
        })?;
        let body = self.client.request_stream(req).await.map_err(ClusterError::from_kube)?;
        let mut body = std::pin::pin!(body);
        let mut f = self.bundle.open_async(rel).await?;
        let path = self.bundle.root().join(rel);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = futures_util::AsyncReadExt::read(&mut body, &mut buf)
                .await
                .map_err(|e| ClusterError::Transport(format!("reading the log: {e}")))?;
            if n == 0 {
                break;
            }
            tokio::io::AsyncWriteExt::write_all(&mut f, buf.get(..n).unwrap_or_default())
                .await
                .map_err(|e| CollectError::io(&path, e))?;
        }
        f.finish().await.map_err(|e| CollectError::io(path, e))
    }

    /// An exec whose stdout is a tar stream, into `rel` (and the list sent on its stdin, if
    /// any, into `rel.list`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn tar(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        rel: &str,
        command: Vec<String>,
        stdin: Option<Vec<u8>>,
        step: &str,
    ) {
        let t0 = Instant::now();
        let started = now();
        let stdin_rel = stdin.as_ref().map(|_| format!("{rel}.list"));
        if let (Some(s), Some(r)) = (&stdin, &stdin_rel) {
            let src = Source::Kustody { what: "the file list sent to tar on stdin".into() };
            self.bundle.save(r, s, src, now(), vec![], vec![]);
        }
        let spec = ExecSpec {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            container: Some(container.to_owned()),
            command: command.clone(),
            stdin,
            timeout: Some(self.opts.timeout),
            verify_size: false,
            max_stderr: Some(64 * 1024),
        };
        let src = source_exec(ns, pod, container, command, stdin_rel);
        let res = async {
            let mut f = self.bundle.open_async(rel).await?;
            let out = exec::exec(&self.client, &spec, &mut f).await?;
            let (sha, size) = f.finish().await.map_err(|e| CollectError::io(self.bundle.root().join(rel), e))?;
            Ok::<_, CollectError>((out, sha, size))
        }
        .await;
        let res = res.map(|(out, sha256, size)| {
            let mut notes = vec![format!("exit code {}", out.exit_code)];
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if !err.is_empty() {
                notes.push(format!("stderr: {}", err.chars().take(2000).collect::<String>()));
            }
            (sha256, size, notes)
        });
        self.bundle.settle(rel, res, src, started);
        self.time(step, t0.elapsed());
    }
}
