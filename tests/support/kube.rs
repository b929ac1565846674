//! kube-sim, the Kubernetes API stand-in, started inside a test process on
//! its own tokio runtime (so the test body can block), with the views the
//! Kubernetes tests assert on.

use std::collections::BTreeMap;

use kube_sim::{KubeSim, SimConfig};

/// One stand-in serving on loopback; namespace `default`.
pub struct Cluster {
    pub sim: KubeSim,
    pub rt: tokio::runtime::Runtime,
}

impl Cluster {
    /// Starts a stand-in whose simulated delays run at `time_scale`.
    pub fn start(time_scale: f64) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let sim = rt
            .block_on(KubeSim::start(SimConfig {
                time_scale,
                ..Default::default()
            }))
            .expect("kube-sim");
        Cluster { sim, rt }
    }

    /// The Jobs in the namespace now.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        self.sim.objects("jobs", "default")
    }

    /// Names of the objects of `resource` left in the namespace.
    pub fn left(&self, resource: &str) -> Vec<String> {
        self.sim
            .objects(resource, "default")
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Successful Job creates per name (from the stand-in's create record).
    pub fn job_creates(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self
            .sim
            .creates_of("jobs")
            .into_iter()
            .filter(|r| r.created())
        {
            *m.entry(r.name).or_insert(0) += 1;
        }
        m
    }
}
