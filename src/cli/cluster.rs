//! `--kubeconfig` and `--namespace`: where the Kubernetes executor connects
//! (for `kedge run` and `kedge render`).

use std::path::PathBuf;

use clap::Args;

use super::Failure;
use crate::config::{self, ExecutorConfig, ExecutorKind};

/// Where the Kubernetes executor connects to; both override the config.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// kubeconfig file [default: the config's, else KUBECONFIG, ~/.kube/config, in-cluster]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the Jobs [default: the config's, else the kubeconfig context's]
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
}

impl ClusterArgs {
    /// The config's executor with these flags (and `kind`) applied.
    pub(super) fn apply(
        &self,
        kind: Option<ExecutorKind>,
        executor: &mut ExecutorConfig,
    ) -> Result<(), Failure> {
        let switched = match (kind, &*executor) {
            (Some(ExecutorKind::Kubernetes), ExecutorConfig::Local(_)) => {
                Some(ExecutorConfig::Kubernetes(Default::default()))
            }
            (Some(ExecutorKind::Local), ExecutorConfig::Kubernetes(_)) => {
                Some(ExecutorConfig::Local(Default::default()))
            }
            _ => None,
        };
        if let Some(e) = switched {
            *executor = e;
        }
        match executor {
            ExecutorConfig::Kubernetes(k) => {
                if let Some(path) = &self.kubeconfig {
                    k.kubeconfig = Some(path.clone());
                }
                if let Some(ns) = &self.namespace {
                    if !config::job::is_dns1123_label(ns) {
                        return Err(Failure::Input(format!(
                            "--namespace: \"{ns}\" is not a valid namespace name (lower-case letters, digits and '-', at most 63)"
                        )));
                    }
                    k.namespace = Some(ns.clone());
                }
                Ok(())
            }
            ExecutorConfig::Local(_) if self.kubeconfig.is_some() || self.namespace.is_some() => {
                Err(Failure::Input(
                    "--kubeconfig and --namespace need the kubernetes executor (--executor kubernetes, or executor.kind: kubernetes in the config)".into(),
                ))
            }
            ExecutorConfig::Local(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> ExecutorConfig {
        ExecutorConfig::Local(Default::default())
    }

    fn input_error(r: Result<(), Failure>) -> String {
        match r {
            Err(Failure::Input(msg)) => msg,
            other => panic!("not an input error: {other:?}"),
        }
    }

    #[test]
    fn the_kind_flag_switches_the_executor() {
        let none = ClusterArgs::default();
        let mut exec = local();
        none.apply(Some(ExecutorKind::Kubernetes), &mut exec)
            .unwrap();
        assert!(matches!(exec, ExecutorConfig::Kubernetes(_)));
        none.apply(None, &mut exec).unwrap();
        assert!(matches!(exec, ExecutorConfig::Kubernetes(_)));
        none.apply(Some(ExecutorKind::Local), &mut exec).unwrap();
        assert!(matches!(exec, ExecutorConfig::Local(_)));
    }

    #[test]
    fn cluster_flags_override_the_config() {
        let args = ClusterArgs {
            kubeconfig: Some("kc.yaml".into()),
            namespace: Some("jobs-1".into()),
        };
        let mut exec = local();
        args.apply(Some(ExecutorKind::Kubernetes), &mut exec)
            .unwrap();
        let ExecutorConfig::Kubernetes(k) = exec else {
            panic!("kubernetes")
        };
        assert_eq!(k.kubeconfig, Some(PathBuf::from("kc.yaml")));
        assert_eq!(k.namespace.as_deref(), Some("jobs-1"));
    }

    #[test]
    fn cluster_flags_are_checked() {
        let bad_ns = ClusterArgs {
            namespace: Some("Not_A_Name".into()),
            ..Default::default()
        };
        let msg = input_error(bad_ns.apply(Some(ExecutorKind::Kubernetes), &mut local()));
        assert!(
            msg.starts_with("--namespace: \"Not_A_Name\" is not a valid"),
            "{msg}"
        );
        let ns = ClusterArgs {
            namespace: Some("jobs".into()),
            ..Default::default()
        };
        let msg = input_error(ns.apply(None, &mut local()));
        assert!(
            msg.starts_with("--kubeconfig and --namespace need the kubernetes executor"),
            "{msg}"
        );
    }
}
