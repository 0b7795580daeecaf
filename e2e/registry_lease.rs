//! Scenario 3: a VM registers an endpoint with a workload certificate it obtained through
//! `isthmus workload issue` (the key never leaves the VM); the peer sees one healthy endpoint,
//! and zero once the VM stops heartbeating. A certificate for another service account is refused.

use std::time::Duration;

use isthmus_federation::identity::tls::{self, ALPN_H2};
use isthmus_federation::identity::{CertStore, SpiffeId, SpiffeServerVerifier, TrustStore};
use isthmus_federation::proto::registry_client::RegistryClient;
use isthmus_federation::proto::{self, HeartbeatRequest, RegisterEndpointRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::harness::fake_peer::{bundle_of, channel, td};
use crate::harness::{Federation, IMPORT_ALL, Spec, catalog, healthy, peer_via_cli};

const VM_EXPORT: &str = "  - namespace: shop\n    name: vm\n    ports: [{port: 8080, protocol: http}]\n    registrants: [vm]\n";

/// A workload credential for `ns/shop/sa/<sa>` from east; the CSR goes through the CLI.
async fn workload_cert(east: &Federation, sa: &str) -> CertStore {
    let id = SpiffeId::workload(&td("east.mesh"), "shop", sa).expect("id");
    let (key, csr) = tls::generate_key_and_csr(&id).expect("csr");
    let csr_path = east.dir.join(format!("{sa}.csr"));
    std::fs::write(&csr_path, &csr).expect("write csr");
    let out_path = east.dir.join(format!("{sa}.pem"));
    east.cli_ok(&[
        "workload",
        "issue",
        "--namespace",
        "shop",
        "--service-account",
        sa,
        "--csr",
        csr_path.to_str().expect("utf-8"),
        "--out",
        out_path.to_str().expect("utf-8"),
    ])
    .await;
    let chain = std::fs::read_to_string(&out_path).expect("read chain");
    let certs = CertStore::new();
    certs.set_from_pem(&chain, &key).expect("cert + key");
    assert_eq!(certs.id(), Some(id));
    certs
}

async fn registry(east: &Federation, certs: &CertStore) -> RegistryClient<Channel> {
    let trust = TrustStore::new();
    trust.set(bundle_of(east).await);
    let verifier = SpiffeServerVerifier::for_trust_domain(trust, td("east.mesh")).into_arc();
    let config = tls::client_config(Some(certs), verifier, &[ALPN_H2]).expect("client config");
    RegistryClient::new(
        channel(east.api, config)
            .await
            .expect("connect to the API port"),
    )
}

fn request(ttl_seconds: u32) -> RegisterEndpointRequest {
    RegisterEndpointRequest {
        service: Some(proto::ServiceKey {
            namespace: "shop".into(),
            name: "vm".into(),
        }),
        address: "10.9.8.7:8080".into(),
        zone: String::new(),
        weight: 0,
        ttl_seconds,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_registration_lease() {
    let east = Federation::start(
        Spec::new("east", 41)
            .extra(
                json!({ "registry": { "min_ttl": "1s", "default_ttl": "2s", "max_ttl": "60s" } }),
            )
            .catalog(&catalog(&[VM_EXPORT.to_string()], IMPORT_ALL)),
    )
    .await;
    let west = Federation::start(Spec::new("west", 42).catalog(&catalog(&[], IMPORT_ALL))).await;
    peer_via_cli(&east, &west).await;
    west.wait_catalog("west imports shop/vm with 0 healthy endpoints", |c| {
        healthy(c, "shop/vm", "east") == Some(0)
    })
    .await;

    // A certificate for another service account of the namespace is refused.
    let other = workload_cert(&east, "other").await;
    let refused = registry(&east, &other).await.register(request(2)).await;
    match refused {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => east.fail(&format!("ns/shop/sa/other registered: {other:?}")),
    }

    // The registrant registers with a 2 s lease and heartbeats every 500 ms.
    let vm = workload_cert(&east, "vm").await;
    let mut client = registry(&east, &vm).await;
    let reg = match client.register(request(2)).await {
        Ok(r) => r.into_inner(),
        Err(s) => east.fail(&format!("register: {s:?}")),
    };
    assert_eq!(reg.ttl_seconds, 2, "the granted lease");
    let id = reg.registration_id.clone();
    let mut hb_client = client.clone();
    let heartbeats = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Err(s) = hb_client
                .heartbeat(HeartbeatRequest {
                    registration_id: id.clone(),
                })
                .await
            {
                return s;
            }
        }
    });
    west.wait_catalog("west sees 1 healthy endpoint of shop/vm at east", |c| {
        healthy(c, "shop/vm", "east") == Some(1)
    })
    .await;
    // Still there a lease and a half later: the heartbeats keep it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = west.catalog().await;
    assert_eq!(
        healthy(&c, "shop/vm", "east"),
        Some(1),
        "the endpoint expired despite heartbeats"
    );
    assert!(
        !heartbeats.is_finished(),
        "a heartbeat failed: {:?}",
        heartbeats.await
    );

    // The VM stops heartbeating: the lease expires and west sees 0 healthy endpoints.
    heartbeats.abort();
    let stopped = tokio::time::Instant::now();
    west.wait_catalog("shop/vm's endpoint at east expired", |c| {
        healthy(c, "shop/vm", "east").unwrap_or(0) == 0
    })
    .await;
    let expired_after = stopped.elapsed();
    eprintln!("lease expiry observed at west after {expired_after:?}");
    // The last heartbeat was at most 500 ms before the stop, so the 2 s lease cannot end sooner
    // than 1.5 s after it; it must end, and reach the peer, well within a few seconds more.
    assert!(
        expired_after >= Duration::from_millis(1_200),
        "the endpoint went before its lease could have expired: {expired_after:?}"
    );
    assert!(
        expired_after <= Duration::from_secs(8),
        "lease expiry took {expired_after:?} to reach west (2 s lease)"
    );
}
