//! Hedging (issue 25): west, the first choice of east's callers, answers a quarter of east's
//! requests 2 s late (a fault drill in west's own policy delays them in west's gateway); south
//! answers at once. With hedging off (the default), those requests take 2 s. With east's
//! policy `hedge: {min: 50ms, max: 300ms}` on, a try that runs long gets a copy on south and
//! the first answer wins: the client's worst request is far below 2 s, the access log says the
//! request was hedged and that south won, and hedges stay within the retry budget. Prints one
//! `HEDGE …` line per phase. WAN base 50 (and 51 for the total outage with hedging on, in
//! failover.rs).

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{CLIENT_TIMEOUT_MS, Checks, clusters, sleep_s};
use crate::harness::netns::{Node, Sample, Wan, client_catalog, echo_catalog, unix_ms};

const RATE: u32 = 20;
const SECONDS: u32 = 10;
const DELAY_MS: f64 = 2_000.0;

fn west_catalog() -> String {
    let expires = isthmus_federation::model::policy::format_rfc3339(
        SystemTime::now() + Duration::from_secs(900),
    );
    format!(
        "{}policies:\n  slow: {{services: [demo/echo], fault: {{from: [east], delay: {{percent: 25, \
         duration: 2s}}, expires_at: \"{expires}\"}}}}\n",
        echo_catalog("")
    )
}

fn east_catalog(hedge: bool) -> String {
    let policy = if hedge {
        "policies:\n  hedged: {services: [demo/echo], hedge: {min: 50ms, max: 300ms}}\n"
    } else {
        ""
    };
    format!("{}{policy}", client_catalog(""))
}

/// Waits until `node`'s gateway applies (or, with `present` false, no longer has) policy `name`.
pub(super) async fn wait_policy(node: &Node, name: &str, present: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let dump = node.gateway_admin("/config_dump").await.unwrap_or_default();
        let dump: Value = serde_json::from_str(&dump).unwrap_or_default();
        let has = dump["table"]["policies"]["documents"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n["name"] == name));
        if has == present {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy {name} never {} {}: {}",
            if present { "reached" } else { "left" },
            node.name,
            dump["table"]["policies"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Phase {
    samples: Vec<Sample>,
    worst_ms: f64,
    hedges_sent: f64,
    hedges_won: f64,
    /// Access-log lines of this phase with `hedged: true`, and those south won.
    hedged_lines: usize,
    south_won: usize,
}

async fn phase(wan: &mut Wan, url: &str, path: &str, name: &str) -> Phase {
    let east = wan.node("east");
    let sent_before = east
        .gateway_metric("isthmus_gateway_hedges_total", &["sent"])
        .await;
    let won_before = east
        .gateway_metric("isthmus_gateway_hedges_total", &["won"])
        .await;
    let start = unix_ms();
    let samples = wan
        .client("east", url, RATE, SECONDS, CLIENT_TIMEOUT_MS)
        .await
        .finish()
        .await;
    sleep_s(0.5).await;
    let east = wan.node("east");
    let hedges_sent = east
        .gateway_metric("isthmus_gateway_hedges_total", &["sent"])
        .await
        - sent_before;
    let hedges_won = east
        .gateway_metric("isthmus_gateway_hedges_total", &["won"])
        .await
        - won_before;
    let lines: Vec<Value> = east
        .access_log()
        .into_iter()
        .filter(|l| l["side"] == "outbound" && l["path"] == path)
        .filter(|l| l["ts_ms"].as_u64().is_some_and(|t| t >= start))
        .collect();
    let hedged: Vec<&Value> = lines.iter().filter(|l| l["hedged"] == true).collect();
    let south_won = hedged.iter().filter(|l| l["winner"] == "south").count();
    let worst_ms = samples.iter().map(|s| s.latency_ms).fold(0.0, f64::max);
    let on_south = samples
        .iter()
        .filter(|s| s.cluster.as_deref() == Some("south"))
        .count();
    println!(
        "HEDGE {name}: {} requests, {} failed, worst {worst_ms:.0} ms, {on_south} answered by \
         south; hedges sent {hedges_sent}, won {hedges_won}; {} access-log lines hedged ({south_won} \
         won by south)",
        samples.len(),
        samples.iter().filter(|s| !s.ok()).count(),
        hedged.len()
    );
    Phase {
        samples,
        worst_ms,
        hedges_sent,
        hedges_won,
        hedged_lines: hedged.len(),
        south_won,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cluster_is_hedged_to_the_next_within_the_retry_budget() {
    let mut wan = Wan::start("hg", 50, &clusters(), json!({}), json!({})).await;
    let mut checks = Checks::default();
    let vip = wan.node("east").vip("demo/echo").await;
    let path = "/fo/hedge";
    let url = format!("http://{vip}:8080{path}");
    wan.node("west").write_catalog(&west_catalog());
    wan.node("east").write_catalog(&east_catalog(false));
    wait_policy(wan.node("west"), "slow", true).await;

    let off = phase(&mut wan, &url, path, "off").await;
    checks.check(
        off.samples.iter().all(Sample::ok),
        "hedging off: every request answered",
    );
    checks.check(
        off.worst_ms >= DELAY_MS - 100.0,
        format!(
            "hedging off: west's delayed answers are waited for (worst {:.0} ms)",
            off.worst_ms
        ),
    );
    checks.check(
        off.hedges_sent == 0.0 && off.hedged_lines == 0,
        format!(
            "hedging off: no hedge sent ({} sent, {} lines)",
            off.hedges_sent, off.hedged_lines
        ),
    );

    wan.node("east").write_catalog(&east_catalog(true));
    wait_policy(wan.node("east"), "hedged", true).await;
    let on = phase(&mut wan, &url, path, "on").await;
    let n = on.samples.len() as f64;
    checks.check(
        n > 0.0 && on.samples.iter().all(Sample::ok),
        "hedging on: every request answered",
    );
    checks.check(
        on.worst_ms < DELAY_MS * 0.75,
        format!(
            "hedging on: the worst request is far below {DELAY_MS:.0} ms ({:.0} ms)",
            on.worst_ms
        ),
    );
    checks.check(
        on.hedges_won > 0.0 && on.south_won > 0,
        format!(
            "hedging on: hedges won ({}), and the access log says south won ({} lines)",
            on.hedges_won, on.south_won
        ),
    );
    // The budget: 20 % of the requests plus 10/s, and at most one second's floor banked.
    let allowed = 0.2 * n + 10.0 * f64::from(SECONDS) + 10.0;
    checks.check(
        on.hedges_sent <= allowed,
        format!(
            "hedges within the retry budget: {} sent for {n} requests (allowed {allowed:.0})",
            on.hedges_sent
        ),
    );
    checks.finish();
}
