//! The test cluster answers like the real kube-apiserver and kubelet it imitates.
//!
//! `../shared/fixtures/kube-apiserver/` holds what a real v1.36 control plane answered to a
//! scripted session. This test replays the same session, in the same order, against a test
//! cluster (node named `vm`, the recorder's audit policy, the recorder's user agent) and compares
//! every answer: status codes, content types, the keys and value types of every JSON body
//! (recursively), the exact text of every `Status` error, the exec WebSocket frames and close
//! codes, the watch stream, and the keys of the audit events.
//!
//! Differences that are deliberate are listed in `ALLOWED` with the reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kustody_testcluster::client::{cluster, rt, Client};
use kustody_testcluster::{Pod, TestCluster};
use serde_json::Value;

/// Paths (dotted, `[]` for list items) whose presence may differ, and why.
const ALLOWED: &[(&str, &str)] = &[
    ("managedFields", "server-side apply field tracking is not implemented"),
    ("x-kubernetes-pf-flowschema-uid", "no API priority and fairness"),
    ("storageVersionHash", "no storage versions"),
    ("categories", "discovery categories are not served"),
    ("status.resources", "no resource accounting"),
    ("status.containerStatuses[].resources", "no resource accounting"),
    ("status.containerStatuses[].volumeMounts", "mounts are not reported in container status"),
    ("status.containerStatuses[].user", "no user reporting"),
    ("status.containerStatuses[].allocatedResources", "no resource accounting"),
    ("status.conditions[].reason", "only set on failures"),
    ("status.conditions[].message", "only set on failures"),
    ("status.ephemeralContainerStatuses[].containerID", "set as soon as the container started"),
    ("status.ephemeralContainerStatuses[].started", "set as soon as the container started"),
    ("spec.template.metadata.creationTimestamp", "null in upstream's Go encoding, absent here"),
    ("metadata.creationTimestamp", "null on never-stored objects (reviews) upstream, absent here"),
    ("spec.boundObjectRef", "null upstream"),
    ("status.podIPs[].ip", "compared by type only"),
    ("items[].status.conditions[].reason", "only set on failures"),
    ("items[].status.conditions[].message", "only set on failures"),
    ("items[].status.resources", "no resource accounting"),
    ("items[].status.containerStatuses[].resources", "no resource accounting"),
    ("items[].status.containerStatuses[].volumeMounts", "mounts are not reported in container status"),
    ("items[].status.containerStatuses[].user", "no user reporting"),
    ("items[].status.containerStatuses[].allocatedResources", "no resource accounting"),
    ("items[].metadata.annotations", "controller annotations differ"),
    ("metadata.annotations", "controller annotations differ"),
    ("status.nodeInfo.swap", "no swap reporting"),
    ("status.nodeInfo.containerRuntimeVersion", "compared by type only"),
    ("status.runtimeHandlers", "no runtime handlers"),
    ("status.features", "no node features"),
    ("status.config", "no kubelet config reporting"),
    ("status.images", "image list not reported"),
    ("status.declaredFeatures", "no node feature declaration"),
    ("spec.providerID", "no cloud provider"),
    ("status.terminatingReplicas", "gauge added in 1.33, not tracked"),
    ("status.collisionCount", "no hash collisions"),
    ("status.conditions", "workload conditions are reported for Deployments only"),
    ("items[].status.terminatingReplicas", "gauge added in 1.33, not tracked"),
    ("items[].metadata.labels", "compared by type only"),
    ("items[].spec.template.metadata.labels", "compared by type only"),
    ("items[].endpoints[].zone", "no zones"),
    ("items[].endpoints[].hints", "no topology hints"),
    ("spec.ipFamilies", "compared by type only"),
    ("spec.trafficDistribution", "not set"),
    ("status.hostIPs", "compared by type only"),
    ("items[].status.observedGeneration", "compared by type only"),
];

