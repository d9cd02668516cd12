//! Field extraction from an [`Event`], following the k8saudit plugin's semantics:
//! strings are returned as their text, every other JSON value as compact JSON text; an absent
//! path, or an empty list, is "not extracted" (`None`), which makes every comparison false.
//!
//! Deliberate deviations from the plugin, each documented in docs/FALCO-COMPAT.md:
//! `ka.sourceips` reads the event's `sourceIPs` (the plugin reads a wrong path and is always
//! empty), `add_capabilities` yields one element per capability, `eff_run_as_*` read
//! `securityContext`, and fields stay available on events without an `auditID`.

use std::borrow::Cow;

use kustody_model::body::{compact_text, Val as J};
use kustody_model::Event;

use crate::fields::{Arg, CAttr, Family, Field, FieldRef};

/// An extracted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val<'e> {
    One(Cow<'e, str>),
    List(Vec<Cow<'e, str>>),
}

impl Val<'_> {
    /// Text form used in outputs: lists as `(a,b)`.
    pub fn render(&self) -> String {
        match self {
            Val::One(s) => s.to_string(),
            Val::List(items) => {
                let mut s = String::from("(");
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(it);
                }
                s.push(')');
                s
            }
        }
    }
}

fn one<'e>(s: Option<&'e str>) -> Option<Val<'e>> {
    s.map(|s| Val::One(Cow::Borrowed(s)))
}

fn list<'e>(items: Vec<Cow<'e, str>>, f: &FieldRef) -> Option<Val<'e>> {
    if items.is_empty() {
        return None;
    }
    match f.arg {
        // An index keeps the field list-typed: the list of that one element.
        Arg::Index(n) => items.into_iter().nth(n).map(|v| Val::List(vec![v])),
        _ => Some(Val::List(items)),
    }
}

/// The value at `path` in `requestObject` (read through the event's body index, no DOM).
fn req<'e>(ev: &'e Event<'_>, path: &[&str]) -> Option<J<'e, 'e>> {
    ev.request_body()?.at(path)
}

fn req_str<'e>(ev: &'e Event<'_>, path: &[&str]) -> Option<Val<'e>> {
    req(ev, path).map(|v| Val::One(v.text()))
}

/// `metadata.name` of `responseObject`: one walk that stops at the value.
fn resp_name<'e>(ev: &'e Event<'_>) -> Option<Val<'e>> {
    kustody_model::rawjson::pointer(ev.response_object_raw()?, &["metadata", "name"]).map(|r| Val::One(compact_text(r)))
}

