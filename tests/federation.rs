//! In-process integration tests: several federations in one process, real listeners, real mTLS,
//! real stores. What is easiest to observe from inside (counters, the published view) is tested
//! here; `e2e/` drives the real binary.

use std::path::Path;
use std::time::Duration;

use isthmus_federation::config::FederationConfig;
use isthmus_federation::metrics::PeerLabels;
use isthmus_federation::node::run::{Running, start};
use serde_json::json;

#[path = "federation/dashboard.rs"]
mod dashboard;

fn config(dir: &Path, name: &str, index: u8) -> FederationConfig {
    let kek = isthmus_federation::identity::Kek::generate().expect("kek");
    std::fs::write(dir.join("kek"), kek.to_base64().as_bytes()).expect("write kek");
    let value = json!({
        "cluster": name,
        "region": "r1",
        "data_dir": dir,
        "listen": { "peering": { "bind": "127.0.0.1:0" }, "api": { "bind": "127.0.0.1:0" }, "admin": "127.0.0.1:0" },
        "vips": { "ipv4": format!("127.{}.0.0/24", 90 + index) },
        "catalog": { "file": dir.join("catalog.yaml"), "poll_interval": "50ms" },
        "ca": { "kek_file": dir.join("kek") },
        "peering": { "heartbeat": "1s", "silence_timeout": "5s", "reconnect_max_backoff": "1s" },
    });
    FederationConfig::from_yaml("test", &value.to_string()).expect("config")
}

fn catalog(services: &[&str]) -> String {
    let mut s = String::from("imports:\n  - peer: \"*\"\n    namespaces: [\"*\"]\nexports:\n");
    for name in services {
        s.push_str(&format!(
            "  - {{namespace: shop, name: {name}, ports: [{{port: 80, protocol: http}}]}}\n"
        ));
    }
    s
}

/// A data dir whose catalog exports `services` (and imports everything).
fn data_dir(services: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("catalog.yaml"), catalog(services)).expect("catalog");
    dir
}

/// `issuer` creates a token for `joiner`, which establishes the peering with it (as the CLI does).
async fn peer(issuer: &Running, joiner: &Running, joiner_name: &str) {
    let token = admin(issuer, "peering.token", json!({ "peer": joiner_name })).await;
    admin(
        joiner,
        "peering.establish",
        json!({ "token": token["token"] }),
    )
    .await;
}

