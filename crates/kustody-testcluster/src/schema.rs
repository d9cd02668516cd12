//! Strict field validation (`?fieldValidation=Strict`, what `kubectl apply` sends by default):
//! the object is decoded into the Kubernetes v1.36 API types (`k8s-openapi`, generated from
//! the apiserver's OpenAPI document), and every field of the request that the typed decoding
//! did not keep is an unknown field, reported in kube-apiserver's words:
//! `strict decoding error: unknown field "spec.template.spec.containers[0].foo"`. A value of
//! the wrong type is a decoding error too.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::status::ApiError;

fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Check an object of `kind` strictly; kinds without a typed schema here pass.
pub fn strict(kind: &str, obj: &Value) -> Result<(), ApiError> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, core::v1 as core, networking::v1 as net, rbac::v1 as rbac,
    };
    let back = match kind {
        "Pod" => round_trip::<core::Pod>(obj),
        "Service" => round_trip::<core::Service>(obj),
        "ServiceAccount" => round_trip::<core::ServiceAccount>(obj),
        "Secret" => round_trip::<core::Secret>(obj),
        "ConfigMap" => round_trip::<core::ConfigMap>(obj),
        "Namespace" => round_trip::<core::Namespace>(obj),
        "PersistentVolumeClaim" => round_trip::<core::PersistentVolumeClaim>(obj),
        "Deployment" => round_trip::<apps::Deployment>(obj),
        "StatefulSet" => round_trip::<apps::StatefulSet>(obj),
        "DaemonSet" => round_trip::<apps::DaemonSet>(obj),
        "ReplicaSet" => round_trip::<apps::ReplicaSet>(obj),
        "Job" => round_trip::<batch::Job>(obj),
        "CronJob" => round_trip::<batch::CronJob>(obj),
        "NetworkPolicy" => round_trip::<net::NetworkPolicy>(obj),
        "Role" => round_trip::<rbac::Role>(obj),
        "RoleBinding" => round_trip::<rbac::RoleBinding>(obj),
        "ClusterRole" => round_trip::<rbac::ClusterRole>(obj),
        "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(obj),
        _ => return Ok(()),
    }
    .map_err(|e| ApiError::bad_request(format!("strict decoding error: {e}")))?;
    let mut unknown = Vec::new();
    diff(obj, &back, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown.iter().map(|p| format!("unknown field \"{p}\"")).collect();
    Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))))
}

/// Paths present (and not null) in `sent` but missing from `kept`.
fn diff(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    None => out.push(p),
                    Some(w) => diff(v, w, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_by_path_and_known_ones_pass() {
        let good = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"securityContext": {"runAsNonRoot": true, "fsGroup": 65532},
              "containers": [{"name": "c", "image": "i", "securityContext": {"readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}}, "resources": {"requests": {"cpu": "100m"}},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}}}],
              "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "s", "defaultMode": 288}}]}}}});
        assert!(strict("Deployment", &good).is_ok(), "{:?}", strict("Deployment", &good).err());
        let mut bad = good.clone();
        bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = json!(true);
        bad["spec"]["replica"] = json!(2);
        let e = strict("Deployment", &bad).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("unknown field \"spec.replica\""), "{}", e.message);
        assert!(
            e.message.contains("unknown field \"spec.template.spec.containers[0].securityContext.readOnlyRootFS\""),
            "{}",
            e.message
        );
        let mut wrong = good;
        wrong["spec"]["replicas"] = json!("two");
        assert!(strict("Deployment", &wrong).unwrap_err().message.starts_with("strict decoding error: invalid type"));
    }
}