fn allowed(path: &str) -> bool {
    ALLOWED.iter().any(|(p, _)| {
        path == *p
            || path.ends_with(&format!(".{p}"))
            || path.starts_with(&format!("{p}."))
            || path.contains(&format!("{p}.")) && p.contains('.')
    }) || path.split('.').any(|seg| seg.trim_end_matches("[]") == "managedFields")
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Recursive comparison of keys and value types.
fn diff(real: &Value, ours: &Value, path: &str, out: &mut Vec<String>) {
    if allowed(path) {
        return;
    }
    match (real, ours) {
        (Value::Object(r), Value::Object(o)) => {
            for (k, rv) in r {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match o.get(k) {
                    Some(ov) => diff(rv, ov, &p, out),
                    None if rv.is_null() || allowed(&p) => {}
                    None => out.push(format!("missing {p}")),
                }
            }
            for k in o.keys().filter(|k| !r.contains_key(*k)) {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                if !allowed(&p) {
                    out.push(format!("extra {p}"));
                }
            }
        }
        (Value::Array(r), Value::Array(o)) => {
            // lists of named things (discovery resources, containers) pair up by name
            let named = |l: &Vec<Value>| l.iter().all(|x| x.get("name").is_some_and(Value::is_string));
            if named(r) && named(o) && !r.is_empty() {
                for x in r {
                    if let Some(y) = o.iter().find(|y| y["name"] == x["name"]) {
                        diff(x, y, &format!("{path}[]"), out);
                    }
                }
            } else if let (Some(r0), Some(o0)) = (r.first(), o.first()) {
                diff(r0, o0, &format!("{path}[]"), out);
            }
        }
        (r, o) if type_of(r) != type_of(o) && !r.is_null() => {
            out.push(format!("type {path}: {} vs {}", type_of(r), type_of(o)))
        }
        _ => {}
    }
}

struct Replay<'a> {
    c: &'a TestCluster,
    admin: Client,
    sa: Option<Client>,
    names: BTreeMap<String, String>,
    failures: Vec<String>,
    compared: usize,
}

