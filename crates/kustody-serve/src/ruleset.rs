//! The rule set in use, as the console shows it, and the rules switched off from the console
//! (kept in the store as named state, so a restart keeps them off).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kustody_rules::Engine;
use kustody_store::Store;

/// The store's state name of the switched-off rules (a JSON array of names).
pub const DISABLED: &str = "disabled_rules";

pub struct RuleState {
    disabled: Mutex<BTreeSet<String>>,
    engine: Mutex<Arc<Engine>>,
    /// Bumped by every installed set (the console waits for its change to be loaded).
    pub generation: AtomicU64,
    pub loaded_ns: AtomicI64,
}

impl RuleState {
    pub fn new(engine: Arc<Engine>, disabled: BTreeSet<String>) -> RuleState {
        RuleState {
            disabled: Mutex::new(disabled),
            engine: Mutex::new(engine),
            generation: AtomicU64::new(1),
            loaded_ns: AtomicI64::new(crate::writer::now_ns()),
        }
    }

    /// The switched-off rules stored in `store` (none when never set or unreadable).
    pub fn stored_disabled(store: &dyn Store) -> BTreeSet<String> {
        store.state(DISABLED).ok().flatten().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.engine.lock().map(|e| e.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn disabled(&self) -> BTreeSet<String> {
        self.disabled.lock().map(|d| d.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Switches a rule on or off; the new set (to store, then reload).
    pub fn set(&self, name: &str, enabled: bool) -> BTreeSet<String> {
        let mut d = self.disabled.lock().unwrap_or_else(|p| p.into_inner());
        if enabled {
            d.remove(name);
        } else {
            d.insert(name.to_owned());
        }
        d.clone()
    }

    /// Takes another process's switches (detectors sharing a store); whether they differed.
    pub fn adopt(&self, stored: BTreeSet<String>) -> bool {
        let mut d = self.disabled.lock().unwrap_or_else(|p| p.into_inner());
        if *d == stored {
            return false;
        }
        *d = stored;
        true
    }

    /// A newly loaded set is in use.
    pub fn installed(&self, engine: Arc<Engine>) {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = engine;
        self.loaded_ns.store(crate::writer::now_ns(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
    }
}
