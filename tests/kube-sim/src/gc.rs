//! The simulated garbage collector.
//!
//! # Expected flow
//! - An object marked for deletion with the `orphan` finalizer: ownerReferences
//!   to it are removed from its dependents, then the finalizer, then it is gone.
//! - With `foregroundDeletion`: its dependents are deleted; once none with
//!   `blockOwnerDeletion: true` remain, the finalizer goes and so does it.
//! - A dependent whose every owner is absent (no object with that uid in its
//!   namespace) is deleted in the background.
//!
//! # Caveats
//! Dependents of a foreground deletion are deleted in the background (the real
//! collector deletes blocking dependents in the foreground too).

use crate::resource::{Resource, ALL};
use crate::sim::Sim;
use crate::status::ApiError;
use crate::store::{timestamp, Store};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Runs until aborted: a pass after each write, and every 200 ms.
pub async fn run(sim: Arc<Sim>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(200), sim.gc_wake.notified()).await;
        // Let the write that woke us settle, as the real collector works from its informers.
        tokio::time::sleep(Duration::from_millis(10)).await;
        collect(&sim.store);
    }
}

fn resource(plural: &str) -> Option<&'static Resource> {
    ALL.iter().copied().find(|r| r.plural == plural)
}

fn meta_str<'a>(o: &'a Value, f: &str) -> &'a str {
    o["metadata"][f].as_str().unwrap_or("")
}

fn owner_uids(o: &Value) -> Vec<String> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes with the Background policy: at once, or marked if it has finalizers.
fn delete_background(
    store: &Store,
    res: &'static Resource,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    let cur = store.get(res, ns, name)?;
    if cur["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        store.update(res, ns, name, |cur| {
            let mut n = cur.clone();
            if n["metadata"]["deletionTimestamp"].is_null() {
                n["metadata"]["deletionTimestamp"] = json!(timestamp());
                n["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            Ok(n)
        })?;
    } else {
        store.remove(res, ns, name)?;
    }
    Ok(())
}

fn drop_finalizer(
    store: &Store,
    res: &'static Resource,
    ns: &str,
    name: &str,
    fin: &str,
) -> Result<(), ApiError> {
    store.update(res, ns, name, |cur| {
        let mut n = cur.clone();
        if let Some(f) = n["metadata"]["finalizers"].as_array_mut() {
            f.retain(|v| v != fin);
            if f.is_empty() {
                n["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("finalizers"));
            }
        }
        Ok(n)
    })?;
    Ok(())
}

/// One pass over every object.
pub fn collect(store: &Store) {
    let all = store.all();
    let present: HashSet<(String, String)> = all
        .iter()
        .map(|(_, o)| {
            (
                meta_str(o, "namespace").to_string(),
                meta_str(o, "uid").to_string(),
            )
        })
        .collect();
    let dependents_of = |ns: &str, uid: &str| -> Vec<(&'static str, Value)> {
        all.iter()
            .filter(|(_, o)| {
                meta_str(o, "namespace") == ns && owner_uids(o).iter().any(|u| u == uid)
            })
            .cloned()
            .collect()
    };
    for (plural, o) in &all {
        let Some(res) = resource(plural) else {
            continue;
        };
        let (ns, name, uid) = (
            meta_str(o, "namespace"),
            meta_str(o, "name"),
            meta_str(o, "uid"),
        );
        let fins: Vec<&str> = o["metadata"]["finalizers"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // Errors here are races with API writers (object already gone or changed); the next pass retries.
        if !o["metadata"]["deletionTimestamp"].is_null() {
            if fins.contains(&"orphan") {
                for (dp, d) in dependents_of(ns, uid) {
                    let Some(dres) = resource(dp) else { continue };
                    let _ = store.update(dres, ns, meta_str(&d, "name"), |cur| {
                        let mut n = cur.clone();
                        if let Some(refs) = n["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|r| r["uid"] != uid);
                            if refs.is_empty() {
                                n["metadata"]
                                    .as_object_mut()
                                    .map(|m| m.remove("ownerReferences"));
                            }
                        }
                        Ok(n)
                    });
                }
                let _ = drop_finalizer(store, res, ns, name, "orphan");
            } else if fins.contains(&"foregroundDeletion") {
                let deps = dependents_of(ns, uid);
                for (dp, d) in &deps {
                    if d["metadata"]["deletionTimestamp"].is_null() {
                        if let Some(dres) = resource(dp) {
                            let _ = delete_background(store, dres, ns, meta_str(d, "name"));
                        }
                    }
                }
                let blocking = deps.iter().any(|(_, d)| {
                    d["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|a| {
                            a.iter()
                                .any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == true)
                        })
                });
                if !blocking {
                    let _ = drop_finalizer(store, res, ns, name, "foregroundDeletion");
                }
            }
        } else {
            let owners = owner_uids(o);
            if !owners.is_empty()
                && owners
                    .iter()
                    .all(|u| !present.contains(&(ns.to_string(), u.clone())))
            {
                let _ = delete_background(store, res, ns, name);
            }
        }
    }
}
