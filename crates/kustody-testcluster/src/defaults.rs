//! Defaulting and validation: the subset of kube-apiserver's that kustody's tests can observe.

use serde_json::{json, Value};

use crate::api::Api;
use crate::resources::{self as res, ResourceType};
use crate::status::{ApiError, Cause};
use crate::store::{meta_str, random_suffix};

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry(key).or_insert(v);
    }
}

/// Pod spec defaults (also applied to workload templates).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            set_default(c, "resources", json!({}));
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            let image = c["image"].as_str().unwrap_or("").to_string();
            let latest = !image.contains(':') || image.ends_with(":latest");
            set_default(
                c,
                "imagePullPolicy",
                json!(if latest && !image.contains('@') { "Always" } else { "IfNotPresent" }),
            );
        }
    }
}

/// Fill server-side defaults on create.
pub fn default_object(api: &Api, rt: &'static ResourceType, obj: &mut Value) {
    match rt.plural {
        "namespaces" => {
            let name = meta_str(obj, "name").to_string();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        "pods" => {
            default_pod_spec(&mut obj["spec"]);
            let sa = obj["spec"]["serviceAccountName"]
                .as_str()
                .or_else(|| obj["spec"]["serviceAccount"].as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string();
            obj["spec"]["serviceAccountName"] = json!(sa);
            obj["spec"]["serviceAccount"] = json!(sa);
            set_default(&mut obj["spec"], "enableServiceLinks", json!(true));
            set_default(&mut obj["spec"], "priority", json!(0));
            set_default(&mut obj["spec"], "preemptionPolicy", json!("PreemptLowerPriority"));
            set_default(
                &mut obj["spec"],
                "tolerations",
                json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                       {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
            );
            let automount = obj["spec"]["automountServiceAccountToken"].as_bool().unwrap_or(true);
            if automount {
                let vol = format!("kube-api-access-{}", random_suffix(5));
                let volume = json!({"name": vol, "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}});
                match obj["spec"]["volumes"].as_array_mut() {
                    Some(v) => v.push(volume),
                    None => obj["spec"]["volumes"] = json!([volume]),
                }
                for c in obj["spec"]["containers"].as_array_mut().into_iter().flatten() {
                    let m = json!({"name": vol, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
                    match c["volumeMounts"].as_array_mut() {
                        Some(v) => v.push(m),
                        None => c["volumeMounts"] = json!([m]),
                    }
                }
            }
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        "persistentvolumeclaims" => {
            // a default StorageClass with Immediate binding: bound at once to a new volume
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            set_default(spec, "volumeMode", json!("Filesystem"));
            set_default(spec, "storageClassName", json!("standard"));
            let volume = format!("pvc-{}", crate::store::new_uid());
            set_default(spec, "volumeName", json!(volume));
            let modes = spec["accessModes"].clone();
            let capacity = spec["resources"]["requests"]["storage"].clone();
            obj["status"] = json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": capacity}});
        }
        "services" => {
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            set_default(spec, "ipFamilies", json!(["IPv4"]));
            set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                let n = api.store.current_rv();
                let ip = format!("10.96.{}.{}", (n / 250) % 250, 1 + n % 250);
                spec["clusterIP"] = json!(ip);
                spec["clusterIPs"] = json!([ip]);
            }
            let node_port = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
            let mut next = 30000 + (api.store.current_rv() % 2000) as i64;
            for p in spec["ports"].as_array_mut().into_iter().flatten() {
                set_default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                set_default(p, "targetPort", port);
                if node_port {
                    set_default(p, "nodePort", json!(next));
                    next += 1;
                }
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" | "jobs" => {
            if rt.plural != "daemonsets" && rt.plural != "jobs" {
                set_default(&mut obj["spec"], "replicas", json!(1));
            }
            if rt.plural != "replicasets" && rt.plural != "jobs" {
                set_default(&mut obj["spec"], "revisionHistoryLimit", json!(10));
            }
            if rt.plural == "deployments" {
                set_default(&mut obj["spec"], "progressDeadlineSeconds", json!(600));
                set_default(
                    &mut obj["spec"],
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
            }
            default_pod_spec(&mut obj["spec"]["template"]["spec"]);
            obj["status"] = json!({});
        }
        "cronjobs" => {
            default_pod_spec(&mut obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]);
            obj["status"] = json!({});
        }
        "secrets" => {
            // stringData is write-only: it is merged into data, base64-encoded
            use base64::Engine;
            if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
                let b64 = base64::engine::general_purpose::STANDARD;
                for (k, v) in sd {
                    obj["data"][k] = json!(b64.encode(v.as_str().unwrap_or("")));
                }
            }
            set_default(obj, "type", json!("Opaque"));
        }
        _ => {}
    }
}

fn name_cause(rt: &ResourceType, name: &str) -> Option<Cause> {
    let label_only = matches!(rt.plural, "namespaces" | "services");
    let ok = if label_only {
        name.len() <= 63
            && !name.is_empty()
            && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    } else if rt.group == "rbac.authorization.k8s.io" {
        !name.is_empty() && !name.contains('/') && !name.contains('%') && name != "." && name != ".."
    } else {
        name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    if ok {
        return None;
    }
    let what = if label_only {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    };
    Some(Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: \"{name}\": {what}"),
        field: "metadata.name".into(),
    })
}

fn validate_containers(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            let mut names = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let name = c["name"].as_str().unwrap_or("");
                if name.is_empty() {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                        field: format!("{path}.containers[{i}].name"),
                    });
                } else if names.contains(&name) {
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        message: format!("Duplicate value: \"{name}\""),
                        field: format!("{path}.containers[{i}].name"),
                    });
                }
                names.push(name);
                if c["image"].as_str().unwrap_or("").is_empty() {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                        field: format!("{path}.containers[{i}].image"),
                    });
                }
            }
        }
        _ => causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: format!("{path}.containers"),
        }),
    }
}

