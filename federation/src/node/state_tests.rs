//! State operations against the embedded store: a change that does not fit (the VIP ranges, a
//! peer's quota) is refused whole and leaves memory and store as they were; stored state that no
//! longer fits is installed as far as it fits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{CatalogFile, parse_catalog};
use crate::mesh::{ClusterPlace, LocalCatalog};
use crate::model::{ClusterName, Protocol, ServiceKey, ServicePort, ServiceSummary, Zone};
use crate::node::state::{MeshState, PeerEntry, StateError, load_peer_catalog, place_of};
use crate::peering::PeerRecord;
use crate::peering::update::PeerUpdate;
use crate::store::{AnyStore, StoreConfig};
use crate::vip::{Cidr, VipPool, VipTable};

const IMPORT_ALL: &str = "imports:\n  - peer: \"*\"\n    namespaces: [\"*\"]\n";

fn name(n: &str) -> ClusterName {
    n.parse().expect("cluster name")
}

fn record(peer: &str) -> PeerRecord {
    PeerRecord {
        cluster: name(peer),
        trust_domain: format!("{peer}.mesh").parse().expect("td"),
        region: "r2".parse().expect("region"),
        zone: None,
        dial_address: None,
        bundle: String::new(),
        bundle_sequence: 0,
        established_at_ms: 0,
    }
}

fn summary(key: &str) -> ServiceSummary {
    ServiceSummary {
        key: ServiceKey::parse(key).expect("key"),
        ports: vec![ServicePort {
            name: None,
            port: 80,
            protocol: Protocol::Tcp,
        }],
        zones: Default::default(),
        weight: 1,
        metadata: Default::default(),
        headless: false,
        exported_at_ms: 1,
    }
}

fn update(version: u64, snapshot: bool, upserts: &[&str], removals: &[&str]) -> PeerUpdate {
    PeerUpdate {
        version,
        epoch: "e".into(),
        snapshot,
        upserts: upserts.iter().map(|k| summary(k)).collect(),
        removals: removals
            .iter()
            .map(|k| ServiceKey::parse(k).expect("key"))
            .collect(),
        bundle: None,
        gateways: None,
    }
}

fn catalog(exports: &[&str]) -> Arc<CatalogFile> {
    let mut text = String::from("exports:\n");
    if exports.is_empty() {
        text = "exports: []\n".into();
    }
    for k in exports {
        let (ns, svc) = k.split_once('/').expect("ns/name");
        text.push_str(&format!(
            "  - namespace: {ns}\n    name: {svc}\n    ports: [{{port: 80, protocol: tcp}}]\n    endpoints: [{{address: \"10.1.2.3:80\"}}]\n"
        ));
    }
    text.push_str(IMPORT_ALL);
    Arc::new(parse_catalog(&text).expect("catalog"))
}

/// East with the peers `peers` (empty catalogs) and a VIP range of `range`.
async fn state(store: &AnyStore, range: &str, quota: u64, peers: &[&str]) -> MeshState {
    let pool = VipPool::new(
        Some(Cidr::parse(range).expect("cidr")),
        None,
        Duration::from_secs(3600),
    )
    .expect("pool");
    let me = ClusterPlace {
        cluster: name("east"),
        trust_domain: "east.mesh".parse().expect("td"),
        region: "r1".parse().expect("region"),
        zone: None,
    };
    let peers = peers
        .iter()
        .map(|p| {
            let record = record(p);
            let entry = PeerEntry {
                place: place_of(&record),
                record,
                catalog: Default::default(),
                deltas: 0,
            };
            (name(p), entry)
        })
        .collect();
    MeshState {
        me: Arc::new(me),
        local: LocalCatalog::new(
            "l".into(),
            1,
            BTreeMap::new(),
            Zone::new("r1").expect("zone"),
        ),
        file: catalog(&[]),
        registered: Arc::default(),
        applied_file: Arc::default(),
        applied_registered: Arc::default(),
        peers,
        vips: VipTable::load(store.clone(), pool).await.expect("vips"),
        routes: Default::default(),
        view_version: 0,
        vip_quota: quota,
        quota_uses: BTreeMap::new(),
        unaddressed: BTreeSet::new(),
        degraded: None,
        kube_addrs: BTreeMap::new(),
    }
}

async fn store(dir: &tempfile::TempDir) -> AnyStore {
    AnyStore::open(&StoreConfig::Embedded {
        data_dir: dir.path().to_path_buf(),
    })
    .await
    .expect("store")
}