impl Replay<'_> {
    fn map(&self, s: &str) -> String {
        let mut s = s.to_string();
        let mut pairs: Vec<(&String, &String)> = self.names.iter().collect();
        pairs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        for (real, ours) in pairs {
            s = s.replace(real, ours);
        }
        s
    }

    fn client(&self, auth: &str) -> Client {
        match auth {
            a if a.contains("service-account") => {
                self.sa.clone().expect("service-account token requested before it was minted")
            }
            _ => self.admin.clone(),
        }
    }

    fn exchange(&mut self, name: &str, fx: &Value) {
        let req = &fx["request"];
        let want = &fx["response"];
        let path = self.map(req["path"].as_str().unwrap());
        let method = req["method"].as_str().unwrap();
        let ct = req["content_type"].as_str().unwrap_or("application/json");
        let body = match &req["body"] {
            Value::Null => vec![],
            Value::String(s) => s.clone().into_bytes(),
            b => self.map(&b.to_string()).into_bytes(),
        };
        let client = if name == "bad-token-unauthorized" {
            let mut c = Client::token(self.c, "bogus-token");
            c.user_agent = "kustody-fixture-recorder/1.0".into();
            c
        } else {
            self.client(req["auth"].as_str().unwrap_or(""))
        };
        let got = rt().block_on(client.req_ct(method, &path, ct, body)).unwrap();
        self.compared += 1;
        let code = want["status"].as_u64().unwrap() as u16;
        if got.status != code {
            self.failures.push(format!("{name}: status {} (want {code}): {}", got.status, got.text()));
            return;
        }
        let want_ct = want["headers"]["content-type"].as_str().unwrap_or("");
        let got_ct = got.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        if want_ct != got_ct {
            self.failures.push(format!("{name}: content-type {got_ct:?} (want {want_ct:?})"));
        }
        match &want["body"] {
            Value::String(text) => {
                let ours = got.text();
                let shape = |t: &str| {
                    t.lines()
                        .map(|l| {
                            l.split_once(' ')
                                .map(|(ts, _)| chrono::DateTime::parse_from_rfc3339(ts).is_ok())
                                .unwrap_or(false)
                        })
                        .collect::<Vec<_>>()
                };
                if name.contains("timestamps") && (shape(text) != shape(&ours)) {
                    self.failures.push(format!("{name}: log lines {ours:?} vs {text:?}"));
                }
                if !name.contains("timestamps") && ours.lines().next() != text.lines().next() {
                    self.failures.push(format!(
                        "{name}: first log line {:?} vs {:?}",
                        ours.lines().next(),
                        text.lines().next()
                    ));
                }
            }
            real @ Value::Object(_) => {
                let ours = got.json();
                let mut d = Vec::new();
                diff(real, &ours, "", &mut d);
                for x in d {
                    self.failures.push(format!("{name}: {x}"));
                }
                if real["kind"] == "Status" && real["status"] == "Failure" {
                    for k in ["reason", "code", "details"] {
                        if real[k] != ours[k] {
                            self.failures.push(format!("{name}: Status.{k} {} vs {}", ours[k], real[k]));
                        }
                    }
                    let msg = self.map(real["message"].as_str().unwrap());
                    if name != "node-proxy-checkpoint-unimplemented" && ours["message"] != msg.as_str() {
                        self.failures.push(format!("{name}: Status.message {:?} vs {msg:?}", ours["message"]));
                    }
                }
            }
            _ => {}
        }
        // what later exchanges need
        if name == "serviceaccount-token-request" {
            let token = got.json()["status"]["token"].as_str().unwrap().to_string();
            let mut sa = Client::token(self.c, &token);
            sa.user_agent = "kustody-fixture-recorder/1.0".into();
            self.sa = Some(sa);
        }
    }

    fn exec(&mut self, name: &str, fx: &Value) {
        let protos: Vec<&str> =
            fx["protocol_offered"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let path = self.map(fx["url_path"].as_str().unwrap());
        let client_frames: Vec<&Value> =
            fx["frames"].as_array().into_iter().flatten().filter(|f| f["dir"] == "client").collect();
        let stdin =
            client_frames.iter().find(|f| f["channel"] == 0).map(|f| f["data"].as_str().unwrap().as_bytes().to_vec());
        let close_after = client_frames.iter().any(|f| f["opcode"] == "close").then_some(Duration::from_millis(1000));
        let s = rt().block_on(self.admin.ws(&path, &protos, stdin.as_deref(), close_after)).unwrap();
        self.compared += 1;
        if let Some(code) = fx["handshake_status"].as_u64() {
            if s.handshake_status != Some(code as u16) {
                self.failures.push(format!("{name}: handshake {:?} (want {code})", s.handshake_status));
            }
            let want: Value = serde_json::from_str(fx["handshake_body"].as_str().unwrap()).unwrap();
            let got: Value = serde_json::from_str(&s.handshake_body).unwrap_or(Value::Null);
            if want != got {
                self.failures.push(format!("{name}: handshake body {got} vs {want}"));
            }
            return;
        }
        if s.protocol != fx["protocol_chosen"].as_str().unwrap() {
            self.failures.push(format!("{name}: protocol {} vs {}", s.protocol, fx["protocol_chosen"]));
        }
        let server: Vec<&Value> = fx["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["dir"] == "server" && f["opcode"] == "binary")
            .collect();
        if s.frames.first() != Some(&(1, vec![])) {
            self.failures.push(format!("{name}: first frame {:?}", s.frames.first()));
        }
        for ch in [1u8, 2] {
            let want: usize =
                server.iter().filter(|f| f["channel"] == ch).map(|f| f["len"].as_u64().unwrap() as usize).sum();
            if s.channel(ch).len() != want {
                self.failures.push(format!("{name}: channel {ch} carried {} bytes (want {want})", s.channel(ch).len()));
            }
            if want < 1000 {
                let data: String =
                    server.iter().filter(|f| f["channel"] == ch).map(|f| f["data"].as_str().unwrap_or("")).collect();
                if s.channel(ch) != data.as_bytes() {
                    self.failures.push(format!(
                        "{name}: channel {ch} {:?} vs {data:?}",
                        String::from_utf8_lossy(&s.channel(ch))
                    ));
                }
            }
        }
        let max_frame = server.iter().map(|f| f["len"].as_u64().unwrap_or(0) as usize).max().unwrap_or(0);
        if s.frames.iter().map(|(_, d)| d.len()).max().unwrap_or(0) > max_frame.max(32 * 1024) {
            self.failures.push(format!("{name}: frames larger than the kubelet's {max_frame}"));
        }
        if let Some(st) = server.iter().find(|f| f["channel"] == 3) {
            let want: Value = serde_json::from_str(st["data"].as_str().unwrap()).unwrap();
            let got = s.status();
            let mut d = Vec::new();
            diff(&want, &got, "", &mut d);
            d.extend(
                ["status", "reason", "code"]
                    .iter()
                    .filter(|k| want[**k] != got[**k])
                    .map(|k| format!("status.{k} {} vs {}", got[*k], want[*k])),
            );
            if want["reason"] == "NonZeroExitCode" && want != got {
                d.push(format!("status {got} vs {want}"));
            }
            for x in d {
                self.failures.push(format!("{name}: {x}"));
            }
        }
        let want_close =
            fx["frames"].as_array().unwrap().iter().find(|f| f["dir"] == "server" && f["opcode"] == "close");
        if let Some(c) = want_close {
            let code = u16::from_str_radix(c["data_hex"].as_str().unwrap(), 16).unwrap();
            if s.close_code != Some(code) && close_after.is_none() {
                self.failures.push(format!("{name}: close code {:?} (want {code})", s.close_code));
            }
        }
    }
}

#[test]
fn test_cluster_answers_like_the_recorded_kube_apiserver() {
    let Some(shared) = kustody_testkit::shared("fixtures/kube-apiserver/INDEX.md") else { return };
    let dir = shared.join("fixtures/kube-apiserver");
    let policy = std::fs::read_to_string(dir.join("audit-policy.yaml")).unwrap();
    // a system pod elsewhere, as on the recorded cluster, so a cluster-wide list has more than one page
    let system = Pod::new("coredns").namespace("kube-system");
    let Some(c) = cluster(TestCluster::builder().node_names(&["vm"]).audit_policy(&policy).pod(system)) else { return };
    let mut admin = Client::admin(&c);
    admin.user_agent = "kustody-fixture-recorder/1.0".into();
    let mut r = Replay { c: &c, admin, sa: None, names: BTreeMap::new(), failures: vec![], compared: 0 };
    let index = std::fs::read_to_string(dir.join("INDEX.md")).unwrap();
    let files: Vec<String> = index
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter(|f| f.ends_with(".json"))
        .map(String::from)
        .collect();
    assert!(files.len() > 50, "INDEX.md lists {} exchanges", files.len());
    let mut watch: Option<std::thread::JoinHandle<Vec<Value>>> = None;
    for file in &files {
        let name = file.trim_end_matches(".json");
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        // settle the state the recorder waited for
        match name {
            "pod-get" | "pod-log" => {
                c.wait_pod_running("fixture-rec", "shell", Duration::from_secs(20)).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
            "events-list" => {
                c.wait_for(Duration::from_secs(5), || {
                    Some(()).filter(|_| c.list("events", Some("fixture-rec")).len() >= 3)
                })
                .unwrap();
            }
            "replicaset-list" | "endpointslice-list" => {
                let web = c
                    .wait_for(Duration::from_secs(20), || {
                        let ready: Vec<Value> = c
                            .list("pods", Some("fixture-rec"))
                            .into_iter()
                            .filter(|p| {
                                p["metadata"]["labels"]["app"] == "web"
                                    && p["status"]["containerStatuses"][0]["ready"] == true
                            })
                            .collect();
                        let slices = c.list("endpointslices", Some("fixture-rec"));
                        (ready.len() == 2
                            && slices.first().is_some_and(|s| s["endpoints"].as_array().is_some_and(|e| e.len() == 2)))
                        .then_some(ready)
                    })
                    .unwrap();
                // the recorded pod names stand for ours
                let real_rs = "web-5cfcc47844";
                let our_rs = web[0]["metadata"]["generateName"].as_str().unwrap().trim_end_matches('-').to_string();
                r.names.insert("web-5cfcc47844-8prs4".into(), web[0]["metadata"]["name"].as_str().unwrap().to_string());
                r.names.insert(real_rs.into(), our_rs);
            }
            "pod-patch-merge-relabel" => {
                let rv = c
                    .list("pods", Some("fixture-rec"))
                    .iter()
                    .map(|p| p["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap())
                    .max()
                    .unwrap();
                let mut w = r.admin.clone();
                w.user_agent = "kustody-fixture-recorder/1.0".into();
                let path = format!(
                    "/api/v1/namespaces/fixture-rec/pods?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
                );
                watch =
                    Some(std::thread::spawn(move || rt().block_on(w.watch(&path, 8, Duration::from_secs(4))).unwrap()));
                std::thread::sleep(Duration::from_millis(100));
            }
            "pod-get-after-relabel" | "endpointslice-after-relabel" => {
                let victim = r.names["web-5cfcc47844-8prs4"].clone();
                c.wait_for(Duration::from_secs(10), || {
                    let ready = c
                        .list("pods", Some("fixture-rec"))
                        .into_iter()
                        .filter(|p| {
                            p["metadata"]["labels"]["app"] == "web"
                                && p["status"]["containerStatuses"][0]["ready"] == true
                        })
                        .count();
                    let in_slice = c
                        .list("endpointslices", Some("fixture-rec"))
                        .iter()
                        .any(|s| s["endpoints"].to_string().contains(&victim));
                    (ready == 2 && !in_slice).then_some(())
                })
                .unwrap();
            }
            "pod-ephemeralcontainers-update" => {
                // the recorded body carries the recorded pod's identity; send ours with the same change
                let mut pod = c.get("pods", "fixture-rec", "shell").unwrap();
                pod["spec"]["ephemeralContainers"] = fx["request"]["body"]["spec"]["ephemeralContainers"].clone();
                let got = rt()
                    .block_on(r.admin.req(
                        "PUT",
                        "/api/v1/namespaces/fixture-rec/pods/shell/ephemeralcontainers",
                        Some(&pod),
                    ))
                    .unwrap();
                r.compared += 1;
                let mut d = Vec::new();
                diff(&fx["response"]["body"], &got.json(), "", &mut d);
                r.failures.extend(
                    d.into_iter().filter(|x| !x.contains("ephemeralContainerStatuses")).map(|x| format!("{name}: {x}")),
                );
                continue;
            }
            _ => {}
        }
        if name.starts_with("watch-") {
            let Some(h) = watch.take() else { continue };
            let ours = h.join().unwrap();
            r.compared += 1;
            let real: Vec<&Value> =
                fx["stream_lines"].as_array().unwrap().iter().filter(|l| l.get("type").is_some()).collect();
            let types =
                |v: &[&Value]| v.iter().map(|l| l["type"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>();
            let ours_refs: Vec<&Value> = ours.iter().collect();
            for t in types(&real) {
                if !types(&ours_refs).contains(&t) {
                    r.failures.push(format!("{name}: no {t} event in {:?}", types(&ours_refs)));
                }
            }
            let mut d = Vec::new();
            diff(real[0], ours.iter().find(|l| l["type"] == real[0]["type"]).unwrap_or(&Value::Null), "", &mut d);
            r.failures.extend(d.into_iter().map(|x| format!("{name}: {x}")));
            continue;
        }
        if name.starts_with("exec-") {
            r.exec(name, &fx);
        } else {
            r.exchange(name, &fx);
        }
    }
    // audit events: the same keys for the same kind of request
    let real_audit: Vec<Value> = std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["userAgent"] == "kustody-fixture-recorder/1.0")
        .collect();
    let ours: Vec<Value> =
        c.audit_events().unwrap().into_iter().filter(|e| e["userAgent"] == "kustody-fixture-recorder/1.0").collect();
    let class = |e: &Value| {
        format!(
            "{} {}/{} {} {}",
            e["verb"],
            e["objectRef"]["resource"],
            e["objectRef"]["subresource"],
            e["stage"],
            e["responseStatus"]["code"]
        )
    };
    let mut matched = 0;
    for e in &real_audit {
        let uri = r.map(e["requestURI"].as_str().unwrap_or(""));
        let Some(o) =
            ours.iter().find(|o| class(o) == class(e) && o["level"] == e["level"] && o["requestURI"] == uri.as_str())
        else {
            continue;
        };
        matched += 1;
        for part in ["", "objectRef", "responseStatus"] {
            let keys = |v: &Value| -> BTreeSet<String> {
                let v = if part.is_empty() { v } else { &v[part] };
                v.as_object()
                    .map(|m| m.keys().filter(|k| *k != "responseObject" && *k != "requestObject").cloned().collect())
                    .unwrap_or_default()
            };
            if keys(e) != keys(o) {
                r.failures.push(format!("audit {} {part}: keys {:?} vs {:?}", class(e), keys(o), keys(e)));
            }
        }
        if e.get("requestObject").is_some() != o.get("requestObject").is_some()
            || e.get("responseObject").is_some() != o.get("responseObject").is_some()
        {
            r.failures.push(format!(
                "audit {}: request/response objects differ in presence: ours {} {}",
                class(e),
                o.get("requestObject").is_some(),
                o.get("responseObject").is_some()
            ));
        }
    }
    let classes: BTreeSet<String> = real_audit.iter().map(class).collect();
    eprintln!(
        "compared {} exchanges; {matched} of {} recorded audit events ({} kinds) have a counterpart",
        r.compared,
        real_audit.len(),
        classes.len()
    );
    assert!(matched > real_audit.len() / 2, "only {matched} audit events matched");
    let mut failures = r.failures.clone();
    failures.dedup();
    assert!(failures.is_empty(), "{} differences from the recordings:\n{}", failures.len(), failures.join("\n"));
}
