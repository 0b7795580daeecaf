//! Scenario 5: hostile peers at the network level, against a real federation process.

use std::time::Duration;

use isthmus_federation::identity::{SpiffeId, TrustBundle};
use isthmus_federation::proto;
use serde_json::{Value, json};

use crate::harness::fake_peer::{FakeCluster, Verdict, bundle_of, leaf, open_sync, td, token_for};
use crate::harness::{Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli};

/// What east holds for `peer`: (services, catalog version, bundle sequence).
async fn view_of(east: &Federation, peer: &str) -> (u64, u64, u64) {
    let p = east.admin("peering.show", json!({ "peer": peer })).await;
    (
        p["their_catalog"]["services"].as_u64().unwrap_or(u64::MAX),
        p["their_catalog"]["version"].as_u64().unwrap_or(u64::MAX),
        p["bundle_sequence"].as_u64().unwrap_or(u64::MAX),
    )
}

/// A `Sync` stream opened with `certs` is refused: the handshake or the call fails, or the
/// stream never carries a message.
async fn assert_sync_refused(
    east: &Federation,
    east_bundle: &TrustBundle,
    certs: &isthmus_federation::identity::CertStore,
    as_cluster: &FakeCluster,
    what: &str,
) {
    if let Ok(Ok(mut s)) = open_sync(east, east_bundle, Some(certs), as_cluster.hello()).await {
        let got = tokio::time::timeout(Duration::from_secs(5), s.rx.message()).await;
        if let Ok(Ok(Some(m))) = got {
            east.fail(&format!("{what}: {m:?}"));
        }
    }
}

/// 5a: `Sync` without a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_without_client_certificate() {
    let east = Federation::start(Spec::new("east", 61).catalog(&catalog(&[], IMPORT_ALL))).await;
    let bundle = bundle_of(&east).await;
    let fake = FakeCluster::new("anon", "anon.mesh");
    let r = open_sync(&east, &bundle, None, fake.hello())
        .await
        .expect("TLS without a client certificate is allowed on the peering port");
    match r {
        Err(s) if s.code() == tonic::Code::Unauthenticated => {}
        Err(s) => east.fail(&format!("expected UNAUTHENTICATED, got {s:?}")),
        Ok(_) => east.fail("a Sync stream without a client certificate was accepted"),
    }
}