/// Extracts `f` from `ev`; `None` when the field cannot be extracted.
pub fn extract<'e>(ev: &'e Event<'_>, f: &FieldRef) -> Option<Val<'e>> {
    use Field::*;
    match f.field {
        AuditId => one(ev.audit_id()),
        Stage => one(ev.stage()),
        AuthDecision => one(ev.annotation("authorization.k8s.io/decision")),
        AuthReason => one(ev.annotation("authorization.k8s.io/reason")),
        AuthOpenshiftDecision => one(ev.annotation("authentication.openshift.io/decision")),
        AuthOpenshiftUsername => one(ev.annotation("authentication.openshift.io/username")),
        ValidationsAdmissionPolicyFailure => {
            one(ev.annotation("validation.policy.admission.k8s.io/validation_failure"))
        }
        SecurityPodViolations => one(ev.annotation("pod-security.kubernetes.io/audit-violations")),
        ClusterName => one(ev.annotation("cluster_name")),
        UserName => one(ev.user().and_then(|u| u.username.as_deref())),
        UserGroups => {
            let groups = ev.user_groups()?;
            list(groups.iter().map(|g| Cow::Borrowed(g.as_ref())).collect(), f)
        }
        ImpUserName => one(ev.impersonated_user().and_then(|u| u.username.as_deref())),
        Verb => one(ev.verb()),
        Uri => one(ev.request_uri()),
        UriParam => {
            let Arg::Key(k) = &f.arg else { return None };
            uri_param(ev.request_uri()?, k).map(|v| Val::One(Cow::Owned(v)))
        }
        UriParams => {
            let Arg::Key(k) = &f.arg else { return None };
            let all = kustody_model::uri::all(ev.request_uri()?, k);
            (!all.is_empty()).then(|| Val::One(Cow::Owned(all.join(" "))))
        }
        UserAgent => one(ev.user_agent()),
        SourceIps => list(ev.source_ips()?.iter().map(|s| Cow::Borrowed(s.as_ref())).collect(), f),
        TargetName => one(ev.object_ref().and_then(|o| o.name.as_deref())),
        TargetNamespace => one(ev.object_ref().and_then(|o| o.namespace.as_deref())),
        TargetResource => one(ev.object_ref().and_then(|o| o.resource.as_deref())),
        TargetSubresource => one(ev.object_ref().and_then(|o| o.subresource.as_deref())),
        TargetPodName => {
            let o = ev.object_ref()?;
            if o.resource.as_deref() != Some("pods") || o.subresource.as_deref().is_some_and(|s| !s.is_empty()) {
                return None;
            }
            resp_name(ev)
        }
        RespName => resp_name(ev),
        ResponseCode => ev.response_status()?.code.map(|c| Val::One(Cow::Owned(c.to_string()))),
        ResponseReason => one(ev.response_status().and_then(|s| s.reason.as_deref())),
        ReqBindingSubjects => {
            let subjects = req(ev, &["subjects"])?.items()?;
            list(subjects.map(|s| s.json()).collect(), f)
        }
        ReqBindingRole => req_str(ev, &["roleRef", "name"]),
        // Deprecated in the plugin, which always answers "true".
        ReqBindingSubjectHasName => Some(Val::One(Cow::Borrowed("true"))),
        ReqBindingUserNames => subjects_of_kind(ev, "User", false, f),
        ReqBindingServiceAccountNames => subjects_of_kind(ev, "ServiceAccount", false, f),
        ReqBindingServiceAccountNsNames => subjects_of_kind(ev, "ServiceAccount", true, f),
        ReqBindingGroupNames => subjects_of_kind(ev, "Group", false, f),
        ReqConfigmapName => one(ev.object_ref().and_then(|o| o.name.as_deref())),
        // The plugin compacts `data` to JSON text; audit logs are compact JSON already, so the
        // raw text is the same bytes, without a DOM of a possibly large body.
        ReqConfigmapObj => {
            kustody_model::rawjson::pointer(ev.request_object_raw()?, &["data"]).map(|r| Val::One(Cow::Borrowed(r)))
        }
        ReqContainerImage => {
            req_str(ev, &["spec", "containers", "0", "image"]).or_else(|| first_container(ev, "image"))
        }
        ReqContainerImageRepository => match first_container(ev, "image")? {
            Val::One(img) => Some(Val::One(Cow::Owned(image_repository(&img).to_owned()))),
            Val::List(_) => None,
        },
        ReqContainerPrivileged => {
            let mut containers = req(ev, &["spec", "containers"])?.items()?;
            let any = containers.any(|c| c.at(&["securityContext", "privileged"]).is_some_and(|p| p.is_true()));
            Some(Val::One(Cow::Borrowed(if any { "true" } else { "false" })))
        }
        ReqContainerHostNetwork | ReqPodHostNetwork => req_str(ev, &["spec", "hostNetwork"]),
        ReqPodHostIpc => req_str(ev, &["spec", "hostIPC"]),
        ReqPodHostPid => req_str(ev, &["spec", "hostPID"]),
        ReqPodRunAsUser => req_str(ev, &["spec", "securityContext", "runAsUser"]),
        ReqPodRunAsGroup => req_str(ev, &["spec", "securityContext", "runAsGroup"]),
        ReqPodFsGroup => req_str(ev, &["spec", "securityContext", "fsGroup"]),
        ReqPodSupplementalGroups => {
            let groups = req(ev, &["spec", "securityContext", "supplementalGroups"])?.items()?;
            list(groups.map(|g| g.text()).collect(), f)
        }
        ReqPodContainer(family, attr) => containers(req(ev, &["spec"])?, family, attr, f),
        PodSpecContainer(family, attr) => containers(pod_spec(ev)?, family, attr, f),
        PodSpecVolumesHostpath | PodSpecVolumesHostpathDirs => {
            let vols: Vec<J<'_, '_>> = pod_spec(ev)?.get("volumes")?.items()?.collect();
            let vols: &[J<'_, '_>] = match f.arg {
                Arg::Index(n) => vols.get(n..=n)?,
                _ => &vols,
            };
            let paths = vols.iter().filter_map(|v| v.at(&["hostPath", "path"])?.as_str()).map(|p| normalize_path(&p));
            let out: Vec<Cow<'_, str>> = if f.field == PodSpecVolumesHostpathDirs {
                paths.flat_map(|p| ancestors(&p)).map(Cow::Owned).collect()
            } else {
                paths.map(Cow::Owned).collect()
            };
            list(out, f)
        }
        PodSpecImageRegistries | PodSpecUnpinnedImages => {
            let spec = pod_spec(ev)?;
            let images: Vec<Cow<'_, str>> = ["containers", "initContainers", "ephemeralContainers"]
                .iter()
                .filter_map(|k| spec.get(k)?.items())
                .flatten()
                .filter_map(|c| c.get("image")?.as_str())
                .collect();
            let out: Vec<Cow<'_, str>> = if f.field == PodSpecImageRegistries {
                images.iter().map(|i| Cow::Owned(image_registry(i).to_owned())).collect()
            } else {
                images.into_iter().filter(|i| !i.contains("@sha256:")).collect()
            };
            if out.is_empty() {
                return None;
            }
            list(out, f)
        }
        PodSpecHostNetwork => pod_spec(ev)?.get("hostNetwork").map(|v| Val::One(v.text())),
        PodSpecHostPid => pod_spec(ev)?.get("hostPID").map(|v| Val::One(v.text())),
        PodSpecHostIpc => pod_spec(ev)?.get("hostIPC").map(|v| Val::One(v.text())),
        PodSpecServiceAccount => pod_spec(ev)?
            .get("serviceAccountName")
            .or_else(|| pod_spec(ev)?.get("serviceAccount"))
            .map(|v| Val::One(v.text())),
        ReqRoleRules => {
            let rules = req(ev, &["rules"])?.items()?;
            list(rules.map(|r| r.json()).collect(), f)
        }
        ReqRoleRulesApiGroups => role_rules(ev, "apiGroups", f),
        ReqRoleRulesNonResourceUrls => role_rules(ev, "nonResourceURLs", f),
        ReqRoleRulesVerbs => role_rules(ev, "verbs", f),
        ReqRoleRulesResources => role_rules(ev, "resources", f),
        ReqServiceType => req_str(ev, &["spec", "type"]),
        // The plugin yields the whole ports array as one compact-JSON element.
        ReqServicePorts => list(vec![req(ev, &["spec", "ports"])?.json()], f),
        ReqPodVolumesHostpath => volumes(ev, f, |v| v.at(&["hostPath", "path"]).map(|p| p.text())),
        ReqPodVolumesFlexvolumeDriver => volumes(ev, f, |v| v.at(&["flexVolume", "driver"]).map(|d| d.text())),
        ReqPodVolumesVolumeType => {
            let vols = req(ev, &["spec", "volumes"])?.items()?;
            let types =
                vols.filter_map(|o| o.keys()).flat_map(|keys| keys.into_iter().filter(|k| k != "name")).collect();
            list(types, f)
        }
        ReqVolumeHostpath => {
            let Arg::Key(want) = &f.arg else { return None };
            let mut vols = req(ev, &["spec", "volumes"])?.items()?;
            let hit = vols.any(|v| {
                v.at(&["hostPath", "path"]).and_then(|p| p.as_str()).is_some_and(|p| match want.strip_suffix('*') {
                    Some(prefix) => p.starts_with(prefix),
                    None => p == *want,
                })
            });
            Some(Val::One(Cow::Borrowed(if hit { "true" } else { "false" })))
        }
        JsonValue => {
            let Arg::Pointer(ptr) = &f.arg else {
                return None;
            };
            json_pointer(ev, ptr)
        }
        JsonObj => ev.whole().and_then(|v| serde_json::to_string_pretty(v).ok()).map(|s| Val::One(Cow::Owned(s))),
        JsonRawTime => ev.time_ns().map(|t| Val::One(Cow::Owned(t.to_string()))),
    }
}