/// Routes and their VIPs, for comparing before and after.
fn routes(s: &MeshState) -> Vec<(String, String)> {
    s.routes
        .iter()
        .map(|(k, r)| (k.to_string(), format!("{:?} {:?}", r.vips, r.cluster_vips)))
        .collect()
}

#[tokio::test]
async fn a_snapshot_larger_than_the_free_range_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    // Six addresses; a quota that does not get in the way.
    let mut s = state(&store, "127.77.0.0/29", 6, &["west", "south"]).await;
    let none = BTreeSet::new();
    let west = name("west");
    let south = name("south");
    s.receive_peer_update(
        &store,
        &west,
        update(1, true, &["shop/a", "shop/b"], &[]),
        &none,
        1,
    )
    .await
    .expect("west's two services take four names");
    s.receive_peer_update(&store, &south, update(1, true, &["web/x"], &[]), &none, 1)
        .await
        .expect("south's first service takes the last two");
    let before = routes(&s);
    assert_eq!(before.len(), 3);

    // South's next snapshot needs two more names: refused, and nothing of it stays.
    let err = s
        .receive_peer_update(
            &store,
            &south,
            update(2, true, &["web/x", "web/y"], &[]),
            &none,
            2,
        )
        .await
        .expect_err("no room for web/y");
    assert!(matches!(err, StateError::NoRoom(_)), "{err}");
    assert!(err.is_refusal());
    let mem = &s.peers[&south].catalog;
    assert_eq!((mem.version, mem.services.len()), (1, 1), "memory kept v1");
    let (stored, _) = load_peer_catalog(&store, &south).await.expect("load");
    assert_eq!(
        (stored.version, stored.services.len()),
        (1, 1),
        "the store kept v1"
    );
    assert_eq!(
        routes(&s),
        before,
        "other routes and their VIPs are untouched"
    );

    // The same refusal for a delta: undone in memory, nothing stored.
    let err = s
        .receive_peer_update(&store, &south, update(2, false, &["web/y"], &[]), &none, 3)
        .await
        .expect_err("no room for web/y");
    assert!(matches!(err, StateError::NoRoom(_)), "{err}");
    assert_eq!(s.peers[&south].catalog.version, 1);
    let (stored, deltas) = load_peer_catalog(&store, &south).await.expect("load");
    assert_eq!((stored.version, deltas), (1, 0));
    assert_eq!(routes(&s), before);
}

