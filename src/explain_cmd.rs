//! `isthmus explain <service> --from <cluster>`: asks a gateway's admin port (`GET /explain`)
//! where the next request for a service goes from that gateway's cluster, and why, and prints
//! it in words and a table (or the JSON with `--json`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use isthmus_gateway::explain::{ClusterView, Explanation, percent};

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Options {
    pub service: String,
    pub from: String,
    /// The gateway's admin address, `host:port`.
    pub gateway: String,
    pub json: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let path = format!("/explain?service={}", query_encode(&opts.service));
    let (status, body) = tokio::time::timeout(TIMEOUT, get(&opts.gateway, &path))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| {
            format!(
                "asking the gateway admin port at {} (is the gateway running, and is this its \
                 `listen.admin` address? set --gateway or ISTHMUS_GATEWAY_ADMIN)",
                opts.gateway
            )
        })?;
    if status != StatusCode::OK {
        let error = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        bail!("the gateway at {} answered {status}: {error}", opts.gateway);
    }
    let explanation: Explanation = serde_json::from_slice(&body).with_context(|| {
        format!(
            "the gateway at {} sent an explanation this isthmus cannot read (are both the same version?)",
            opts.gateway
        )
    })?;
    if explanation.from.cluster != opts.from {
        bail!(
            "the gateway at {} belongs to cluster {}, not {}: point --gateway at an admin port of {}'s gateway",
            opts.gateway,
            explanation.from.cluster,
            opts.from,
            opts.from
        );
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", words(&explanation));
    }
    Ok(())
}

/// One `GET` over HTTP/1.1: the status and the whole body.
async fn get(addr: &str, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(req)
        .await
        .context("sending the request")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, body))
}

/// A query value: unreserved characters as they are, everything else percent-encoded.
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The summary, then one line per cluster.
fn words(e: &Explanation) -> String {
    let mut out = format!("{}\n\n", e.summary);
    out.push_str(&format!(
        "{:<16} {:<14} {:<14} {:<20} {:>6} {:>6} {:>7} {:>9} {:>9}\n",
        "CLUSTER", "REGION", "TIER", "HEALTH", "WEIGHT", "SPLIT", "SHARE", "P99", "HEDGE AT"
    ));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{ms:.0} ms"));
    for c in &e.clusters {
        out.push_str(&format!(
            "{:<16} {:<14} {:<14} {:<20} {:>6} {:>6} {:>7} {:>9} {:>9}\n",
            c.cluster,
            c.region,
            c.tier_name,
            health(c),
            c.export_weight,
            c.split_weight.map_or("-".to_string(), |w| w.to_string()),
            percent(c.share),
            ms(c.p99_ms),
            ms(c.hedge_after_ms),
        ));
    }
    let h = &e.policy.hedge;
    if h.enabled {
        out.push_str(&format!(
            "\nHedging: a slow try gets a copy on the next cluster after {}× its cluster's p99, \
             within {}–{} (paid from the retry budget).\n",
            h.multiplier, h.min, h.max
        ));
    }
    out
}

/// A cluster's state in a word or two.
fn health(c: &ClusterView) -> String {
    if !c.usable {
        if c.healthy_endpoints == 0 {
            "no endpoints".into()
        } else {
            "no gateway".into()
        }
    } else if c.fenced {
        "fenced out".into()
    } else if c.verdict.dropped {
        "dropped".into()
    } else if !c.verdict.healthy {
        "unhealthy".into()
    } else if c.in_flight >= c.max_requests {
        "circuit open".into()
    } else if c.verdict.slow_start_factor < 1.0 {
        format!("slow start {}", percent(c.verdict.slow_start_factor))
    } else {
        "healthy".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_survive_the_query() {
        assert_eq!(query_encode("demo/echo"), "demo%2Fecho");
        assert_eq!(query_encode("echo.demo"), "echo.demo");
        assert_eq!(query_encode("a b&c"), "a%20b%26c");
    }
}
