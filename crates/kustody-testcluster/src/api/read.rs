//! The reading verbs: get, list (selectors, `limit`/`continue`), watch (bookmarks, resuming
//! from the change history, 410 when too old).

use super::*;

impl Api {
    pub(super) fn get(&self, rt: &'static ResourceType, info: &ReqInfo) -> Result<Value, ApiError> {
        self.store
            .get(rt, &info.ns, &info.name)
            .map(|v| (*v).clone())
            .ok_or_else(|| ApiError::not_found(rt, &info.name))
    }

    pub(super) fn selectors(rt: &ResourceType, req: &Request) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let ls = LabelSelector::parse(req.q("labelSelector").unwrap_or(""))?;
        let fs = FieldSelector::parse(req.q("fieldSelector").unwrap_or(""), rt.plural)?;
        Ok((ls, fs))
    }

    pub(super) fn list(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Value, ApiError> {
        use base64::Engine;
        let (ls, fs) = Self::selectors(rt, req)?;
        let ns = (!info.ns.is_empty()).then_some(info.ns.as_str());
        let (rv, items) = self.store.list(rt, ns);
        let mut items: Vec<Arc<Value>> = items.into_iter().filter(|o| ls.matches(o) && fs.matches(o)).collect();
        // continue: resume after the key the token names
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(tok) = req.q("continue").filter(|t| !t.is_empty()) {
            let decoded = b64
                .decode(tok)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
            let start = decoded["start"].as_str().unwrap_or("").to_string();
            items.retain(|o| format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name")) > start);
        }
        let limit: usize = req.q("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if items.len() > limit {
            let remaining = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                let start = format!("{}/{}", meta_str(last, "namespace"), meta_str(last, "name"));
                let tok = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
                meta["continue"] = json!(b64.encode(tok.to_string()));
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        let items: Vec<Value> = items.iter().map(|o| strip_kind(o)).collect();
        Ok(json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": meta, "items": items}))
    }

    pub(super) fn watch(&self, rt: &'static ResourceType, info: &ReqInfo, req: &Request) -> Result<Reply, ApiError> {
        let (ls, fs) = Self::selectors(rt, req)?;
        let ns = info.ns.clone();
        let bookmarks = req.q_bool("allowWatchBookmarks");
        let timeout = req.q("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800);
        let from: Option<u64> = req
            .q("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version \"{v}\""))))
            .transpose()?;
        let matches = {
            let ns = ns.clone();
            move |o: &Value| (ns.is_empty() || meta_str(o, "namespace") == ns) && ls.matches(o) && fs.matches(o)
        };
        let (initial, start_rv) = match from {
            Some(rv) => (Vec::new(), rv),
            None => {
                let (rv, items) = self.store.list(rt, (!ns.is_empty()).then_some(ns.as_str()));
                (items.into_iter().filter(|o| matches(o)).collect::<Vec<_>>(), rv)
            }
        };
        let (tx, out) = mpsc::channel::<Bytes>(256);
        let (backlog, mut rx) = match self.store.watch_from(start_rv) {
            Ok(w) => w,
            // As the apiserver does: a resourceVersion older than its history is answered 200
            // with one ERROR event carrying the 410 Status (the watcher must list again).
            Err(e) if e.code == 410 => {
                let line = format!("{}\n", json!({"type": "ERROR", "object": e.to_status()}));
                let _ = tx.try_send(Bytes::from(line));
                return Ok(Reply::Stream(200, "application/json", out));
            }
            Err(e) => return Err(e),
        };
        let mut cut = self.store.cut_subscribe();
        let kind = rt.kind;
        let api_version = rt.api_version();
        tokio::spawn(async move {
            let line = |typ: &str, obj: &Value| Bytes::from(format!("{}\n", json!({"type": typ, "object": obj})));
            let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
            let key = |o: &Value| format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name"));
            for o in &initial {
                seen.insert(key(o));
                if tx.send(line("ADDED", o)).await.is_err() {
                    return;
                }
            }
            let mut last_rv = start_rv;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut pending: std::collections::VecDeque<Arc<crate::store::Change>> = backlog.into();
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            tick.tick().await;
            loop {
                let change = if let Some(c) = pending.pop_front() {
                    c
                } else {
                    tokio::select! {
                        r = rx.recv() => match r {
                            Ok(c) => c,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let st = ApiError::gone("watch fell behind; relist").to_status();
                                let _ = tx.send(line("ERROR", &st)).await;
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = tick.tick() => {
                            if bookmarks {
                                let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}});
                                if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                            } else if tx.is_closed() {
                                return;
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until(deadline) => return,
                        _ = cut.recv() => return,
                    }
                };
                if change.rv <= last_rv {
                    continue;
                }
                last_rv = change.rv;
                if !std::ptr::eq(change.rt, rt) {
                    continue;
                }
                let k = key(&change.obj);
                let now_matches = matches(&change.obj);
                let was = seen.contains(&k) || (from.is_some() && change.typ != ChangeType::Added && now_matches);
                let typ = match (change.typ, now_matches, was) {
                    (ChangeType::Deleted, _, true) | (ChangeType::Deleted, true, _) => {
                        seen.remove(&k);
                        "DELETED"
                    }
                    (ChangeType::Deleted, false, false) => continue,
                    (_, true, false) => {
                        seen.insert(k);
                        "ADDED"
                    }
                    (_, true, true) => {
                        seen.insert(k);
                        "MODIFIED"
                    }
                    (_, false, true) => {
                        seen.remove(&k);
                        "DELETED"
                    }
                    (_, false, false) => continue,
                };
                if tx.send(line(typ, &change.obj)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Reply::Stream(200, "application/json", out))
    }
}
