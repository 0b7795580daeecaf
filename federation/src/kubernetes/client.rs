//! A `kube::Client` for the configured cluster.

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::config::KubernetesConfig;

/// Why no client could be made; names the file or the in-cluster setting that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubernetes.kubeconfig {path}: {detail}")]
    Kubeconfig { path: String, detail: String },
    #[error(
        "kubernetes: no kubeconfig set and not running in a pod ({0}); set kubernetes.kubeconfig"
    )]
    InCluster(String),
    #[error("kubernetes: cannot build a client: {0}")]
    Client(String),
}

/// A client from `kubernetes.kubeconfig` (its current context), or from the pod's service
/// account when none is set.
pub async fn client(cfg: &KubernetesConfig) -> Result<kube::Client, ClientError> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let bad = |detail: String| ClientError::Kubeconfig {
                path: path.display().to_string(),
                detail,
            };
            let file = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| ClientError::InCluster(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| ClientError::Client(e.to_string()))
}