#[tokio::test]
async fn a_peer_past_its_quota_is_refused_whole_and_others_keep_their_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    // 62 addresses; each peer may hold 4 names (two services).
    let mut s = state(&store, "127.77.0.0/26", 4, &["west", "south"]).await;
    let none = BTreeSet::new();
    let west = name("west");
    let south = name("south");
    let err = s
        .receive_peer_update(
            &store,
            &west,
            update(1, true, &["shop/a", "shop/b", "shop/c"], &[]),
            &none,
            1,
        )
        .await
        .expect_err("three services are six names");
    assert!(
        matches!(
            err,
            StateError::OverQuota {
                names: 6,
                quota: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(s.peers[&west].catalog.services.is_empty());
    assert!(s.routes.is_empty(), "nothing was routed");
    assert!(s.vips.pool().is_empty(), "no VIP was taken");
    let (stored, _) = load_peer_catalog(&store, &west).await.expect("load");
    assert_eq!(stored.version, 0, "nothing was stored");

    // Within the quota: accepted. One more by a delta: refused and undone.
    s.receive_peer_update(
        &store,
        &west,
        update(2, true, &["shop/a", "shop/b"], &[]),
        &none,
        2,
    )
    .await
    .expect("two services fit the quota");
    let err = s
        .receive_peer_update(&store, &west, update(3, false, &["shop/c"], &[]), &none, 3)
        .await
        .expect_err("a third service by a delta");
    assert!(matches!(err, StateError::OverQuota { .. }), "{err}");
    assert_eq!(s.peers[&west].catalog.services.len(), 2);
    // Swapping one service for another stays within it.
    s.receive_peer_update(
        &store,
        &west,
        update(3, false, &["shop/c"], &["shop/a"]),
        &none,
        4,
    )
    .await
    .expect("a swap keeps the count");
    // Another peer still gets its own share.
    s.receive_peer_update(
        &store,
        &south,
        update(1, true, &["web/x", "web/y"], &[]),
        &none,
        5,
    )
    .await
    .expect("south has its own quota");
    assert_eq!(s.routes.len(), 4);
}

#[tokio::test]
async fn a_local_edit_that_does_not_fit_is_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let mut s = state(&store, "127.77.0.0/29", 6, &[]).await;
    let none = BTreeSet::new();
    // Three services, six names: exactly the range.
    let fits = catalog(&["shop/a", "shop/b", "shop/c"]);
    s.admit_file(&fits, &BTreeMap::new(), 1)
        .expect("six names fit six addresses");
    s.file = fits;
    let changed = s.refresh_local(&store, 1).await.expect("refresh");
    s.recompute(Some(changed.into_iter().collect()), &none, 1)
        .await
        .expect("routes");
    assert_eq!(s.routes.len(), 3);
    // A fourth needs two more.
    let more = catalog(&["shop/a", "shop/b", "shop/c", "shop/d"]);
    let err = s
        .admit_file(&more, &BTreeMap::new(), 2)
        .expect_err("no room");
    assert!(
        err.to_string().contains("2 more IPv4 VIPs") && err.to_string().contains("0 free"),
        "{err}"
    );
    // Removing one and adding another fits only after the quarantine: still refused.
    let swap = catalog(&["shop/a", "shop/b", "shop/d"]);
    assert!(s.admit_file(&swap, &BTreeMap::new(), 3).is_err());
}

#[tokio::test]
async fn stored_state_that_does_not_fit_starts_degraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let mut s = state(&store, "127.77.0.0/29", 6, &["west"]).await;
    let none = BTreeSet::new();
    // West's stored catalog (loaded at start) and two local exports need ten names; six fit.
    let west = name("west");
    if let Some(e) = s.peers.get_mut(&west) {
        e.catalog
            .apply(update(1, true, &["shop/a", "shop/b", "shop/c"], &[]), 1);
    }
    s.file = catalog(&["own/x", "own/y"]);
    s.refresh_local(&store, 1).await.expect("refresh");
    s.install_what_fits(&none, 1)
        .await
        .expect("starts, degraded");
    let reason = s.degraded.clone().expect("degraded");
    assert!(reason.contains("2 services have no VIPs"), "{reason}");
    assert_eq!(s.routes.len(), 3, "three services are served");
    for own in ["own/x", "own/y"] {
        let key = ServiceKey::parse(own).expect("key");
        assert!(
            s.routes.contains_key(&key),
            "local exports come first: {own}"
        );
    }
    assert_eq!(s.unaddressed.len(), 2);
    // A later recompute of everything leaves the unaddressed alone instead of failing.
    s.recompute(None, &none, 2).await.expect("recompute");
    // Once exports go away (and the quarantine passes), the others get their VIPs.
    s.file = catalog(&[]);
    let changed = s.refresh_local(&store, 3).await.expect("refresh");
    s.recompute(Some(changed.into_iter().collect()), &none, 3)
        .await
        .expect("routes");
    let later = 3 + 3_600_000;
    s.readdress(&none, later).await.expect("readdress");
    assert!(s.unaddressed.is_empty(), "{:?}", s.unaddressed);
    assert!(s.degraded.is_none());
    assert_eq!(s.routes.len(), 3);
}

#[tokio::test]
async fn an_import_rule_that_would_put_a_peer_past_its_quota_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let mut s = state(&store, "127.77.0.0/26", 4, &["west"]).await;
    let none = BTreeSet::new();
    // Importing only `other`: west's three shop services count nothing against its quota.
    s.file = Arc::new(
        parse_catalog("exports: []\nimports:\n  - peer: west\n    namespaces: [other]\n")
            .expect("catalog"),
    );
    let west = name("west");
    s.receive_peer_update(
        &store,
        &west,
        update(1, true, &["shop/a", "shop/b", "shop/c"], &[]),
        &none,
        1,
    )
    .await
    .expect("nothing of it is imported");
    assert!(s.routes.is_empty());
    // Importing everything would make them six names.
    let err = s
        .admit_file(&catalog(&[]), &BTreeMap::new(), 2)
        .expect_err("past west's quota");
    assert!(
        matches!(
            err,
            StateError::OverQuota {
                names: 6,
                quota: 4,
                ..
            }
        ),
        "{err}"
    );
}
