//! Hedging with real parts: TLS HTTP/2 peer gateways on loopback (west answers after 2 s,
//! south at once), the real pool, retry budget and latency learner. Deadlines are measured
//! from the caller's side, with wide margins.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use isthmus_federation::model::policy::Hedge;
use tokio::time::Instant;

use super::send_tests::{east_with, request};
use super::{Outbound, Resolved};
use crate::accesslog::{Entry, Side};
use crate::metrics::ResultLabels;
use crate::policy::ServicePolicy;
use crate::retry::Budget;
use crate::table::Snapshot;

const SLOW: Duration = Duration::from_secs(2);

fn hedging(policy: &ServicePolicy) -> ServicePolicy {
    ServicePolicy {
        hedge: Hedge {
            enabled: true,
            multiplier: 2.0,
            min: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        ..policy.clone()
    }
}

/// One GET through `send` with `policy` (west first): how long it took, the text, the entry.
async fn get(
    outbound: &Outbound,
    snap: &Snapshot,
    resolved: &Resolved,
    policy: &ServicePolicy,
) -> (Duration, String, Entry) {
    let (order, _) = outbound.plan(snap, resolved);
    assert_eq!(order[0].cluster.as_ref(), "west", "west is tried first");
    let Ok(replay) = crate::retry::prepare(request(Method::GET)) else {
        panic!("a bodiless GET is kept for replay");
    };
    let mut entry = Entry::new(false, Side::Outbound, "http", "east".into());
    let started = Instant::now();
    let sent = tokio::time::timeout(
        Duration::from_secs(20),
        outbound.send(
            snap,
            resolved,
            &order,
            policy,
            replay.request(),
            Some(&replay),
            &mut entry,
        ),
    )
    .await
    .expect("an answer within the request's time");
    let text = super::send_tests::ok_body(sent).await;
    (
        started.elapsed(),
        String::from_utf8_lossy(&text).into_owned(),
        entry,
    )
}

fn hedges(outbound: &Outbound, result: &'static str) -> u64 {
    outbound
        .metrics
        .hedges
        .get_or_create(&ResultLabels { result })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_try_is_hedged_to_the_next_cluster_and_the_first_answer_wins() {
    let (outbound, snap, resolved, _, west_abandoned) = east_with(
        Some(("west", SLOW)),
        Some(("south", Duration::ZERO)),
        Budget::default(),
    )
    .await;
    let (_, policy) = outbound.plan(&snap, &resolved);
    let policy = hedging(&policy);
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let (took, text, entry) = get(&outbound, &snap, &resolved, &policy).await;
        worst = worst.max(took);
        assert_eq!(text, "south");
        assert!(entry.hedged, "the slow try was hedged");
        assert_eq!(entry.winner.as_deref(), Some("south"));
        assert_eq!(entry.dst_cluster.as_deref(), Some("south"));
        let reason = entry.reason.unwrap_or_default();
        assert!(reason.contains("hedged: west"), "{reason}");
    }
    // The hedge goes out after hedge.max (200 ms: west's p99 is not known); 2 s would be west.
    assert!(
        worst < Duration::from_millis(1500),
        "worst request {worst:?}"
    );
    assert_eq!(
        (hedges(&outbound, "sent"), hedges(&outbound, "won")),
        (5, 5)
    );
    assert_eq!(hedges(&outbound, "refused"), 0);
    // West's tries lost the race: their streams were reset, and west saw each one go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while west_abandoned.load(Ordering::Relaxed) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(west_abandoned.load(Ordering::Relaxed), 5);
    // South's answers were learned; west's (never finished) were not.
    let ring = outbound.latencies.p99("echo.demo", "west");
    assert_eq!(ring, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hedge_when_the_retry_budget_has_none() {
    // No floor: the budget holds only what requests earn (20 % of one per request).
    let (outbound, snap, resolved, _, west_abandoned) = east_with(
        Some(("west", SLOW)),
        Some(("south", Duration::ZERO)),
        Budget::new(0),
    )
    .await;
    let (_, policy) = outbound.plan(&snap, &resolved);
    let (took, text, entry) = get(&outbound, &snap, &resolved, &hedging(&policy)).await;
    assert_eq!(text, "west", "the first try's answer, waited for");
    assert!(took >= SLOW, "{took:?}");
    assert!(!entry.hedged && entry.winner.is_none());
    assert_eq!(hedges(&outbound, "sent"), 0);
    assert_eq!(hedges(&outbound, "refused"), 1);
    assert_eq!(west_abandoned.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hedging_off_a_slow_cluster_is_waited_for() {
    let (outbound, snap, resolved, _, _) = east_with(
        Some(("west", SLOW)),
        Some(("south", Duration::ZERO)),
        Budget::default(),
    )
    .await;
    let (_, policy) = outbound.plan(&snap, &resolved);
    assert!(!policy.hedge.enabled, "off by default");
    let (took, text, entry) = get(&outbound, &snap, &resolved, &policy).await;
    assert_eq!(text, "west");
    assert!(took >= SLOW, "{took:?}");
    assert!(!entry.hedged && entry.winner.is_none());
    assert_eq!(hedges(&outbound, "sent") + hedges(&outbound, "refused"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_cluster_answers_before_its_hedge_and_its_p99_is_learned() {
    let (outbound, snap, resolved, _, _) = east_with(
        Some(("west", Duration::from_millis(5))),
        Some(("south", Duration::ZERO)),
        Budget::default(),
    )
    .await;
    let (_, policy) = outbound.plan(&snap, &resolved);
    let policy = ServicePolicy {
        hedge: Hedge {
            max: Duration::from_secs(1),
            ..hedging(&policy).hedge
        },
        ..policy.as_ref().clone()
    };
    for _ in 0..crate::latency::MIN_SAMPLES {
        let (_, text, entry) = get(&outbound, &snap, &resolved, &policy).await;
        assert_eq!(text, "west");
        assert!(!entry.hedged, "west answered within the hedge delay");
    }
    let p99 = outbound
        .latencies
        .p99("echo.demo", "west")
        .expect("enough samples");
    assert!(p99 >= Duration::from_millis(5), "{p99:?}");
    let after = policy.hedge.delay(Some(p99)).expect("on");
    assert!(
        after < policy.hedge.max,
        "the learned p99 shortens the wait"
    );
    assert_eq!(hedges(&outbound, "sent"), 0);
}

#[tokio::test]
async fn the_hedge_goes_to_the_next_cluster_else_another_gateway_else_nowhere() {
    let (outbound, snap, resolved, west_gw, _) =
        east_with(None, Some(("south", Duration::ZERO)), Budget::default()).await;
    let (order, policy) = outbound.plan(&snap, &resolved);
    let on = hedging(&policy);
    let Ok(replay) = crate::retry::prepare(request(Method::GET)) else {
        panic!("replayable");
    };
    let plan = |policy: &ServicePolicy, replay, rest: &[&crate::table::Backend], west| {
        super::hedge::plan(
            &outbound,
            policy,
            replay,
            "echo.demo",
            west,
            &west_gw,
            rest.iter().copied(),
            "east",
            Duration::from_secs(15),
        )
        .map(|p| (p.backend.cluster.to_string(), p.avoid, p.after))
    };
    let west = order[0];
    assert_eq!(
        plan(&on, Some(&replay), &order[1..], west),
        Some(("south".into(), None, Duration::from_millis(200)))
    );
    assert_eq!(plan(&policy, Some(&replay), &order[1..], west), None, "off");
    assert_eq!(plan(&on, None, &order[1..], west), None, "not replayable");
    assert_eq!(plan(&on, Some(&replay), &[], west), None, "nowhere else");
    let mut two = west.clone();
    two.gateways.push(crate::table::PeerGateway {
        name: "gw-2".into(),
        address: "127.0.0.1:1".into(),
        zone: "".into(),
    });
    assert_eq!(
        plan(&on, Some(&replay), &[], &two),
        Some((
            "west".into(),
            Some(west_gw.clone()),
            Duration::from_millis(200)
        )),
        "another gateway of the same cluster"
    );
    let _: Arc<str> = west_gw;
}