fn first_container<'e>(ev: &'e Event<'_>, key: &str) -> Option<Val<'e>> {
    let c = req(ev, &["spec", "containers"])?.item(0)?;
    c.get(key).map(|v| Val::One(v.text()))
}

/// The pod spec of the request object, wherever the workload keeps it: `spec` of a Pod,
/// `spec.template.spec` of Deployments, DaemonSets, StatefulSets, ReplicaSets, Jobs and
/// ReplicationControllers (also in their patches), `spec.jobTemplate.spec.template.spec` of
/// CronJobs.
fn pod_spec<'e>(ev: &'e Event<'_>) -> Option<J<'e, 'e>> {
    let spec = req(ev, &["spec"])?;
    spec.at(&["template", "spec"]).or_else(|| spec.at(&["jobTemplate", "spec", "template", "spec"])).or_else(|| {
        (spec.get("containers").is_some() || spec.get("volumes").is_some() || spec.get("initContainers").is_some())
            .then_some(spec)
    })
}

/// The registry host of an image reference, as the container runtime resolves it: the first
/// path component when it looks like a host (has a `.` or `:`, or is `localhost`), else
/// `docker.io` (`nginx`, `library/nginx`, `bitnami/redis`).
pub fn image_registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `/etc/`, `//etc`, `/etc/./` → `/etc`: hostPath spellings that name the same directory.
pub fn normalize_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A normalised path and every directory above it, except `/`: lets `intersects (/proc, /etc)`
/// catch `/proc/1/root` and `/etc/kubernetes`.
fn ancestors(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = p;
    while cur.len() > 1 {
        out.push(cur.to_owned());
        cur = match cur.rfind('/') {
            Some(0) | None => "/",
            Some(i) => cur.get(..i).unwrap_or("/"),
        };
    }
    if out.is_empty() {
        out.push("/".to_owned());
    }
    out
}

