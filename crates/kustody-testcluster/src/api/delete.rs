//! Deletion: graceful pod deletion, finalizers, orphaning dependents, deletecollection.

use super::*;

impl Api {
    pub(super) fn delete(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let opts: Value = serde_json::from_slice(&req.body).unwrap_or_else(|_| json!({}));
        let grace = req
            .q("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| opts["gracePeriodSeconds"].as_i64());
        let policy = req
            .q("propagationPolicy")
            .map(String::from)
            .or_else(|| opts["propagationPolicy"].as_str().map(String::from));
        let current = self.store.get(rt, &info.ns, &info.name).ok_or_else(|| ApiError::not_found(rt, &info.name))?;
        if let Some(uid) = opts["preconditions"]["uid"].as_str() {
            if uid != meta_str(&current, "uid") {
                return Err(ApiError::conflict(rt, &info.name));
            }
        }
        if req.q("dryRun") == Some("All") {
            return Ok(Reply::Json(200, (*current).clone()));
        }
        if policy.as_deref() == Some("Orphan") {
            self.orphan_dependents(meta_str(&current, "uid"));
        }
        let graceful_pod = std::ptr::eq(rt, &res::PODS)
            && !current["spec"]["nodeName"].as_str().unwrap_or("").is_empty()
            && grace != Some(0)
            && current["status"]["phase"] != "Succeeded"
            && current["status"]["phase"] != "Failed";
        let has_finalizers = current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let is_ns = std::ptr::eq(rt, &res::NAMESPACES);
        if graceful_pod || has_finalizers || is_ns {
            let grace =
                grace.unwrap_or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30));
            let updated = self.store.update_with(rt, &info.ns, &info.name, |old| {
                let mut new = old.clone();
                if new["metadata"].get("deletionTimestamp").is_none() {
                    new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    if graceful_pod {
                        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    }
                }
                if is_ns {
                    new["status"]["phase"] = json!("Terminating");
                }
                Ok(new)
            })?;
            return Ok(Reply::Json(200, (*updated).clone()));
        }
        let gone = self.store.delete(rt, &info.ns, &info.name)?;
        if std::ptr::eq(rt, &res::PODS) {
            return Ok(Reply::Json(200, (*gone).clone()));
        }
        Ok(Reply::Json(200, status_success(rt, &gone)))
    }

    pub(super) fn orphan_dependents(&self, uid: &str) {
        for rt in res::ALL.iter().copied().filter(|r| !r.create_only) {
            let (_, items) = self.store.list(rt, None);
            for o in items {
                let refs = o["metadata"]["ownerReferences"].as_array();
                if refs.is_some_and(|r| r.iter().any(|x| x["uid"] == uid)) {
                    let _ = self.store.update_with(rt, meta_str(&o, "namespace"), meta_str(&o, "name"), |old| {
                        let mut new = old.clone();
                        if let Some(r) = new["metadata"]["ownerReferences"].as_array_mut() {
                            r.retain(|x| x["uid"] != uid);
                        }
                        Ok(new)
                    });
                }
            }
        }
    }

    pub(super) fn delete_collection(
        &self,
        rt: &'static ResourceType,
        info: &ReqInfo,
        req: &Request,
    ) -> Result<Reply, ApiError> {
        let (ls, fs) = Self::selectors(rt, req)?;
        let ns = (!info.ns.is_empty()).then_some(info.ns.as_str());
        let (_, items) = self.store.list(rt, ns);
        let mut deleted = Vec::new();
        for o in items.into_iter().filter(|o| ls.matches(o) && fs.matches(o)) {
            let sub = ReqInfo {
                name: meta_str(&o, "name").to_string(),
                ns: meta_str(&o, "namespace").to_string(),
                ..info.clone()
            };
            let empty = Request { body: Bytes::new(), ..req.clone() };
            if let Ok(Reply::Json(_, v)) = self.delete(rt, &sub, &empty) {
                deleted.push(strip_kind(&v));
            }
        }
        Ok(Reply::Json(
            200,
            json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": self.store.current_rv().to_string()}, "items": deleted}),
        ))
    }
}