/// 5b: a peered fake cluster sends crafted updates: each is NACKed (code 3) and changes
/// nothing; a valid snapshot is ACKed and imported; a bundle that is not newer is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_updates_are_nacked() {
    let east = Federation::start(Spec::new("east", 62).catalog(&catalog(&[], IMPORT_ALL))).await;
    let east_bundle = bundle_of(&east).await;
    let mallory = FakeCluster::new("mallory", "mallory.mesh");
    let resp = mallory.establish(&east).await.expect("establish mallory");
    assert_eq!(resp.cluster, "east");
    let certs = leaf(&mallory.ca, &mallory.id());
    let mut sync = open_sync(&east, &east_bundle, Some(&certs), mallory.hello())
        .await
        .expect("connect")
        .unwrap_or_else(|s| east.fail(&format!("mallory's Sync refused: {s:?}")));
    sync.expect_hello().await;
    east.wait_connected(&["mallory"]).await;
    let unchanged = view_of(&east, "mallory").await;
    assert_eq!(unchanged.0, 0, "nothing from mallory yet");

    let base = |v: u64| mallory.snapshot(v, &[("shop", "evil")]);
    let mut cases: Vec<(&str, Vec<proto::CatalogUpdate>, Vec<u64>)> = Vec::new();
    let mut u = base(101);
    u.cluster = "east".into();
    cases.push(("another cluster's catalog", vec![u], vec![101]));
    let mut u = base(102);
    if let Some(b) = u.bundle.as_mut() {
        b.trust_domain = "west.mesh".into();
    }
    cases.push(("a bundle for west.mesh", vec![u], vec![102]));
    let mut u = base(103);
    u.upserts[0] = crate::harness::fake_peer::summary("shop", "Bad_Name!", 80);
    cases.push(("an invalid service name", vec![u], vec![103]));
    let mut u = base(104);
    u.upserts[0] = crate::harness::fake_peer::summary("shop", "evil", 0);
    cases.push(("port 0", vec![u], vec![104]));
    let mut u = base(105);
    u.upserts[0] = crate::harness::fake_peer::summary("shop", "evil", 70_000);
    cases.push(("port 70000", vec![u], vec![105]));
    let mut u = base(106);
    let dup = u.upserts[0].clone();
    u.upserts.push(dup);
    cases.push(("the same key twice", vec![u], vec![106]));
    let mut first = base(107);
    first.more = true;
    let mut second = base(108);
    second.upserts = vec![crate::harness::fake_peer::summary("shop", "evil2", 80)];
    cases.push((
        "a split update whose version changes mid-way",
        vec![first, second],
        vec![107, 108],
    ));
    for (what, parts, versions) in cases {
        match sync.send(parts, &versions).await {
            Verdict::Nack { code: 3, reason } => eprintln!("{what}: NACK 3 ({reason})"),
            other => east.fail(&format!("{what}: expected NACK code 3, got {other:?}")),
        }
        assert_eq!(
            view_of(&east, "mallory").await,
            unchanged,
            "{what} changed east's view of mallory"
        );
        let c = east.catalog().await;
        assert!(
            !has_route(&c, "shop/evil") && !has_route(&c, "shop/evil2"),
            "{what}: mallory's service reached east's catalog: {c}"
        );
    }

    // Every refusal is counted (and logged) where operators look.
    let refused = east
        .metric(
            "isthmus_federation_peer_updates",
            &["peer=\"mallory\"", "result=\"nacked_invalid\""],
        )
        .await;
    assert_eq!(
        refused, 7.0,
        "each refused update counts once in isthmus_federation_peer_updates"
    );

    // The same peer's valid snapshot is ACKed and imported: the refusals were about content.
    match sync.send(vec![base(200)], &[200]).await {
        Verdict::Ack => {}
        other => east.fail(&format!("a valid snapshot was refused: {other:?}")),
    }
    east.wait_catalog("east imports mallory's shop/evil", |c| {
        has_route(c, "shop/evil")
    })
    .await;
    let accepted = view_of(&east, "mallory").await;
    assert_eq!((accepted.0, accepted.1), (1, 200), "{accepted:?}");

    // A bundle whose sequence is not newer (different roots, same sequence) is ignored.
    let impostor = FakeCluster::new("mallory", "mallory.mesh");
    let same_seq = TrustBundle::new(
        mallory.td.clone(),
        mallory.bundle.sequence(),
        impostor.bundle.roots().to_vec(),
    )
    .expect("bundle");
    let mut delta = base(201);
    delta.snapshot = false;
    delta.upserts.clear();
    delta.bundle = Some(same_seq.to_proto());
    let verdict = sync.send(vec![delta], &[201]).await;
    let after = view_of(&east, "mallory").await;
    assert_eq!(
        after.2, accepted.2,
        "a bundle with a sequence that is not newer replaced mallory's ({verdict:?})"
    );
    // And east still trusts only the original root: a leaf from the impostor CA is refused.
    let impostor_certs = leaf(&impostor.ca, &impostor.id());
    eprintln!("a bundle that is not newer: {verdict:?}");
    assert_sync_refused(
        &east,
        &east_bundle,
        &impostor_certs,
        &impostor,
        "a leaf from a CA mallory never had ACKed was accepted",
    )
    .await;
}

