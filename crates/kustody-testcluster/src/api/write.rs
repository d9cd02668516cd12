//! The writing verbs: create (with the review and token subresources, binding, node proxy),
//! update and patch.

use super::*;

impl Api {
    pub(super) fn parse_body(req: &Request) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml: {e}"))
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        Ok(v)
    }

    pub(super) fn namespace_ok(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        match self.store.get(&res::NAMESPACES, "", ns) {
            None => Err(ApiError::not_found(&res::NAMESPACES, ns)),
            Some(n) if n["status"]["phase"] == "Terminating" => Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    rt.plural
                ),
                details: Some(json!({"kind": rt.plural})),
            }),
            Some(_) => Ok(()),
        }
    }

    pub(super) async fn create(
        self: &Arc<Self>,
        caller: &Caller,
        rt: &'static ResourceType,
        info: &ReqInfo,
        req: &Request,
    ) -> Result<Reply, ApiError> {
        let mut obj = Self::parse_body(req)?;
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        if !kind.is_empty() && kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                obj["apiVersion"].as_str().unwrap_or(""),
                rt.api_version()
            )));
        }
        if rt.create_only {
            return self.review(caller, rt, obj).map(|v| Reply::Json(201, v));
        }
        obj["kind"] = json!(rt.kind);
        obj["apiVersion"] = json!(rt.api_version());
        if obj.get("metadata").is_none_or(Value::is_null) {
            obj["metadata"] = json!({});
        }
        crate::defaults::validate_shape(rt.kind, &obj)?;
        if req.q("fieldValidation") == Some("Strict") {
            crate::schema::strict(rt.kind, &obj)?;
        }
        if rt.namespaced {
            let body_ns = meta_str(&obj, "namespace").to_string();
            if !body_ns.is_empty() && body_ns != info.ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(info.ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if meta_str(&obj, "name").is_empty() {
            let gen = meta_str(&obj, "generateName").to_string();
            if gen.is_empty() {
                return Err(ApiError::invalid(
                    rt.kind,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired",
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
            obj["metadata"]["name"] = json!(format!("{gen}{}", random_suffix(5)));
        }
        for f in ["uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"] {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove(f);
            }
        }
        self.namespace_ok(rt, &info.ns)?;
        crate::defaults::default_object(self, rt, &mut obj);
        crate::defaults::validate(rt, &obj, None)?;
        if std::ptr::eq(rt, &res::PODS) {
            let sa = obj["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string();
            if self.store.get(&res::SERVICEACCOUNTS, &info.ns, &sa).is_none() {
                return Err(ApiError {
                    code: 403,
                    reason: "Forbidden",
                    message: format!(
                        "pods \"{}\" is forbidden: error looking up service account {}/{sa}: serviceaccount \"{sa}\" not found",
                        meta_str(&obj, "name"),
                        info.ns
                    ),
                    details: Some(json!({"name": meta_str(&obj, "name"), "kind": "pods"})),
                });
            }
        }
        if req.q("dryRun") == Some("All") {
            return Ok(Reply::Json(201, obj));
        }
        let stored = self.store.create(rt, obj)?;
        if std::ptr::eq(rt, &res::NAMESPACES) {
            for (crt, child) in crate::defaults::namespace_children(meta_str(&stored, "name"), &self.ca_pem) {
                let _ = self.store.create(crt, child);
            }
        }
        Ok(Reply::Json(201, (*stored).clone()))
    }

    pub(super) fn review(&self, caller: &Caller, rt: &'static ResourceType, obj: Value) -> Result<Value, ApiError> {
        let user = caller.effective();
        let mut out = obj.clone();
        out["kind"] = json!(rt.kind);
        out["apiVersion"] = json!(rt.api_version());
        out["metadata"] = json!({});
        match rt.plural {
            "selfsubjectreviews" => {
                out["status"] = json!({"userInfo": user.to_json()});
            }
            "selfsubjectrulesreviews" => {
                let ns = obj["spec"]["namespace"].as_str().unwrap_or("");
                out["spec"] = json!({});
                out["status"] = rbac::rules_review(&self.store, user, ns);
            }
            _ => {
                let ra = &obj["spec"]["resourceAttributes"];
                let nra = &obj["spec"]["nonResourceAttributes"];
                let attrs = if ra.is_object() {
                    Attributes {
                        verb: ra["verb"].as_str().unwrap_or("").into(),
                        resource_request: true,
                        group: ra["group"].as_str().unwrap_or("").into(),
                        resource: ra["resource"].as_str().unwrap_or("").into(),
                        subresource: ra["subresource"].as_str().unwrap_or("").into(),
                        namespace: ra["namespace"].as_str().unwrap_or("").into(),
                        name: ra["name"].as_str().unwrap_or("").into(),
                        path: String::new(),
                    }
                } else if nra.is_object() {
                    Attributes {
                        verb: nra["verb"].as_str().unwrap_or("").into(),
                        resource_request: false,
                        path: nra["path"].as_str().unwrap_or("").into(),
                        ..Default::default()
                    }
                } else {
                    return Err(ApiError::invalid(
                        rt.kind,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired",
                            message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                            field: "spec.resourceAttributes".into(),
                        }],
                    ));
                };
                let (allowed, reason) = rbac::authorize(&self.store, user, &attrs);
                out["status"] = match (allowed, reason.is_empty()) {
                    (true, false) => json!({"allowed": true, "reason": reason}),
                    (true, true) => json!({"allowed": true}),
                    _ => json!({"allowed": false}),
                };
            }
        }
        Ok(out)
    }

    pub(super) fn token_request(&self, info: &ReqInfo, req: &Request) -> Result<Value, ApiError> {
        let sa = self
            .store
            .get(&res::SERVICEACCOUNTS, &info.ns, &info.name)
            .ok_or_else(|| ApiError::not_found(&res::SERVICEACCOUNTS, &info.name))?;
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_else(|_| json!({}));
        let secs = body["spec"]["expirationSeconds"].as_u64().unwrap_or(3600).clamp(600, 86400 * 2);
        // A token bound to a pod (what the kubelet's projected volume asks for) carries the pod's
        // name and uid in `user.extra`, as the real apiserver's; the pod must exist.
        let bound = &body["spec"]["boundObjectRef"];
        let pod = if bound["kind"] == "Pod" {
            let name = bound["name"].as_str().unwrap_or_default();
            let obj =
                self.store.get(&res::PODS, &info.ns, name).ok_or_else(|| ApiError::not_found(&res::PODS, name))?;
            Some((name.to_owned(), meta_str(&obj, "uid").to_owned()))
        } else {
            None
        };
        let token = self.mint_sa_token(
            &info.ns,
            &info.name,
            pod.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
            Duration::from_secs(secs),
        );
        let exp = chrono::Utc::now() + chrono::Duration::seconds(secs as i64);
        Ok(json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": info.name, "namespace": info.ns, "uid": meta_str(&sa, "uid"), "creationTimestamp": now_rfc3339()},
            "spec": {"audiences": body["spec"]["audiences"].as_array().cloned().unwrap_or_else(|| vec![json!("https://kubernetes.default.svc.cluster.local")]),
                     "expirationSeconds": secs, "boundObjectRef": body["spec"].get("boundObjectRef").cloned().unwrap_or(Value::Null)},
            "status": {"token": token, "expirationTimestamp": exp.format("%Y-%m-%dT%H:%M:%SZ").to_string()}}))
    }

    pub(super) fn bind(&self, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let body = Self::parse_body(req)?;
        let node = body["target"]["name"].as_str().unwrap_or("").to_string();
        self.store.update_with(&res::PODS, &info.ns, &info.name, |old| {
            if !old["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
                return Err(ApiError::conflict(&res::PODS, &info.name));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            Ok(new)
        })?;
        Ok(Reply::Json(
            201,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    pub(super) fn node_proxy(&self, info: &ReqInfo) -> Result<Reply, ApiError> {
        if self.store.get(&res::NODES, "", &info.name).is_none() {
            return Err(ApiError::not_found(&res::NODES, &info.name));
        }
        if info.rest == "healthz" {
            return Ok(Reply::Text(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok")));
        }
        if let Some(target) = info.rest.strip_prefix("checkpoint/") {
            // what a kubelet whose runtime lacks CheckpointContainer answers (text, not a Status)
            let msg = format!("checkpointing of {target} failed (rpc error: code = Unimplemented desc = method CheckpointContainer not implemented)");
            return Ok(Reply::Text(500, "text/plain; charset=utf-8", Bytes::from(msg)));
        }
        Ok(Reply::Text(404, "text/plain; charset=utf-8", Bytes::from_static(b"404 page not found\n")))
    }

    pub(super) fn update(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Value, ApiError> {
        let is_patch = info.verb == "patch";
        let pt = if is_patch {
            Some(PatchType::from_content_type(&req.content_type).ok_or_else(|| ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {})", req.content_type),
                details: None,
            })?)
        } else {
            None
        };
        let body = if is_patch { None } else { Some(Self::parse_body(req)?) };
        if let Some(b) = body.as_ref().filter(|_| req.q("fieldValidation") == Some("Strict")) {
            crate::schema::strict(rt.kind, b)?;
        }
        if let Some(b) = &body {
            let n = meta_str(b, "name");
            if !n.is_empty() && n != info.name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    info.name
                )));
            }
        }
        let sub = info.sub.as_str();
        let dry = req.q("dryRun") == Some("All");
        let mut dry_result = None;
        let stored = self.store.update_with(rt, &info.ns, &info.name, |old| {
            let current = if sub == "scale" { scale_of(rt, old) } else { old.clone() };
            let mut incoming = match (&pt, &body) {
                (Some(pt), _) => patch::apply(&current, pt, &req.body)?,
                (None, Some(b)) => b.clone(),
                _ => current.clone(),
            };
            let want_rv = meta_str(&incoming, "resourceVersion").to_string();
            if !want_rv.is_empty() && want_rv != meta_str(old, "resourceVersion") {
                return Err(ApiError::conflict(rt, &info.name));
            }
            let mut new = old.clone();
            match sub {
                "status" => new["status"] = incoming.get("status").cloned().unwrap_or(Value::Null),
                "ephemeralcontainers" => {
                    let eph = incoming["spec"].get("ephemeralContainers").cloned().unwrap_or(json!([]));
                    let mut eph = json!({"ephemeralContainers": eph});
                    crate::defaults::default_pod_spec(&mut eph);
                    new["spec"]["ephemeralContainers"] = eph["ephemeralContainers"].take();
                }
                "scale" => {
                    new["spec"]["replicas"] = incoming["spec"]["replicas"].clone();
                }
                "finalize" => new["spec"] = incoming.get("spec").cloned().unwrap_or(Value::Null),
                _ => {
                    incoming["kind"] = json!(rt.kind);
                    incoming["apiVersion"] = json!(rt.api_version());
                    if rt.has_status() {
                        match old.get("status") {
                            Some(s) => incoming["status"] = s.clone(),
                            None => {
                                if let Some(m) = incoming.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                    }
                    new = incoming;
                }
            }
            crate::defaults::validate(rt, &new, Some(old))?;
            if dry {
                dry_result = Some(new);
                return Ok(old.clone());
            }
            Ok(new)
        })?;
        if let Some(d) = dry_result {
            return Ok(d);
        }
        Ok(if sub == "scale" { scale_of(rt, &stored) } else { (*stored).clone() })
    }
}
