//! The object store: one global resourceVersion counter, the objects, and a
//! bounded history of change events that watches and list continuations are
//! served from.
//!
//! # Guarantees
//! - Every write (create, update, delete) takes the next resourceVersion.
//! - Events are appended to the history and broadcast under the same lock as
//!   the write, so a watch that subscribes under the lock sees no gap.
//! - The history keeps every event newer than `compacted`; anything asked
//!   from before that is answered with 410 Expired.
//! - A no-op update (nothing changed) writes nothing, as etcd3's store does.

use crate::resource::Resource;
use crate::status::ApiError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// `(plural, namespace, name)`; namespace is `""` for cluster-scoped objects.
pub type Key = (&'static str, String, String);

/// What kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

/// One stored change. `object` is the new state (for Deleted: the last state
/// stamped with the deletion's resourceVersion); `old` is the prior state.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: &'static Resource,
    pub namespace: String,
    pub change: Change,
    pub object: Value,
    pub old: Option<Value>,
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    /// Every event with rv > compacted is still in `history`.
    compacted: u64,
    history_limit: usize,
}

/// The store shared by the API handlers and the simulated controllers.
pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Event>>,
}

/// What a watch starts from: the backlog to replay, then the live receiver.
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    /// The current objects when the watch started from "now" (rv unset or "0").
    pub initial: Vec<Value>,
    pub start_rv: u64,
    pub rx: broadcast::Receiver<Arc<Event>>,
}

