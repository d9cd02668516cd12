//! Benign traffic of the operators real clusters run, as their documented behaviour and RBAC
//! say they act, installed the way people install them: Helm releases whose service accounts
//! carry the release name as a prefix, and namespaces other than the charts' defaults.
//!
//! Modelled (each from its chart's RBAC and its controller's reconcile loop):
//!
//! * kube-prometheus-stack's Prometheus operator (release `kps`, namespace `monitoring`):
//!   watches and reads the secrets and configmaps its ServiceMonitors and Alertmanager configs
//!   point to in every namespace, rewrites the generated config secrets, updates StatefulSets;
//!   the chart's admission-webhook patch job sets the caBundle of its webhooks;
//! * cert-manager (release `certmgr`, namespace `cert-manager`): reads issuer secrets and
//!   renews certificate secrets in application namespaces; its cainjector patches CA bundles
//!   into webhook configurations;
//! * OPA Gatekeeper (`gatekeeper-system`): rotates its webhook certificate secret and updates
//!   its webhook configurations;
//! * Argo CD (release `argocd`, namespace `argo-cd`): reads cluster and repository secrets,
//!   lists and applies the resources it manages;
//! * Kyverno, external-secrets, Istio's istiod and Flux's kustomize-controller, more briefly.
//!
//! Every event is one a responder would not want to be paged for; the noise test runs the
//! built-in rules over it and counts what reaches WARNING.

use std::io::Write;

use crate::Rng;

/// What one operator does in one step: (username, user agent, verb, resource, namespace, name,
/// api group, subresource, response code).
struct Act {
    user: String,
    agent: &'static str,
    verb: &'static str,
    resource: &'static str,
    group: &'static str,
    namespace: Option<String>,
    name: Option<String>,
    code: u16,
}

const APP_NAMESPACES: &[&str] = &["shop", "payments", "search", "auth", "web", "batch", "data"];

fn sa(ns: &str, name: &str) -> String {
    format!("system:serviceaccount:{ns}:{name}")
}

