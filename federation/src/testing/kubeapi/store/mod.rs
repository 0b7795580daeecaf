//! The object store behind the stand-in: objects by (group, resource, namespace, name), one
//! global resourceVersion counter, a bounded history of events (watch resume, consistent
//! paging, 410 Gone once a resourceVersion falls out of it), a broadcast of new events to open
//! watches, and the server-side consequences of writes: finalizers, namespace deletion and
//! owner-reference garbage collection.
//!
//! Must not: do I/O or hold its lock across an `.await` (callers lock a `std::sync::Mutex`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::objects::{self, Part};
use super::resources::{self, ResourceDef};
use super::service::Allocations;
use super::status::ApiError;

mod delete;

/// Events kept for resuming watches and paging consistently.
const HISTORY: usize = 10_000;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventKind,
    pub def: &'static ResourceDef,
    /// The object after the change (for `Deleted`: its last state, carrying this event's rv).
    pub object: Value,
    /// The object before the change (none for `Added`).
    pub prev: Option<Value>,
}

/// How a delete treats the object's dependents (DeleteOptions.propagationPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The events after a resourceVersion, and a receiver for the ones to come.
pub type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

type Key = (&'static str, &'static str, String, String);

fn key(def: &ResourceDef, ns: Option<&str>, name: &str) -> Key {
    let ns = if def.namespaced { ns.unwrap_or("") } else { "" };
    (def.group, def.resource, ns.to_string(), name.to_string())
}

fn namespace_def() -> &'static ResourceDef {
    resources::RESOURCES
        .iter()
        .find(|r| r.resource == "namespaces")
        .unwrap_or(&resources::RESOURCES[0])
}

fn def_of(k: &Key) -> Option<&'static ResourceDef> {
    resources::RESOURCES
        .iter()
        .find(|r| r.group == k.0 && r.resource == k.1)
}

/// All objects and their history.
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Watches may start at any resourceVersion >= floor.
    floor: u64,
    tx: broadcast::Sender<Arc<Event>>,
    alloc: Allocations,
}

impl Store {
    /// A store holding the namespaces every cluster has.
    pub fn new() -> Store {
        let (tx, _) = broadcast::channel(HISTORY);
        let mut store = Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            floor: 0,
            tx,
            alloc: Allocations::default(),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            // The built-in namespaces are valid by construction.
            let _ = store.create(namespace_def(), None, obj);
        }
        store
    }

    /// The newest resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&key(def, ns, name))
    }

    fn range<'a>(
        &'a self,
        def: &'a ResourceDef,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.objects
            .range((def.group, def.resource, String::new(), String::new())..)
            .take_while(move |(k, _)| k.0 == def.group && k.1 == def.resource)
    }

    /// Objects of a type (in one namespace, or all), in key order.
    pub fn list(&self, def: &ResourceDef, ns: Option<&str>) -> Vec<Value> {
        self.range(def)
            .filter(|(k, _)| ns.is_none_or(|ns| k.2 == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Objects of a type as they were at resourceVersion `at` (consistent paging), or 410
    /// when that is older than the kept history.
    pub fn list_at(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        at: u64,
    ) -> Result<Vec<Value>, ApiError> {
        if at < self.floor {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ));
        }
        let mut state: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in self
            .range(def)
            .filter(|(k, _)| ns.is_none_or(|ns| k.2 == ns))
        {
            state.insert(format!("{}/{}", k.2, k.3), v.clone());
        }
        for event in self.history.iter().rev().take_while(|e| e.rv > at) {
            if event.def != def {
                continue;
            }
            let meta = event.prev.as_ref().unwrap_or(&event.object)["metadata"].clone();
            let obj_ns = meta["namespace"].as_str().unwrap_or("");
            if ns.is_some_and(|ns| ns != obj_ns) {
                continue;
            }
            let k = format!("{obj_ns}/{}", meta["name"].as_str().unwrap_or(""));
            match (&event.kind, &event.prev) {
                (EventKind::Added, _) => {
                    state.remove(&k);
                }
                (_, Some(prev)) => {
                    state.insert(k, prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(state.into_values().collect())
    }

    /// Events after `from` plus a receiver for the ones to come, taken atomically; 410 when
    /// `from` is older than the history.
    pub fn subscribe(&self, from: u64) -> Result<Subscription, ApiError> {
        if from < self.floor {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({})",
                self.floor + 1
            )));
        }
        let backlog = self
            .history
            .iter()
            .filter(|e| e.rv > from)
            .cloned()
            .collect();
        Ok((backlog, self.tx.subscribe()))
    }

    /// Forgets the history: every resourceVersion before now is too old to watch from.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    fn commit(
        &mut self,
        kind: EventKind,
        def: &'static ResourceDef,
        k: Key,
        mut object: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        match kind {
            EventKind::Deleted => {
                self.objects.remove(&k);
                if def.resource == "services" {
                    self.alloc.release(&object);
                }
            }
            _ => {
                self.objects.insert(k, object.clone());
            }
        }
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            def,
            object: object.clone(),
            prev,
        });
        if self.history.len() >= HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.floor = old.rv;
        }
        self.history.push_back(event.clone());
        // No receiver is fine: nobody watches.
        let _ = self.tx.send(event);
        object
    }

    /// POST: validates, fills metadata, stores.
    pub fn create(
        &mut self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        obj: Value,
    ) -> Result<Value, ApiError> {
        if def.namespaced {
            let ns = ns.unwrap_or("");
            if self.get(namespace_def(), None, ns).is_none() {
                return Err(ApiError::namespace_not_found(ns));
            }
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if !name.is_empty() && self.get(def, ns, &name).is_some() {
            // The real server validates first, then finds the duplicate; both are refusals.
            objects::check_body(def, ns, None, &obj)?;
            return Err(ApiError::already_exists(def, &name));
        }
        let prepared = objects::prepare_create(def, ns, obj, &mut self.alloc)?;
        let name = prepared["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if self.get(def, ns, &name).is_some() {
            self.alloc_release(def, &prepared);
            return Err(ApiError::already_exists(def, &name));
        }
        let out = self.commit(EventKind::Added, def, key(def, ns, &name), prepared, None);
        self.collect_garbage();
        Ok(out)
    }

    fn alloc_release(&mut self, def: &ResourceDef, obj: &Value) {
        if def.resource == "services" {
            self.alloc.release(obj);
        }
    }

    /// PUT (main resource or status): optimistic concurrency, immutable fields, no-op writes
    /// keep the resourceVersion and send no event.
    pub fn update(
        &mut self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        new: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        objects::check_body(def, ns, Some(name), &new)?;
        let Some(old) = self.get(def, ns, name).cloned() else {
            return Err(ApiError::not_found(def, name));
        };
        let prepared = objects::prepare_update(def, &old, new, part, &mut self.alloc)?;
        let mut unchanged = prepared.clone();
        unchanged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if unchanged == old {
            return Ok(old);
        }
        let finalized = !old["metadata"]["deletionTimestamp"].is_null()
            && prepared["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        let k = key(def, ns, name);
        let out = if finalized {
            self.commit(EventKind::Deleted, def, k, prepared, Some(old))
        } else {
            self.commit(EventKind::Modified, def, k, prepared, Some(old))
        };
        self.collect_garbage();
        Ok(out)
    }
}
