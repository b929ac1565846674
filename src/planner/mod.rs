//! The planner: which due runs may launch now, and how big each may be.
//! Pure — data in, decision out, no I/O — so it is tested without servers.
//!
//! - [`admit`] (this module): the limits — per job `max_active` (runs) and
//!   `max_pods` (the sum of its running runs' parallelism), named pools shared
//!   across jobs, and a global cap on running runs.
//! - [`sizing`]: the parallelism a run needs to finish inside its window.
//! - [`batching`]: which waiting messages go into one batch run.
//! - [`guards`]: load guards — hysteresis, throttle arithmetic and the
//!   conflict with a run's deadline.
//!
//! **Fair order.** When the global cap or a pool is the constraint, due
//! runs are taken by the job's `priority` (higher first), then round-robin
//! across jobs within a priority (the job served longest ago first), then
//! each job's own order (earliest deadline, then oldest): a backlog in one
//! job takes every free slot only while no other job has a due run.
//!
//! Usage is counted from the store (runs in state `running` and their
//! recorded parallelism), never only from memory, so limits hold across a
//! daemon restart. **A pool slot is one running run (one Job)**, whatever
//! its parallelism: pools bound how many Jobs hit a shared resource at once;
//! `max_pods` bounds the pods of one job.

pub mod batching;
pub mod guards;
pub mod sizing;

use std::collections::HashMap;

use crate::lifecycle::OperatorState;

/// A due run offered to the planner; each job's runs in the job's own
/// order (earliest deadline, then oldest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub run_id: &'a str,
    pub job: &'a str,
    /// The `kedge backfill` the run belongs to (its cap in [`Limits::backfills`]).
    pub backfill: Option<&'a str>,
}

/// One job's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCaps {
    /// Running runs at once (`None`: no per-job cap).
    pub max_active: Option<u32>,
    /// Pods at once, over all its running runs (`None`: no cap).
    pub max_pods: Option<u32>,
    /// The pool whose slots its runs take.
    pub pool: Option<String>,
    /// Pods a run needs at least (its fixed parallelism, or `sizing.parallelism.min`).
    pub min_pods: u32,
    /// Pods a run may use at most (its fixed parallelism, or `sizing.parallelism.max`).
    pub want_pods: u32,
    /// Higher goes first when slots are short.
    pub priority: i32,
}

/// The limits in force.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Per loaded job. A job missing here is not loaded and gets nothing.
    pub jobs: HashMap<String, JobCaps>,
    /// Pool name → slots.
    pub pools: HashMap<String, u32>,
    /// Running runs across all jobs.
    pub global: Option<u32>,
    /// Jobs whose pods have stayed Pending longer than their
    /// `limits.pending_timeout`: no new launches until they schedule.
    pub backpressured: std::collections::HashSet<String>,
    /// Jobs a load guard holds ([`guards`]): no new launches until it clears.
    pub guarded: std::collections::HashSet<String>,
    /// Runs let through their job's holding guard: at risk of missing
    /// their window, with `when_at_risk` saying the deadline wins (or
    /// that the run be settled at launch).
    pub let_through: std::collections::HashSet<String>,
    /// Jobs an operator paused, held or iced: none of their runs launches.
    pub stopped: HashMap<String, OperatorState>,
    /// Each active backfill's cap on its runs.
    pub backfills: HashMap<String, BackfillCaps>,
}

/// A backfill's cap ([`crate::store::BackfillCap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillCaps {
    /// Its runs running at once.
    pub max_active: u32,
    /// `--overlap forbid`: its runs launch only while no run of the job runs.
    pub exclusive: bool,
}

/// What is in use now, per job (from the store).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Running runs.
    pub running: HashMap<String, u32>,
    /// Pods of running runs.
    pub pods: HashMap<String, u32>,
    /// When each job last got a slot, as a sequence number (higher is more
    /// recent; a job never served has none): round-robin goes to the job
    /// served longest ago.
    pub served: HashMap<String, u64>,
    /// Running runs per backfill.
    pub backfill_running: HashMap<String, u32>,
}