/// 5c: trust-domain collisions, token reuse by another cluster or by an impostor of the cluster
/// that used it (a retry must prove it is the same party), expired tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn establish_refusals() {
    let east = Federation::start(Spec::new("east", 63).catalog(&catalog(&[], IMPORT_ALL))).await;
    let west = Federation::start(Spec::new("west", 64).catalog(&catalog(&[], IMPORT_ALL))).await;
    peer_via_cli(&east, &west).await;

    // A second cluster claiming west's trust domain.
    let south2 = Federation::start(
        Spec::new("south2", 65)
            .extra(json!({ "trust_domain": "west.mesh" }))
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    let token = east.cli_ok(&["peering", "token", "--peer", "south2"]).await;
    let (ok, out, err) = south2.cli(&["peering", "establish", token.trim()]).await;
    assert!(!ok, "a duplicate trust domain was accepted: {out}");
    assert!(
        err.contains("west.mesh") && err.contains("already belongs to peer west"),
        "unclear error for a duplicate trust domain: {err}"
    );
    let peers = east.admin("peering.list", Value::Null).await;
    assert_eq!(
        crate::harness::peer_state(&peers, "south2"),
        "absent",
        "{peers}"
    );

    // A token used twice by two different clusters: the second is refused.
    let (_, t) = token_for(&east, "south").await;
    let east_bundle = bundle_of(&east).await;
    let south = FakeCluster::new("south", "south.mesh");
    south
        .establish_with(&east, &t, "south")
        .await
        .expect("first use of the token");
    let south_certs = leaf(&south.ca, &south.id());
    // The same name again without proof is no retry: the name is only claimed.
    match south.establish_with(&east, &t, "south").await {
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            assert!(s.message().contains("already used by south"), "{s:?}")
        }
        r => east.fail(&format!("a retry without proof: {r:?}")),
    }
    // An impostor: same name, same trust domain, its own CA (and so its own bundle and keys).
    let impostor = FakeCluster::new("south", "south.mesh");
    match impostor.establish_with(&east, &t, "south").await {
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
        r => east.fail(&format!("an impostor replayed south's token: {r:?}")),
    }
    // Its own certificate does not chain to the bundle south presented: the call fails.
    let impostor_certs = leaf(&impostor.ca, &impostor.id());
    if let Ok(Ok(r)) = impostor
        .establish_presenting(&east, &t, "south", Some(&impostor_certs))
        .await
    {
        east.fail(&format!(
            "an impostor with its own certificate replayed south's token: {r:?}"
        ));
    }
    // East still trusts only south's root: the impostor's leaf cannot open south's stream.
    assert_sync_refused(
        &east,
        &east_bundle,
        &impostor_certs,
        &impostor,
        "the impostor's certificate opened south's stream",
    )
    .await;
    // The party that spent the token retries (its answer was lost), proving it over mTLS.
    south
        .establish_presenting(&east, &t, "south", Some(&south_certs))
        .await
        .expect("connect with south's certificate")
        .unwrap_or_else(|s| east.fail(&format!("south's proven retry was refused: {s:?}")));
    let other = FakeCluster::new("thief", "thief.mesh");
    match other.establish_with(&east, &t, "thief").await {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        r => east.fail(&format!(
            "a spent token for south, presented by thief: {r:?}"
        )),
    }
    let p = east.admin("peering.show", json!({ "peer": "south" })).await;
    assert_eq!(p["trust_domain"], "south.mesh", "{p}");
    let mut genuine = open_sync(&east, &east_bundle, Some(&south_certs), south.hello())
        .await
        .expect("connect")
        .unwrap_or_else(|s| east.fail(&format!("south's genuine Sync refused: {s:?}")));
    genuine.expect_hello().await;
    drop(genuine);

    // An expired token.
    let north = Federation::start(
        Spec::new("north", 66)
            .extra(json!({ "peering": { "token_ttl": "1s" } }))
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    let token = north.cli_ok(&["peering", "token", "--peer", "west"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, out, err) = west.cli(&["peering", "establish", token.trim()]).await;
    assert!(!ok, "an expired token was accepted: {out}");
    assert!(
        err.contains("expired"),
        "unclear error for an expired token: {err}"
    );
    let peers = north.admin("peering.list", Value::Null).await;
    assert_eq!(
        crate::harness::peer_state(&peers, "west"),
        "absent",
        "{peers}"
    );
}

/// 5d: a certificate for south's federation ID signed by mallory's CA (whose root east holds
/// in mallory's bundle) is refused: roots are picked by the trust domain in the ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_from_another_peers_ca() {
    let east = Federation::start(
        Spec::new("east", 68).catalog(&catalog(&[export("shop", "x", 80, None)], IMPORT_ALL)),
    )
    .await;
    let east_bundle = bundle_of(&east).await;
    let south = FakeCluster::new("south", "south.mesh");
    south.establish(&east).await.expect("establish south");
    // Mallory's bundle carries its own root and a root of a CA it made for south.mesh.
    let mut mallory = FakeCluster::new("mallory", "mallory.mesh");
    let forger = FakeCluster::new("south", "south.mesh");
    let mut roots = mallory.bundle.roots().to_vec();
    roots.extend(forger.bundle.roots().iter().cloned());
    mallory.bundle = TrustBundle::new(mallory.td.clone(), 1, roots).expect("bundle");
    mallory.establish(&east).await.expect("establish mallory");
    let before = view_of(&east, "south").await;

    let forged = leaf(
        &forger.ca,
        &SpiffeId::federation(&td("south.mesh"), "south").expect("id"),
    );
    match open_sync(&east, &east_bundle, Some(&forged), south.hello()).await {
        Err(_) => {}
        Ok(Err(s)) => assert!(
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            "expected a TLS failure (UNAVAILABLE), got {s:?}: did the verifier accept the chain?"
        ),
        Ok(Ok(mut s)) => {
            if let Ok(Ok(Some(m))) =
                tokio::time::timeout(Duration::from_secs(5), s.rx.message()).await
            {
                east.fail(&format!("the forged south certificate was accepted: {m:?}"));
            }
        }
    }
    assert_eq!(view_of(&east, "south").await, before);
    let p = east.admin("peering.show", json!({ "peer": "south" })).await;
    assert_eq!(p["state"], "disconnected", "{p}");

    // Control: south's genuine certificate opens the stream.
    let genuine = leaf(&south.ca, &south.id());
    let mut s = open_sync(&east, &east_bundle, Some(&genuine), south.hello())
        .await
        .expect("connect")
        .unwrap_or_else(|s| east.fail(&format!("south's genuine Sync refused: {s:?}")));
    s.expect_hello().await;
}