/// `image.repository`: the image cut at the first `:`, then at the first `@` (the plugin's rule,
/// which also cuts registry ports: `reg:5000/x` gives `reg`).
pub fn image_repository(image: &str) -> &str {
    let a = image.split(':').next().unwrap_or(image);
    a.split('@').next().unwrap_or(a)
}

/// A per-container field of the pod spec `spec`; `[n]` selects container n.
fn containers<'e>(spec: J<'e, 'e>, family: Family, attr: CAttr, f: &FieldRef) -> Option<Val<'e>> {
    let mut list_of = spec.get(family.json_key())?.items()?;
    match f.arg {
        Arg::Index(n) => {
            let vals = container_values(spec, std::iter::once(list_of.nth(n)?), attr);
            (!vals.is_empty()).then_some(Val::List(vals))
        }
        _ => list(container_values(spec, list_of, attr), f),
    }
}

/// `image.repository` of an image string, borrowed when the string is.
fn repository_of(image: Cow<'_, str>) -> Cow<'_, str> {
    match image {
        Cow::Borrowed(i) => Cow::Borrowed(image_repository(i)),
        Cow::Owned(i) => Cow::Owned(image_repository(&i).to_owned()),
    }
}

fn container_values<'e>(
    spec: J<'e, 'e>,
    containers: impl Iterator<Item = J<'e, 'e>>,
    attr: CAttr,
) -> Vec<Cow<'e, str>> {
    let sc = |c: J<'e, 'e>, key: &str| c.at(&["securityContext", key]).map(|v| v.text());
    let mut out = Vec::new();
    for c in containers {
        match attr {
            CAttr::Name => out.extend(c.get("name").map(|v| v.text())),
            CAttr::Image => out.extend(c.get("image").map(|v| v.text())),
            CAttr::ImageRepository => out.extend(c.get("image").and_then(|v| v.as_str()).map(repository_of)),
            CAttr::Command | CAttr::Args => {
                let key = if attr == CAttr::Command { "command" } else { "args" };
                if let Some(arr) = c.get(key).and_then(|v| v.items()) {
                    let words: Vec<Cow<'_, str>> = arr.map(|w| w.text()).collect();
                    out.push(Cow::Owned(words.join(" ")));
                }
            }
            CAttr::Privileged => out.extend(sc(c, "privileged")),
            CAttr::AllowPrivilegeEscalation => out.extend(sc(c, "allowPrivilegeEscalation")),
            CAttr::ReadOnlyFs => out.extend(sc(c, "readOnlyRootFilesystem")),
            CAttr::RunAsUser => out.extend(sc(c, "runAsUser")),
            CAttr::RunAsGroup => out.extend(sc(c, "runAsGroup")),
            CAttr::ProcMount => out.extend(sc(c, "procMount")),
            CAttr::EffRunAsUser | CAttr::EffRunAsGroup => {
                let key = if attr == CAttr::EffRunAsUser { "runAsUser" } else { "runAsGroup" };
                let v = sc(c, key)
                    .or_else(|| spec.at(&["securityContext", key]).map(|v| v.text()))
                    .unwrap_or(Cow::Borrowed("0"));
                out.push(v);
            }
            CAttr::AddCapabilities => {
                if let Some(arr) = c.at(&["securityContext", "capabilities", "add"]).and_then(|v| v.items()) {
                    out.extend(arr.map(|v| v.text()));
                }
            }
            CAttr::HostPort => {
                if let Some(ports) = c.get("ports").and_then(|v| v.items()) {
                    out.extend(
                        ports.filter_map(|p| p.get("hostPort").or_else(|| p.get("containerPort")).map(|v| v.text())),
                    );
                }
            }
        }
    }
    out
}

