//! The store contract: every `contract!` test runs against the embedded store and against a
//! real etcd (one fresh `etcd` process per test, on its own ports). Backend-specific tests
//! follow: crash safety of the embedded store (a child process killed with SIGKILL) and etcd
//! restarts, partitions and compaction.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use isthmus_federation::store::{
    AnyStore, EmbeddedStore, Guard, LARGE_VALUE_BYTES, LeaseId, MAX_COMMIT_BYTES,
    MAX_OPS_PER_COMMIT, MAX_VALUE_BYTES, Op, Revision, Store, StoreConfig, StoreError, WatchEvent,
    WatchStream, commit_in_chunks,
};

/// Generous bound for anything a test waits for (a watch event, a reconnect, a lease expiry).
const PATIENCE: Duration = Duration::from_secs(10);

struct Fixture {
    store: AnyStore,
    _dir: tempfile::TempDir,
    #[cfg(feature = "etcd")]
    etcd: Option<isthmus_federation::testing::EtcdServer>,
}

async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::open(&StoreConfig::embedded(dir.path().join("store")))
        .await
        .unwrap();
    Fixture {
        store,
        _dir: dir,
        #[cfg(feature = "etcd")]
        etcd: None,
    }
}

#[cfg(feature = "etcd")]
fn etcd_config(endpoint: String) -> StoreConfig {
    etcd_members_config(vec![endpoint], 2_000)
}

#[cfg(feature = "etcd")]
fn etcd_members_config(endpoints: Vec<String>, request_timeout_ms: u64) -> StoreConfig {
    let StoreConfig::Etcd {
        endpoints,
        prefix,
        tls,
        user,
        password_file,
        connect_timeout_ms,
        ..
    } = StoreConfig::etcd(endpoints, "/isthmus-test/")
    else {
        unreachable!()
    };
    StoreConfig::Etcd {
        endpoints,
        prefix,
        tls,
        user,
        password_file,
        connect_timeout_ms,
        request_timeout_ms,
    }
}

/// The chunk generations in etcd's chunk area (`None` for the embedded store, which keeps
/// large values inline and writes blob chunks in the pointer's own transaction).
async fn chunk_generations(f: &Fixture) -> Option<Vec<String>> {
    #[cfg(feature = "etcd")]
    if let Some(server) = &f.etcd {
        return Some(etcd_chunk_generations(&server.endpoint()).await);
    }
    let _ = f;
    None
}

#[cfg(feature = "etcd")]
async fn etcd_chunk_generations(endpoint: &str) -> Vec<String> {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let area = "/isthmus-test/\0blob/";
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let response = client.get(area, Some(options)).await.unwrap();
    let mut generations: Vec<String> = response
        .kvs()
        .iter()
        .map(|kv| {
            let name = String::from_utf8_lossy(&kv.key()[area.len()..]).into_owned();
            name.split('/').next().unwrap().to_owned()
        })
        .collect();
    generations.dedup();
    generations
}

#[cfg(feature = "etcd")]
async fn etcd() -> Fixture {
    let server = isthmus_federation::testing::EtcdServer::start().await;
    let store = AnyStore::open(&etcd_config(server.endpoint()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "etcd");
    Fixture {
        store,
        _dir: tempfile::tempdir().unwrap(),
        etcd: Some(server),
    }
}

#[cfg(feature = "etcd")]
async fn compact_etcd(endpoint: &str) -> Revision {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let revision = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let options = etcd_client::CompactionOptions::new().with_physical();
    client.compact(revision, Some(options)).await.unwrap();
    revision as Revision
}

impl Fixture {
    /// Makes every revision so far too old to replay: etcd compacts, the embedded store
    /// overflows its bounded in-memory history.
    async fn forget_history(&self) {
        #[cfg(feature = "etcd")]
        if let Some(server) = &self.etcd {
            compact_etcd(&server.endpoint()).await;
            return;
        }
        let per_commit = MAX_OPS_PER_COMMIT;
        let commits = isthmus_federation::store::embedded::HISTORY_EVENTS / per_commit + 2;
        for c in 0..commits {
            let ops = (0..per_commit)
                .map(|i| put(&format!("filler/{c:03}/{i:03}"), b"x"))
                .collect();
            self.store.commit(vec![], ops).await.unwrap();
        }
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let fixture = super::embedded().await;
                super::$name(&fixture).await;
            }

            #[cfg(feature = "etcd")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                let fixture = super::etcd().await;
                super::$name(&fixture).await;
            }
        }
    )*};
}

contract!(
    get_put_delete,
    list_is_sorted_paginated_and_prefix_isolated,
    failed_guard_applies_nothing,
    too_large_commits_are_refused,
    blob_round_trips_byte_exact,
    blob_reader_never_sees_a_mix,
    lease_expiry_deletes_attached_keys,
    a_key_moved_to_a_new_lease_outlives_the_old_one,
    keep_alive_keeps_keys_and_revoke_deletes_them,
    watch_delivers_later_events_in_order,
    watch_from_forgotten_revision_starts_with_reset,
    large_values_round_trip_whole,
    failed_large_commit_leaves_nothing_visible,
);

// ---- helpers -------------------------------------------------------------------------------

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.into(),
        value: value.to_vec(),
    }
}

fn keys(items: &[(String, Vec<u8>)]) -> Vec<&str> {
    items.iter().map(|(k, _)| k.as_str()).collect()
}

/// Deterministic bytes that differ per `seed`.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn next(rx: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(PATIENCE, rx.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {PATIENCE:?}"),
    }
}

/// Asserts nothing arrives for a short while.
async fn quiet(rx: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected watch item {item:?}");
    }
}

fn put_event(event: &WatchEvent) -> (&str, &[u8], Revision) {
    match event {
        WatchEvent::Put {
            key,
            value,
            revision,
        } => (key, value, *revision),
        other => panic!("expected a Put, got {other:?}"),
    }
}

fn delete_event(event: &WatchEvent) -> (&str, Revision) {
    match event {
        WatchEvent::Delete { key, revision } => (key, *revision),
        other => panic!("expected a Delete, got {other:?}"),
    }
}

