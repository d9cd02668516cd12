//! `pods/exec` and `pods/attach` over WebSocket: the `v5.channel.k8s.io` /
//! `v4.channel.k8s.io` (and older) channel protocol, served from `runc exec` and from the
//! container's own stdio.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::api::{Api, Caller, ReqInfo, Request};
use crate::resources as res;
use crate::server::{json_response, Body};
use crate::status::ApiError;

/// Subprotocols we speak, most preferred first.
const PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// Frame payloads are cut at this size, as the kubelet does.
const CHUNK: usize = 32 * 1024;

pub async fn serve(
    api: Arc<Api>,
    caller: Caller,
    req: Request,
    info: ReqInfo,
    headers: hyper::HeaderMap,
    on_upgrade: OnUpgrade,
) -> Response<Body> {
    let mut rec = api.audit_record(&caller, &req.uri, Api::facts(&info, &req));
    let fail = |api: &Api, mut rec: crate::audit::AuditRecord, e: ApiError| {
        rec.code = e.code;
        rec.status = Some(e.to_status());
        rec.response_object = Some(e.to_status());
        api.audit.write(&rec, "ResponseStarted");
        api.audit.write(&rec, "ResponseComplete");
        json_response(e.code, &e.to_status(), &rec.id)
    };
    // WebSocket upgrades need `get` and, since 1.35, `create` on the subresource.
    let allowed = api.authorize(&caller, &info, &req, "get").and_then(|reason| {
        api.authorize(&caller, &info, &req, "create")?;
        Ok(reason)
    });
    match allowed {
        Ok(reason) => rec.decision = Some((true, reason)),
        Err(e) => {
            rec.decision = Some((false, String::new()));
            return fail(&api, rec, e);
        }
    }
    let Some(pod) = api.store.get(&res::PODS, &info.ns, &info.name) else {
        return fail(&api, rec, ApiError::not_found(&res::PODS, &info.name));
    };
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["spec"]["ephemeralContainers"].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match req.q("container").filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => {
            let main: Vec<&Value> = pod["spec"]["containers"].as_array().into_iter().flatten().collect();
            if main.len() == 1 {
                main.first().and_then(|c| c["name"].as_str()).unwrap_or("").to_string()
            } else {
                let names: Vec<&str> = main.iter().filter_map(|c| c["name"].as_str()).collect();
                return fail(
                    &api,
                    rec,
                    ApiError::bad_request(format!(
                        "a container name must be specified for pod {}, choose one of: [{}]",
                        info.name,
                        names.join(" ")
                    )),
                );
            }
        }
    };
    if !containers.contains(&container) {
        return fail(
            &api,
            rec,
            ApiError::bad_request(format!("container {container} is not valid for pod {}", info.name)),
        );
    }
    let command = req.q_all("command");
    let is_exec = info.sub == "exec";
    if is_exec && command.is_empty() {
        return fail(&api, rec, ApiError::bad_request("you must specify at least 1 command"));
    }
    let Some(target) = api.kubelet.running_container(meta_uid(&pod), &container) else {
        return fail(
            &api,
            rec,
            ApiError::bad_request(format!(
            "container {container} is not running in pod {} (the test cluster cannot exec into a stopped container)",
            info.name
        )),
        );
    };
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let served: Vec<String> = api.exec_protocols.lock().map(|p| p.clone()).unwrap_or_default();
    let Some(protocol) = PROTOCOLS
        .iter()
        .filter(|p| served.is_empty() || served.iter().any(|s| s == *p))
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
    else {
        return fail(&api, rec, ApiError::bad_request(format!(
            "unable to upgrade connection: none of the offered subprotocols {offered:?} is supported (want one of {PROTOCOLS:?})"
        )));
    };
    let Some(key) = headers.get("sec-websocket-key").map(|k| k.as_bytes().to_vec()) else {
        return fail(&api, rec, ApiError::bad_request("missing Sec-WebSocket-Key"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    rec.code = 101;
    api.audit.write(&rec, "ResponseStarted");
    let opts = Opts {
        stdin: req.q_bool("stdin"),
        stdout: req.q("stdout").is_none_or(|v| v == "true" || v == "1"),
        stderr: req.q_bool("stderr"),
        protocol,
    };
    let api2 = api.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            if is_exec {
                exec_session(&api2, ws, &target, &command, &opts).await;
            } else {
                attach_session(ws, &target, &opts).await;
            }
        }
        api2.audit.write(&rec, "ResponseComplete");
    });
    let mut r = Response::new(crate::server::full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", hyper::header::HeaderValue::from_static("websocket"));
    h.insert("connection", hyper::header::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    h.insert("sec-websocket-protocol", hyper::header::HeaderValue::from_static(protocol));
    r
}

fn meta_uid(pod: &Value) -> &str {
    pod["metadata"]["uid"].as_str().unwrap_or("")
}

struct Opts {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    protocol: &'static str,
}

impl Opts {
    fn status_json(&self) -> bool {
        self.protocol.starts_with("v4") || self.protocol.starts_with("v5")
    }
    fn first_channel(&self) -> u8 {
        if self.stdout {
            1
        } else if self.stderr {
            2
        } else {
            3
        }
    }
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// The exit status as the kubelet words it: v5 and v4 differ (recorded from a real kubelet).
fn exit_status(code: i32, protocol: &str, argv: &[String]) -> Value {
    let detail = if protocol.starts_with("v5") {
        format!("command terminated with exit code {code}")
    } else {
        format!("error executing command [{}], exit code {code}", argv.join(" "))
    };
    json!({"metadata": {}, "status": "Failure",
           "message": format!("command terminated with non-zero exit code: {detail}"),
           "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

fn internal_status(message: &str) -> Value {
    let inner = format!("Internal error occurred: {message}");
    json!({"metadata": {}, "status": "Failure", "message": format!("Internal error occurred: {inner}"),
           "reason": "InternalError", "details": {"causes": [{"message": inner}]}, "code": 500})
}

async fn finish(ws: &mut Ws, opts: &Opts, status: Value) {
    if opts.status_json() {
        let _ = ws.send(frame(3, status.to_string().as_bytes())).await;
    } else if status["status"] != "Success" {
        let _ = ws.send(frame(3, status["message"].as_str().unwrap_or("").as_bytes())).await;
    }
    let _ = ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    let _ = ws.flush().await;
}

async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<(u8, Bytes)>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((channel, Bytes::copy_from_slice(buf.get(..n).unwrap_or(&[])))).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn exec_session(api: &Api, mut ws: Ws, target: &crate::kubelet::Target, command: &[String], opts: &Opts) {
    let _ = ws.send(frame(opts.first_channel(), &[])).await;
    let cmd0 = command.first().cloned().unwrap_or_default();
    if cmd0 == "echo" && api.exec_echo_only.load(std::sync::atomic::Ordering::Relaxed) {
        // benchmark mode: everything but the container runtime
        let line = format!("{}\n", command.get(1..).unwrap_or_default().join(" "));
        if opts.stdout {
            let _ = ws.send(frame(1, line.as_bytes())).await;
        }
        finish(&mut ws, opts, success()).await;
        return;
    }
    if !crate::runtime::resolve_in_rootfs(&target.rootfs, &cmd0) {
        let msg = format!(
            "error executing command in container: failed to exec in container: failed to start exec \"{}\": OCI runtime exec failed: exec failed: unable to start container process: exec: \"{cmd0}\": executable file not found in $PATH: unknown",
            target.id
        );
        finish(&mut ws, opts, internal_status(&msg)).await;
        return;
    }
    let mut child = match api.kubelet.runc.exec(&target.id, command, opts.stdin) {
        Ok(c) => c,
        Err(e) => {
            finish(&mut ws, opts, internal_status(&format!("error executing command in container: {e}"))).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<(u8, Bytes)>(16);
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, if opts.stdout { 1 } else { 0 }, tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, if opts.stderr { 2 } else { 0 }, tx.clone())));
    }
    drop(tx);
    let mut stdin = child.stdin.take();
    let mut client_open = true;
    let mut outputs_open = true;
    let v5 = opts.protocol.starts_with("v5");
    while outputs_open {
        tokio::select! {
            m = rx.recv() => match m {
                Some((0, _)) => {}
                Some((ch, data)) => {
                    if client_open && ws.send(frame(ch, &data)).await.is_err() {
                        client_open = false;
                    }
                }
                None => outputs_open = false,
            },
            m = ws.next(), if client_open => match m {
                Some(Ok(Message::Binary(b))) => match b.split_first() {
                    Some((0, data)) => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(data).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Some((255, rest)) if v5 && rest.first() == Some(&0) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    client_open = false;
                    stdin = None;
                }
                _ => {}
            },
        }
    }
    drop(stdin);
    for p in pumps {
        let _ = p.await;
    }
    let status = match child.wait().await {
        Ok(st) if st.success() => success(),
        Ok(st) => exit_status(st.code().unwrap_or(137), opts.protocol, command),
        Err(e) => internal_status(&format!("error waiting for command: {e}")),
    };
    finish(&mut ws, opts, status).await;
}

async fn attach_session(mut ws: Ws, target: &crate::kubelet::Target, opts: &Opts) {
    let _ = ws.send(frame(opts.first_channel(), &[])).await;
    let mut out = target.output.subscribe();
    let v5 = opts.protocol.starts_with("v5");
    let mut stdin_open = opts.stdin;
    loop {
        tokio::select! {
            m = out.recv() => match m {
                Ok((stream, data)) => {
                    let ch = if stream == 1 { 1 } else { 2 };
                    if ((ch == 1 && opts.stdout) || (ch == 2 && opts.stderr)) && ws.send(frame(ch, &data)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => match b.split_first() {
                    Some((0, data)) if stdin_open => {
                        if let Some(tx) = &target.stdin {
                            let _ = tx.send(Bytes::copy_from_slice(data)).await;
                        }
                    }
                    Some((255, rest)) if v5 && rest.first() == Some(&0) => stdin_open = false,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
    finish(&mut ws, opts, success()).await;
}