/// The spec fields a pod update may not change.
fn pod_spec_frozen(spec: &Value) -> Value {
    let mut s = spec.clone();
    if let Some(m) = s.as_object_mut() {
        m.remove("ephemeralContainers");
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("terminationGracePeriodSeconds");
    }
    for c in s["containers"].as_array_mut().into_iter().flatten() {
        if let Some(m) = c.as_object_mut() {
            m.remove("image");
        }
    }
    s
}

/// The structure every stored object has: `metadata` an object with string maps for labels and
/// annotations, and `spec`/`status` objects when present. Checked before defaulting and storing,
/// so later writes into these fields cannot fail.
pub fn validate_shape(kind: &str, obj: &Value) -> Result<(), ApiError> {
    let bad = |field: &str, what: &str| {
        ApiError::invalid(
            kind,
            meta_str(obj, "name"),
            vec![Cause {
                reason: "FieldValueTypeInvalid",
                message: format!("Invalid value: {what}"),
                field: field.into(),
            }],
        )
    };
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        return Err(bad("metadata", "must be an object"));
    }
    for f in ["labels", "annotations"] {
        match obj["metadata"].get(f) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            Some(_) => return Err(bad(&format!("metadata.{f}"), "must be a map of strings")),
        }
    }
    for f in ["ownerReferences", "finalizers"] {
        if obj["metadata"].get(f).is_some_and(|v| !v.is_array() && !v.is_null()) {
            return Err(bad(&format!("metadata.{f}"), "must be a list"));
        }
    }
    for f in ["spec", "status"] {
        if obj.get(f).is_some_and(|v| !v.is_object() && !v.is_null()) {
            return Err(bad(f, "must be an object"));
        }
    }
    for path in ["/spec/template", "/spec/template/spec", "/spec/template/metadata", "/spec/selector"] {
        if obj.pointer(path).is_some_and(|v| !v.is_object() && !v.is_null()) {
            return Err(bad(&path.trim_start_matches('/').replace('/', "."), "must be an object"));
        }
    }
    for path in ["/spec/containers", "/spec/ephemeralContainers", "/spec/volumes", "/spec/template/spec/containers"] {
        if let Some(v) = obj.pointer(path) {
            if !v.as_array().is_some_and(|a| a.iter().all(Value::is_object)) && !v.is_null() {
                return Err(bad(&path.trim_start_matches('/').replace('/', "."), "must be a list of objects"));
            }
        }
    }
    Ok(())
}

