//! Traffic policy across three clusters (separate processes on loopback, real clients): weighted
//! split with health, header routing where allowed, shadowing, authorization by cluster, trust
//! domain and workload identity (forged headers included), rate limits under twice their load,
//! a fault-injection drill that fails over like an outage and ends at its expiry, and `explain`
//! compared with where requests really go.
//!
//! In every mesh `east` serves nothing itself, so its calls cross to `west` or `south` (each in
//! its own region, equal weights: 50/50 without a policy). Policies are written into the
//! catalogs while everything runs, exactly as an operator edits them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::harness::federation::exe;
use crate::harness::gateway::{Gateway, Member, curl, http_get, mesh, west_download};
use crate::harness::netns::{Load, Sample};
use crate::harness::{CONVERGE, IMPORT_ALL};

/// East's catalog: imports everything, exports nothing, with `policies` (YAML lines).
fn east_catalog(policies: &str) -> String {
    format!("exports: []\n{IMPORT_ALL}policies:\n{policies}")
}

/// A serving cluster's catalog: the sample services (plus `extra` exports) and `policies`.
fn serving_catalog(m: &Member, extra: &str, policies: &str) -> String {
    format!("{}policies:\n{policies}", m.samples.catalog(extra))
}

/// Waits until `gw` applies the policy document `name` (it appears in its /config_dump).
async fn wait_policy(gw: &Gateway, name: &str) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let dump = gw.config_dump().await.unwrap_or_default();
        let docs = &dump["table"]["policies"]["documents"];
        if docs
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n["name"] == name))
        {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            gw.fail(&format!(
                "policy {name} never reached the gateway: {}",
                dump["table"]["policies"]
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn explain(gw: &Gateway, service: &str) -> Value {
    let body = http_get(gw.admin, &format!("/explain?service={service}"))
        .await
        .unwrap_or_else(|e| gw.fail(&format!("/explain: {e:#}")));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn share(explained: &Value, cluster: &str) -> f64 {
    explained["decision"]["shares"][cluster]
        .as_f64()
        .unwrap_or(0.0)
}

/// `isthmus sample-client` against `url` (a VIP URL): open loop at `rate` for `seconds`.
async fn load(url: &str, rate: u32, seconds: u32) -> Load {
    Load::start(Command::new(exe()), &["--url", url], rate, seconds, 5_000).await
}

/// Requests served per cluster (by the echo body's `cluster`), and how many failed.
fn tally(samples: &[Sample]) -> (BTreeMap<String, usize>, usize) {
    let mut by = BTreeMap::new();
    let mut failed = 0;
    for s in samples {
        match (&s.cluster, s.ok()) {
            (Some(c), true) => *by.entry(c.clone()).or_insert(0) += 1,
            _ => failed += 1,
        }
    }
    (by, failed)
}

/// Asserts that `samples`, taken over `seconds` against a limit of `rate` per second with an
/// initial `burst`, were admitted at `rate` ± 10 %; returns how many were admitted.
fn assert_admitted_rate(
    what: &str,
    samples: &[Sample],
    rate: f64,
    burst: f64,
    seconds: u32,
) -> usize {
    let ok = samples.iter().filter(|s| s.ok()).count();
    let admitted = (ok as f64 - burst) / f64::from(seconds);
    println!(
        "RATE LIMIT {what}: {ok} of {} admitted ({admitted:.1}/s against {rate}/s)",
        samples.len()
    );
    assert!(
        (rate * 0.9..=rate * 1.1).contains(&admitted),
        "{what}: admitted {admitted:.1}/s, not {rate} ± 10 %"
    );
    ok
}

fn json_body(out: &(i32, String, String)) -> Value {
    assert_eq!(out.0, 0, "curl failed: {}{}", out.1, out.2);
    serde_json::from_str(out.1.trim()).unwrap_or_else(|e| panic!("{e}: {:?}", out.1))
}

/// `curl -D -` through `proxy`: (status, headers lowercased, body).
fn curl_full(proxy: &str, extra: &[&str], url: &str) -> (u16, String, String) {
    let mut args = vec!["-D", "-", "-x", proxy];
    args.extend_from_slice(extra);
    args.push(url);
    let (code, out, err) = curl(&args);
    assert_eq!(code, 0, "curl {args:?}: {err}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn rfc3339_in(secs: u64) -> String {
    isthmus_federation::model::policy::format_rfc3339(SystemTime::now() + Duration::from_secs(secs))
}

/// The inbound access-log lines of `gw` for `service` called from `from`, sent within
/// `[since_ms, until_ms)` (Unix ms).
fn inbound_lines(gw: &Gateway, from: &str, since_ms: u64, until_ms: u64) -> Vec<Value> {
    gw.access_log()
        .into_iter()
        .filter(|l| {
            l["side"] == "inbound"
                && l["src_cluster"] == from
                && l["service"] == "echo.demo"
                && l["ts_ms"]
                    .as_u64()
                    .is_some_and(|t| t >= since_ms && t < until_ms)
        })
        .collect()
}

fn unix_ms() -> u64 {
    crate::harness::netns::unix_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_follows_weights_and_health_header_routing_where_allowed_and_explain_agrees() {
    let mut m = mesh(111, "", json!({}), json!({})).await;
    let vip = m[0].vip("demo/echo").await;
    let url = format!("http://{vip}:8080/");
    let proxy = m[0].gw.proxy.to_string();

    // Without a policy the header is ignored: it steers nothing, the two clusters share.
    let mut south = 0;
    for _ in 0..20 {
        let body = json_body(&curl(&[
            "-x",
            &proxy,
            "-H",
            "x-isthmus-cluster: south",
            "http://echo.demo.svc.clusterset.local:8080/",
        ]));
        south += usize::from(body["cluster"] == "south");
    }
    assert!(
        south < 20,
        "x-isthmus-cluster was honoured without a policy allowing it"
    );
    // A cluster that serves nothing: honoured it would be a 503 naming the serving clusters;
    // ignored, every call is served.
    for _ in 0..5 {
        let (status, _, body) = curl_full(
            &proxy,
            &["-H", "x-isthmus-cluster: nowhere"],
            "http://echo.demo.svc.clusterset.local:8080/",
        );
        assert_eq!(
            status, 200,
            "x-isthmus-cluster: nowhere was not ignored: {body}"
        );
    }
    let ignored = m[0]
        .gw
        .metric(
            "isthmus_gateway_cluster_header",
            &["service=\"echo.demo\"", "honoured=\"false\""],
        )
        .await;
    let honoured = m[0]
        .gw
        .metric(
            "isthmus_gateway_cluster_header",
            &["service=\"echo.demo\"", "honoured=\"true\""],
        )
        .await;
    assert_eq!(
        (ignored, honoured),
        (25.0, 0.0),
        "every header counted as ignored"
    );

    m[0].fed.write_catalog(&east_catalog(
        "  canary: {services: [demo/echo], split: {weights: {west: 95, south: 5}, cluster_header: true}}\n",
    ));
    wait_policy(&m[0].gw, "canary").await;

    // explain, before any traffic: the exact shares of the next request.
    let before = explain(&m[0].gw, "echo.demo").await;
    assert!((share(&before, "west") - 0.95).abs() < 0.01, "{before}");
    assert!((share(&before, "south") - 0.05).abs() < 0.01, "{before}");
    assert_eq!(before["decision"]["cluster"], "west", "{before}");

    // 10,000 requests: 95/5 within ±2 %.
    let samples = load(&url, 500, 20).await.finish().await;
    let (by, failed) = tally(&samples);
    let total = samples.len();
    println!("SPLIT 95/5 over {total} requests: {by:?}, {failed} failed");
    assert!(total >= 9_900, "{total} requests sent");
    assert_eq!(failed, 0, "{by:?}");
    let south_share = by.get("south").copied().unwrap_or(0) as f64 / total as f64;
    assert!(
        (0.03..=0.07).contains(&south_share),
        "south took {:.2} % of the traffic, not 5 ± 2 %",
        south_share * 100.0
    );
    // explain agrees with where the requests went.
    assert!(
        (south_share - share(&before, "south")).abs() < 0.02,
        "explain said {}, traffic measured {south_share}",
        share(&before, "south")
    );

    // Header routing, allowed by the policy: every request goes where it says.
    for _ in 0..20 {
        let body = json_body(&curl(&[
            "-x",
            &proxy,
            "-H",
            "x-isthmus-cluster: south",
            "http://echo.demo.svc.clusterset.local:8080/",
        ]));
        assert_eq!(body["cluster"], "south", "{body}");
    }
    let (status, head, _) = curl_full(
        &proxy,
        &["-H", "x-isthmus-cluster: north"],
        "http://echo.demo.svc.clusterset.local:8080/",
    );
    assert_eq!(status, 503, "{head}");
    assert!(
        head.contains("x-isthmus-error") && head.contains("north"),
        "{head}"
    );

    // The CLI, in words and JSON, asked of east's gateway.
    let admin = m[0].gw.admin.to_string();
    let out = Command::new(exe())
        .args([
            "explain",
            "echo.demo",
            "--from",
            "east",
            "--gateway",
            &admin,
        ])
        .output()
        .await
        .expect("isthmus explain");
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{words}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        words.contains("west") && words.contains("south") && words.contains("canary"),
        "{words}"
    );
    let out = Command::new(exe())
        .args([
            "explain",
            "echo.demo",
            "--from",
            "west",
            "--gateway",
            &admin,
        ])
        .output()
        .await
        .expect("isthmus explain");
    assert!(
        !out.status.success(),
        "asking east's gateway about west must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("east"), "{err}");

    // The 5 % cluster goes down: its share moves to west, callers see no error, and explain
    // says so.
    m[2].samples.stop().await;
    let running = load(&url, 200, 12).await;
    // Asked while the load runs. Passive ejection comes and goes (an ejection ends, a few tries
    // fail, the next one is longer), so explain is polled: it must show south ejected with its
    // share moved to west, and every answer must agree with itself.
    let mut ejected = None;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let e = explain(&m[0].gw, "echo.demo").await;
        let total = share(&e, "west") + share(&e, "south");
        assert!((total - 1.0).abs() < 1e-9, "shares sum to 1: {e}");
        let south_down = e["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["cluster"] == "south"))
            .is_some_and(|c| c["verdict"]["healthy"] == false);
        if south_down {
            ejected = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let samples = running.finish().await;
    let (by, failed) = tally(&samples);
    println!("SPLIT after south went down: {by:?}, {failed} failed");
    assert_eq!(failed, 0, "failures reached the caller: {by:?}");
    assert_eq!(by.get("south"), None, "{by:?}");
    let after = ejected.expect("explain never showed south unhealthy while it was down");
    assert_eq!(share(&after, "south"), 0.0, "{after}");
    assert!((share(&after, "west") - 1.0).abs() < 1e-9, "{after}");
    // East stopped sending to south: over the last 6 s of the load, at most the few probing
    // requests of an ended ejection reached it.
    let end = samples.last().map_or(0.0, |s| s.at_ms) as u64;
    let late = inbound_lines(&m[2].gw, "east", end - 6_000, end + 1_000);
    assert!(
        late.len() <= 6,
        "east kept sending to the down cluster: {} requests",
        late.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_reach_the_shadow_cluster_and_never_touch_the_caller() {
    let m = mesh(114, "", json!({}), json!({})).await;
    // South answers every copy from east only after 3 s: were the caller waiting on the copy,
    // it would show.
    m[2].fed.write_catalog(&serving_catalog(
        &m[2],
        "",
        &format!(
            "  slow: {{services: [demo/echo], fault: {{from: [east], delay: {{percent: 100, duration: 3s}}, expires_at: \"{}\"}}}}\n",
            rfc3339_in(600)
        ),
    ));
    m[0].fed.write_catalog(&east_catalog(
        "  mirror: {services: [demo/echo], split: {weights: {west: 1}}, shadow: {cluster: south, percent: 100}}\n",
    ));
    wait_policy(&m[2].gw, "slow").await;
    wait_policy(&m[0].gw, "mirror").await;

    let body = json_body(&curl(&[
        "-x",
        &m[0].gw.proxy.to_string(),
        "http://echo.demo.svc.clusterset.local:8080/",
    ]));
    assert_eq!(body["cluster"], "west");
    assert_eq!(
        body["shadow"], false,
        "the caller's own request is not a copy"
    );

    let vip = m[0].vip("demo/echo").await;
    let started = unix_ms();
    let samples = load(&format!("http://{vip}:8080/"), 40, 5)
        .await
        .finish()
        .await;
    let (by, failed) = tally(&samples);
    let slowest = samples.iter().map(|s| s.latency_ms).fold(0.0, f64::max);
    println!(
        "SHADOW {} requests: {by:?}, {failed} failed, slowest {slowest:.1} ms",
        samples.len()
    );
    assert_eq!(failed, 0);
    assert_eq!(by.get("west"), Some(&samples.len()), "{by:?}");
    assert!(
        slowest < 1_500.0,
        "a caller waited {slowest} ms: the copy held it up"
    );

    // The copies arrive at south (after its 3 s delay), each once: never retried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let copies = loop {
        let lines: Vec<Value> = inbound_lines(&m[2].gw, "east", started, u64::MAX)
            .into_iter()
            .filter(|l| l["shadow"] == true)
            .collect();
        if lines.len() + 1 >= samples.len() || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("SHADOW copies at south: {}", copies.len());
    assert!(
        copies.len() as f64 >= samples.len() as f64 * 0.95 && copies.len() <= samples.len() + 1,
        "{} copies for {} requests",
        copies.len(),
        samples.len()
    );
    let real_at_south = inbound_lines(&m[2].gw, "east", started, u64::MAX)
        .iter()
        .filter(|l| l["shadow"] != true)
        .count();
    assert_eq!(real_at_south, 0, "only copies go to the shadow cluster");
    let sent = m[0]
        .gw
        .metric(
            "isthmus_gateway_shadow_requests_total",
            &["outcome=\"sent\""],
        )
        .await;
    assert!(
        sent >= copies.len() as f64,
        "east counted {sent} copies sent"
    );
}

/// One call of the authorization matrix.
struct Call {
    what: &'static str,
    /// Whose gateway the call leaves from: 0 east, 2 south.
    from: usize,
    /// Send from the gateways' trusted local source (127.0.0.5) instead of 127.0.0.1.
    trusted: bool,
    headers: Vec<String>,
    status: u16,
    /// A fragment the refusal reason must contain, or the identity the service must see.
    expect: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_by_cluster_trust_domain_and_identity_including_forgeries() {
    let gw_extra = json!({ "identity": { "trusted_sources": ["127.0.0.5/32"] } });
    let m = mesh(117, "", json!({}), gw_extra).await;
    m[1].fed.write_catalog(&serving_catalog(
        &m[1],
        "",
        "  authz-echo:\n\
         \x20   services: [demo/echo]\n\
         \x20   authorization:\n\
         \x20     default: deny\n\
         \x20     allow:\n\
         \x20       - {clusters: [east], identities: [\"spiffe://east.mesh/ns/shop/sa/cart\", \"spiffe://east.mesh/ns/shop/sa/cart-old\"]}\n\
         \x20       - {trust_domains: [south.mesh]}\n\
         \x20     deny:\n\
         \x20       - {identities: [\"spiffe://south.mesh/ns/shop/sa/banned\"]}\n\
         \x20       - {clusters: [east], identities: [\"spiffe://east.mesh/ns/shop/sa/cart-old\"]}\n",
    ));
    wait_policy(&m[1].gw, "authz-echo").await;
    let url = "http://west.echo.demo.svc.clusterset.local:8080/";
    let xfcc = |id: &str| {
        vec![format!(
            "x-forwarded-client-cert: By=spiffe://local/sidecar;URI={id}"
        )]
    };
    let calls = [
        Call {
            what: "east, known identity allowed by cluster+identity",
            from: 0,
            trusted: true,
            headers: xfcc("spiffe://east.mesh/ns/shop/sa/cart"),
            status: 200,
            expect: "spiffe://east.mesh/ns/shop/sa/cart",
        },
        Call {
            what: "east, identity both allowed and denied: deny wins",
            from: 0,
            trusted: true,
            headers: xfcc("spiffe://east.mesh/ns/shop/sa/cart-old"),
            status: 403,
            expect: "deny rule 2",
        },
        Call {
            what: "east, known identity no rule allows",
            from: 0,
            trusted: true,
            headers: xfcc("spiffe://east.mesh/ns/shop/sa/other"),
            status: 403,
            expect: "default deny",
        },
        Call {
            what: "east, no identity (cluster alone is not enough)",
            from: 0,
            trusted: false,
            headers: vec![],
            status: 403,
            expect: "identity unknown",
        },
        Call {
            what: "east, forged client cert from an untrusted source",
            from: 0,
            trusted: false,
            headers: xfcc("spiffe://east.mesh/ns/shop/sa/cart"),
            status: 403,
            expect: "identity unknown",
        },
        Call {
            what: "east, forged gateway identity header",
            from: 0,
            trusted: false,
            headers: vec!["isthmus-caller: spiffe://east.mesh/ns/shop/sa/cart".into()],
            status: 403,
            expect: "identity unknown",
        },
        Call {
            what: "east, trusted source claiming another trust domain",
            from: 0,
            trusted: true,
            headers: xfcc("spiffe://south.mesh/ns/shop/sa/ok"),
            status: 403,
            expect: "identity unknown",
        },
        Call {
            what: "south, allowed by trust domain without identity",
            from: 2,
            trusted: false,
            headers: vec![],
            status: 200,
            expect: "",
        },
        Call {
            what: "south, known identity allowed by trust domain",
            from: 2,
            trusted: true,
            headers: xfcc("spiffe://south.mesh/ns/shop/sa/ok"),
            status: 200,
            expect: "spiffe://south.mesh/ns/shop/sa/ok",
        },
        Call {
            what: "south, denied identity",
            from: 2,
            trusted: true,
            headers: xfcc("spiffe://south.mesh/ns/shop/sa/banned"),
            status: 403,
            expect: "deny rule 1",
        },
        Call {
            what: "south, forged identity of east",
            from: 2,
            trusted: true,
            headers: xfcc("spiffe://east.mesh/ns/shop/sa/cart"),
            status: 200,
            expect: "",
        },
    ];
    let mut failures = Vec::new();
    for c in &calls {
        let proxy = m[c.from].gw.proxy.to_string();
        let mut extra: Vec<&str> = vec![
            "--interface",
            if c.trusted { "127.0.0.5" } else { "127.0.0.1" },
        ];
        for h in &c.headers {
            extra.extend(["-H", h.as_str()]);
        }
        let (status, head, body) = curl_full(&proxy, &extra, url);
        let ok = status == c.status
            && if status == 200 {
                let v: Value = serde_json::from_str(body.trim()).unwrap_or_default();
                let xfcc = v["forwarded_client_cert"].as_str().unwrap_or("");
                // The workload hop comes first only when its identity was known.
                let first = xfcc.split(',').next().unwrap_or("");
                if c.expect.is_empty() {
                    !xfcc.contains(',') && first.contains("isthmus/gateway")
                } else {
                    first.ends_with(&format!("URI={}", c.expect)) && xfcc.split(',').count() == 2
                }
            } else {
                head.contains("denied by policy authz-echo") && head.contains(c.expect)
            };
        println!(
            "  [{}] {}: {status}",
            if ok { "ok" } else { "FAIL" },
            c.what
        );
        if !ok {
            failures.push(format!("{}: {status}\n{head}{body}", c.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let denied = m[1]
        .gw
        .metric(
            "isthmus_gateway_authz_decisions_total",
            &["decision=\"deny\""],
        )
        .await;
    let expected_denials = calls.iter().filter(|c| c.status == 403).count() as f64;
    assert_eq!(denied, expected_denials, "every denial counted");
    let logged = m[1]
        .gw
        .access_log()
        .into_iter()
        .filter(|l| {
            l["status"] == 403
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("denied by policy"))
        })
        .count();
    assert_eq!(
        logged as f64, expected_denials,
        "every denial logged with its reason"
    );

    // Deny by default for every service of a cluster: HTTP gets 403, gRPC PERMISSION_DENIED.
    m[2].fed.write_catalog(&serving_catalog(
        &m[2],
        "",
        "  lockdown: {services: [\"*\"], authorization: {default: deny}}\n",
    ));
    wait_policy(&m[2].gw, "lockdown").await;
    let proxy = m[0].gw.proxy.to_string();
    let (status, head, _) = curl_full(
        &proxy,
        &[],
        "http://south.echo.demo.svc.clusterset.local:8080/",
    );
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("denied by policy lockdown"), "{head}");
    let (status, head, _) = curl_full(
        &proxy,
        &[
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "",
        ],
        "http://south.grpc-echo.demo.svc.clusterset.local:50051/isthmus.demo.Echo/Say",
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("grpc-status: 7"),
        "PERMISSION_DENIED expected: {head}"
    );
    // West, without the lockdown, still serves east's known identity.
    let (status, _, _) = curl_full(
        &proxy,
        &[
            "--interface",
            "127.0.0.5",
            "-H",
            &xfcc("spiffe://east.mesh/ns/shop/sa/cart")[0],
        ],
        url,
    );
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_under_twice_their_load_and_spare_other_services_and_callers() {
    let m = mesh(120, "", json!({}), json!({})).await;
    let other = format!(
        "  - namespace: demo\n    name: other\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{}\"}}]\n",
        m[1].samples.http
    );
    m[1].fed.write_catalog(&serving_catalog(
        &m[1],
        &other,
        "  limit: {services: [demo/echo], rate_limit: {requests_per_second: 40, burst: 10}}\n",
    ));
    // Every call from east goes to west, so west's limit is all that stands in the way.
    m[0].fed.write_catalog(&east_catalog(
        "  pin: {services: [demo/echo, demo/other], split: {weights: {west: 1}}}\n",
    ));
    wait_policy(&m[1].gw, "limit").await;
    wait_policy(&m[0].gw, "pin").await;
    m[0].gw.wait_import("other.demo").await;
    let echo = m[0].vip("demo/echo").await;
    let other_vip = m[0].vip("demo/other").await;

    let seconds = 10u32;
    let limited = load(&format!("http://{echo}:8080/"), 80, seconds).await;
    let spared = load(&format!("http://{other_vip}:8080/"), 80, seconds).await;
    let (limited, spared) = (limited.finish().await, spared.finish().await);
    let ok = assert_admitted_rate("40/s under 80/s", &limited, 40.0, 10.0, seconds);
    let refused = limited.iter().filter(|s| s.status == 429).count();
    println!(
        "RATE LIMIT: {refused} x 429; other service {} of {} ok",
        spared.iter().filter(|s| s.ok()).count(),
        spared.len()
    );
    assert_eq!(ok + refused, limited.len(), "everything else was a 429");
    assert!(
        spared.iter().all(Sample::ok),
        "the other service was affected"
    );

    // Per calling cluster: east gets 20/s; south, calling at the same time, is untouched.
    m[1].fed.write_catalog(&serving_catalog(
        &m[1],
        &other,
        "  limit-east: {services: [demo/echo], rate_limit: {per_source_cluster: {east: 20, \"*\": 1000}}}\n",
    ));
    wait_policy(&m[1].gw, "limit-east").await;
    // South calls west by its per-cluster name through the proxy port; east through its VIP.
    let from_south = Load::start(
        Command::new(exe()),
        &[
            "--url",
            "http://west.echo.demo.svc.clusterset.local:8080/",
            "--proxy",
            &m[2].gw.proxy.to_string(),
        ],
        40,
        seconds,
        5_000,
    )
    .await;
    let from_east = load(&format!("http://{echo}:8080/"), 40, seconds).await;
    let (from_south, from_east) = (from_south.finish().await, from_east.finish().await);
    assert_admitted_rate("east at 20/s under 40/s", &from_east, 20.0, 20.0, seconds);
    println!(
        "RATE LIMIT: south {} of {} ok",
        from_south.iter().filter(|s| s.ok()).count(),
        from_south.len()
    );
    assert!(
        from_south.iter().all(Sample::ok),
        "south was limited by east's bucket"
    );

    // A refusal says when to come back.
    let proxy = m[0].gw.proxy.to_string();
    let mut seen = None;
    for _ in 0..80 {
        let (status, head, _) = curl_full(
            &proxy,
            &[],
            "http://west.echo.demo.svc.clusterset.local:8080/",
        );
        if status == 429 {
            seen = Some(head);
            break;
        }
    }
    let head = seen.expect("a burst of calls over the limit got a 429");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(
        head.contains("x-isthmus-error") && head.contains("rate limit"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_drill_fails_over_like_an_outage_and_ends_at_its_expiry() {
    let m = mesh(123, "", json!({}), json!({})).await;
    let vip = m[0].vip("demo/echo").await;
    let url = format!("http://{vip}:8080/");

    // Both clusters serve east before the drill.
    let samples = load(&url, 50, 3).await.finish().await;
    let (by, _) = tally(&samples);
    assert!(
        by.get("south").copied().unwrap_or(0) > samples.len() / 5,
        "{by:?}"
    );

    let drill = Duration::from_secs(12);
    m[2].fed.write_catalog(&serving_catalog(
        &m[2],
        "",
        &format!(
            "  drill: {{services: [demo/echo], fault: {{from: [east], abort: {{percent: 100, status: 503}}, expires_at: \"{}\"}}}}\n",
            rfc3339_in(drill.as_secs())
        ),
    ));
    let written = unix_ms();
    wait_policy(&m[2].gw, "drill").await;
    let expires_ms = written + drill.as_millis() as u64;

    // `status` shows the drill and when it ends.
    let status = m[2].fed.admin("status", Value::Null).await;
    let fault = status["policies"]
        .as_array()
        .and_then(|p| p.iter().find(|d| d["name"] == "drill"))
        .map(|d| d["fault"].clone())
        .unwrap_or_default();
    assert_eq!(fault["active"], true, "{status}");
    assert!(
        fault["expires_in_s"].as_u64().is_some_and(|s| s <= 12),
        "{fault}"
    );

    // Load through the drill and well past its end.
    let samples = load(&url, 50, 45).await.finish().await;
    let (by, failed) = tally(&samples);
    let in_drill: Vec<&Sample> = samples
        .iter()
        .filter(|s| (s.at_ms as u64) < expires_ms)
        .collect();
    let drill_failed = in_drill.iter().filter(|s| !s.ok()).count();
    println!(
        "FAULT DRILL: {} requests during the drill, {drill_failed} failed; overall {by:?}, {failed} failed",
        in_drill.len()
    );
    // Like an outage: east's retries hide it from the caller, and east ejects south so that
    // only the odd probing request still reaches it.
    assert!(
        drill_failed as f64 <= in_drill.len() as f64 * 0.01,
        "{drill_failed} of {} failed during the drill",
        in_drill.len()
    );
    let reached = inbound_lines(&m[2].gw, "east", written + 2_000, expires_ms).len();
    let window = in_drill
        .iter()
        .filter(|s| s.at_ms as u64 >= written + 2_000)
        .count();
    assert!(
        reached * 10 <= window,
        "south still got {reached} of {window} requests during the drill: not ejected"
    );
    let aborted = m[2]
        .gw
        .metric("isthmus_gateway_faults_injected_total", &["kind=\"abort\""])
        .await;
    assert!(aborted >= 3.0, "south counted {aborted} injected aborts");
    // It ends at its expiry: south serves east again afterwards.
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_ms as u64 >= expires_ms)
        .collect();
    let south_after = after
        .iter()
        .filter(|s| s.cluster.as_deref() == Some("south"))
        .count();
    assert!(
        south_after * 5 >= after.len(),
        "south served {south_after} of {} requests after the drill ended",
        after.len()
    );
    let status = m[2].fed.admin("status", Value::Null).await;
    let active = status["policies"]
        .as_array()
        .and_then(|p| p.iter().find(|d| d["name"] == "drill"))
        .map(|d| d["fault"]["active"].clone());
    assert_eq!(active, Some(json!(false)), "{status}");
}

/// Retries never take a call past the gateway's `request_timeout`: the tries (one per cluster,
/// each cut off by the policy's `per_try_timeout`) share one deadline, and the client gets a
/// 504 saying so when it is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_share_one_deadline_the_gateways_request_timeout() {
    let m = mesh(
        134,
        "",
        json!({}),
        json!({ "limits": { "request_timeout": "2s" } }),
    )
    .await;
    m[0].fed.write_catalog(&east_catalog(
        "  tries: {services: [demo/echo], retry: {retries: 2, per_try_timeout: 1500ms}}\n",
    ));
    wait_policy(&m[0].gw, "tries").await;
    let started = std::time::Instant::now();
    // Neither west nor south answers within a try: each sleeps 10 s.
    let out = curl(&[
        "-x",
        &m[0].gw.proxy.to_string(),
        "-sS",
        "--max-time",
        "20",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "http://echo.demo.svc.clusterset.local:8080/slow?ms=10000",
    ]);
    let took = started.elapsed();
    assert_eq!(out.0, 0, "{out:?}");
    assert!(out.1.starts_with("HTTP/1.1 504"), "{out:?}");
    assert!(
        out.1.contains("within the request timeout of 2000 ms"),
        "{out:?}"
    );
    // One try of 1.5 s and what is left of 2 s for the second: not two full tries (3 s).
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_millis(2_750),
        "the call took {took:?}"
    );
}

/// A circuit breaker counts a call until its response body ends, not until its headers: with
/// `max_requests: 2`, two downloads from west whose clients stopped reading keep west's circuit
/// for `demo/echo` open, and a third call pinned to west is refused at once with the reason;
/// once those clients go, calls flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breaker_counts_calls_until_their_bodies_end() {
    use tokio::io::AsyncReadExt;

    let m = mesh(143, "", json!({}), json!({})).await;
    let east = &m[0];
    east.fed.write_catalog(&east_catalog(
        "  cb: {services: [demo/echo], circuit_breaker: {max_requests: 2}}\n",
    ));
    wait_policy(&east.gw, "cb").await;
    let proxy = east.gw.proxy;
    let url = "http://west.echo.demo.svc.clusterset.local:8080/";
    let status = |path: &str| {
        let out = curl(&[
            "-x",
            &proxy.to_string(),
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            &format!("{url}{path}"),
        ]);
        let (body, code) = out.1.trim().rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };
    assert_eq!(status("before").0, "200");

    let mut downloads = Vec::new();
    for _ in 0..2 {
        let mut conn = west_download(proxy, 64 * 1024).await;
        let mut head = vec![0u8; 12];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut head))
            .await
            .expect("the download's head in time")
            .expect("the download's head");
        assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
        downloads.push(conn); // read no further: the body stays in flight
    }
    let explained = explain(&east.gw, "demo/echo").await;
    let west = explained["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["cluster"] == "west"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(west["in_flight"], 2, "{explained}");
    let (code, body) = status("third");
    assert_eq!(code, "503", "{body}");
    assert!(
        body.contains("west has 2 requests in flight (circuit open)"),
        "{body}"
    );

    drop(downloads);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = status("after");
        if code == "200" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "west's circuit stayed open after the downloads' clients left: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
