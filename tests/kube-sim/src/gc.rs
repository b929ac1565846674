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
//! # Cost
//! A pass reads the objects in place under the store lock and works out its
//! writes ([`Action`]s) from that one snapshot, with the dependents of the
//! owners being deleted found in a single scan; the writes are made after
//! the lock is released. After a pass the collector rests twice as long as
//! the pass took, so at tens of thousands of objects it takes at most about
//! a third of a core however fast writes wake it.
//!
//! # Caveats
//! Dependents of a foreground deletion are deleted in the background (the real
//! collector deletes blocking dependents in the foreground too).

use crate::resource::{Resource, ALL};
use crate::sim::Sim;
use crate::status::ApiError;
use crate::store::{timestamp, Key, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs until aborted: a pass after each write, and every 200 ms; after a
/// pass, a rest of twice its duration (writes during the rest are not lost:
/// the wake-up waits for the next pass).
pub async fn run(sim: Arc<Sim>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(200), sim.gc_wake.notified()).await;
        // Let the write that woke us settle, as the real collector works from its informers.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = Instant::now();
        collect(&sim.store);
        tokio::time::sleep(t.elapsed() * 2).await;
    }
}

fn resource(plural: &str) -> Option<&'static Resource> {
    ALL.iter().copied().find(|r| r.plural == plural)
}

fn meta_str<'a>(o: &'a Value, f: &str) -> &'a str {
    o["metadata"][f].as_str().unwrap_or("")
}

/// The uids of an object's ownerReferences (references without one skipped).
fn owner_uids(o: &Value) -> impl Iterator<Item = &str> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