/// Why a candidate was held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Its job is not loaded (file removed or invalid); the run waits.
    UnknownJob,
    /// The job's `max_active` (or its overlap policy) is reached.
    JobLimit,
    /// Fewer pods than the run needs are left under the job's `max_pods`.
    PodLimit,
    /// The job's pool has no free slot.
    PoolLimit,
    /// The global cap is reached.
    GlobalLimit,
    /// The job's pods are stuck Pending (pending-pod backpressure).
    Backpressure,
    /// An operator paused, held or iced the job.
    Operator(OperatorState),
    /// The run's backfill has `--max-active` runs running (or, with
    /// `--overlap forbid`, another run of the job runs).
    BackfillLimit,
    /// A load guard of the job holds (the dispatcher logs which).
    Guard,
}

impl Hold {
    /// Why the run waits, in words (for logs and operators).
    pub fn describe(self) -> &'static str {
        match self {
            Hold::UnknownJob => "its job is not loaded",
            Hold::JobLimit => "the job's max_active is reached",
            Hold::PodLimit => "too few pods left under the job's max_pods",
            Hold::PoolLimit => "the job's pool has no free slot",
            Hold::GlobalLimit => "the global max_active_runs is reached",
            Hold::Backpressure => "the job's pods are stuck Pending (backpressure)",
            Hold::Operator(OperatorState::Paused) => "an operator paused the job",
            Hold::Operator(OperatorState::Held) => "an operator put the job on hold",
            Hold::Operator(OperatorState::Iced) => "an operator put the job on ice",
            Hold::Operator(OperatorState::Active) => "the job is active",
            Hold::BackfillLimit => "its backfill's --max-active (or --overlap forbid) is reached",
            Hold::Guard => "a load guard of the job holds",
        }
    }
}

/// A run allowed to launch, with the most pods it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    pub run_id: &'a str,
    pub max_pods: u32,
}

/// The planner's answer: which candidates launch, which wait and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission<'a> {
    pub launch: Vec<Grant<'a>>,
    pub hold: Vec<(&'a str, Hold)>,
}

/// The fair order of `candidates` (see the module docs): by priority,
/// then by turn (each job's first run, then each job's second, …; within a
/// turn the job served longest ago first), then as given.
pub fn fair_order<'a>(
    candidates: &[Candidate<'a>],
    usage: &Usage,
    limits: &Limits,
) -> Vec<Candidate<'a>> {
    let mut turn: HashMap<&str, u32> = HashMap::new();
    // (−priority, turn within its job, when its job was last served, given position)
    type Key = (i32, u32, Option<u64>, usize);
    let mut keyed: Vec<(Key, &Candidate<'a>)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let t = turn.entry(c.job).or_default();
            let key = (
                -limits.jobs.get(c.job).map_or(0, |j| j.priority),
                *t,
                usage.served.get(c.job).copied(),
                i,
            );
            *t += 1;
            (key, c)
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, c)| c.clone()).collect()
}

