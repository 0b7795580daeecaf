use super::*;

fn name(s: &str) -> ClusterName {
    ClusterName::new(s).expect("name")
}

fn sample(
    peer: &str,
    outbound: bool,
    requests: u64,
    errors: u64,
    ms: &[u64],
) -> proto::TrafficSample {
    let mut latency_buckets = vec![0u64; BUCKETS];
    for m in ms {
        latency_buckets[bucket_of(Duration::from_millis(*m))] += 1;
    }
    proto::TrafficSample {
        peer_cluster: peer.into(),
        outbound,
        requests,
        errors,
        latency_buckets,
    }
}

fn report(interval_ms: u32, samples: Vec<proto::TrafficSample>) -> proto::TrafficReport {
    proto::TrafficReport {
        gateway: String::new(),
        interval_ms,
        samples,
    }
}

#[test]
fn buckets_and_quantiles() {
    assert_eq!(bucket_of(Duration::from_micros(300)), 0);
    assert_eq!(bucket_of(Duration::from_millis(1)), 0);
    assert_eq!(bucket_of(Duration::from_millis(3)), 2);
    assert_eq!(bucket_of(Duration::from_secs(31)), BUCKETS - 1);

    let mut b = [0u64; BUCKETS];
    assert_eq!(quantile(&b, 0.5), None);
    // 100 samples in (5, 10] ms: the median interpolates to the middle of the bucket.
    b[3] = 100;
    assert_eq!(quantile(&b, 0.5), Some(7.5));
    assert_eq!(quantile(&b, 0.99), Some(9.95));
    // One slow outlier among 99 fast ones moves p99 only to the top of the fast bucket...
    b[3] = 99;
    b[9] = 1;
    assert_eq!(quantile(&b, 0.99), Some(10.0));
    // ...and p100 into the outlier's bucket (500, 1000].
    assert_eq!(quantile(&b, 1.0), Some(1_000.0));
    let mut over = [0u64; BUCKETS];
    over[BUCKETS - 1] = 3;
    assert_eq!(quantile(&over, 0.5), Some(30_000.0));
}

#[test]
fn bad_reports_are_refused_whole() {
    let log = TrafficLog::default();
    let now = 1_000_000;
    let cases: Vec<(proto::TrafficReport, &str)> = vec![
        (report(0, vec![]), "interval"),
        (
            report(2_000, vec![sample("West!", true, 1, 0, &[])]),
            "West!",
        ),
        (
            report(2_000, vec![sample("west", true, 1, 2, &[])]),
            "2 errors among 1",
        ),
        (
            report(2_000, vec![sample("west", true, 1, 0, &[1, 2])]),
            "more latency samples",
        ),
        (
            report(
                2_000,
                vec![proto::TrafficSample {
                    latency_buckets: vec![0; 3],
                    ..sample("west", true, 1, 0, &[])
                }],
            ),
            "3 latency buckets",
        ),
        (
            report(
                2_000,
                vec![sample("west", true, 1, 0, &[]); MAX_SAMPLES_PER_REPORT + 1],
            ),
            "samples",
        ),
    ];
    for (r, want) in cases {
        let e = log.record("gw", &r, now).expect_err(want).to_string();
        assert!(e.contains(want), "{e} should mention {want}");
    }
    assert!(log.edges(&name("east"), now).is_empty(), "nothing was kept");
    assert!(log.reporters(now).is_empty());
}

#[test]
fn edges_sum_gateways_and_age_out() {
    let log = TrafficLog::default();
    let east = name("east");
    let t0 = 10_000_000;
    // Two gateways of east each report 2 s intervals for 20 s: gw-a calls west at 10/s, gw-b
    // at 5/s with one error per interval; gw-a also serves south's calls at 1/s.
    for i in 1..=10 {
        let at = t0 + i * 2_000;
        let a = report(
            2_000,
            vec![
                sample("west", true, 20, 0, &[4; 20]),
                sample("south", false, 2, 0, &[40, 40]),
            ],
        );
        log.record("gw-a", &a, at).expect("a");
        let b = report(2_000, vec![sample("west", true, 10, 1, &[4; 10])]);
        log.record("gw-b", &b, at).expect("b");
    }
    let now = t0 + 20_000;
    let edges = log.edges(&east, now);
    let pairs: Vec<(&str, &str)> = edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(pairs, [("east", "west"), ("south", "east")]);
    let ew = &edges[0];
    assert_eq!((ew.requests, ew.errors), (300, 10));
    assert!((ew.requests_per_s - 15.0).abs() < 1e-9, "{ew:?}");
    assert!((ew.error_ratio - 10.0 / 300.0).abs() < 1e-9);
    let p50 = ew.p50_ms.expect("p50");
    assert!((2.0..=5.0).contains(&p50), "{p50}");
    assert_eq!(ew.series.len(), 30);
    // The last two 10 s steps carried 15/s each; earlier ones nothing.
    assert_eq!(&ew.series[28..], &[15.0, 15.0]);
    assert!(ew.series[..28].iter().all(|v| *v == 0.0));
    let se = &edges[1];
    assert!((se.requests_per_s - 1.0).abs() < 1e-9, "{se:?}");
    assert!(se.p99_ms.expect("p99") > 25.0);
    let reporters = log.reporters(now);
    assert_eq!(reporters.len(), 2);
    assert!(reporters.iter().all(|r| r.last_report_ms_ago == 0));

    // Past the window the rates are zero but the graph still shows the traffic; past KEEP the
    // edges and the gateways are gone.
    let later = now + 61_000;
    let edges = log.edges(&east, later);
    assert_eq!(edges[0].requests, 0);
    assert_eq!(edges[0].requests_per_s, 0.0);
    assert_eq!(edges[0].p50_ms, None);
    assert!(edges[0].series.iter().any(|v| *v > 0.0));
    let gone = now + 301_000;
    assert!(log.edges(&east, gone).is_empty());
    assert!(log.reporters(gone).is_empty());
}

#[test]
fn the_number_of_gateways_kept_is_bounded() {
    let log = TrafficLog::default();
    for i in 0..MAX_GATEWAYS {
        log.record(&format!("gw-{i}"), &report(2_000, vec![]), 1_000)
            .expect("within the bound");
    }
    assert_eq!(
        log.record("one-more", &report(2_000, vec![]), 1_000),
        Err(TrafficError::TooManyGateways)
    );
    // A known gateway still reports; once the others go quiet, a new one is taken.
    log.record("gw-0", &report(2_000, vec![]), 1_000)
        .expect("known gateway");
    log.record("one-more", &report(2_000, vec![]), 1_000 + 301_000)
        .expect("room again");
}