fn subjects_of_kind<'e>(ev: &'e Event<'_>, kind: &str, with_ns: bool, f: &FieldRef) -> Option<Val<'e>> {
    let subjects = req(ev, &["subjects"])?.items()?;
    let names = subjects
        .filter(|s| s.get("kind").and_then(|k| k.as_str()).is_some_and(|k| k == kind))
        .filter_map(|s| {
            let name = s.get("name").and_then(|n| n.as_str())?;
            if with_ns {
                let ns = s.get("namespace").and_then(|n| n.as_str()).unwrap_or_default();
                Some(Cow::Owned(format!("{ns}:{name}")))
            } else {
                Some(name)
            }
        })
        .collect();
    list(names, f)
}

fn role_rules<'e>(ev: &'e Event<'_>, key: &str, f: &FieldRef) -> Option<Val<'e>> {
    let mut rules = req(ev, &["rules"])?.items()?;
    let pick = |r: J<'e, 'e>| -> Vec<Cow<'e, str>> {
        r.get(key).and_then(|a| a.items()).map(|a| a.map(|v| v.text()).collect()).unwrap_or_default()
    };
    match f.arg {
        // `[n]` selects rule n's values (the plugin indexes the rules array).
        Arg::Index(n) => {
            let vals = pick(rules.nth(n)?);
            if vals.is_empty() {
                None
            } else {
                Some(Val::List(vals))
            }
        }
        _ => {
            let all: Vec<_> = rules.flat_map(pick).collect();
            if all.is_empty() {
                None
            } else {
                Some(Val::List(all))
            }
        }
    }
}