/// Validate an object about to be stored (`old` for updates).
pub fn validate(rt: &'static ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    validate_shape(rt.kind, obj)?;
    let name = meta_str(obj, "name");
    let mut causes = Vec::new();
    if old.is_none() {
        if let Some(c) = name_cause(rt, name) {
            causes.push(c);
        }
    }
    // apimachinery ValidateAnnotations: keys and values together at most 256 KiB
    let annotation_bytes: usize = obj["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if annotation_bytes > 262_144 {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            message: "Too long: may not be more than 262144 bytes".into(),
            field: "metadata.annotations".into(),
        });
    }
    match rt.plural {
        "pods" => {
            validate_containers(&obj["spec"], "spec", &mut causes);
            if let Some(old) = old {
                if pod_spec_frozen(&old["spec"]) != pod_spec_frozen(&obj["spec"]) {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                        field: "spec".into(),
                    });
                }
                let old_e = old["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
                let new_e = obj["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
                for (i, e) in old_e.iter().enumerate() {
                    if new_e.get(i) != Some(e) {
                        causes.push(Cause {
                            reason: "FieldValueForbidden",
                            message: format!(
                                "Forbidden: existing ephemeral containers \"{}\" may not be changed",
                                e["name"].as_str().unwrap_or("")
                            ),
                            field: "spec.ephemeralContainers".into(),
                        });
                        break;
                    }
                }
                for (i, e) in new_e.iter().enumerate().skip(old_e.len()) {
                    if e["name"].as_str().unwrap_or("").is_empty() || e["image"].as_str().unwrap_or("").is_empty() {
                        causes.push(Cause {
                            reason: "FieldValueRequired",
                            message: "Required value".into(),
                            field: format!("spec.ephemeralContainers[{i}]"),
                        });
                    }
                    let target = e["targetContainerName"].as_str().unwrap_or("");
                    let known = obj["spec"]["containers"].as_array().into_iter().flatten().any(|c| c["name"] == target);
                    if !target.is_empty() && !known {
                        causes.push(Cause {
                            reason: "FieldValueNotFound",
                            message: format!("Not found: \"{target}\""),
                            field: format!("spec.ephemeralContainers[{i}].targetContainerName"),
                        });
                    }
                }
            }
        }
        "deployments" | "replicasets" | "daemonsets" | "statefulsets" => {
            let sel = crate::selectors::LabelSelector::from_object(obj["spec"].get("selector"));
            let tmpl_labels = obj["spec"]["template"]["metadata"]["labels"].as_object();
            if obj["spec"].get("selector").is_none() {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: "spec.selector".into(),
                });
            } else if sel.is_empty() || !sel.matches_labels(tmpl_labels) {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        serde_json::to_string(&obj["spec"]["template"]["metadata"]["labels"]).unwrap_or_default()
                    ),
                    field: "spec.template.metadata.labels".into(),
                });
            }
            validate_containers(&obj["spec"]["template"]["spec"], "spec.template.spec", &mut causes);
            if let Some(old) = old {
                if old["spec"]["selector"] != obj["spec"]["selector"] {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        message: format!("Invalid value: {}: field is immutable", obj["spec"]["selector"]),
                        field: "spec.selector".into(),
                    });
                }
            }
        }
        "persistentvolumeclaims" => {
            if obj["spec"]["accessModes"].as_array().is_none_or(|a| a.is_empty()) {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    message: "Required value: at least 1 access mode is required".into(),
                    field: "spec.accessModes".into(),
                });
            }
            if !obj["spec"]["resources"]["requests"]["storage"].is_string() {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: "spec.resources[storage]".into(),
                });
            }
            if let Some(old) = old {
                if old["spec"]["accessModes"] != obj["spec"]["accessModes"] {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        message: "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into(),
                        field: "spec".into(),
                    });
                }
            }
        }
        "rolebindings" | "clusterrolebindings" => {
            if let Some(old) = old {
                if old["roleRef"] != obj["roleRef"] {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        message: "Invalid value: cannot change roleRef".into(),
                        field: "roleRef".into(),
                    });
                }
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt.kind, name, causes))
    }
}

/// Objects a new namespace gets at once: the `default` ServiceAccount and the root CA ConfigMap
/// (kube-controller-manager creates them within milliseconds; creating them synchronously keeps
/// tests that create a namespace and then a pod from racing).
pub fn namespace_children(ns: &str, ca_pem: &str) -> Vec<(&'static ResourceType, Value)> {
    vec![
        (
            &res::SERVICEACCOUNTS,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}),
        ),
        (
            &res::CONFIGMAPS,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "namespace": ns, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": ca_pem}}),
        ),
    ]
}