async fn admin(r: &Running, op: &str, body: serde_json::Value) -> serde_json::Value {
    isthmus_federation::admin::admin_call(&r.bound.admin_socket, op, &body, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{op}: {e}"))
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_route(r: &Running, key: &str) -> bool {
    r.node
        .view
        .borrow()
        .routes
        .keys()
        .any(|k| k.to_string() == key)
}

fn updates_sent(r: &Running, peer: &str) -> u64 {
    r.node
        .metrics
        .peer_updates_sent
        .get_or_create(&PeerLabels { peer: peer.into() })
        .get()
}

fn connected(r: &Running, peer: &str) -> bool {
    r.node
        .links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(c, l)| c.as_str() == peer && l.connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_without_a_full_resend() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (east_dir, west_dir) = (data_dir(&["cart", "pay"]), data_dir(&[]));
    let east = start(config(east_dir.path(), "east", 1))
        .await
        .expect("east");
    let west_cfg = config(west_dir.path(), "west", 2);
    let west = start(west_cfg.clone()).await.expect("west");
    peer(&east, &west, "west").await;
    wait_for("west to import east's services", async || {
        has_route(&west, "shop/cart") && has_route(&west, "shop/pay")
    })
    .await;
    wait_for("east to see west's ACK", async || connected(&east, "west")).await;
    let vip_before = west
        .node
        .view
        .borrow()
        .routes
        .values()
        .find(|r| r.key.to_string() == "shop/cart")
        .map(|r| r.vips.clone());

    // Restart west. East's catalog did not change, so the resumed stream must carry no update.
    let sent_before = updates_sent(&east, "west");
    west.shutdown().await;
    wait_for("east to notice west left", async || {
        !connected(&east, "west")
    })
    .await;
    assert_eq!(
        east.node.metrics.peers_connected.get(),
        0,
        "the gauge follows the link down"
    );
    let west = start(west_cfg).await.expect("west again");
    assert!(
        has_route(&west, "shop/cart"),
        "a restarted federation serves its last-known view at once"
    );
    wait_for("the stream to come back", async || {
        connected(&east, "west") && connected(&west, "east")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        updates_sent(&east, "west"),
        sent_before,
        "a resumed stream re-sent the catalog"
    );
    assert_eq!(
        east.node.metrics.peers_connected.get(),
        1,
        "the gauge follows the link up"
    );
    let vip_after = west
        .node
        .view
        .borrow()
        .routes
        .values()
        .find(|r| r.key.to_string() == "shop/cart")
        .map(|r| r.vips.clone());
    assert_eq!(vip_before, vip_after, "VIPs must survive a restart");

    // A change after the resume arrives as one delta.
    std::fs::write(
        east_dir.path().join("catalog.yaml"),
        catalog(&["cart", "pay", "ship"]),
    )
    .expect("catalog");
    wait_for("the new export at west", async || {
        has_route(&west, "shop/ship")
    })
    .await;
    assert_eq!(
        updates_sent(&east, "west"),
        sent_before + 1,
        "exactly one delta for one change"
    );

    // Removing the peer withdraws its imports, its trust and its stream.
    admin(&west, "peering.remove", json!({ "peer": "east" })).await;
    assert!(
        !has_route(&west, "shop/cart"),
        "a removed peer's imports stay in the view"
    );
    let east_td = "east.mesh".parse().expect("td");
    assert!(
        west.node.trust.get(&east_td).is_none(),
        "a removed peer's bundle is still trusted"
    );
    wait_for("east to see the stream end", async || {
        !connected(&east, "west")
    })
    .await;
    let shown = isthmus_federation::admin::admin_call(
        &west.bound.admin_socket,
        "peering.show",
        &json!({ "peer": "east" }),
        Duration::from_secs(5),
    )
    .await;
    assert!(shown.is_err(), "a removed peer is still shown: {shown:?}");

    west.shutdown().await;
    east.shutdown().await;
}

/// The gateway API end to end: bootstrap by token, the certificate's identity, renewal only for
/// the same identity, a leased registration that peers see and that expires, the config stream
/// (snapshot, then a delta), and revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_bootstrap_renewal_registration_stream_and_revocation() {
    use isthmus_federation::gwapi::BootstrapFile;
    use isthmus_federation::identity::{SpiffeId, tls};
    use isthmus_federation::proto::{RegisterGatewayRequest, SignCsrRequest, SubscribeRequest};
    use isthmus_gateway::control::ControlClient;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let (east_dir, west_dir) = (data_dir(&["cart"]), data_dir(&[]));
    let mut east_cfg = config(east_dir.path(), "east", 3);
    east_cfg.gateways.min_ttl = Duration::from_secs(1);
    let east = start(east_cfg).await.expect("east");
    let west = start(config(west_dir.path(), "west", 4))
        .await
        .expect("west");
    peer(&east, &west, "west").await;
    wait_for("west imports east's cart", async || {
        has_route(&west, "shop/cart")
    })
    .await;

    // Bootstrap: a wrong token is refused; the right one yields exactly the gateway's identity.
    let file: BootstrapFile =
        serde_json::from_value(admin(&east, "gateway.bootstrap", json!({ "name": "gw-1" })).await)
            .expect("file");
    let forged = BootstrapFile {
        token: "not-the-token".into(),
        ..file.clone()
    };
    assert!(
        ControlClient::bootstrap(&forged).await.is_err(),
        "a wrong bootstrap token must be refused"
    );
    let other = BootstrapFile {
        gateway: "gw-2".into(),
        ..file.clone()
    };
    assert!(
        ControlClient::bootstrap(&other).await.is_err(),
        "a token obtains only its own gateway's identity"
    );
    let gw = ControlClient::bootstrap(&file).await.expect("bootstrap");
    let td = "east.mesh".parse().expect("td");
    let id = SpiffeId::gateway(&td, "gw-1").expect("id");
    assert_eq!(gw.certs.id(), Some(id.clone()));

    // Renewal with the current certificate: the same identity only.
    let mut client = gw.client();
    let (_key, csr) = tls::generate_key_and_csr(&id).expect("csr");
    let renewed = client
        .sign_csr(SignCsrRequest { csr_der: csr })
        .await
        .expect("renewal")
        .into_inner();
    assert!(renewed.chain_pem.contains("BEGIN CERTIFICATE"));
    let (_key, csr) =
        tls::generate_key_and_csr(&SpiffeId::gateway(&td, "gw-2").expect("id")).expect("csr");
    assert!(
        client
            .sign_csr(SignCsrRequest { csr_der: csr })
            .await
            .is_err(),
        "renewal for another identity"
    );

    // Registration: only under its own name; peers see the advertised address; it expires.
    let register = |name: &str| RegisterGatewayRequest {
        name: name.into(),
        advertise_address: "198.51.100.7:15443".into(),
        zone: "a".into(),
        ttl_seconds: 2,
        local_address: String::new(),
        inbound_port: 0,
    };
    assert!(
        client.register_gateway(register("gw-9")).await.is_err(),
        "registering as another gateway"
    );
    client
        .register_gateway(register("gw-1"))
        .await
        .expect("register");
    let advertised = |r: &Running| {
        r.node.view.borrow().routes.values().any(|route| {
            route
                .clusters
                .iter()
                .any(|c| c.gateways.iter().any(|g| g.address == "198.51.100.7:15443"))
        })
    };
    wait_for("west to see east's gateway", async || advertised(&west)).await;

    // The config stream: a snapshot with the current view, then a delta for a new export.
    let mut stream = client
        .subscribe(SubscribeRequest {
            gateway: "gw-1".into(),
            known_version: 0,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("snapshot");
    assert!(first.snapshot);
    assert!(
        first
            .exports
            .iter()
            .any(|e| e.key.as_ref().is_some_and(|k| k.name == "cart"))
    );
    assert!(
        first.bundles.iter().any(|b| b.trust_domain == "west.mesh"),
        "peers' bundles reach the gateway"
    );
    std::fs::write(
        east_dir.path().join("catalog.yaml"),
        catalog(&["cart", "ship"]),
    )
    .expect("catalog");
    let delta = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = stream.message().await.expect("stream").expect("message");
            if m.imports
                .iter()
                .any(|r| r.key.as_ref().is_some_and(|k| k.name == "ship"))
            {
                return m;
            }
        }
    })
    .await
    .expect("a delta with the new export");
    assert!(
        !delta.snapshot,
        "a change arrives as a delta, not a new snapshot"
    );

    // Without keep-alives the registration's lease expires and peers stop seeing the address.
    wait_for("the gateway registration to expire at west", async || {
        !advertised(&west)
    })
    .await;

    // Revocation: renewals and the old bootstrap token stop working.
    admin(&east, "gateway.revoke", json!({ "name": "gw-1" })).await;
    let (_key, csr) = tls::generate_key_and_csr(&id).expect("csr");
    let refused = client
        .sign_csr(SignCsrRequest { csr_der: csr })
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        ControlClient::bootstrap(&file).await.is_err(),
        "a revoked token must not bootstrap"
    );

    west.shutdown().await;
    east.shutdown().await;
}