async fn wait_until_absent(store: &AnyStore, key: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if store.get(key).await.unwrap().is_none() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{key} still present after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- the contract --------------------------------------------------------------------------

async fn get_put_delete(f: &Fixture) {
    let s = &f.store;
    assert_eq!(s.get("a").await.unwrap(), None);
    let r0 = s.revision().await.unwrap();
    let r1 = s.commit(vec![], vec![put("a", b"1")]).await.unwrap();
    assert!(r1 > r0, "revision must grow: {r0} -> {r1}");
    assert_eq!(s.revision().await.unwrap(), r1);
    assert_eq!(s.get("a").await.unwrap(), Some(b"1".to_vec()));
    let r2 = s.commit(vec![], vec![put("a", b"2")]).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(s.get("a").await.unwrap(), Some(b"2".to_vec()));
    s.commit(vec![], vec![Op::Delete { key: "a".into() }])
        .await
        .unwrap();
    assert_eq!(s.get("a").await.unwrap(), None);
    // Deleting an absent key is fine; empty values are values.
    s.commit(vec![], vec![Op::Delete { key: "a".into() }])
        .await
        .unwrap();
    s.commit(vec![], vec![put("empty", b"")]).await.unwrap();
    assert_eq!(s.get("empty").await.unwrap(), Some(vec![]));
    // Keys the contract refuses, on every backend.
    for bad in ["", "nul\0inside"] {
        let err = s.commit(vec![], vec![put(bad, b"x")]).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{bad:?}: {err}");
        assert!(matches!(s.get(bad).await, Err(StoreError::Invalid { .. })));
    }
    let twice = s.commit(vec![], vec![put("t", b"1"), put("t", b"2")]).await;
    assert!(
        matches!(twice, Err(StoreError::Invalid { .. })),
        "{twice:?}"
    );
    assert_eq!(s.get("t").await.unwrap(), None);
}

async fn list_is_sorted_paginated_and_prefix_isolated(f: &Fixture) {
    let s = &f.store;
    for key in ["a/c", "b", "a/bc/d", "a", "a/b", "a/bc"] {
        s.commit(vec![], vec![put(key, key.as_bytes())])
            .await
            .unwrap();
    }
    let list = s.list("a/bc").await.unwrap();
    assert_eq!(keys(&list), ["a/bc", "a/bc/d"]);
    assert_eq!(list[0].1, b"a/bc");
    assert_eq!(
        keys(&s.list("a/b").await.unwrap()),
        ["a/b", "a/bc", "a/bc/d"]
    );
    assert_eq!(
        keys(&s.list("a/").await.unwrap()),
        ["a/b", "a/bc", "a/bc/d", "a/c"]
    );
    assert!(s.list("zz").await.unwrap().is_empty());
    // A blob is one pointer key; its chunks never show up in listings.
    s.put_blob("blob", &pseudo_random(700 * 1024, 1), vec![])
        .await
        .unwrap();
    assert_eq!(
        keys(&s.list("").await.unwrap()),
        ["a", "a/b", "a/bc", "a/bc/d", "a/c", "b", "blob"]
    );
    // More keys than one etcd page (256), written out of order.
    for batch in 0..5 {
        let ops = (0..120)
            .map(|i| put(&format!("many/{:04}", i * 5 + (4 - batch)), b"v"))
            .collect();
        s.commit(vec![], ops).await.unwrap();
    }
    let many = s.list("many/").await.unwrap();
    let expected: Vec<String> = (0..600).map(|i| format!("many/{i:04}")).collect();
    assert_eq!(
        keys(&many),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // DeletePrefix is a plain string prefix, too.
    s.commit(
        vec![],
        vec![Op::DeletePrefix {
            prefix: "a/b".into(),
        }],
    )
    .await
    .unwrap();
    assert_eq!(keys(&s.list("a").await.unwrap()), ["a", "a/c"]);
}

async fn failed_guard_applies_nothing(f: &Fixture) {
    let s = &f.store;
    s.commit(
        vec![],
        vec![put("leader", b"me"), put("x", b"1"), put("y", b"1")],
    )
    .await
    .unwrap();
    let before = s.revision().await.unwrap();
    let ops = || {
        vec![
            put("x", b"2"),
            Op::Delete { key: "y".into() },
            put("z", b"new"),
            Op::DeletePrefix {
                prefix: "lea".into(),
            },
        ]
    };
    let failing = [
        Guard::ValueEquals {
            key: "leader".into(),
            value: b"you".to_vec(),
        },
        Guard::ValueEquals {
            key: "missing".into(),
            value: b"".to_vec(),
        },
        Guard::Absent {
            key: "leader".into(),
        },
    ];
    for guard in failing {
        let holds = Guard::Absent { key: "nope".into() };
        let err = s
            .commit(vec![holds, guard.clone()], ops())
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::GuardFailed, "{guard:?}");
        assert_eq!(s.get("x").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get("y").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get("z").await.unwrap(), None);
        assert_eq!(s.get("leader").await.unwrap(), Some(b"me".to_vec()));
    }
    assert_eq!(
        s.revision().await.unwrap(),
        before,
        "a failed commit changed the revision"
    );
    let guards = vec![
        Guard::ValueEquals {
            key: "leader".into(),
            value: b"me".to_vec(),
        },
        Guard::Absent { key: "z".into() },
    ];
    let after = s.commit(guards, ops()).await.unwrap();
    assert!(after > before);
    assert_eq!(s.get("x").await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.get("y").await.unwrap(), None);
    assert_eq!(s.get("z").await.unwrap(), Some(b"new".to_vec()));
    assert_eq!(s.get("leader").await.unwrap(), None);
}

async fn too_large_commits_are_refused(f: &Fixture) {
    let s = &f.store;
    let ops = |n: usize| {
        (0..n)
            .map(|i| put(&format!("big/{i:03}"), b"v"))
            .collect::<Vec<_>>()
    };
    let err = s
        .commit(vec![], ops(MAX_OPS_PER_COMMIT + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { ops, .. } if ops == MAX_OPS_PER_COMMIT + 1),
        "{err}"
    );
    assert!(s.list("big/").await.unwrap().is_empty());
    s.commit(vec![], ops(MAX_OPS_PER_COMMIT)).await.unwrap();
    assert_eq!(s.list("big/").await.unwrap().len(), MAX_OPS_PER_COMMIT);
    let guards = (0..=MAX_OPS_PER_COMMIT)
        .map(|i| Guard::Absent {
            key: format!("g/{i}"),
        })
        .collect();
    let err = s.commit(guards, vec![put("g", b"x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    let huge = vec![put("huge", &vec![7; MAX_VALUE_BYTES + 1])];
    let err = s.commit(vec![], huge).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("put_blob"), "{err}");
    assert_eq!(s.get("huge").await.unwrap(), None);
    // Leased values are never large (etcd would expire the pointer, not the chunks).
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let leased = vec![Op::PutLeased {
        key: "leased".into(),
        value: vec![7; MAX_COMMIT_BYTES],
        lease,
    }];
    let err = s.commit(vec![], leased).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert_eq!(s.get("leased").await.unwrap(), None);
    // Just below the limit goes through on every backend (etcd's request limit is 1.5 MiB).
    let fits = vec![put("fits", &vec![7; MAX_COMMIT_BYTES - 16])];
    s.commit(vec![], fits).await.unwrap();
}

async fn blob_round_trips_byte_exact(f: &Fixture) {
    let s = &f.store;
    assert_eq!(s.get_blob("snap").await.unwrap(), None);
    let five_mib = pseudo_random(5 * 1024 * 1024 + 3, 5);
    s.put_blob("snap", &five_mib, vec![]).await.unwrap();
    assert!(s.get_blob("snap").await.unwrap() == Some(five_mib.clone()));
    // The key holds a small pointer, not the data.
    let pointer = s.get("snap").await.unwrap().unwrap();
    assert!(pointer.len() < 1024, "pointer of {} bytes", pointer.len());
    // Replace, guarded.
    let smaller = pseudo_random(1024 * 1024 + 1, 6);
    let guard = Guard::ValueEquals {
        key: "snap".into(),
        value: pointer.clone(),
    };
    s.put_blob("snap", &smaller, vec![guard.clone()])
        .await
        .unwrap();
    assert!(s.get_blob("snap").await.unwrap() == Some(smaller.clone()));
    // The same guard no longer holds: nothing changes.
    let err = s
        .put_blob("snap", &five_mib, vec![guard])
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::GuardFailed);
    assert!(s.get_blob("snap").await.unwrap() == Some(smaller));
    // Empty blobs, plain values, deletion.
    s.put_blob("empty", &[], vec![]).await.unwrap();
    assert_eq!(s.get_blob("empty").await.unwrap(), Some(vec![]));
    s.commit(vec![], vec![put("plain", b"not a blob")])
        .await
        .unwrap();
    let err = s.get_blob("plain").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    s.delete_blob("snap").await.unwrap();
    assert_eq!(s.get_blob("snap").await.unwrap(), None);
    assert_eq!(s.get("snap").await.unwrap(), None);
    s.delete_blob("snap").await.unwrap();
}

async fn blob_reader_never_sees_a_mix(f: &Fixture) {
    let s = f.store.clone();
    let blob = |generation: u8| vec![generation; 1024 * 1024 + 512 * 1024 + 7]; // 4 chunks
    s.put_blob("race", &blob(0), vec![]).await.unwrap();
    let mut seen =
        std::collections::BTreeSet::from([s.get_blob("race").await.unwrap().unwrap()[0]]);
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for generation in 1..=12u8 {
                s.put_blob("race", &blob(generation), vec![]).await.unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads < 5 {
        let got = s.get_blob("race").await.unwrap().unwrap();
        let generation = got[0];
        assert_eq!(got.len(), blob(0).len(), "torn blob length");
        assert!(
            got.iter().all(|b| *b == generation),
            "a reader saw a mix of generations"
        );
        seen.insert(generation);
        reads += 1;
    }
    writer.await.unwrap();
    assert_eq!(s.get_blob("race").await.unwrap().unwrap()[0], 12);
    assert!(reads >= 5, "only {reads} reads raced the writer");
    assert!(
        seen.len() > 1,
        "the reader never saw the blob change: {seen:?}"
    );
}

async fn lease_expiry_deletes_attached_keys(f: &Fixture) {
    let s = &f.store;
    let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    let start = Instant::now();
    let leased = |key: &str| Op::PutLeased {
        key: key.into(),
        value: b"alive".to_vec(),
        lease,
    };
    s.commit(
        vec![],
        vec![leased("reg/1"), leased("reg/2"), put("keep", b"1")],
    )
    .await
    .unwrap();
    // A later plain put detaches a key from its lease.
    s.commit(vec![], vec![leased("reg/3")]).await.unwrap();
    s.commit(vec![], vec![put("reg/3", b"unleased")])
        .await
        .unwrap();
    let mut rx = s.watch("reg/", s.revision().await.unwrap()).await.unwrap();
    wait_until_absent(s, "reg/1", PATIENCE).await;
    wait_until_absent(s, "reg/2", PATIENCE).await;
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "keys vanished before the TTL: {:?}",
        start.elapsed()
    );
    let mut deleted = vec![delete_event(&next(&mut rx).await).0.to_owned()];
    deleted.push(delete_event(&next(&mut rx).await).0.to_owned());
    deleted.sort();
    assert_eq!(deleted, ["reg/1", "reg/2"]);
    assert_eq!(s.get("keep").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(s.get("reg/3").await.unwrap(), Some(b"unleased".to_vec()));
    assert!(!s.keep_alive(lease).await.unwrap());
    let err = s.commit(vec![], vec![leased("reg/4")]).await.unwrap_err();
    assert_eq!(err, StoreError::LeaseNotFound { lease });
    assert!(!s.keep_alive(LeaseId(987_654_321)).await.unwrap());
}

/// A registration renewed under a new lease (a gateway re-registering after its federation
/// restarted) belongs to the new lease only: the old lease's expiry must not delete it.
async fn a_key_moved_to_a_new_lease_outlives_the_old_one(f: &Fixture) {
    let s = &f.store;
    let old = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    let leased = |lease: LeaseId, value: &[u8]| Op::PutLeased {
        key: "gw/1".into(),
        value: value.to_vec(),
        lease,
    };
    s.commit(vec![], vec![leased(old, b"before")])
        .await
        .unwrap();
    let new = s.grant_lease(Duration::from_secs(6)).await.unwrap();
    s.commit(vec![], vec![leased(new, b"after")]).await.unwrap();
    // Past the old lease's expiry, and past the embedded sweeper's period.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        s.get("gw/1").await.unwrap(),
        Some(b"after".to_vec()),
        "the old lease's expiry deleted a key the new lease owns"
    );
    // Touching the expired lease (the embedded store expires it then if the sweeper has not).
    assert!(
        !s.keep_alive(old).await.unwrap(),
        "the old lease is still alive"
    );
    assert_eq!(s.get("gw/1").await.unwrap(), Some(b"after".to_vec()));
    assert!(
        s.keep_alive(new).await.unwrap(),
        "the new lease died with the old one"
    );
    s.revoke_lease(new).await.unwrap();
    assert_eq!(s.get("gw/1").await.unwrap(), None);
}

async fn keep_alive_keeps_keys_and_revoke_deletes_them(f: &Fixture) {
    let s = &f.store;
    let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    s.commit(
        vec![],
        vec![Op::PutLeased {
            key: "member/me".into(),
            value: b"up".to_vec(),
            lease,
        }],
    )
    .await
    .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert!(
            s.keep_alive(lease).await.unwrap(),
            "lease lost while kept alive"
        );
        assert_eq!(s.get("member/me").await.unwrap(), Some(b"up".to_vec()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get("member/me").await.unwrap(), None);
    assert!(!s.keep_alive(lease).await.unwrap());
    s.revoke_lease(lease).await.unwrap();
}

async fn watch_delivers_later_events_in_order(f: &Fixture) {
    let s = &f.store;
    let r0 = s.commit(vec![], vec![put("w/old", b"0")]).await.unwrap();
    s.commit(vec![], vec![put("w/a", b"1")]).await.unwrap();
    let rb = s.commit(vec![], vec![put("w/b", b"2")]).await.unwrap();
    s.commit(vec![], vec![put("other/x", b"-"), put("wx", b"-")])
        .await
        .unwrap();
    s.commit(vec![], vec![Op::Delete { key: "w/a".into() }])
        .await
        .unwrap();
    let rcd = s
        .commit(vec![], vec![put("w/c", b"3"), put("w/d", b"4")])
        .await
        .unwrap();

    let mut rx = s.watch("w/", r0).await.unwrap();
    let a = next(&mut rx).await;
    assert_eq!(put_event(&a).0, "w/a");
    let b = next(&mut rx).await;
    assert_eq!(put_event(&b), ("w/b", &b"2"[..], rb));
    let del = next(&mut rx).await;
    assert_eq!(delete_event(&del).0, "w/a");
    assert!(delete_event(&del).1 > rb);
    let c = next(&mut rx).await;
    let d = next(&mut rx).await;
    assert_eq!(put_event(&c), ("w/c", &b"3"[..], rcd));
    assert_eq!(put_event(&d), ("w/d", &b"4"[..], rcd));
    quiet(&mut rx).await;
    // Live events follow without a gap.
    let re = s.commit(vec![], vec![put("w/e", b"5")]).await.unwrap();
    assert_eq!(put_event(&next(&mut rx).await), ("w/e", &b"5"[..], re));

    // Starting in the middle skips what came before.
    let mut mid = s.watch("w/", rb).await.unwrap();
    assert_eq!(delete_event(&next(&mut mid).await).0, "w/a");
    assert_eq!(put_event(&next(&mut mid).await).0, "w/c");
    // Starting now sees only the future.
    let mut now = s.watch("w/", s.revision().await.unwrap()).await.unwrap();
    quiet(&mut now).await;
    let rf = s.commit(vec![], vec![put("w/f", b"6")]).await.unwrap();
    assert_eq!(put_event(&next(&mut now).await), ("w/f", &b"6"[..], rf));
}

async fn watch_from_forgotten_revision_starts_with_reset(f: &Fixture) {
    let s = &f.store;
    let r0 = s.commit(vec![], vec![put("w/a", b"1")]).await.unwrap();
    s.commit(vec![], vec![put("w/b", b"2")]).await.unwrap();
    s.commit(vec![], vec![Op::Delete { key: "w/a".into() }])
        .await
        .unwrap();
    f.forget_history().await;
    let current = s.revision().await.unwrap();
    let mut rx = s.watch("w/", r0).await.unwrap();
    match next(&mut rx).await {
        WatchEvent::Reset { items, revision } => {
            assert_eq!(items, vec![("w/b".to_owned(), b"2".to_vec())]);
            assert!(
                revision >= current,
                "reset at {revision}, store at {current}"
            );
        }
        other => panic!("expected a Reset, got {other:?}"),
    }
    quiet(&mut rx).await;
    let rc = s.commit(vec![], vec![put("w/c", b"3")]).await.unwrap();
    assert_eq!(put_event(&next(&mut rx).await), ("w/c", &b"3"[..], rc));
}

// ---- embedded only -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_data_survives_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let config = StoreConfig::embedded(&path);
    let blob = pseudo_random(2 * 1024 * 1024, 9);
    let (revision, lease) = {
        let s = AnyStore::open(&config).await.unwrap();
        s.commit(vec![], vec![put("a", b"1"), put("b", b"2")])
            .await
            .unwrap();
        s.put_blob("blob", &blob, vec![]).await.unwrap();
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        let op = Op::PutLeased {
            key: "leased".into(),
            value: b"l".to_vec(),
            lease,
        };
        s.commit(vec![], vec![op]).await.unwrap();
        // A second opener of the same data dir is refused with a clear message.
        let err = AnyStore::open(&config).await.unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("another federation already uses data dir")
        );
        (s.revision().await.unwrap(), lease)
    };
    let s = AnyStore::open(&config).await.unwrap();
    assert_eq!(s.revision().await.unwrap(), revision);
    assert_eq!(
        s.list("").await.unwrap(),
        vec![
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
            ("blob".to_owned(), s.get("blob").await.unwrap().unwrap()),
            ("leased".to_owned(), b"l".to_vec()),
        ]
    );
    assert!(s.get_blob("blob").await.unwrap() == Some(blob));
    assert!(
        s.keep_alive(lease).await.unwrap(),
        "lease lost across reopen"
    );
    assert!(s.commit(vec![], vec![put("c", b"3")]).await.unwrap() > revision);
    // History does not survive a restart: an old revision gets a Reset.
    let mut rx = s.watch("", 1).await.unwrap();
    assert!(matches!(next(&mut rx).await, WatchEvent::Reset { .. }));
    // Data dirs are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lease_expired_while_closed_is_swept_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path()).await.unwrap();
        let lease = s.grant_lease(Duration::from_millis(300)).await.unwrap();
        let op = Op::PutLeased {
            key: "gone".into(),
            value: b"x".to_vec(),
            lease,
        };
        s.commit(vec![], vec![op]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = EmbeddedStore::open(dir.path()).await.unwrap();
    assert_eq!(s.get("gone").await.unwrap(), None);
}

const CHILD_DIR_ENV: &str = "ISTHMUS_STORE_CRASH_CHILD_DIR";

/// The writer half of `embedded_kill9_loses_nothing_acknowledged`, run in a child process (the
/// test re-executes itself with `CHILD_DIR_ENV` set): writes until killed and prints every
/// acknowledged write.
async fn kill9_child_writer(dir: std::ffi::OsString) {
    use std::io::Write;
    let s = EmbeddedStore::open(dir).await.unwrap();
    let mut out = std::io::stdout();
    for i in 0u64.. {
        let key = format!("k/{i:08}");
        let value = pseudo_random(64 + (i as usize % 4096), i);
        let ops = vec![
            put(&format!("{key}/a"), &value),
            put(&format!("{key}/b"), &value),
        ];
        s.commit(vec![], ops).await.unwrap();
        writeln!(out, "ACK {i}").unwrap();
        if i % 16 == 0 {
            s.put_blob("blob", &vec![(i % 251) as u8; 600 * 1024], vec![])
                .await
                .unwrap();
            writeln!(out, "BLOB {i}").unwrap();
        }
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_kill9_loses_nothing_acknowledged() {
    use std::io::BufRead;
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        // We are the child: write until the parent kills us.
        kill9_child_writer(dir).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "embedded_kill9_loses_nothing_acknowledged",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // Let it write for a while, then kill it mid-write.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let lines = reader.join().unwrap();
    let acked: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK ")?.parse().ok())
        .collect();
    let last_blob: Option<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("BLOB ")?.parse().ok())
        .next_back();
    assert!(
        acked.len() >= 20,
        "the child acknowledged only {} writes in {:?}; output: {lines:?}",
        acked.len(),
        started.elapsed()
    );

    let s = EmbeddedStore::open(dir.path()).await.unwrap();
    for i in &acked {
        let value = pseudo_random(64 + (*i as usize % 4096), *i);
        for half in ["a", "b"] {
            let key = format!("k/{i:08}/{half}");
            assert_eq!(
                s.get(&key).await.unwrap().as_deref(),
                Some(&value[..]),
                "acknowledged {key} lost by kill -9"
            );
        }
    }
    // Unacknowledged writes are all or nothing, too.
    let all = s.list("k/").await.unwrap();
    assert_eq!(all.len() % 2, 0, "a commit was torn in half");
    let blob = s.get_blob("blob").await.unwrap().unwrap();
    assert!(blob.iter().all(|b| *b == blob[0]), "torn blob");
    if let Some(last) = last_blob {
        let written = all.len() as u64 / 2;
        let candidates: Vec<u8> = (last..written.max(last + 1))
            .filter(|i| i % 16 == 0)
            .map(|i| (i % 251) as u8)
            .collect();
        assert!(
            candidates.contains(&blob[0]),
            "blob holds generation {}, older than the acknowledged {last}",
            blob[0]
        );
    }
}

/// A value over 1 MiB (a peer's delta changing thousands of services) is stored by an ordinary
/// commit and read back whole by `get`, `list` and watches; replacing and deleting it leaves no
/// chunks behind.
async fn large_values_round_trip_whole(f: &Fixture) {
    let s = &f.store;
    let r0 = s.revision().await.unwrap();
    let mut rx = s.watch("large/", r0).await.unwrap();
    let big = pseudo_random(2 * 1024 * 1024 + 5, 11);
    let small = b"small".to_vec();
    let r1 = s
        .commit(vec![], vec![put("large/a", &big), put("large/b", &small)])
        .await
        .unwrap();
    assert_eq!(s.get("large/a").await.unwrap(), Some(big.clone()));
    assert_eq!(
        s.list("large/").await.unwrap(),
        vec![
            ("large/a".to_owned(), big.clone()),
            ("large/b".to_owned(), small.clone())
        ]
    );
    assert_eq!(put_event(&next(&mut rx).await), ("large/a", &big[..], r1));
    assert_eq!(put_event(&next(&mut rx).await), ("large/b", &small[..], r1));

    // Replaced by another large value, then by a small one.
    let bigger = pseudo_random(3 * 1024 * 1024 + 1, 12);
    let r2 = s
        .commit(vec![], vec![put("large/a", &bigger)])
        .await
        .unwrap();
    assert_eq!(
        put_event(&next(&mut rx).await),
        ("large/a", &bigger[..], r2)
    );
    assert_eq!(s.get("large/a").await.unwrap(), Some(bigger.clone()));
    if let Some(generations) = chunk_generations(f).await {
        assert_eq!(generations.len(), 1, "only the current value's chunks stay");
    }
    let r3 = s
        .commit(vec![], vec![put("large/a", b"tiny")])
        .await
        .unwrap();
    assert_eq!(
        put_event(&next(&mut rx).await),
        ("large/a", &b"tiny"[..], r3)
    );
    assert_eq!(s.get("large/a").await.unwrap(), Some(b"tiny".to_vec()));

    // The peer delta log's path: one large delta among small writes, committed in chunks.
    let delta = pseudo_random(MAX_COMMIT_BYTES + 300_000, 13);
    let ops = vec![
        put("large/log/0001", &delta),
        put("large/record", b"r"),
        put("large/vip/1", b"v"),
    ];
    let mut done = 0;
    commit_in_chunks(s, ops, &mut done).await.unwrap();
    assert_eq!(done, 3);
    assert_eq!(s.get("large/log/0001").await.unwrap(), Some(delta.clone()));
    assert_eq!(put_event(&next(&mut rx).await).0, "large/log/0001");

    // Deleted one by one and under a prefix: every chunk goes with them.
    s.commit(vec![], vec![put("large/c", &big)]).await.unwrap();
    s.commit(
        vec![],
        vec![Op::Delete {
            key: "large/c".into(),
        }],
    )
    .await
    .unwrap();
    s.commit(vec![], vec![put("large/c", &big)]).await.unwrap();
    s.commit(
        vec![],
        vec![Op::DeletePrefix {
            prefix: "large/".into(),
        }],
    )
    .await
    .unwrap();
    assert!(s.list("large/").await.unwrap().is_empty());
    if let Some(generations) = chunk_generations(f).await {
        assert!(
            generations.is_empty(),
            "chunks left behind: {generations:?}"
        );
    }
    // A value starting with NUL is an ordinary value, too.
    s.commit(vec![], vec![put("nul", b"\0\0x")]).await.unwrap();
    assert_eq!(s.get("nul").await.unwrap(), Some(b"\0\0x".to_vec()));
    assert_eq!(
        s.list("nul").await.unwrap(),
        vec![("nul".to_owned(), b"\0\0x".to_vec())]
    );
}

/// A commit of a large value that fails leaves nothing visible and no chunks behind.
async fn failed_large_commit_leaves_nothing_visible(f: &Fixture) {
    let s = &f.store;
    s.commit(vec![], vec![put("held", b"1")]).await.unwrap();
    let r0 = s.revision().await.unwrap();
    let mut rx = s.watch("half/", r0).await.unwrap();
    let big = pseudo_random(LARGE_VALUE_BYTES * 5, 14);
    let err = s
        .commit(
            vec![Guard::Absent { key: "held".into() }],
            vec![put("half/x", &big), put("half/y", b"small")],
        )
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::GuardFailed);
    assert_eq!(s.get("half/x").await.unwrap(), None);
    assert!(s.list("half/").await.unwrap().is_empty());
    quiet(&mut rx).await;
    if let Some(generations) = chunk_generations(f).await {
        assert!(
            generations.is_empty(),
            "chunks left behind: {generations:?}"
        );
    }
    // Guards compare small values only, on every backend.
    let err = s
        .commit(
            vec![Guard::ValueEquals {
                key: "held".into(),
                value: big[..LARGE_VALUE_BYTES + 1].to_vec(),
            }],
            vec![put("half/z", b"z")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
}

/// A chunk generation named as made `age_ms` before now (the sweep reads a generation's age
/// from its first 12 hex digits).
fn generation_aged(age_ms: u64, tag: u8) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    format!("{:012x}{}", now - age_ms, format!("{tag:02x}").repeat(10))
}

/// Long enough ago that no writer can still publish it (the grace is 20 minutes).
const LONG_AGO_MS: u64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sweep_at_open_removes_only_leaked_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::embedded(dir.path().join("store"));
    let blob = pseudo_random(1024 * 1024 + 9, 21);
    {
        let s = AnyStore::open(&config).await.unwrap();
        s.put_blob("blob", &blob, vec![]).await.unwrap();
    }
    // Chunks a writer left behind (only a bug or an older version could, here): one old, one
    // made just now.
    let (old, young) = (generation_aged(LONG_AGO_MS, 0xab), generation_aged(0, 0xcd));
    let file = dir.path().join("store").join("isthmus.redb");
    let chunks: redb::TableDefinition<'static, &str, &[u8]> =
        redb::TableDefinition::new("blob_chunks");
    let names = |db: &redb::Database| -> Vec<String> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(chunks).unwrap();
        table
            .iter()
            .unwrap()
            .map(|item| item.unwrap().0.value().to_owned())
            .collect()
    };
    let referenced = {
        let db = open_redb(&file).await;
        let referenced = names(&db);
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(chunks).unwrap();
            table
                .insert(format!("{old}/00000000").as_str(), &b"x"[..])
                .unwrap();
            table
                .insert(format!("{old}/00000001").as_str(), &b"y"[..])
                .unwrap();
            table
                .insert(format!("{young}/00000000").as_str(), &b"z"[..])
                .unwrap();
        }
        txn.commit().unwrap();
        referenced
    };
    let s = AnyStore::open(&config).await.unwrap();
    assert_eq!(s.leaked_generations_swept().get(), 1);
    assert_eq!(s.get_blob("blob").await.unwrap(), Some(blob));
    assert_eq!(s.sweep_chunks().await.unwrap(), 0);
    drop(s);
    let db = open_redb(&file).await;
    let mut expected = referenced;
    expected.push(format!("{young}/00000000"));
    expected.sort();
    assert_eq!(names(&db), expected);
}

