//! Registry tests: the authorization table (pure), then the service over a real embedded store
//! in a temp dir, called through the tonic trait with `PeerInfo` set as the TLS layer would.

use std::time::Instant;

use tonic::Code;

use super::*;
use crate::catalog::file::parse_catalog;
use crate::store::EmbeddedStore;

const CATALOG: &str = "
exports:
  - namespace: shop
    name: cart
    ports: [{port: 8080, protocol: http}]
  - namespace: shop
    name: stock
    ports: [{port: 9000, protocol: grpc}]
    registrants: [stock-vm, ops]
";

fn td() -> TrustDomain {
    TrustDomain::new("east.example").expect("td")
}

fn workload(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::workload(&td(), ns, sa).expect("id")
}

fn key(s: &str) -> ServiceKey {
    ServiceKey::parse(s).expect("key")
}

#[test]
fn authorization_table() {
    let catalog = parse_catalog(CATALOG).expect("catalog");
    let other_td = TrustDomain::new("west.example").expect("td");
    let ids = [
        (
            "right sa",
            Some(workload("shop", "cart")),
            "shop/cart",
            Ok(()),
        ),
        (
            "listed registrant",
            Some(workload("shop", "ops")),
            "shop/stock",
            Ok(()),
        ),
        (
            "other sa",
            Some(workload("shop", "stock")),
            "shop/cart",
            Err("service account stock"),
        ),
        (
            "default not used when listed",
            Some(workload("shop", "stock")),
            "shop/stock",
            Err("registrants"),
        ),
        (
            "other namespace",
            Some(workload("billing", "cart")),
            "shop/cart",
            Err("namespace billing"),
        ),
        (
            "other trust domain",
            Some(SpiffeId::workload(&other_td, "shop", "cart").expect("id")),
            "shop/cart",
            Err("trust domain west.example"),
        ),
        (
            "gateway id",
            Some(SpiffeId::gateway(&td(), "gw-1").expect("id")),
            "shop/cart",
            Err("not a workload"),
        ),
        (
            "federation id",
            Some(SpiffeId::federation(&td(), "fed").expect("id")),
            "shop/cart",
            Err("not a workload"),
        ),
        (
            "trust domain id",
            Some(SpiffeId::parse("spiffe://east.example").expect("id")),
            "shop/cart",
            Err("not a workload"),
        ),
        (
            "unexported service",
            Some(workload("shop", "pay")),
            "shop/pay",
            Err("not exported"),
        ),
        ("no identity", None, "shop/cart", Err("UNAUTHENTICATED")),
    ];
    for (what, caller, service, want) in ids {
        let got = authorize(caller.as_ref(), &td(), &key(service), &catalog);
        match (want, got) {
            (Ok(()), Ok(())) => {}
            (Err("UNAUTHENTICATED"), Err(Denied::Unauthenticated)) => {}
            (Err(fragment), Err(Denied::PermissionDenied(reason))) => {
                assert!(
                    reason.contains(fragment),
                    "{what}: {reason:?} lacks {fragment:?}"
                );
            }
            (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn ttl_clamping_and_config() {
    let config = RegistryConfig {
        min_ttl: Duration::from_secs(2),
        max_ttl: Duration::from_secs(60),
        default_ttl: Duration::from_secs(10),
        max_endpoints_per_service: 8,
    };
    config.validate().expect("valid");
    assert_eq!(config.ttl_for(0), Duration::from_secs(10));
    assert_eq!(config.ttl_for(1), Duration::from_secs(2));
    assert_eq!(config.ttl_for(30), Duration::from_secs(30));
    assert_eq!(config.ttl_for(u32::MAX), Duration::from_secs(60));
    RegistryConfig::default().validate().expect("default valid");
    let bad = [
        RegistryConfig {
            min_ttl: Duration::ZERO,
            ..config.clone()
        },
        RegistryConfig {
            min_ttl: Duration::from_millis(999),
            ..config.clone()
        },
        RegistryConfig {
            default_ttl: Duration::from_secs(61),
            ..config.clone()
        },
        RegistryConfig {
            max_ttl: Duration::from_secs(1),
            ..config.clone()
        },
        RegistryConfig {
            max_endpoints_per_service: 0,
            ..config.clone()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
}

// ---- the service over a real embedded store ----------------------------------------------

struct Harness {
    _dir: tempfile::TempDir,
    service: RegistryService<EmbeddedStore>,
    view: watch::Receiver<Arc<RegisteredEndpoints>>,
    catalog: watch::Sender<Arc<CatalogFile>>,
}

fn config() -> RegistryConfig {
    RegistryConfig {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(30),
        default_ttl: Duration::from_secs(2),
        max_endpoints_per_service: 3,
    }
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).await.expect("store");
    let (catalog, rx) = watch::channel(Arc::new(parse_catalog(CATALOG).expect("catalog")));
    let (service, view) = RegistryService::new(store, td(), rx, config())
        .await
        .expect("registry");
    Harness {
        _dir: dir,
        service,
        view,
        catalog,
    }
}

fn request<T>(message: T, id: Option<SpiffeId>) -> Request<T> {
    let mut request = Request::new(message);
    let remote = "127.0.0.1:40000".parse().expect("addr");
    request.extensions_mut().insert(PeerInfo { remote, id });
    request
}

fn register_req(service: &str, address: &str, ttl: u32) -> proto::RegisterEndpointRequest {
    let key = key(service);
    proto::RegisterEndpointRequest {
        service: Some(proto::ServiceKey {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
        }),
        address: address.into(),
        zone: "a".into(),
        weight: 0,
        ttl_seconds: ttl,
    }
}

async fn register(h: &Harness, service: &str, address: &str, ttl: u32, id: SpiffeId) -> String {
    h.service
        .register(request(register_req(service, address, ttl), Some(id)))
        .await
        .expect("registered")
        .into_inner()
        .registration_id
}

async fn heartbeat(h: &Harness, registration_id: &str, id: SpiffeId) -> Result<(), Status> {
    let msg = proto::HeartbeatRequest {
        registration_id: registration_id.into(),
    };
    h.service
        .heartbeat(request(msg, Some(id)))
        .await
        .map(|_| ())
}

fn addresses(view: &RegisteredEndpoints, service: &str) -> Vec<String> {
    view.get(&key(service))
        .map(|eps| eps.iter().map(|e| e.address.to_string()).collect())
        .unwrap_or_default()
}

/// Waits until the view satisfies `pred`; returns how long it took.
async fn wait_view(
    view: &mut watch::Receiver<Arc<RegisteredEndpoints>>,
    within: Duration,
    what: &str,
    pred: impl FnMut(&Arc<RegisteredEndpoints>) -> bool,
) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, view.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {within:?}"))
        .expect("view alive");
    started.elapsed()
}

#[tokio::test]
async fn registration_expires_without_heartbeats() {
    let mut h = harness().await;
    let id = register(
        &h,
        "shop/cart",
        "10.0.0.1:8080",
        2,
        workload("shop", "cart"),
    )
    .await;
    wait_view(
        &mut h.view,
        Duration::from_secs(5),
        "registered endpoint in view",
        |v| addresses(v, "shop/cart") == ["10.0.0.1:8080"],
    )
    .await;
    let endpoint = h.view.borrow()[&key("shop/cart")][0].clone();
    assert_eq!(endpoint.zone.as_ref().map(Zone::as_str), Some("a"));
    assert_eq!(endpoint.weight, 100);
    assert!(endpoint.ready);

    let took = wait_view(
        &mut h.view,
        Duration::from_secs(10),
        "expired endpoint removed",
        |v| addresses(v, "shop/cart").is_empty(),
    )
    .await;
    assert!(
        took >= Duration::from_millis(1000),
        "removed after {took:?}, before its TTL"
    );
    let err = heartbeat(&h, &id, workload("shop", "cart"))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(h.service.stats().expired.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn heartbeats_keep_a_registration_and_deregister_removes_it() {
    let mut h = harness().await;
    let me = workload("shop", "cart");
    let id = register(&h, "shop/cart", "[fd00::7]:8080", 2, me.clone()).await;
    wait_view(&mut h.view, Duration::from_secs(5), "registered", |v| {
        addresses(v, "shop/cart") == ["[fd00::7]:8080"]
    })
    .await;

    // 6 s of heartbeats every 500 ms: three TTLs.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        heartbeat(&h, &id, me.clone()).await.expect("heartbeat");
        assert_eq!(addresses(&h.view.borrow(), "shop/cart"), ["[fd00::7]:8080"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Someone else (even a registrant of the same service) cannot renew or remove it.
    let other = workload("shop", "stock-vm");
    let err = heartbeat(&h, &id, other.clone())
        .await
        .expect_err("not the owner");
    assert_eq!(err.code(), Code::PermissionDenied);
    let msg = proto::DeregisterRequest {
        registration_id: id.clone(),
    };
    let err = h
        .service
        .deregister(request(msg, Some(other)))
        .await
        .expect_err("not the owner");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(addresses(&h.view.borrow(), "shop/cart"), ["[fd00::7]:8080"]);

    let msg = proto::DeregisterRequest {
        registration_id: id.clone(),
    };
    h.service
        .deregister(request(msg, Some(me.clone())))
        .await
        .expect("deregister");
    let took = wait_view(&mut h.view, Duration::from_secs(2), "deregistered", |v| {
        addresses(v, "shop/cart").is_empty()
    })
    .await;
    assert!(
        took < Duration::from_secs(1),
        "removed by the revoke, not by expiry: {took:?}"
    );
    // Deregistering again is fine; heartbeating is not.
    let msg = proto::DeregisterRequest {
        registration_id: id.clone(),
    };
    h.service
        .deregister(request(msg, Some(me.clone())))
        .await
        .expect("idempotent");
    let err = heartbeat(&h, &id, me).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_right_code() {
    let h = harness().await;
    let me = Some(workload("shop", "cart"));
    let cases: Vec<(&str, proto::RegisterEndpointRequest, Option<SpiffeId>, Code)> = vec![
        (
            "no identity",
            register_req("shop/cart", "10.0.0.1:80", 5),
            None,
            Code::Unauthenticated,
        ),
        (
            "wrong sa",
            register_req("shop/cart", "10.0.0.1:80", 5),
            Some(workload("shop", "pay")),
            Code::PermissionDenied,
        ),
        (
            "unexported",
            register_req("shop/pay", "10.0.0.1:80", 5),
            Some(workload("shop", "pay")),
            Code::PermissionDenied,
        ),
        (
            "not ip:port",
            register_req("shop/cart", "10.0.0.1", 5),
            me.clone(),
            Code::InvalidArgument,
        ),
        (
            "hostname",
            register_req("shop/cart", "cart:80", 5),
            me.clone(),
            Code::InvalidArgument,
        ),
        (
            "port 0",
            register_req("shop/cart", "10.0.0.1:0", 5),
            me.clone(),
            Code::InvalidArgument,
        ),
        (
            "wildcard",
            register_req("shop/cart", "0.0.0.0:80", 5),
            me.clone(),
            Code::InvalidArgument,
        ),
        (
            "bad zone",
            proto::RegisterEndpointRequest {
                zone: "Zone A".into(),
                ..register_req("shop/cart", "10.0.0.1:80", 5)
            },
            me.clone(),
            Code::InvalidArgument,
        ),
        (
            "huge weight",
            proto::RegisterEndpointRequest {
                weight: u32::MAX,
                ..register_req("shop/cart", "10.0.0.1:80", 5)
            },
            me.clone(),
            Code::InvalidArgument,
        ),
        (
            "no service",
            proto::RegisterEndpointRequest {
                service: None,
                ..register_req("shop/cart", "10.0.0.1:80", 5)
            },
            me.clone(),
            Code::InvalidArgument,
        ),
    ];
    for (what, msg, id, code) in cases {
        let err = h.service.register(request(msg, id)).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    assert!(h.service.stats().denied.load(Ordering::Relaxed) >= 3);

    // No request extensions at all (not behind the TLS layer) is unauthenticated too.
    let bare = Request::new(register_req("shop/cart", "10.0.0.1:80", 5));
    assert_eq!(
        h.service.register(bare).await.expect_err("bare").code(),
        Code::Unauthenticated
    );

    for bad_id in [
        "",
        "shop/cart",
        "shop/cart/x",
        "../../etc/passwd/AAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let err = heartbeat(&h, bad_id, workload("shop", "cart"))
            .await
            .expect_err(bad_id);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad_id:?}");
    }
    let unknown = "shop/cart/AAAAAAAAAAAAAAAAAAAAAA";
    let err = heartbeat(&h, unknown, workload("shop", "cart"))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let msg = proto::HeartbeatRequest {
        registration_id: unknown.into(),
    };
    let err = h
        .service
        .heartbeat(request(msg, None))
        .await
        .expect_err("no identity");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn ttl_is_clamped_and_reregistering_replaces() {
    let mut h = harness().await;
    let me = workload("shop", "cart");
    let resp = h
        .service
        .register(request(
            register_req("shop/cart", "10.0.0.1:80", 9999),
            Some(me.clone()),
        ))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(resp.ttl_seconds, 30);
    let first = resp.registration_id;
    let second = register(&h, "shop/cart", "10.0.0.1:80", 0, me.clone()).await;
    assert_ne!(first, second);
    let err = heartbeat(&h, &first, me.clone())
        .await
        .expect_err("replaced");
    assert_eq!(err.code(), Code::NotFound);
    heartbeat(&h, &second, me.clone())
        .await
        .expect("current one lives");
    wait_view(&mut h.view, Duration::from_secs(5), "one endpoint", |v| {
        addresses(v, "shop/cart") == ["10.0.0.1:80"]
    })
    .await;

    // The per-service limit (3) counts other registrations.
    register(&h, "shop/cart", "10.0.0.2:80", 30, me.clone()).await;
    register(&h, "shop/cart", "10.0.0.3:80", 30, me.clone()).await;
    let err = h
        .service
        .register(request(
            register_req("shop/cart", "10.0.0.4:80", 30),
            Some(me.clone()),
        ))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn catalog_edits_withdraw_registrations() {
    let mut h = harness().await;
    let me = workload("shop", "cart");
    let id = register(&h, "shop/cart", "10.0.0.1:80", 30, me.clone()).await;
    wait_view(&mut h.view, Duration::from_secs(5), "registered", |v| {
        !addresses(v, "shop/cart").is_empty()
    })
    .await;
    // cart is no longer exported: its endpoints leave the view, its heartbeats are refused.
    let without_cart = CATALOG.replace("name: cart", "name: carts");
    h.catalog
        .send_replace(Arc::new(parse_catalog(&without_cart).expect("catalog")));
    wait_view(&mut h.view, Duration::from_secs(5), "withdrawn", |v| {
        addresses(v, "shop/cart").is_empty()
    })
    .await;
    let err = heartbeat(&h, &id, me.clone())
        .await
        .expect_err("no longer exported");
    assert_eq!(err.code(), Code::PermissionDenied);
    // The refused heartbeat revoked the registration: restoring the export does not revive it.
    h.catalog
        .send_replace(Arc::new(parse_catalog(CATALOG).expect("catalog")));
    let err = heartbeat(&h, &id, me).await.expect_err("revoked");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn registrations_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Arc::new(parse_catalog(CATALOG).expect("catalog"));
    let me = workload("shop", "stock-vm");
    let id = {
        let store = EmbeddedStore::open(dir.path()).await.expect("store");
        let (_tx, rx) = watch::channel(catalog.clone());
        let (service, _view) = RegistryService::new(store, td(), rx, config())
            .await
            .expect("registry");
        let msg = register_req("shop/stock", "10.0.0.9:9000", 30);
        service
            .register(request(msg, Some(me.clone())))
            .await
            .expect("register")
            .into_inner()
    };
    // Give the view task a moment to notice its receivers are gone and drop its store clone.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let store = EmbeddedStore::open(dir.path()).await.expect("reopen");
    let (_tx, rx) = watch::channel(catalog);
    let (service, view) = RegistryService::new(store, td(), rx, config())
        .await
        .expect("registry");
    assert_eq!(addresses(&view.borrow(), "shop/stock"), ["10.0.0.9:9000"]);
    let msg = proto::HeartbeatRequest {
        registration_id: id.registration_id,
    };
    service
        .heartbeat(request(msg, Some(me)))
        .await
        .expect("heartbeat after restart");
}