/// 5e: a used token replayed with the CLI by a second federation that calls itself `south`
/// (its own CA and KEK) is refused, before and after east restarts, and the real south keeps
/// its peering; south itself may run the same command again (its earlier answer "lost"), which
/// proves its identity over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_token_cannot_be_replayed_by_an_impostor() {
    let mut east =
        Federation::start(Spec::new("east", 146).catalog(&catalog(&[], IMPORT_ALL))).await;
    let south = Federation::start(
        Spec::new("south", 147).catalog(&catalog(&[export("shop", "real", 80, None)], "")),
    )
    .await;
    let impostor = Federation::start(
        Spec::new("south", 148).catalog(&catalog(&[export("shop", "fake", 80, None)], "")),
    )
    .await;
    let token = east.cli_ok(&["peering", "token", "--peer", "south"]).await;
    let token = token.trim();
    south.cli_ok(&["peering", "establish", token]).await;
    east.wait_catalog("east imports south's shop/real", |c| {
        has_route(c, "shop/real")
    })
    .await;

    let (ok, out, err) = impostor.cli(&["peering", "establish", token]).await;
    assert!(!ok, "an impostor replayed a used token: {out}");
    assert!(
        err.contains("already used by south") && err.contains("create a new"),
        "unclear refusal of a replayed token: {err}"
    );
    // The real south retries with the same token: accepted, it proves who it is.
    south.cli_ok(&["peering", "establish", token]).await;

    east.restart().await;
    east.wait_connected(&["south"]).await;
    east.wait_catalog("east imports south's shop/real after a restart", |c| {
        has_route(c, "shop/real")
    })
    .await;
    let (ok, out, _) = impostor.cli(&["peering", "establish", token]).await;
    assert!(
        !ok,
        "an impostor replayed a used token after a restart: {out}"
    );
    // Give an impostor's stream time to show up, then check it never did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = east.catalog().await;
    assert!(
        has_route(&c, "shop/real") && !has_route(&c, "shop/fake"),
        "east's catalog after replays: {c}"
    );
    let refused = east
        .metric("isthmus_federation_peering_refused", &["reason=\"token\""])
        .await;
    // Counters start again at the restart: the replay since then is counted.
    assert!(refused >= 1.0, "replays are counted: {refused}");
}

/// 5f: a Sync stream the federation ends for a protocol violation ends with the gRPC code and
/// the reason, not with OK: a hello naming another cluster, and a message over the size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ended_for_a_protocol_violation_says_why() {
    use isthmus_federation::proto::peer_message::Body;

    let east = Federation::start(Spec::new("east", 149).catalog(&catalog(&[], IMPORT_ALL))).await;
    let east_bundle = bundle_of(&east).await;
    let mallory = FakeCluster::new("mallory", "mallory.mesh");
    mallory.establish(&east).await.expect("establish mallory");
    let certs = leaf(&mallory.ca, &mallory.id());

    /// Reads until the stream ends; returns its final status (OK when it ended cleanly).
    async fn end_of(mut s: crate::harness::fake_peer::SyncStream) -> tonic::Status {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), s.rx.message()).await {
                Err(_) => panic!("the stream did not end within 15 s"),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return tonic::Status::ok(""),
                Ok(Err(status)) => return status,
            }
        }
    }

    let mut hello = mallory.hello();
    if let Some(Body::Hello(h)) = hello.body.as_mut() {
        h.cluster = "west".into();
    }
    let s = open_sync(&east, &east_bundle, Some(&certs), hello)
        .await
        .expect("connect")
        .unwrap_or_else(|s| east.fail(&format!("Sync refused before the hello: {s:?}")));
    let status = end_of(s).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("hello names cluster \"west\""),
        "{status:?}"
    );

    let mut s = open_sync(&east, &east_bundle, Some(&certs), mallory.hello())
        .await
        .expect("connect")
        .unwrap_or_else(|s| east.fail(&format!("mallory's Sync refused: {s:?}")));
    s.expect_hello().await;
    let mut huge = mallory.snapshot(1, &[("shop", "big")]);
    huge.upserts[0]
        .metadata
        .insert("padding".into(), "x".repeat(17 * 1024 * 1024));
    s.tx.send(crate::harness::fake_peer::msg(Body::Update(huge)))
        .await
        .expect("send");
    let status = end_of(s).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("mallory"), "{status:?}");
    assert!(
        !has_route(&east.catalog().await, "shop/big"),
        "an oversized update was stored"
    );
    // Its log is a file: plain text, no terminal colour codes.
    let log = east.log_tail(400);
    assert!(
        log.contains("INFO") && !log.contains('\u{1b}'),
        "colour codes in a log written to a file:\n{log}"
    );
}
