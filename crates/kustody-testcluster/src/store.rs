//! The object store: every object by resource, namespace and name, one global resourceVersion,
//! and a bounded history of changes for watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::resources::ResourceType;
use crate::status::ApiError;

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One stored change.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub typ: ChangeType,
    pub rt: &'static ResourceType,
    pub obj: Arc<Value>,
}

type Key = (&'static str, String, String);

/// The backlog after a resourceVersion and a receiver for what follows.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    /// Watches from below this resourceVersion get 410 Gone (history cut).
    floor: u64,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    /// Ends every open watch ([`Store::cut_watches`]).
    cut: broadcast::Sender<()>,
}

const HISTORY: usize = 20_000;

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

/// Kubernetes' field order: kind, apiVersion, metadata, the rest, status last.
pub fn canonical(v: Value) -> Value {
    let Value::Object(mut m) = v else { return v };
    // Go's omitempty: empty lists and maps in metadata are not written
    if let Some(Value::Object(meta)) = m.get_mut("metadata") {
        meta.retain(|_, v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        });
    }
    let mut out = serde_json::Map::with_capacity(m.len());
    for k in ["kind", "apiVersion", "metadata"] {
        if let Some(x) = m.remove(k) {
            out.insert(k.to_string(), x);
        }
    }
    let status = m.remove("status");
    out.extend(m);
    if let Some(s) = status {
        out.insert("status".to_string(), s);
    }
    Value::Object(out)
}

fn ns_of(rt: &ResourceType, obj: &Value) -> String {
    if rt.namespaced {
        meta_str(obj, "namespace").to_string()
    } else {
        String::new()
    }
}