pub fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_rv(obj: &mut Value, rv: u64) {
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// RFC 3339 seconds, as `metav1.Time` serialises.
pub fn timestamp() -> String {
    now()
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(65536);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 1,
                history_limit,
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, inner: &mut Inner, ev: Event) {
        let ev = Arc::new(ev);
        inner.history.push_back(ev.clone());
        while inner.history.len() > inner.history_limit {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// The latest resourceVersion handed out.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Drops all history: every watch or continue from an older version gets 410.
    pub fn expire_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted = inner.rv;
    }

    /// Changes how many events are kept.
    pub fn set_history_limit(&self, limit: usize) {
        self.lock().history_limit = limit;
    }

    /// Stores a new object; fills uid, creationTimestamp, resourceVersion, generation.
    pub fn create(
        &self,
        resource: &'static Resource,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut inner = self.lock();
        let key = (resource.plural, namespace.to_string(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists { resource, name });
        }
        inner.rv += 1;
        let rv = inner.rv;
        let meta = &mut obj["metadata"];
        if meta["uid"].as_str().is_none() {
            meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        }
        meta["creationTimestamp"] = json!(now());
        if resource.has_generation {
            meta["generation"] = json!(1);
        }
        set_rv(&mut obj, rv);
        inner.objects.insert(key, obj.clone());
        let namespace = namespace.to_string();
        self.emit(
            &mut inner,
            Event {
                rv,
                resource,
                namespace,
                change: Change::Added,
                object: obj.clone(),
                old: None,
            },
        );
        Ok(obj)
    }

    pub fn get(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&(resource.plural, namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::NotFound {
                resource,
                name: name.to_string(),
            })
    }

    /// Every object of a resource (in one namespace, or all), sorted by key, with the snapshot rv.
    pub fn list(&self, resource: &'static Resource, namespace: Option<&str>) -> (u64, Vec<Value>) {
        let inner = self.lock();
        (inner.rv, select(&inner.objects, resource, namespace))
    }

    /// How many objects of a resource are stored, in every namespace; counted
    /// over the resource's key range, nothing copied.
    pub fn count(&self, resource: &'static Resource) -> usize {
        self.lock()
            .objects
            .range((resource.plural, String::new(), String::new())..)
            .take_while(|(k, _)| k.0 == resource.plural)
            .count()
    }

    /// The objects as they were at `rv`, rebuilt by undoing later events; 410 if that history is gone.
    pub fn list_at(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        rv: u64,
    ) -> Result<Vec<Value>, ApiError> {
        let inner = self.lock();
        if rv < inner.compacted {
            return Err(ApiError::ContinueExpired);
        }
        let mut objects: BTreeMap<Key, Value> = inner
            .objects
            .iter()
            .filter(|(k, _)| k.0 == resource.plural)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ev in inner.history.iter().rev().take_while(|e| e.rv > rv) {
            if ev.resource != resource {
                continue;
            }
            let name = ev.object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let key = (resource.plural, ev.namespace.clone(), name);
            match &ev.old {
                Some(old) => {
                    objects.insert(key, old.clone());
                }
                None => {
                    objects.remove(&key);
                }
            }
        }
        Ok(select(&objects, resource, namespace))
    }

    /// Read-modify-write under the lock. `f` gets the current object and
    /// returns the new one; the store stamps the next resourceVersion. An
    /// object with a deletionTimestamp and no finalizers left is removed.
    pub fn update<F>(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
        f: F,
    ) -> Result<Value, ApiError>
    where
        F: FnOnce(&Value) -> Result<Value, ApiError>,
    {
        let mut inner = self.lock();
        let key = (resource.plural, namespace.to_string(), name.to_string());
        // `f` works on the stored object by reference; nothing is copied
        // unless the update is a no-op (the answer is then the stored object).
        let current = inner.objects.get(&key).ok_or_else(|| ApiError::NotFound {
            resource,
            name: name.to_string(),
        })?;
        let mut new = f(current)?;
        set_rv(&mut new, rv_of(current));
        if new == *current {
            return Ok(current.clone());
        }
        inner.rv += 1;
        let rv = inner.rv;
        set_rv(&mut new, rv);
        let finalizers_empty = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        let ns = namespace.to_string();
        // The prior state moves out of the map into the event's `old`.
        let (change, old) = if !new["metadata"]["deletionTimestamp"].is_null() && finalizers_empty {
            (Change::Deleted, inner.objects.remove(&key))
        } else {
            (Change::Modified, inner.objects.insert(key, new.clone()))
        };
        self.emit(
            &mut inner,
            Event {
                rv,
                resource,
                namespace: ns,
                change,
                object: new.clone(),
                old,
            },
        );
        Ok(new)
    }

    /// Removes an object at once; the DELETED event carries its last state
    /// stamped with the deletion's resourceVersion.
    pub fn remove(
        &self,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (resource.plural, namespace.to_string(), name.to_string());
        let current = inner
            .objects
            .remove(&key)
            .ok_or_else(|| ApiError::NotFound {
                resource,
                name: name.to_string(),
            })?;
        inner.rv += 1;
        let rv = inner.rv;
        let mut last = current.clone();
        set_rv(&mut last, rv);
        let ns = namespace.to_string();
        self.emit(
            &mut inner,
            Event {
                rv,
                resource,
                namespace: ns,
                change: Change::Deleted,
                object: last.clone(),
                old: Some(current),
            },
        );
        Ok(last)
    }

    /// Runs `f` over every stored object of every resource, by reference and
    /// under the lock, so a caller that only reads (the garbage collector
    /// working out its writes) copies nothing. Writers wait while `f` runs,
    /// so keep it short; `f` must not call back into the store (the lock is
    /// not reentrant).
    pub fn inspect<R>(&self, f: impl FnOnce(&BTreeMap<Key, Value>) -> R) -> R {
        f(&self.lock().objects)
    }

    /// Starts a watch. `from`: `None` for "now with the current objects
    /// first", `Some(rv)` for every event after rv (410 if gone).
    pub fn subscribe(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        from: Option<u64>,
    ) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        match from {
            None => Ok(Subscription {
                backlog: Vec::new(),
                initial: select(&inner.objects, resource, namespace),
                start_rv: inner.rv,
                rx,
            }),
            Some(rv) if rv < inner.compacted => Err(ApiError::Expired {
                requested: rv,
                oldest: inner.compacted,
            }),
            Some(rv) => Ok(Subscription {
                backlog: inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .cloned()
                    .collect(),
                initial: Vec::new(),
                start_rv: rv,
                rx,
            }),
        }
    }

    /// A receiver of every future event (for controllers).
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

fn select(
    objects: &BTreeMap<Key, Value>,
    resource: &'static Resource,
    namespace: Option<&str>,
) -> Vec<Value> {
    objects
        .iter()
        .filter(|(k, _)| k.0 == resource.plural && namespace.is_none_or(|ns| k.1 == ns))
        .map(|(_, v)| v.clone())
        .collect()
}
