//! Deletion and its consequences: finalizers, preconditions, propagation policies, namespace
//! cleanup and owner-reference garbage collection.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::super::objects;
use super::super::resources::ResourceDef;
use super::super::status::ApiError;
use super::{EventKind, Key, Propagation, Store, def_of, key};

impl Store {
    /// DELETE. Returns the object and whether it is gone (false: it waits for finalizers).
    pub fn delete(
        &mut self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        propagation: Propagation,
        preconditions: &Value,
    ) -> Result<(Value, bool), ApiError> {
        let Some(old) = self.get(def, ns, name).cloned() else {
            return Err(ApiError::not_found(def, name));
        };
        for field in ["uid", "resourceVersion"] {
            if let Some(want) = preconditions[field].as_str()
                && Some(want) != old["metadata"][field].as_str()
            {
                return Err(ApiError::conflict(def, name));
            }
        }
        let k = key(def, ns, name);
        let uid = old["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if def.resource == "namespaces" {
            return Ok((self.delete_namespace(def, k, old), true));
        }
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Ok((old, false));
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(objects::now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok((
                self.commit(EventKind::Modified, def, k, marked, Some(old)),
                false,
            ));
        }
        let mut current = old;
        match propagation {
            Propagation::Orphan => self.orphan_dependents(&uid),
            Propagation::Foreground if !self.dependents(&uid).is_empty() => {
                let mut marked = current.clone();
                marked["metadata"]["deletionTimestamp"] = json!(objects::now());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                marked["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
                current = self.commit(EventKind::Modified, def, k.clone(), marked, Some(current));
                for dependent in self.dependents(&uid) {
                    self.delete_key(dependent);
                }
            }
            _ => {}
        }
        let out = self.commit(EventKind::Deleted, def, k, current.clone(), Some(current));
        self.collect_garbage();
        Ok((out, true))
    }

    /// A namespace goes Terminating, its contents go, then it goes.
    fn delete_namespace(&mut self, def: &'static ResourceDef, k: Key, old: Value) -> Value {
        let ns = k.3.clone();
        let mut terminating = old.clone();
        terminating["metadata"]["deletionTimestamp"] = json!(objects::now());
        terminating["status"]["phase"] = json!("Terminating");
        let current = self.commit(EventKind::Modified, def, k.clone(), terminating, Some(old));
        let contents: Vec<Key> = self
            .objects
            .keys()
            .filter(|key| key.1 != "namespaces" && key.2 == ns)
            .cloned()
            .collect();
        for key in contents {
            self.delete_key(key);
        }
        self.collect_garbage();
        let mut gone = current.clone();
        if let Some(spec) = gone["spec"].as_object_mut() {
            spec.insert("finalizers".to_string(), json!([]));
        }
        self.commit(EventKind::Deleted, def, k, gone, Some(current))
    }

    /// Deletes one object outright (garbage collection, namespace cleanup).
    fn delete_key(&mut self, k: Key) {
        let (Some(def), Some(obj)) = (def_of(&k), self.objects.get(&k).cloned()) else {
            return;
        };
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                let mut marked = obj.clone();
                marked["metadata"]["deletionTimestamp"] = json!(objects::now());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                self.commit(EventKind::Modified, def, k, marked, Some(obj));
            }
            return;
        }
        self.commit(EventKind::Deleted, def, k, obj.clone(), Some(obj));
    }

    fn owner_uids(obj: &Value) -> Vec<String> {
        obj["metadata"]["ownerReferences"]
            .as_array()
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| r["uid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn dependents(&self, uid: &str) -> Vec<Key> {
        self.objects
            .iter()
            .filter(|(_, v)| Self::owner_uids(v).iter().any(|u| u == uid))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn orphan_dependents(&mut self, uid: &str) {
        for k in self.dependents(uid) {
            let (Some(def), Some(obj)) = (def_of(&k), self.objects.get(&k).cloned()) else {
                continue;
            };
            let mut orphan = obj.clone();
            if let Some(refs) = orphan["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
            }
            self.commit(EventKind::Modified, def, k, orphan, Some(obj));
        }
    }

    /// The garbage collector: an object whose owners are all gone is deleted; dangling
    /// references next to a live owner are removed.
    pub(super) fn collect_garbage(&mut self) {
        loop {
            let live: HashSet<String> = self
                .objects
                .values()
                .filter_map(|v| v["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            let victim = self.objects.iter().find_map(|(k, v)| {
                let owners = Self::owner_uids(v);
                let dangling = owners.iter().filter(|u| !live.contains(*u)).count();
                let pending = !v["metadata"]["deletionTimestamp"].is_null();
                (dangling > 0 && !pending).then(|| (k.clone(), dangling == owners.len()))
            });
            let Some((k, all_gone)) = victim else {
                return;
            };
            if all_gone {
                self.delete_key(k);
            } else if let (Some(def), Some(obj)) = (def_of(&k), self.objects.get(&k).cloned()) {
                let mut trimmed = obj.clone();
                if let Some(refs) = trimmed["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"].as_str().is_some_and(|u| live.contains(u)));
                }
                self.commit(EventKind::Modified, def, k, trimmed, Some(obj));
            }
        }
    }
}