/// Opens the embedded store's file directly, waiting for a dropped store to let go of it.
async fn open_redb(file: &std::path::Path) -> redb::Database {
    let start = Instant::now();
    loop {
        match redb::Database::open(file) {
            Ok(db) => return db,
            Err(e) if start.elapsed() < PATIENCE => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot open {}: {e}", file.display()),
        }
    }
}

// ---- etcd only -----------------------------------------------------------------------------

#[cfg(feature = "etcd")]
mod etcd_only {
    use super::*;
    use isthmus_federation::testing::EtcdServer;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// Retries `op` until it succeeds or `within` passes.
    async fn eventually<T, F, Fut>(within: Duration, mut op: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let start = Instant::now();
        loop {
            match op().await {
                Ok(v) => return v,
                Err(e) if start.elapsed() < within => {
                    assert!(e.is_retryable(), "not retryable: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("still failing after {within:?}: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_kill9_and_restart_store_and_watch_recover() {
        let mut server = EtcdServer::start().await;
        let s = AnyStore::open(&etcd_config(server.endpoint()))
            .await
            .unwrap();
        // A second client behind a proxy stays cut off until the writes after the restart are
        // done, so its watch must replay them from its last revision (not from "now").
        let proxy = Proxy::start(server.client_addr()).await;
        let behind = AnyStore::open(&etcd_config(format!("http://{}", proxy.addr)))
            .await
            .unwrap();
        let r0 = s.commit(vec![], vec![put("r/0", b"0")]).await.unwrap();
        let mut rx = s.watch("r/", r0).await.unwrap();
        let mut rx_behind = behind.watch("r/", r0).await.unwrap();
        let r1 = s.commit(vec![], vec![put("r/1", b"1")]).await.unwrap();
        assert_eq!(put_event(&next(&mut rx).await), ("r/1", &b"1"[..], r1));
        assert_eq!(
            put_event(&next(&mut rx_behind).await),
            ("r/1", &b"1"[..], r1)
        );

        proxy.cut();
        server.kill();
        let err = s.get("r/1").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("is etcd reachable at"), "{err}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.restart().await;

        // The same store object works again, and acknowledged data survived.
        let r2 = eventually(Duration::from_secs(15), || {
            s.commit(vec![], vec![put("r/2", b"2")])
        })
        .await;
        let r3 = s.commit(vec![], vec![put("r/3", b"3")]).await.unwrap();
        assert_eq!(s.get("r/1").await.unwrap(), Some(b"1".to_vec()));
        // Open watches resume where they were, without losing or repeating events.
        assert_eq!(put_event(&next(&mut rx).await), ("r/2", &b"2"[..], r2));
        assert_eq!(put_event(&next(&mut rx).await), ("r/3", &b"3"[..], r3));
        quiet(&mut rx).await;
        proxy.heal();
        assert_eq!(
            put_event(&next(&mut rx_behind).await),
            ("r/2", &b"2"[..], r2)
        );
        assert_eq!(
            put_event(&next(&mut rx_behind).await),
            ("r/3", &b"3"[..], r3)
        );
        quiet(&mut rx_behind).await;
    }

    /// A TCP proxy that can partition its clients from etcd.
    struct Proxy {
        addr: SocketAddr,
        open: Arc<AtomicBool>,
        conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    impl Proxy {
        async fn start(upstream: SocketAddr) -> Proxy {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = Proxy {
                addr: listener.local_addr().unwrap(),
                open: Arc::new(AtomicBool::new(true)),
                conns: Arc::default(),
            };
            let (open, conns) = (proxy.open.clone(), proxy.conns.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: connection closed
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            });
            proxy
        }

        fn cut(&self) {
            self.open.store(false, Ordering::SeqCst);
            for task in self.conns.lock().unwrap().drain(..) {
                task.abort();
            }
        }

        fn heal(&self) {
            self.open.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_compaction_during_partition_resets_the_watcher() {
        let server = EtcdServer::start().await;
        let direct = AnyStore::open(&etcd_config(server.endpoint()))
            .await
            .unwrap();
        let proxy = Proxy::start(server.client_addr()).await;
        let partitioned = AnyStore::open(&etcd_config(format!("http://{}", proxy.addr)))
            .await
            .unwrap();
        let r0 = direct.revision().await.unwrap();
        let mut rx = partitioned.watch("p/", r0).await.unwrap();
        let ra = direct.commit(vec![], vec![put("p/a", b"1")]).await.unwrap();
        assert_eq!(put_event(&next(&mut rx).await), ("p/a", &b"1"[..], ra));

        proxy.cut();
        direct.commit(vec![], vec![put("p/b", b"2")]).await.unwrap();
        direct
            .commit(vec![], vec![Op::Delete { key: "p/a".into() }])
            .await
            .unwrap();
        direct.commit(vec![], vec![put("p/c", b"3")]).await.unwrap();
        direct.commit(vec![], vec![put("q/x", b"-")]).await.unwrap();
        let compacted = compact_etcd(&server.endpoint()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.heal();

        match next(&mut rx).await {
            WatchEvent::Reset { items, revision } => {
                assert_eq!(
                    items,
                    vec![
                        ("p/b".to_owned(), b"2".to_vec()),
                        ("p/c".to_owned(), b"3".to_vec())
                    ]
                );
                assert!(revision >= compacted);
            }
            other => panic!("expected a Reset after compaction, got {other:?}"),
        }
        let rd = direct.commit(vec![], vec![put("p/d", b"4")]).await.unwrap();
        assert_eq!(put_event(&next(&mut rx).await), ("p/d", &b"4"[..], rd));
        // The partitioned store itself works again, too.
        let got = eventually(PATIENCE, || partitioned.get("p/d")).await;
        assert_eq!(got, Some(b"4".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_keys_live_under_the_prefix() {
        let server = EtcdServer::start().await;
        let s = AnyStore::open(&etcd_config(server.endpoint()))
            .await
            .unwrap();
        s.commit(vec![], vec![put("k", b"v")]).await.unwrap();
        s.put_blob("b", &[1, 2, 3], vec![]).await.unwrap();
        let mut client = etcd_client::Client::connect([server.endpoint()], None)
            .await
            .unwrap();
        let all = client
            .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
        assert!(
            keys.iter().all(|k| k.starts_with(b"/isthmus-test/")),
            "{keys:?}"
        );
        let user = client.get("/isthmus-test/k", None).await.unwrap();
        assert_eq!(user.kvs()[0].value(), b"v");
        // Unreachable etcd: a clear, retryable error within the request timeout.
        drop(server);
        let start = Instant::now();
        let err = s.list("").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    /// Puts chunks at `generation` directly, as a writer that died before its pointer would.
    async fn plant_chunks(endpoint: &str, generation: &str, count: u32) {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        for index in 0..count {
            let key = format!("/isthmus-test/\0blob/{generation}/{index:08}");
            client.put(key, vec![9u8; 1000], None).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_sweep_removes_only_leaked_chunks_and_they_are_never_visible() {
        let server = EtcdServer::start().await;
        let endpoint = server.endpoint();
        let (old, young) = (generation_aged(LONG_AGO_MS, 0xab), generation_aged(0, 0xcd));
        plant_chunks(&endpoint, &old, 3).await;
        plant_chunks(&endpoint, &young, 2).await;
        // The sweep at start removes the old leak and keeps the one whose writer may still
        // publish it.
        let s = AnyStore::open(&etcd_config(endpoint.clone()))
            .await
            .unwrap();
        let start = Instant::now();
        while s.leaked_generations_swept().get() < 1 {
            assert!(start.elapsed() < PATIENCE, "no sweep at start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(etcd_chunk_generations(&endpoint).await, vec![young.clone()]);
        // Partly written values are never visible.
        assert!(s.list("").await.unwrap().is_empty());

        // Referenced chunks stay; a later leak goes at the next sweep.
        let blob = pseudo_random(1024 * 1024 + 3, 31);
        let large = pseudo_random(LARGE_VALUE_BYTES * 3, 32);
        s.put_blob("blob", &blob, vec![]).await.unwrap();
        s.commit(vec![], vec![put("large", &large)]).await.unwrap();
        let referenced = etcd_chunk_generations(&endpoint).await;
        assert_eq!(referenced.len(), 3, "{referenced:?}");
        let later = generation_aged(LONG_AGO_MS * 2, 0xef);
        plant_chunks(&endpoint, &later, 1).await;
        assert_eq!(s.sweep_chunks().await.unwrap(), 1);
        assert_eq!(s.leaked_generations_swept().get(), 2);
        assert_eq!(etcd_chunk_generations(&endpoint).await, referenced);
        assert_eq!(s.get_blob("blob").await.unwrap(), Some(blob));
        assert_eq!(s.get("large").await.unwrap(), Some(large));
        assert_eq!(s.sweep_chunks().await.unwrap(), 0);
    }

    /// Three members, the store's own member is the leader, and it is killed: every call made
    /// right after succeeds on the other members (after at most an election), nothing is lost,
    /// the open watch delivers every change in order, and no chunk is left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_leader_loss_costs_at_most_an_election() {
        let mut cluster = isthmus_federation::testing::EtcdCluster::start(3).await;
        let leader = cluster.leader().await;
        let mut endpoints = cluster.endpoints();
        endpoints.rotate_left(leader); // the leader first: calls go to it until it dies
        let s = AnyStore::open(&etcd_members_config(endpoints, 5_000))
            .await
            .unwrap();
        let r0 = s.commit(vec![], vec![put("f/000", b"0")]).await.unwrap();
        let mut rx = s.watch("f/", r0).await.unwrap();
        let big = pseudo_random(LARGE_VALUE_BYTES * 3, 41);
        s.commit(vec![], vec![put("big", &big)]).await.unwrap();

        cluster.kill(leader);
        let killed = Instant::now();
        for i in 1..=30u32 {
            let key = format!("f/{i:03}");
            let value = i.to_string().into_bytes();
            s.commit(vec![], vec![put(&key, &value)])
                .await
                .unwrap_or_else(|e| {
                    panic!("commit {i}, {:?} after the kill: {e}", killed.elapsed())
                });
            assert_eq!(s.get(&key).await.unwrap(), Some(value));
            assert_eq!(s.list("f/").await.unwrap().len(), i as usize + 1);
            if i % 10 == 0 {
                let big = pseudo_random(LARGE_VALUE_BYTES * 3, u64::from(i));
                s.commit(vec![], vec![put("big", &big)]).await.unwrap();
                assert_eq!(s.get("big").await.unwrap(), Some(big));
                s.put_blob("blob", &pseudo_random(700_000, u64::from(i)), vec![])
                    .await
                    .unwrap();
            }
        }
        for i in 1..=30u32 {
            assert_eq!(put_event(&next(&mut rx).await).0, format!("f/{i:03}"));
        }
        quiet(&mut rx).await;
        let lease = s.grant_lease(Duration::from_secs(10)).await.unwrap();
        assert!(s.keep_alive(lease).await.unwrap());
        // Only the current large value's and blob's chunks remain.
        let endpoint = cluster.endpoints()[(leader + 1) % 3].clone();
        assert_eq!(etcd_chunk_generations(&endpoint).await.len(), 2);
    }

    /// A TCP proxy that, once told, passes requests on but swallows etcd's answers: the
    /// request applies and the client never learns it.
    struct AnswerSwallower {
        addr: SocketAddr,
        swallow: Arc<AtomicBool>,
    }

    impl AnswerSwallower {
        async fn start(upstream: SocketAddr) -> AnswerSwallower {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let swallow = Arc::new(AtomicBool::new(false));
            let proxy = AnswerSwallower {
                addr: listener.local_addr().unwrap(),
                swallow: swallow.clone(),
            };
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let swallow = swallow.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match server_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !swallow.load(Ordering::SeqCst)
                                && client_write.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            });
            proxy
        }

        fn swallow_answers(&self) {
            self.swallow.store(true, Ordering::SeqCst);
        }
    }

    /// A commit whose answer is lost is sent again to the next member; its marker makes the
    /// second copy a no-op, so a guard the first copy made false does not fail the commit and
    /// nothing applies twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_commit_whose_answer_is_lost_applies_once() {
        let server = EtcdServer::start().await;
        let proxy = AnswerSwallower::start(server.client_addr()).await;
        let s = AnyStore::open(&etcd_members_config(
            vec![format!("http://{}", proxy.addr), server.endpoint()],
            3_000,
        ))
        .await
        .unwrap();
        s.commit(vec![], vec![put("warm", b"1")]).await.unwrap();
        // Watched directly: the proxy swallows watch answers, too.
        let direct = AnyStore::open(&etcd_config(server.endpoint()))
            .await
            .unwrap();
        let before = direct.revision().await.unwrap();
        let mut rx = direct.watch("once", before).await.unwrap();

        proxy.swallow_answers();
        let applied = s
            .commit(
                vec![Guard::Absent { key: "once".into() }],
                vec![put("once", b"1")],
            )
            .await
            .unwrap();
        assert_eq!(s.get("once").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            put_event(&next(&mut rx).await),
            ("once", &b"1"[..], applied)
        );
        quiet(&mut rx).await;
    }
}