fn volumes<'e>(ev: &'e Event<'_>, f: &FieldRef, pick: impl Fn(J<'e, 'e>) -> Option<Cow<'e, str>>) -> Option<Val<'e>> {
    let mut vols = req(ev, &["spec", "volumes"])?.items()?;
    match f.arg {
        Arg::Index(n) => pick(vols.nth(n)?).map(|v| Val::List(vec![v])),
        _ => list(vols.filter_map(pick).collect(), f),
    }
}

/// `jevt.value[/pointer]`. Pointers into the typed top-level fields are answered without
/// building a DOM; bodies are parsed once per event; anything else parses the whole event.
fn json_pointer<'e>(ev: &'e Event<'_>, ptr: &[String]) -> Option<Val<'e>> {
    let first = ptr.first().map(String::as_str);
    let rest = ptr.get(1..).unwrap_or_default();
    let fast = |s: Option<&'e str>| s.map(|s| Val::One(Cow::Borrowed(s)));
    match (first, rest.len()) {
        (Some("stage"), 0) => return fast(ev.stage()),
        (Some("verb"), 0) => return fast(ev.verb()),
        (Some("auditID"), 0) => return fast(ev.audit_id()),
        (Some("requestURI"), 0) => return fast(ev.request_uri()),
        (Some("userAgent"), 0) => return fast(ev.user_agent()),
        (Some("level"), 0) => return fast(ev.level()),
        (Some("stageTimestamp"), 0) => return fast(ev.stage_timestamp()),
        (Some("requestReceivedTimestamp"), 0) => return fast(ev.request_received_timestamp()),
        (Some("user"), 1) if rest.first().is_some_and(|k| k == "username") => {
            return fast(ev.user().and_then(|u| u.username.as_deref()))
        }
        (Some("impersonatedUser"), 1) if rest.first().is_some_and(|k| k == "username") => {
            return fast(ev.impersonated_user().and_then(|u| u.username.as_deref()))
        }
        // Sigma's `responseStatus.code`: the typed number, as JSON text, without a scan.
        (Some("responseStatus"), 1) if rest.first().is_some_and(|k| k == "code") => {
            return ev.response_status()?.code.map(|c| Val::One(Cow::Owned(c.to_string())));
        }
        (Some("responseStatus"), 1) if rest.first().is_some_and(|k| k == "reason") => {
            return fast(ev.response_status().and_then(|r| r.reason.as_deref()))
        }
        (Some("objectRef"), 1) => {
            let o = ev.object_ref()?;
            let v = match rest.first().map(String::as_str) {
                Some("resource") => o.resource.as_deref(),
                Some("namespace") => o.namespace.as_deref(),
                Some("name") => o.name.as_deref(),
                Some("subresource") => o.subresource.as_deref(),
                Some("apiGroup") => o.api_group.as_deref(),
                Some("apiVersion") => o.api_version.as_deref(),
                _ => return raw_walk(ev.raw(), ptr),
            };
            return fast(v);
        }
        // One value deep in a body: walking the raw text beats building a DOM.
        // Always the raw text: the same answer whichever other fields were read before.
        (Some("requestObject"), _) => return raw_walk(ev.request_object_raw()?, rest),
        (Some("responseObject"), _) => return raw_walk(ev.response_object_raw()?, rest),
        _ => {}
    }
    raw_walk(ev.raw(), ptr)
}

