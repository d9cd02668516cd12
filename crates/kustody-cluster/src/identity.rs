//! Who the API server says we are (SelfSubjectReview): recorded by every action kustody takes.

use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// The identity the API server sees.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Ask the API server (`POST selfsubjectreviews`, allowed to every authenticated user).
pub async fn whoami(client: &kube::Client) -> Result<Actor, ClusterError> {
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(|e| ClusterError::Request { what: "SelfSubjectReview".into(), reason: e.to_string() })?;
    let v: serde_json::Value = client.request(req).await.map_err(|e| {
        let e = ClusterError::from_kube(e);
        if e.is_forbidden() {
            e.needed_to("identify the caller")
        } else {
            e
        }
    })?;
    let u = v.pointer("/status/userInfo").cloned().unwrap_or_default();
    Ok(Actor {
        username: u.get("username").and_then(|x| x.as_str()).unwrap_or_default().to_owned(),
        uid: u.get("uid").and_then(|x| x.as_str()).unwrap_or_default().to_owned(),
        groups: u
            .get("groups")
            .and_then(|g| g.as_array())
            .map(|g| g.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default(),
    })
}