/// A random lowercase suffix in the alphabet Kubernetes uses for generated names.
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n).map(|_| ALPHABET.get(rand::random_range(0..ALPHABET.len())).copied().unwrap_or(b'x') as char).collect()
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        h.get(0..8).unwrap_or(""),
        h.get(8..12).unwrap_or(""),
        h.get(13..16).unwrap_or(""),
        h.get(17..20).unwrap_or(""),
        h.get(20..32).unwrap_or("")
    )
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(8192);
        let (cut, _) = broadcast::channel(4);
        Store {
            inner: Mutex::new(Inner { rv: 100, objects: BTreeMap::new(), history: VecDeque::new(), floor: 0 }),
            tx,
            cut,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, rt: &'static ResourceType, ns: &str, name: &str) -> Option<Arc<Value>> {
        let ns = if rt.namespaced { ns } else { "" };
        self.lock().objects.get(&(rt.key, ns.to_string(), name.to_string())).cloned()
    }

    /// All objects of a type (in one namespace when `ns` is given), in key order, and the
    /// resourceVersion they were read at.
    pub fn list(&self, rt: &'static ResourceType, ns: Option<&str>) -> (u64, Vec<Arc<Value>>) {
        let g = self.lock();
        let lo = (rt.key, ns.unwrap_or("").to_string(), String::new());
        let items = g
            .objects
            .range(lo..)
            .take_while(|((k, n, _), _)| *k == rt.key && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (g.rv, items)
    }

    fn record(&self, g: &mut Inner, typ: ChangeType, rt: &'static ResourceType, obj: Arc<Value>) {
        let change = Arc::new(Change { rv: g.rv, typ, rt, obj });
        if g.history.len() >= HISTORY {
            g.history.pop_front();
        }
        g.history.push_back(change.clone());
        let _ = self.tx.send(change);
    }

    /// Store a new object. Fills uid, resourceVersion, creationTimestamp and generation.
    pub fn create(&self, rt: &'static ResourceType, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        let name = meta_str(&obj, "name").to_string();
        let ns = ns_of(rt, &obj);
        let mut g = self.lock();
        let key = (rt.key, ns, name.clone());
        if g.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        g.rv += 1;
        let rv = g.rv;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("uid".into(), json!(new_uid()));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            m.entry("creationTimestamp").or_insert_with(|| json!(now_rfc3339()));
            if obj_has_spec(rt) {
                m.insert("generation".into(), json!(1));
            }
        }
        let obj = Arc::new(canonical(obj));
        g.objects.insert(key, obj.clone());
        self.record(&mut g, ChangeType::Added, rt, obj.clone());
        Ok(obj)
    }

    /// Replace an object through `f`, atomically. `f` sees the stored object and returns the new
    /// one; uid and creationTimestamp are kept, resourceVersion is bumped, and generation is
    /// bumped when `spec` changed. Returns the stored object, or the old one unchanged when `f`
    /// returned an identical object.
    pub fn update_with(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut g = self.lock();
        let key = (rt.key, ns.to_string(), name.to_string());
        let old = g.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut new = f(&old)?;
        // Identity is the server's.
        for field in ["uid", "creationTimestamp", "name", "namespace"] {
            if let (Some(m), Some(v)) =
                (new.get_mut("metadata").and_then(Value::as_object_mut), old["metadata"].get(field))
            {
                m.insert(field.into(), v.clone());
            }
        }
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), old["metadata"]["resourceVersion"].clone());
            if let Some(gen) = old["metadata"].get("generation") {
                m.insert("generation".into(), gen.clone());
            }
        }
        if new == *old {
            return Ok(old);
        }
        g.rv += 1;
        let rv = g.rv;
        let spec_changed = new.get("spec") != old.get("spec");
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            if spec_changed {
                let gen = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                m.insert("generation".into(), json!(gen));
            }
        }
        // A deleted object whose finalizers are gone disappears.
        let finalized = new["metadata"].get("deletionTimestamp").is_some()
            && new["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())
            && rt.key != "/pods";
        let new = Arc::new(canonical(new));
        if finalized {
            g.objects.remove(&key);
            self.record(&mut g, ChangeType::Deleted, rt, new.clone());
        } else {
            g.objects.insert(key, new.clone());
            self.record(&mut g, ChangeType::Modified, rt, new.clone());
        }
        Ok(new)
    }

    /// Remove an object. Returns the removed object.
    pub fn delete(&self, rt: &'static ResourceType, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut g = self.lock();
        let key = (rt.key, ns.to_string(), name.to_string());
        let old = g.objects.remove(&key).ok_or_else(|| ApiError::not_found(rt, name))?;
        g.rv += 1;
        let rv = g.rv;
        let mut gone = (*old).clone();
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        let gone = Arc::new(gone);
        self.record(&mut g, ChangeType::Deleted, rt, gone.clone());
        Ok(gone)
    }

    /// Changes after `rv` still in history, and a receiver for the ones to come. Fails with
    /// 410 Gone when `rv` is older than the history.
    pub fn watch_from(&self, rv: u64) -> Result<WatchStart, ApiError> {
        let g = self.lock();
        let rx = self.tx.subscribe();
        if rv < g.floor {
            return Err(ApiError::gone(format!("too old resource version: {rv} ({})", g.floor)));
        }
        if let Some(first) = g.history.front() {
            if rv + 1 < first.rv {
                return Err(ApiError::gone(format!("too old resource version: {rv} ({})", first.rv - 1)));
            }
        }
        let backlog = g.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((backlog, rx))
    }

    /// Ends every open watch and forgets the change history, as an apiserver restart does:
    /// a watcher resuming from its last resourceVersion gets `410 Gone` and must list again.
    pub fn cut_watches(&self) {
        let mut g = self.lock();
        g.rv += 1;
        g.floor = g.rv;
        g.history.clear();
        let _ = self.cut.send(());
    }

    /// A receiver told when watches are cut.
    pub fn cut_subscribe(&self) -> broadcast::Receiver<()> {
        self.cut.subscribe()
    }

    /// Removes an object without any watch event: a change a disconnected watcher missed.
    pub fn forget(&self, rt: &'static ResourceType, ns: &str, name: &str) -> Option<Arc<Value>> {
        let ns = if rt.namespaced { ns } else { "" };
        self.lock().objects.remove(&(rt.key, ns.to_string(), name.to_string()))
    }

    /// A receiver for all changes from now on (controllers).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

fn obj_has_spec(rt: &ResourceType) -> bool {
    !matches!(
        rt.plural,
        "configmaps"
            | "secrets"
            | "serviceaccounts"
            | "events"
            | "endpoints"
            | "services"
            | "roles"
            | "clusterroles"
            | "rolebindings"
            | "clusterrolebindings"
            | "namespaces"
            | "nodes"
    )
}