fn pick(rng: &mut Rng, items: &[&'static str]) -> &'static str {
    rng.pick(items).copied().unwrap_or("")
}

/// The next benign operator action. Long on purpose: one arm per operator behaviour, a table
/// written as code, easier to check against each chart's RBAC side by side than split apart.
fn next_act(rng: &mut Rng) -> Act {
    let app = pick(rng, APP_NAMESPACES).to_owned();
    let act = |user: String, agent, verb, resource, group, namespace: Option<String>, name: Option<String>| Act {
        user,
        agent,
        verb,
        resource,
        group,
        namespace,
        name,
        code: 200,
    };
    match rng.below(100) {
        // kube-prometheus-stack operator: the bulk of the noise in real clusters
        0..=29 => {
            let user = sa("monitoring", "kps-kube-prometheus-stack-operator");
            let agent = "PrometheusOperator/0.75.0";
            match rng.below(6) {
                0 => act(user, agent, "watch", "secrets", "", None, None),
                1 => act(user, agent, "list", "secrets", "", Some(app), None),
                2 => act(
                    user,
                    agent,
                    "get",
                    "secrets",
                    "",
                    Some(app),
                    Some(format!("{}-basic-auth", pick(rng, &["metrics", "scrape", "remote-write"]))),
                ),
                3 => act(
                    user,
                    agent,
                    "update",
                    "secrets",
                    "",
                    Some("monitoring".into()),
                    Some("prometheus-kps-kube-prometheus-stack-prometheus".into()),
                ),
                4 => act(user, agent, "get", "configmaps", "", Some(app), Some("dashboards".into())),
                _ => act(
                    user,
                    agent,
                    "update",
                    "statefulsets",
                    "apps",
                    Some("monitoring".into()),
                    Some("prometheus-kps-kube-prometheus-stack-prometheus".into()),
                ),
            }
        }
        30..=33 => {
            let user = sa("monitoring", "kps-kube-prometheus-stack-admission");
            let kind = pick(rng, &["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]);
            act(
                user,
                "kube-webhook-certgen/1.3.0",
                "patch",
                kind,
                "admissionregistration.k8s.io",
                None,
                Some("kps-kube-prometheus-stack-admission".into()),
            )
        }
        // cert-manager
        34..=49 => {
            let user = sa("cert-manager", "certmgr-cert-manager");
            let agent = "cert-manager-certificates-issuing/v1.15.1";
            match rng.below(4) {
                0 => act(user, agent, "get", "secrets", "", Some(app), Some("tls-cert".into())),
                1 => act(user, agent, "update", "secrets", "", Some(app), Some("tls-cert".into())),
                2 => act(user, agent, "list", "secrets", "", None, None),
                _ => act(
                    user,
                    agent,
                    "get",
                    "secrets",
                    "",
                    Some("cert-manager".into()),
                    Some("letsencrypt-account-key".into()),
                ),
            }
        }
        50..=55 => {
            let user = sa("cert-manager", "certmgr-cert-manager-cainjector");
            let kind = pick(rng, &["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]);
            let name = pick(
                rng,
                &[
                    "certmgr-cert-manager-webhook",
                    "kps-kube-prometheus-stack-admission",
                    "istio-validator-istio-system",
                ],
            );
            act(
                user,
                "cert-manager-cainjector/v1.15.1",
                "update",
                kind,
                "admissionregistration.k8s.io",
                None,
                Some(name.into()),
            )
        }
        // Gatekeeper
        56..=63 => {
            let user = sa("gatekeeper-system", "gatekeeper-admin");
            let agent = "gatekeeper/v3.17.0";
            match rng.below(3) {
                0 => act(
                    user,
                    agent,
                    "update",
                    "validatingwebhookconfigurations",
                    "admissionregistration.k8s.io",
                    None,
                    Some("gatekeeper-validating-webhook-configuration".into()),
                ),
                1 => act(
                    user,
                    agent,
                    "update",
                    "mutatingwebhookconfigurations",
                    "admissionregistration.k8s.io",
                    None,
                    Some("gatekeeper-mutating-webhook-configuration".into()),
                ),
                _ => act(
                    user,
                    agent,
                    "get",
                    "secrets",
                    "",
                    Some("gatekeeper-system".into()),
                    Some("gatekeeper-webhook-server-cert".into()),
                ),
            }
        }
        // Argo CD in argo-cd, Helm release `argocd`
        64..=79 => {
            let user = sa(
                "argo-cd",
                pick(
                    rng,
                    &["argocd-argo-cd-application-controller", "argocd-argo-cd-server", "argocd-argo-cd-repo-server"],
                ),
            );
            let agent = "argocd-application-controller/v2.12.3";
            match rng.below(4) {
                0 => act(
                    user,
                    agent,
                    "get",
                    "secrets",
                    "",
                    Some("argo-cd".into()),
                    Some(format!("cluster-{}", pick(rng, &["prod", "stage"]))),
                ),
                1 => act(user, agent, "list", "secrets", "", Some("argo-cd".into()), None),
                2 => act(user, agent, "watch", "secrets", "", Some("argo-cd".into()), None),
                _ => act(user, agent, "patch", "deployments", "apps", Some(app), Some("web".into())),
            }
        }
        // Kyverno
        80..=85 => {
            let user = sa("kyverno", "kyverno-admission-controller");
            let agent = "kyverno/v1.12.5";
            match rng.below(2) {
                0 => act(
                    user,
                    agent,
                    "update",
                    "validatingwebhookconfigurations",
                    "admissionregistration.k8s.io",
                    None,
                    Some("kyverno-resource-validating-webhook-cfg".into()),
                ),
                _ => act(
                    user,
                    agent,
                    "get",
                    "secrets",
                    "",
                    Some("kyverno".into()),
                    Some("kyverno-svc.kyverno.svc.kyverno-tls-ca".into()),
                ),
            }
        }
        // external-secrets
        86..=91 => {
            let user = sa("external-secrets", "eso-external-secrets");
            let verb = pick(rng, &["get", "update", "list", "create"]);
            act(
                user,
                "external-secrets/v0.10.0",
                verb,
                "secrets",
                "",
                Some(app),
                (verb != "list").then(|| "db-credentials".into()),
            )
        }
        // istiod
        92..=95 => {
            let user = sa("istio-system", "istiod");
            match rng.below(2) {
                0 => act(
                    user,
                    "pilot-discovery/1.23.0",
                    "get",
                    "secrets",
                    "",
                    Some("istio-system".into()),
                    Some("cacerts".into()),
                ),
                _ => act(
                    user,
                    "pilot-discovery/1.23.0",
                    "patch",
                    "mutatingwebhookconfigurations",
                    "admissionregistration.k8s.io",
                    None,
                    Some("istio-sidecar-injector".into()),
                ),
            }
        }
        // Flux
        _ => {
            let user = sa("flux-system", "kustomize-controller");
            act(user, "kustomize-controller/v1.3.0", "get", "secrets", "", Some(app), Some("sops-age".into()))
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Writes `events` benign operator events as native audit JSON lines, one every 50 ms from
/// 2026-01-01T00:00:00Z, deterministic for a seed. Returns the bytes written.
pub fn write_operator_traffic(seed: u64, events: u64, out: &mut dyn Write) -> std::io::Result<u64> {
    write_operator_traffic_every(seed, events, 50, out)
}

/// [`write_operator_traffic`] with one event every `interval_ms` (weeks of traffic for the
/// live baseline).
pub fn write_operator_traffic_every(
    seed: u64,
    events: u64,
    interval_ms: u64,
    out: &mut dyn Write,
) -> std::io::Result<u64> {
    let mut rng = Rng::new(seed);
    let mut written = 0u64;
    let start = 1_767_225_600i64; // 2026-01-01T00:00:00Z
    for i in 0..events {
        let a = next_act(&mut rng);
        let ms = i as i64 * interval_ms as i64;
        let secs = start + ms / 1000;
        let time = kustody_model::time::format_rfc3339_nanos(secs * 1_000_000_000 + (ms % 1000) * 1_000_000);
        let path_ns = a.namespace.as_deref().map(|n| format!("/namespaces/{n}")).unwrap_or_default();
        let prefix = if a.group.is_empty() { "/api/v1".to_owned() } else { format!("/apis/{}/v1", a.group) };
        let name = a.name.as_deref().map(|n| format!("/{n}")).unwrap_or_default();
        let watch = if a.verb == "watch" { "?watch=true" } else { "" };
        let uri = format!("{prefix}{path_ns}/{}{name}{watch}", a.resource);
        let mut obj = format!(r#""resource":{},"apiVersion":"v1""#, json_str(a.resource));
        if !a.group.is_empty() {
            obj.push_str(&format!(r#","apiGroup":{}"#, json_str(a.group)));
        }
        if let Some(n) = &a.namespace {
            obj.push_str(&format!(r#","namespace":{}"#, json_str(n)));
        }
        if let Some(n) = &a.name {
            obj.push_str(&format!(r#","name":{}"#, json_str(n)));
        }
        let ip = format!("10.244.{}.{}", 1 + rng.below(3), 2 + rng.below(200));
        let line = format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":{},"stage":"ResponseComplete","requestURI":{},"verb":{},"user":{{"username":{},"groups":["system:serviceaccounts","system:authenticated"]}},"sourceIPs":[{}],"userAgent":{},"objectRef":{{{obj}}},"responseStatus":{{"metadata":{{}},"code":{}}},"requestReceivedTimestamp":{},"stageTimestamp":{},"annotations":{{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding"}}}}"#,
            json_str(&rng.uuid()),
            json_str(&uri),
            json_str(a.verb),
            json_str(&a.user),
            json_str(&ip),
            json_str(a.agent),
            a.code,
            json_str(&time),
            json_str(&time),
        );
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        written += line.len() as u64 + 1;
    }
    Ok(written)
}
