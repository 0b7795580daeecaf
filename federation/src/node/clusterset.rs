//! What every cluster exports of the services this cluster exports (ports, headless, first
//! export time), kept on a `watch` channel for the Kubernetes status writer's MCS `Conflict`
//! condition. Peers' summaries are read whether or not the import rules install them: a
//! conflict is a fact of the clusterset, not of what this cluster imports.

use std::sync::Arc;

use tokio::sync::watch;

use crate::kubernetes::exports::{ClustersetExports, ExportShape};
use crate::node::Node;
use crate::node::state::MeshState;

fn shapes(state: &MeshState) -> ClustersetExports {
    let mut out = ClustersetExports::new();
    for (key, svc) in state.local.exports.iter() {
        let mut v = vec![ExportShape {
            cluster: state.me.cluster.clone(),
            ports: svc.ports.clone(),
            headless: svc.headless,
            exported_at_ms: svc.exported_at_ms,
        }];
        for peer in state.peers.values() {
            if let Some(s) = peer.catalog.services.get(key) {
                v.push(ExportShape {
                    cluster: peer.place.cluster.clone(),
                    ports: s.ports.clone(),
                    headless: s.headless,
                    exported_at_ms: s.exported_at_ms,
                });
            }
        }
        out.insert(key.clone(), v);
    }
    out
}

/// Follows the node's published views (every local or peer change publishes one).
pub fn follow(node: Arc<Node>) -> watch::Receiver<Arc<ClustersetExports>> {
    let (tx, rx) = watch::channel(Arc::new(ClustersetExports::new()));
    tokio::spawn(async move {
        let mut views = node.view.subscribe();
        let mut stop = node.shutdown.clone();
        loop {
            let now = shapes(&*node.state.lock().await);
            if **tx.borrow() != now {
                tx.send_replace(Arc::new(now));
            }
            tokio::select! {
                r = views.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    rx
}
