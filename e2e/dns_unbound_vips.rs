//! A VIP the gateways cannot bind is not answered in DNS: a federation whose VIP ranges include
//! an IPv6 range that is not a local address of the host (as on an ordinary machine), and one
//! gateway, which listens on the IPv4 VIPs and fails to bind the IPv6 ones. Before the gateway
//! reports, DNS answers AAAA with the IPv6 VIP (so the test would see a regression); once it
//! has, AAAA has no answer while A still does, and `status` and the gateway's `/explain` say why.
//! Federation index 37 belongs to this file.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::dns::{Dig, dig, free_dns_port, need};
use crate::harness::gateway::{Gateway, http_get};
use crate::harness::{CONVERGE, Federation, Spec};

const NAME: &str = "web.shop.svc.clusterset.local";

async fn until(
    fed: &Federation,
    server: SocketAddr,
    qtype: &str,
    what: &str,
    check: impl Fn(&Dig) -> bool,
) -> Dig {
    let started = Instant::now();
    loop {
        let d = dig(server, &[qtype, NAME]).await;
        if check(&d) {
            return d;
        }
        if started.elapsed() > CONVERGE {
            fed.fail(&format!(
                "{what}: not within {CONVERGE:?}; last answer:\n{}",
                d.text
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn dns_leaves_out_vips_no_gateway_could_bind() {
    need("dig", "dnsutils");
    let ip = Ipv4Addr::new(127, 0, 37, 1);
    let server = SocketAddr::from((ip, free_dns_port(ip)));
    let catalog = "exports:\n  - namespace: shop\n    name: web\n    ports: [{port: 8080, protocol: tcp}, {port: 8081, protocol: http}]\n    endpoints: [{address: \"127.0.37.1:9\"}]\nimports: []\n";
    let fed = Federation::start(Spec::new("east", 37).catalog(catalog).extra(json!({
        "vips": { "ipv4": "127.137.0.0/24", "ipv6": "fd77:37::/112" },
        "dns": { "bind": server.to_string(), "ttl": "1s" },
    })))
    .await;
    // No gateway yet: nobody has said the IPv6 VIP cannot be served, so it is answered.
    let before = until(&fed, server, "AAAA", "AAAA with the IPv6 VIP", |d| {
        d.answers().iter().any(|a| a.starts_with("fd77:37::"))
    })
    .await;
    let v6 = before.answers()[0].clone();

    let gw = Gateway::start(&fed, "gw-1", json!({})).await;
    let after = until(&fed, server, "AAAA", "AAAA without answers", |d| {
        d.status() == "NOERROR" && d.answers().is_empty()
    })
    .await;
    assert!(
        after.text.contains("SOA"),
        "NODATA carries the SOA: {}",
        after.text
    );
    let a = dig(server, &["A", NAME]).await;
    assert_eq!(a.status(), "NOERROR", "{}", a.text);
    assert_eq!(a.answers().len(), 1, "{}", a.text);
    assert!(a.answers()[0].starts_with("127.137.0."), "{}", a.text);
    // The IPv4 VIP is served by the gateway: a connection is accepted there. The service's only
    // endpoint (port 9) refuses, so the gateway may reset the connection at once, and the reset
    // can reach the client before its connect returns: that too was an accepted connection.
    // Nothing listening would refuse it (ECONNREFUSED).
    let v4: std::net::IpAddr = a.answers()[0].parse().expect("A answer");
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((v4, 8080)),
    )
    .await
    .expect("connect within 5 s");
    if let Err(e) = connected
        && e.kind() != std::io::ErrorKind::ConnectionReset
    {
        gw.fail(&format!("the IPv4 VIP {v4}:8080 refused: {e}"));
    }

    // `status` names the address, its service and the bind error.
    let status = fed.admin("status", Value::Null).await;
    let unserved = status["unserved_vips"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(unserved.len(), 1, "{status}");
    assert_eq!(unserved[0]["address"], json!(v6), "{status}");
    assert_eq!(unserved[0]["service"], json!("shop/web"), "{status}");
    assert!(
        !unserved[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{status}"
    );
    // The gateway warned once for the address, not once per port.
    let warned = gw
        .log_tail(10_000)
        .lines()
        .filter(|l| l.contains("cannot listen on a service VIP") && l.contains(v6.as_str()))
        .count();
    assert_eq!(warned, 1, "{}", gw.log_tail(50));
    // The gateway's explanation says why clients are not sent to it.
    let body = http_get(gw.admin, "/explain?service=web.shop")
        .await
        .unwrap_or_else(|e| gw.fail(&format!("/explain: {e:#}")));
    let explained: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(explained["unbound_vips"][0]["address"], json!(v6), "{body}");
    let summary = explained["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&v6) && summary.contains("DNS does not answer"),
        "{summary}"
    );
}
