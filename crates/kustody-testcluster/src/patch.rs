//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.
//!
//! Strategic merge is implemented for what clients send in practice: maps merge recursively,
//! `null` deletes, lists of objects with a known merge key (containers by name,
//! ownerReferences by uid, ...) merge by that key and honour `$patch: delete`, `finalizers`
//! merges as a set, `$setElementOrder/*`, `$retainKeys` and `$deleteFromPrimitiveList/*`
//! directives are applied or dropped, and any other list is replaced.

use serde_json::{Map, Value};

use crate::status::ApiError;

pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Go's encoding/json error for a body that is not JSON, as kube-apiserver words it.
fn decode_error(e: &serde_json::Error, body: &[u8]) -> ApiError {
    let col = e.column().saturating_sub(1);
    let ch = body.get(col).map(|b| *b as char).unwrap_or(' ');
    let what = if e.is_eof() {
        "unexpected end of JSON input".to_string()
    } else if e.to_string().contains("key must be a string") {
        format!("invalid character '{ch}' looking for beginning of object key string")
    } else {
        format!("invalid character '{ch}' looking for beginning of value")
    };
    ApiError::bad_request(format!("error decoding patch: {what}"))
}

/// Apply `body` of type `pt` to `target`.
pub fn apply(target: &Value, pt: &PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match pt {
        PatchType::Merge | PatchType::Apply => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| decode_error(&e, body))?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("error decoding patch: patch must be a JSON object"));
            }
            let mut doc = target.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                if e.is_data() {
                    ApiError::bad_request(format!("error decoding patch: {e}"))
                } else {
                    decode_error(&e, body)
                }
            })?;
            let mut doc = target.clone();
            json_patch::patch(&mut doc, &patch).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(doc)
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| decode_error(&e, body))?;
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request("error decoding patch: patch must be a JSON object"));
            };
            let mut doc = target.clone();
            if let Value::Object(d) = &mut doc {
                strategic_map(d, p)?;
            }
            Ok(doc)
        }
    }
}

fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

fn strategic_map(doc: &mut Map<String, Value>, patch: Map<String, Value>) -> Result<(), ApiError> {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch;
        p.remove("$patch");
        *doc = p;
        return Ok(());
    }
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (doc.get_mut(field), &v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                doc.remove(&k);
            }
            Value::Object(pm) => match doc.get_mut(&k) {
                Some(Value::Object(dm)) => strategic_map(dm, pm)?,
                _ => {
                    let mut fresh = Map::new();
                    strategic_map(&mut fresh, pm)?;
                    doc.insert(k, Value::Object(fresh));
                }
            },
            Value::Array(pl) => {
                let merged = match (doc.get_mut(&k), merge_key(&k)) {
                    (Some(Value::Array(dl)), Some(key)) => {
                        merge_list(dl, pl, key)?;
                        None
                    }
                    (Some(Value::Array(dl)), None) if k == "finalizers" => {
                        for x in pl {
                            if !dl.contains(&x) {
                                dl.push(x);
                            }
                        }
                        None
                    }
                    (_, Some(key)) => {
                        let mut dl = Vec::new();
                        merge_list(&mut dl, pl, key)?;
                        Some(dl)
                    }
                    _ => Some(pl),
                };
                if let Some(list) = merged {
                    doc.insert(k, Value::Array(list));
                }
            }
            other => {
                doc.insert(k, other);
            }
        }
    }
    Ok(())
}

fn merge_list(doc: &mut Vec<Value>, patch: Vec<Value>, key: &str) -> Result<(), ApiError> {
    for item in patch {
        let Value::Object(mut pm) = item else {
            return Err(ApiError::bad_request(format!(
                "strategic merge patch: list item is not an object (merge key {key})"
            )));
        };
        let Some(kv) = pm.get(key).cloned() else {
            return Err(ApiError::bad_request(format!("map: {pm:?} does not contain declared merge key: {key}")));
        };
        let pos = doc.iter().position(|d| d.get(key) == Some(&kv));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                doc.remove(i);
            }
            continue;
        }
        pm.remove("$patch");
        match pos.and_then(|i| doc.get_mut(i)) {
            Some(Value::Object(dm)) => strategic_map(dm, pm)?,
            _ => {
                let mut fresh = Map::new();
                strategic_map(&mut fresh, pm)?;
                doc.push(Value::Object(fresh));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "labels": {"app": "web", "tier": "front"},
               "ownerReferences": [{"uid": "u1", "name": "rs", "kind": "ReplicaSet", "controller": true}],
               "finalizers": ["a"]},
               "spec": {"containers": [{"name": "main", "image": "busybox"}, {"name": "side", "image": "x"}]}})
    }

    #[test]
    fn merge_patch_sets_and_deletes_labels() -> Result<(), ApiError> {
        let out = apply(&pod(), &PatchType::Merge, br#"{"metadata":{"labels":{"app":null,"q":"1"}}}"#)?;
        assert_eq!(out["metadata"]["labels"], json!({"tier": "front", "q": "1"}));
        Ok(())
    }

    #[test]
    fn strategic_patch_merges_lists_by_key() -> Result<(), ApiError> {
        let p = br#"{"metadata":{"labels":{"q":"1"},"finalizers":["b"],
                     "ownerReferences":[{"uid":"u1","$patch":"delete"}]},
                     "spec":{"containers":[{"name":"main","image":"busybox:2"}]}}"#;
        let out = apply(&pod(), &PatchType::Strategic, p)?;
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "tier": "front", "q": "1"}));
        assert_eq!(out["metadata"]["ownerReferences"], json!([]));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["spec"]["containers"][0]["image"], "busybox:2");
        assert_eq!(out["spec"]["containers"][1]["name"], "side");
        Ok(())
    }

    #[test]
    fn json_patch_and_errors() -> Result<(), ApiError> {
        let out = apply(&pod(), &PatchType::Json, br#"[{"op":"add","path":"/metadata/labels/x","value":"y"}]"#)?;
        assert_eq!(out["metadata"]["labels"]["x"], "y");
        let e = apply(&pod(), &PatchType::Merge, b"{not json").err().map(|e| e.message);
        assert_eq!(
            e.as_deref(),
            Some("error decoding patch: invalid character 'n' looking for beginning of object key string")
        );
        assert!(apply(&pod(), &PatchType::Json, br#"[{"op":"remove","path":"/nope"}]"#).is_err());
        Ok(())
    }
}