fn raw_walk<'e>(raw: &'e str, ptr: &[String]) -> Option<Val<'e>> {
    kustody_model::rawjson::pointer(raw, ptr).and_then(kustody_model::rawjson::text).map(Val::One)
}

pub use kustody_model::uri::param as uri_param;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::resolve;

    fn ex(ev: &str, field: &str, arg: Option<&str>) -> Option<String> {
        let ev = Event::parse(ev).unwrap();
        let f = resolve(field, arg).unwrap();
        extract(&ev, &f).map(|v| v.render())
    }

    const POD: &str = r#"{"auditID":"1","verb":"create","objectRef":{"resource":"pods","namespace":"default","name":"p"},"requestObject":{"kind":"Pod","spec":{"hostPID":true,"securityContext":{"runAsUser":1000},"containers":[{"name":"a","image":"docker.io/evil/miner:1.0","command":["sh","-c"],"args":["id"],"securityContext":{"privileged":true,"capabilities":{"add":["SYS_ADMIN","NET_ADMIN"]}},"ports":[{"containerPort":80},{"containerPort":81,"hostPort":8081}]},{"name":"b","image":"nginx@sha256:abc"}],"volumes":[{"name":"root","hostPath":{"path":"/"}},{"name":"e","emptyDir":{}}]}},"responseObject":{"metadata":{"name":"p"}}}"#;

    #[test]
    fn pod_fields() {
        assert_eq!(
            ex(POD, "ka.req.pod.containers.image", None).as_deref(),
            Some("(docker.io/evil/miner:1.0,nginx@sha256:abc)")
        );
        assert_eq!(
            ex(POD, "ka.req.pod.containers.image.repository", None).as_deref(),
            Some("(docker.io/evil/miner,nginx)")
        );
        assert_eq!(ex(POD, "ka.req.pod.containers.privileged", None).as_deref(), Some("(true)"));
        assert_eq!(ex(POD, "ka.req.pod.containers.command", Some("0")).as_deref(), Some("(sh -c)"));
        assert_eq!(ex(POD, "ka.req.pod.containers.privileged", Some("1")), None);
        assert_eq!(ex(POD, "ka.req.pod.containers.image", Some("1")).as_deref(), Some("(nginx@sha256:abc)"));
        assert_eq!(ex(POD, "ka.req.pod.containers.add_capabilities", None).as_deref(), Some("(SYS_ADMIN,NET_ADMIN)"));
        assert_eq!(ex(POD, "ka.req.pod.containers.host_port", None).as_deref(), Some("(80,8081)"));
        assert_eq!(ex(POD, "ka.req.pod.containers.eff_run_as_user", None).as_deref(), Some("(1000,1000)"));
        assert_eq!(ex(POD, "ka.req.pod.host_pid", None).as_deref(), Some("true"));
        assert_eq!(ex(POD, "ka.req.pod.host_network", None), None);
        assert_eq!(ex(POD, "ka.req.pod.volumes.hostpath", None).as_deref(), Some("(/)"));
        assert_eq!(ex(POD, "ka.req.pod.volumes.volume_type", None).as_deref(), Some("(hostPath,emptyDir)"));
        assert_eq!(ex(POD, "ka.req.volume.hostpath", Some("/")).as_deref(), Some("true"));
        assert_eq!(ex(POD, "ka.req.volume.hostpath", Some("/etc*")).as_deref(), Some("false"));
        assert_eq!(ex(POD, "ka.req.container.privileged", None).as_deref(), Some("true"));
        assert_eq!(ex(POD, "ka.target.pod.name", None).as_deref(), Some("p"));
        assert_eq!(ex(POD, "ka.req.pod.initContainers.image", None), None);
        assert_eq!(ex(POD, "jevt.value", Some("/requestObject/spec/containers/1/name")).as_deref(), Some("b"));
        assert_eq!(ex(POD, "jevt.value", Some("/requestObject/spec/hostPID")).as_deref(), Some("true"));
        assert_eq!(ex(POD, "jevt.value", Some("/objectRef/namespace")).as_deref(), Some("default"));
        assert_eq!(
            ex(POD, "jevt.value", Some("/requestObject/spec/volumes/1")).as_deref(),
            Some(r#"{"name":"e","emptyDir":{}}"#)
        );
    }

    #[test]
    fn uri_params_are_decoded() {
        let uri = "/api/v1/namespaces/default/pods/p/exec?command=sh&command=-c&command=cat%20%2Fetc%2Fshadow&container=c&stdin=true";
        assert_eq!(uri_param(uri, "command").as_deref(), Some("sh"));
        assert_eq!(uri_param(uri, "container").as_deref(), Some("c"));
        assert_eq!(uri_param("/x?a=b+c%2", "a").as_deref(), Some("b c%2"));
        assert_eq!(uri_param("/x", "a"), None);
    }

    #[test]
    fn workload_pod_specs() {
        let ds = r#"{"auditID":"1","verb":"create","objectRef":{"resource":"daemonsets"},"requestObject":{"spec":{"template":{"spec":{"hostPID":true,"containers":[{"name":"a","image":"x"},{"name":"b","image":"y","securityContext":{"privileged":true}}],"volumes":[{"name":"e","emptyDir":{}},{"name":"a","hostPath":{"path":"/data"}},{"name":"r","hostPath":{"path":"/proc/1/root/"}}]}}}}}"#;
        assert_eq!(ex(ds, "kustody.podspec.containers.privileged", None).as_deref(), Some("(true)"));
        assert_eq!(ex(ds, "kustody.podspec.host_pid", None).as_deref(), Some("true"));
        assert_eq!(ex(ds, "kustody.podspec.volumes.hostpath", None).as_deref(), Some("(/data,/proc/1/root)"));
        assert_eq!(
            ex(ds, "kustody.podspec.volumes.hostpath_dirs", None).as_deref(),
            Some("(/data,/proc/1/root,/proc/1,/proc)")
        );
        assert_eq!(ex(ds, "ka.req.pod.containers.privileged", None), None, "upstream fields read only a Pod's spec");
        let cj = r#"{"auditID":"1","verb":"create","requestObject":{"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"x","securityContext":{"capabilities":{"add":["SYS_ADMIN"]}}}]}}}}}}}"#;
        assert_eq!(ex(cj, "kustody.podspec.containers.add_capabilities", None).as_deref(), Some("(SYS_ADMIN)"));
        assert_eq!(ex(POD, "kustody.podspec.volumes.hostpath_dirs", None).as_deref(), Some("(/)"));
        assert_eq!(normalize_path("//etc/./kubernetes/../"), "/etc");
    }

    #[test]
    fn bindings_and_rules() {
        let ev = r#"{"auditID":"1","verb":"create","requestObject":{"roleRef":{"name":"cluster-admin"},"subjects":[{"kind":"ServiceAccount","name":"sa","namespace":"ns"},{"kind":"User","name":"bob"}],"rules":[{"verbs":["get","list"],"resources":["pods"]},{"verbs":["*"],"resources":["secrets"]}]}}"#;
        assert_eq!(ex(ev, "ka.req.binding.role", None).as_deref(), Some("cluster-admin"));
        assert_eq!(ex(ev, "ka.req.binding.subjects.serviceaccount_ns_names", None).as_deref(), Some("(ns:sa)"));
        assert_eq!(ex(ev, "ka.req.binding.subjects.user_names", None).as_deref(), Some("(bob)"));
        assert_eq!(ex(ev, "ka.req.binding.subjects.group_names", None), None);
        assert_eq!(ex(ev, "ka.req.role.rules.verbs", None).as_deref(), Some("(get,list,*)"));
        assert_eq!(ex(ev, "ka.req.role.rules.verbs", Some("1")).as_deref(), Some("(*)"));
    }
}