/// Admits candidates in the fair order while every limit has room. Each
/// admitted run reserves every pod it may use (`Grant::max_pods`), so runs
/// sized after admission can never exceed `max_pods` together.
pub fn admit<'a>(candidates: &[Candidate<'a>], usage: &Usage, limits: &Limits) -> Admission<'a> {
    let candidates = fair_order(candidates, usage, limits);
    let mut running = usage.running.clone();
    let mut pods = usage.pods.clone();
    let mut backfill_running = usage.backfill_running.clone();
    let mut total: u32 = running.values().sum();
    let mut pool_used: HashMap<&str, u32> = HashMap::new();
    for (job, n) in &usage.running {
        if let Some(pool) = limits.jobs.get(job).and_then(|c| c.pool.as_deref()) {
            *pool_used.entry(pool).or_default() += n;
        }
    }
    let mut out = Admission::default();
    for c in &candidates {
        let Some(caps) = limits.jobs.get(c.job) else {
            out.hold.push((c.run_id, Hold::UnknownJob));
            continue;
        };
        if let Some(state) = limits.stopped.get(c.job) {
            out.hold.push((c.run_id, Hold::Operator(*state)));
            continue;
        }
        if limits.backpressured.contains(c.job) {
            out.hold.push((c.run_id, Hold::Backpressure));
            continue;
        }
        if limits.guarded.contains(c.job) && !limits.let_through.contains(c.run_id) {
            out.hold.push((c.run_id, Hold::Guard));
            continue;
        }
        if limits.global.is_some_and(|g| total >= g) {
            out.hold.push((c.run_id, Hold::GlobalLimit));
            continue;
        }
        let active = running.get(c.job).copied().unwrap_or(0);
        if caps.max_active.is_some_and(|cap| active >= cap) {
            out.hold.push((c.run_id, Hold::JobLimit));
            continue;
        }
        let backfill = c.backfill.and_then(|b| Some((b, limits.backfills.get(b)?)));
        if let Some((b, cap)) = backfill {
            let mine = backfill_running.get(b).copied().unwrap_or(0);
            if mine >= cap.max_active || (cap.exclusive && active > 0) {
                out.hold.push((c.run_id, Hold::BackfillLimit));
                continue;
            }
        }
        let pool = caps.pool.as_deref();
        if let Some(p) = pool {
            // An unknown pool (validation prevents it) has no slots.
            let slots = limits.pools.get(p).copied().unwrap_or(0);
            if pool_used.get(p).copied().unwrap_or(0) >= slots {
                out.hold.push((c.run_id, Hold::PoolLimit));
                continue;
            }
        }
        let used_pods = pods.get(c.job).copied().unwrap_or(0);
        let want = caps.want_pods.max(1);
        let grant = match caps.max_pods {
            Some(m) => want.min(m.saturating_sub(used_pods)),
            None => want,
        };
        if grant < caps.min_pods.max(1) {
            out.hold.push((c.run_id, Hold::PodLimit));
            continue;
        }
        *running.entry(c.job.to_string()).or_default() += 1;
        *pods.entry(c.job.to_string()).or_default() += grant;
        if let Some(p) = pool {
            *pool_used.entry(p).or_default() += 1;
        }
        if let Some((b, _)) = backfill {
            *backfill_running.entry(b.to_string()).or_default() += 1;
        }
        total += 1;
        out.launch.push(Grant {
            run_id: c.run_id,
            max_pods: grant,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caps(max_active: Option<u32>) -> JobCaps {
        JobCaps {
            max_active,
            min_pods: 1,
            want_pods: 1,
            ..JobCaps::default()
        }
    }

    fn ids(a: &Admission) -> Vec<String> {
        a.launch.iter().map(|g| g.run_id.to_string()).collect()
    }

    fn cand<'a>(run_id: &'a str, job: &'a str) -> Candidate<'a> {
        Candidate {
            run_id,
            job,
            backfill: None,
        }
    }

    #[test]
    fn stopped_jobs_launch_nothing_and_a_backfill_keeps_to_its_cap() {
        let bf = |run_id: &'static str, job: &'static str| Candidate {
            run_id,
            job,
            backfill: Some("bf-1"),
        };
        let cands = [
            cand("p1", "paused"),
            bf("b1", "etl"),
            bf("b2", "etl"),
            bf("b3", "etl"),
            cand("e1", "etl"),
        ];
        let mut limits = Limits {
            jobs: [
                ("paused".to_string(), caps(None)),
                ("etl".to_string(), caps(None)),
            ]
            .into(),
            stopped: [("paused".to_string(), OperatorState::Paused)].into(),
            backfills: [(
                "bf-1".to_string(),
                BackfillCaps {
                    max_active: 2,
                    exclusive: false,
                },
            )]
            .into(),
            ..Limits::default()
        };
        // One of the backfill's runs runs already: one more may start.
        let usage = Usage {
            backfill_running: [("bf-1".to_string(), 1)].into(),
            ..Usage::default()
        };
        let got = admit(&cands, &usage, &limits);
        assert_eq!(ids(&got), ["b1", "e1"]);
        assert_eq!(
            got.hold,
            [
                ("p1", Hold::Operator(OperatorState::Paused)),
                ("b2", Hold::BackfillLimit),
                ("b3", Hold::BackfillLimit)
            ]
        );
        // overlap forbid: only while no run of the job runs.
        limits.backfills.get_mut("bf-1").unwrap().exclusive = true;
        let usage = Usage::default();
        assert_eq!(ids(&admit(&cands[1..], &usage, &limits)), ["b1", "e1"]);
        let busy = Usage {
            running: [("etl".to_string(), 1)].into(),
            ..Usage::default()
        };
        assert_eq!(ids(&admit(&cands[1..], &busy, &limits)), ["e1"]);
    }

    #[test]
    fn holds_back_by_job_global_and_unknown() {
        let cands = [
            cand("a1", "a"),
            cand("a2", "a"),
            cand("b1", "b"),
            cand("x1", "x"),
            cand("b2", "b"),
            cand("b3", "b"),
        ];
        let usage = Usage {
            running: [("b".to_string(), 1)].into(),
            ..Usage::default()
        };
        let limits = Limits {
            jobs: [
                ("a".to_string(), caps(Some(1))),
                ("b".to_string(), caps(None)),
            ]
            .into(),
            global: Some(4),
            ..Limits::default()
        };
        let got = admit(&cands, &usage, &limits);
        // Taken in turns: a1 b1 x1, then a2 b2, then b3.
        assert_eq!(ids(&got), vec!["a1", "b1", "b2"]);
        assert_eq!(
            got.hold,
            vec![
                ("x1", Hold::UnknownJob),
                ("a2", Hold::JobLimit),
                ("b3", Hold::GlobalLimit)
            ]
        );
    }

    #[test]
    fn a_guarded_job_is_held_except_the_runs_let_through() {
        let cands = [cand("a1", "a"), cand("a2", "a"), cand("b1", "b")];
        let limits = Limits {
            jobs: [("a".to_string(), caps(None)), ("b".to_string(), caps(None))].into(),
            guarded: ["a".to_string()].into(),
            ..Limits::default()
        };
        let got = admit(&cands, &Usage::default(), &limits);
        assert_eq!(ids(&got), ["b1"]);
        assert_eq!(got.hold, [("a1", Hold::Guard), ("a2", Hold::Guard)]);
        let limits = Limits {
            let_through: ["a2".to_string()].into(),
            ..limits
        };
        let got = admit(&cands, &Usage::default(), &limits);
        assert_eq!(ids(&got), ["b1", "a2"]);
        assert_eq!(got.hold, [("a1", Hold::Guard)]);
    }

    /// The scenario of a backlog next to a cron job: every free slot goes
    /// to the job served longest ago first, so the cron fire is not stuck
    /// behind older messages; without other due runs the backlog takes all.
    #[test]
    fn a_backlog_shares_free_slots_with_other_jobs_in_turns() {
        let backlog: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        let mut cands: Vec<Candidate> = backlog.iter().map(|id| cand(id, "queue")).collect();
        cands.push(cand("fire", "cron"));
        let limits = Limits {
            jobs: [
                ("queue".to_string(), caps(None)),
                ("cron".to_string(), caps(None)),
            ]
            .into(),
            global: Some(8),
            ..Limits::default()
        };
        // One slot free, the backlog was served last: the cron fire gets it.
        let usage = Usage {
            running: [("queue".to_string(), 7)].into(),
            served: [("queue".to_string(), 41), ("cron".to_string(), 12)].into(),
            ..Usage::default()
        };
        assert_eq!(ids(&admit(&cands, &usage, &limits)), ["fire"]);
        // Never served counts as longest ago.
        let usage = Usage {
            running: [("queue".to_string(), 7)].into(),
            served: [("queue".to_string(), 41)].into(),
            ..Usage::default()
        };
        assert_eq!(ids(&admit(&cands, &usage, &limits)), ["fire"]);
        // Three slots: the fire, then the backlog in its own order.
        let usage = Usage {
            running: [("queue".to_string(), 5)].into(),
            ..Usage::default()
        };
        assert_eq!(ids(&admit(&cands, &usage, &limits)), ["m0", "fire", "m1"]);
        // Alone, the backlog takes every slot.
        let usage = Usage::default();
        assert_eq!(ids(&admit(&cands[..10], &usage, &limits)).len(), 8);
    }

    #[test]
    fn a_higher_priority_goes_first_whatever_the_turn() {
        let cands = [
            cand("l1", "low"),
            cand("l2", "low"),
            cand("h1", "high"),
            cand("h2", "high"),
        ];
        let mut high = caps(None);
        high.priority = 5;
        let limits = Limits {
            jobs: [("low".to_string(), caps(None)), ("high".to_string(), high)].into(),
            global: Some(3),
            ..Limits::default()
        };
        let got = admit(&cands, &Usage::default(), &limits);
        assert_eq!(ids(&got), ["h1", "h2", "l1"]);
        assert_eq!(got.hold, [("l2", Hold::GlobalLimit)]);
    }

    #[test]
    fn a_job_with_pods_stuck_pending_gets_no_new_launches() {
        let limits = Limits {
            jobs: [("a".to_string(), caps(None)), ("b".to_string(), caps(None))].into(),
            backpressured: ["a".to_string()].into(),
            ..Limits::default()
        };
        let cands = [
            Candidate {
                run_id: "a1",
                job: "a",
                backfill: None,
            },
            Candidate {
                run_id: "b1",
                job: "b",
                backfill: None,
            },
        ];
        let got = admit(&cands, &Usage::default(), &limits);
        assert_eq!(ids(&got), vec!["b1"]);
        assert_eq!(got.hold, vec![("a1", Hold::Backpressure)]);
    }

    #[test]
    fn pools_are_shared_and_pods_are_reserved() {
        let pooled = |pool: &str| JobCaps {
            pool: Some(pool.into()),
            ..caps(None)
        };
        let limits = Limits {
            jobs: [
                ("a".to_string(), pooled("db")),
                ("b".to_string(), pooled("db")),
                (
                    "c".to_string(),
                    JobCaps {
                        max_pods: Some(10),
                        min_pods: 2,
                        want_pods: 6,
                        ..JobCaps::default()
                    },
                ),
            ]
            .into(),
            pools: [("db".to_string(), 2)].into(),
            global: None,
            ..Limits::default()
        };
        let cands = [
            Candidate {
                run_id: "a1",
                job: "a",
                backfill: None,
            },
            Candidate {
                run_id: "b1",
                job: "b",
                backfill: None,
            },
            Candidate {
                run_id: "a2",
                job: "a",
                backfill: None,
            },
            Candidate {
                run_id: "c1",
                job: "c",
                backfill: None,
            },
            Candidate {
                run_id: "c2",
                job: "c",
                backfill: None,
            },
            Candidate {
                run_id: "c3",
                job: "c",
                backfill: None,
            },
        ];
        let usage = Usage {
            running: [("a".to_string(), 1)].into(),
            pods: [("a".to_string(), 1)].into(),
            ..Usage::default()
        };
        let got = admit(&cands, &usage, &limits);
        // One db slot left: a1, first in line, takes it; b1 waits although its
        // own job has nothing running. c1 gets 6 pods, c2 the 4 left, c3 none.
        assert_eq!(
            got.launch,
            vec![
                Grant {
                    run_id: "a1",
                    max_pods: 1
                },
                Grant {
                    run_id: "c1",
                    max_pods: 6
                },
                Grant {
                    run_id: "c2",
                    max_pods: 4
                }
            ]
        );
        assert_eq!(
            got.hold,
            vec![
                ("b1", Hold::PoolLimit),
                ("a2", Hold::PoolLimit),
                ("c3", Hold::PodLimit)
            ]
        );
    }

    proptest! {
        #[test]
        fn limits_are_never_exceeded(
            jobs in proptest::collection::vec(
                (proptest::option::of(1u32..4), proptest::option::of(1u32..12), proptest::option::of(0usize..2), 1u32..4, 0u32..4),
                1..5),
            running in proptest::collection::vec((0u32..3, 0u32..6), 5),
            cands in proptest::collection::vec(0usize..6, 0..24),
            pool_slots in proptest::collection::vec(1u32..4, 2),
            global in proptest::option::of(1u32..10),
        ) {
            let names = ["j0", "j1", "j2", "j3", "j4", "j5"];
            let pool_names = ["p0", "p1"];
            let limits = Limits {
                jobs: jobs.iter().enumerate().map(|(i, (ma, mp, pool, min, extra))| (names[i].to_string(), JobCaps {
                    priority: 0,
                    max_active: *ma,
                    max_pods: *mp,
                    pool: pool.map(|p| pool_names[p].to_string()),
                    min_pods: *min,
                    want_pods: min + extra,
                })).collect(),
                pools: pool_names.iter().zip(&pool_slots).map(|(n, s)| (n.to_string(), *s)).collect(),
                global,
                ..Limits::default()
            };
            let usage = Usage {
                running: running.iter().enumerate().map(|(i, (r, _))| (names[i].to_string(), *r)).collect(),
                pods: running.iter().enumerate().map(|(i, (r, p))| (names[i].to_string(), r * p)).collect(),
                ..Usage::default()
            };
            let ids: Vec<String> = (0..cands.len()).map(|i| format!("r{i}")).collect();
            let candidates: Vec<Candidate> = cands.iter().enumerate()
                .map(|(i, j)| Candidate { run_id: &ids[i], job: names[*j], backfill: None }).collect();
            let got = admit(&candidates, &usage, &limits);
            prop_assert_eq!(got.launch.len() + got.hold.len(), candidates.len());
            let job_of = |id: &str| candidates.iter().find(|c| c.run_id == id).map(|c| c.job).unwrap();
            let before: u32 = usage.running.values().sum();
            if let Some(g) = global {
                prop_assert!(got.launch.len() as u32 <= g.saturating_sub(before));
            }
            for (job, caps) in &limits.jobs {
                let mine: Vec<&Grant> = got.launch.iter().filter(|g| job_of(g.run_id) == job).collect();
                let run0 = usage.running.get(job).copied().unwrap_or(0);
                let pods0 = usage.pods.get(job).copied().unwrap_or(0);
                if let Some(ma) = caps.max_active {
                    prop_assert!(mine.len() as u32 <= ma.saturating_sub(run0));
                }
                if let Some(mp) = caps.max_pods {
                    let granted: u32 = mine.iter().map(|g| g.max_pods).sum();
                    prop_assert!(granted <= mp.saturating_sub(pods0));
                }
                for g in &mine {
                    prop_assert!(g.max_pods >= caps.min_pods && g.max_pods <= caps.want_pods);
                }
            }
            for (pool, slots) in &limits.pools {
                let in_pool = |j: &str| limits.jobs.get(j).and_then(|c| c.pool.as_deref()) == Some(pool.as_str());
                let used0: u32 = usage.running.iter().filter(|(j, _)| in_pool(j)).map(|(_, n)| n).sum();
                let added = got.launch.iter().filter(|g| in_pool(job_of(g.run_id))).count() as u32;
                prop_assert!(added <= slots.saturating_sub(used0));
            }
            for c in &candidates {
                if !limits.jobs.contains_key(c.job) {
                    prop_assert!(!got.launch.iter().any(|g| g.run_id == c.run_id));
                }
            }
        }
    }
}