fn finalizers(o: &Value) -> Vec<&str> {
    o["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

/// One write of a pass, worked out under the store lock and made after it.
#[derive(Debug, PartialEq)]
enum Action {
    /// Remove the ownerReferences to `owner` from a dependent (orphaning).
    Disown {
        res: &'static Resource,
        ns: String,
        name: String,
        owner: String,
    },
    /// Delete with the Background policy ([`delete_background`]).
    Delete {
        res: &'static Resource,
        ns: String,
        name: String,
    },
    /// Remove a finalizer ([`drop_finalizer`]).
    DropFinalizer {
        res: &'static Resource,
        ns: String,
        name: String,
        fin: &'static str,
    },
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
    // Errors are races with API writers (object already gone or changed); the next pass retries.
    for action in store.inspect(plan) {
        let _ = match action {
            Action::Disown {
                res,
                ns,
                name,
                owner,
            } => store
                .update(res, &ns, &name, |cur| {
                    let mut n = cur.clone();
                    if let Some(refs) = n["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != owner.as_str());
                        if refs.is_empty() {
                            n["metadata"]
                                .as_object_mut()
                                .map(|m| m.remove("ownerReferences"));
                        }
                    }
                    Ok(n)
                })
                .map(drop),
            Action::Delete { res, ns, name } => delete_background(store, res, &ns, &name),
            Action::DropFinalizer { res, ns, name, fin } => {
                drop_finalizer(store, res, &ns, &name, fin)
            }
        };
    }
}

/// The writes of one pass, in order, from one snapshot of the objects
/// (read in place: runs under the store lock).
fn plan(objects: &BTreeMap<Key, Value>) -> Vec<Action> {
    let present: HashSet<(&str, &str)> = objects
        .values()
        .map(|o| (meta_str(o, "namespace"), meta_str(o, "uid")))
        .collect();
    // Dependents of the owners being deleted with `orphan` or
    // `foregroundDeletion` ((namespace, uid) → dependents in key order),
    // found in one scan; nothing else needs them.
    let mut dependents: HashMap<(&str, &str), Vec<(&Key, &Value)>> = objects
        .values()
        .filter(|o| {
            deleting(o)
                && finalizers(o)
                    .iter()
                    .any(|f| *f == "orphan" || *f == "foregroundDeletion")
        })
        .map(|o| ((meta_str(o, "namespace"), meta_str(o, "uid")), Vec::new()))
        .collect();
    if !dependents.is_empty() {
        for (k, o) in objects {
            let ns = meta_str(o, "namespace");
            for (i, u) in owner_uids(o).enumerate() {
                // Once per owner, however many references name it.
                if owner_uids(o).take(i).any(|earlier| earlier == u) {
                    continue;
                }
                if let Some(deps) = dependents.get_mut(&(ns, u)) {
                    deps.push((k, o));
                }
            }
        }
    }
    let mut actions = Vec::new();
    for (k, o) in objects {
        let Some(res) = resource(k.0) else {
            continue;
        };
        let (ns, name, uid) = (
            meta_str(o, "namespace"),
            meta_str(o, "name"),
            meta_str(o, "uid"),
        );
        let deps = || dependents.get(&(ns, uid)).map_or(&[][..], Vec::as_slice);
        if deleting(o) {
            let fins = finalizers(o);
            if fins.contains(&"orphan") {
                for (dk, d) in deps() {
                    let Some(dres) = resource(dk.0) else { continue };
                    actions.push(Action::Disown {
                        res: dres,
                        ns: ns.to_string(),
                        name: meta_str(d, "name").to_string(),
                        owner: uid.to_string(),
                    });
                }
                actions.push(Action::DropFinalizer {
                    res,
                    ns: ns.to_string(),
                    name: name.to_string(),
                    fin: "orphan",
                });
            } else if fins.contains(&"foregroundDeletion") {
                let deps = deps();
                for (dk, d) in deps {
                    if !deleting(d) {
                        if let Some(dres) = resource(dk.0) {
                            actions.push(Action::Delete {
                                res: dres,
                                ns: ns.to_string(),
                                name: meta_str(d, "name").to_string(),
                            });
                        }
                    }
                }
                // Dependents deleted just now still block until a later pass sees them gone.
                let blocking = deps.iter().any(|(_, d)| {
                    d["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|a| {
                            a.iter()
                                .any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == true)
                        })
                });
                if !blocking {
                    actions.push(Action::DropFinalizer {
                        res,
                        ns: ns.to_string(),
                        name: name.to_string(),
                        fin: "foregroundDeletion",
                    });
                }
            }
        } else {
            let mut owners = owner_uids(o).peekable();
            if owners.peek().is_some() && owners.all(|u| !present.contains(&(ns, u))) {
                actions.push(Action::Delete {
                    res,
                    ns: ns.to_string(),
                    name: name.to_string(),
                });
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{CONFIGMAPS, JOBS, PODS};

    fn obj(res: &'static Resource, ns: &str, name: &str, uid: &str, meta: Value) -> (Key, Value) {
        let mut o = json!({"metadata": {"name": name, "namespace": ns, "uid": uid}});
        if let (Some(m), Some(extra)) = (o["metadata"].as_object_mut(), meta.as_object()) {
            m.extend(extra.clone());
        }
        ((res.plural, ns.to_string(), name.to_string()), o)
    }

    fn deleting_with(fin: &str) -> Value {
        json!({"deletionTimestamp": "2025-01-01T00:00:00Z", "finalizers": [fin]})
    }

    fn owned_by(uid: &str, block: bool) -> Value {
        json!({"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "x", "uid": uid, "controller": true, "blockOwnerDeletion": block}]})
    }

    fn delete(res: &'static Resource, ns: &str, name: &str) -> Action {
        Action::Delete {
            res,
            ns: ns.into(),
            name: name.into(),
        }
    }

    fn disown(res: &'static Resource, name: &str, owner: &str) -> Action {
        Action::Disown {
            res,
            ns: "a".into(),
            name: name.into(),
            owner: owner.into(),
        }
    }

    fn drop_fin(name: &str, fin: &'static str) -> Action {
        Action::DropFinalizer {
            res: &JOBS,
            ns: "a".into(),
            name: name.into(),
            fin,
        }
    }

    #[test]
    fn a_pass_plans_its_writes_from_one_snapshot_in_key_order() {
        let objects: BTreeMap<Key, Value> = [
            obj(
                &JOBS,
                "a",
                "fg",
                "u-fg",
                deleting_with("foregroundDeletion"),
            ),
            obj(
                &JOBS,
                "a",
                "fg-free",
                "u-free",
                deleting_with("foregroundDeletion"),
            ),
            obj(&JOBS, "a", "orph", "u-orph", deleting_with("orphan")),
            obj(&PODS, "a", "fg-1", "p1", owned_by("u-fg", true)),
            obj(&PODS, "a", "orph-1", "p2", owned_by("u-orph", true)),
            // Same owner uid, other namespace: not a dependent of a/fg, and dangling.
            obj(&PODS, "b", "fg-1", "p3", owned_by("u-fg", true)),
            obj(&CONFIGMAPS, "a", "free", "c1", owned_by("u-free", false)),
            obj(&CONFIGMAPS, "a", "kept", "c2", owned_by("u-orph", false)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            plan(&objects),
            vec![
                // a/fg: its blocking pod is deleted; the owner waits for a later pass.
                delete(&PODS, "a", "fg-1"),
                // a/fg-free: only a non-blocking dependent, so the finalizer goes now.
                delete(&CONFIGMAPS, "a", "free"),
                drop_fin("fg-free", "foregroundDeletion"),
                // a/orph: dependents in key order lose the reference, then the finalizer goes.
                disown(&CONFIGMAPS, "kept", "u-orph"),
                disown(&PODS, "orph-1", "u-orph"),
                drop_fin("orph", "orphan"),
                delete(&PODS, "b", "fg-1"),
            ]
        );
    }
}
