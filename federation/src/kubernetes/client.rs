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

/// An error with its causes, outermost first (`ServiceError: client error (Connect): tcp
/// connect error: Connection refused (os error 111)`): kube's own message alone often names
/// only the layer that failed. A cause already contained in the text so far is skipped.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = Layer {
            text: "client error (Connect)",
            source: Some(Box::new(Layer {
                text: "tcp connect error",
                source: Some(Box::new(Layer {
                    text: "Connection refused (os error 111)",
                    source: None,
                })),
            })),
        };
        assert_eq!(
            error_chain(&e),
            "client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
        let repeated = Layer {
            text: "tcp connect error: refused",
            source: Some(Box::new(Layer {
                text: "refused",
                source: None,
            })),
        };
        assert_eq!(error_chain(&repeated), "tcp connect error: refused");
    }
}
