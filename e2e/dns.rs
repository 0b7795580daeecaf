//! Global DNS end to end: the real `isthmus federation` with a `dns:` section, queried by real
//! clients (`dig`, `kdig`, hickory's client) over UDP and TCP; catalog and health changes and GSLB
//! failover measured from the client's side; thousands of malformed packets; response-rate
//! limiting (one budget per prefix however many UDP workers share the flood); and `zonemaster-cli` against the GSLB zone in a network namespace where the server
//! owns port 53. Federation indexes 101-110 belong to this file.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr as _;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tokio::time::Instant;

use crate::harness::{Federation, IMPORT_ALL, Spec, peer_via_cli};

/// Record TTL used by these tests; answers must follow changes within it.
const TTL: Duration = Duration::from_secs(5);

/// A port free for both TCP and UDP on `ip`.
pub(crate) fn free_dns_port(ip: Ipv4Addr) -> u16 {
    loop {
        let t = std::net::TcpListener::bind((ip, 0)).expect("bind tcp");
        let port = t.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

pub(crate) fn need(tool: &str, package: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is missing: apt-get install {package} (.ci/run installs it)"
    );
}

/// One `dig` answer, parsed from `+noall +comments +answer +authority +additional` output.
#[derive(Debug)]
pub(crate) struct Dig {
    pub(crate) text: String,
}

impl Dig {
    pub(crate) fn status(&self) -> String {
        self.text
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split([',', ';']).next())
            .unwrap_or("?")
            .to_string()
    }

    fn flags(&self) -> String {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(";; flags: "))
            .and_then(|l| l.split(';').next())
            .unwrap_or_default()
            .to_string()
    }

    /// Record lines of a section ("ANSWER", "AUTHORITY", "ADDITIONAL"), whitespace collapsed.
    fn section(&self, name: &str) -> Vec<String> {
        let header = format!(";; {name} SECTION:");
        let mut out = Vec::new();
        let mut inside = false;
        for line in self.text.lines() {
            if line.starts_with(";; ") && line.ends_with("SECTION:") {
                inside = line == header;
                continue;
            }
            if inside && !line.is_empty() && !line.starts_with(';') {
                out.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        out
    }

    /// The rdata of the answer records (last field(s) after the type).
    pub(crate) fn answers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .section("ANSWER")
            .iter()
            .map(|l| l.splitn(5, ' ').nth(4).unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    }
}

pub(crate) async fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=2"])
        .args([
            "+noall",
            "+comments",
            "+answer",
            "+authority",
            "+additional",
        ])
        .args(args)
        .output()
        .await
        .expect("run dig (apt-get install dnsutils)");
    Dig {
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

async fn kdig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+retry=1"])
        .args(args)
        .output()
        .await
        .expect("run kdig (apt-get install knot-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn yaml_export(ns: &str, name: &str, ports: &str, ready: bool) -> String {
    format!(
        "  - namespace: {ns}\n    name: {name}\n    ports: {ports}\n    endpoints: [{{address: \"10.1.2.3:8080\", ready: {ready}}}]\n"
    )
}

fn catalog_of(exports: &[String], imports: &str) -> String {
    if exports.is_empty() {
        return format!("exports: []\n{imports}");
    }
    format!("exports:\n{}{imports}", exports.concat())
}

const ECHO_PORTS: &str = "[{name: http, port: 8080, protocol: http}, {port: 9090, protocol: grpc}]";

async fn start(
    name: &'static str,
    index: u8,
    catalog: &str,
    dns: Value,
) -> (Federation, SocketAddr) {
    let ip = Ipv4Addr::new(127, 0, index, 1);
    let server = SocketAddr::from((ip, free_dns_port(ip)));
    let mut dns = dns;
    dns["bind"] = json!(server.to_string());
    dns["ttl"] = json!(format!("{}s", TTL.as_secs()));
    let fed = Federation::start(
        Spec::new(name, index)
            .catalog(catalog)
            .extra(json!({ "dns": dns })),
    )
    .await;
    (fed, server)
}

async fn vip(fed: &Federation, key: &str, cluster: Option<&str>) -> String {
    let started = Instant::now();
    loop {
        let c = fed.catalog().await;
        let r = &c["routes"][key];
        let v = match cluster {
            None => r["vips"]["v4"].as_str().map(str::to_string),
            Some(cl) => r["cluster_vips"].as_array().and_then(|cs| {
                cs.iter()
                    .find(|p| p[0].as_str() == Some(cl))
                    .and_then(|p| p[1]["v4"].as_str().map(str::to_string))
            }),
        };
        if let Some(v) = v {
            return v;
        }
        if started.elapsed() > crate::harness::CONVERGE {
            fed.fail(&format!("{key} got no VIP: {c}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `dig` until `check` holds; returns how long it took (fails after `limit`).
async fn until_dig(
    fed: &Federation,
    server: SocketAddr,
    args: &[&str],
    limit: Duration,
    what: &str,
    check: impl Fn(&Dig) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let d = dig(server, args).await;
        if check(&d) {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            fed.fail(&format!(
                "{what}: not within {limit:?}; last answer:\n{}",
                d.text
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dns_answers_every_record_kind_over_udp_and_tcp() {
    need("dig", "dnsutils");
    need("kdig", "knot-dnsutils");
    let catalog = catalog_of(
        &[yaml_export("demo", "echo", ECHO_PORTS, true)],
        "imports: []\n",
    );
    // A big ingress pool: 40 A records do not fit 512 bytes (TC without EDNS), fit 1232.
    let pool: Vec<String> = (1..=40).map(|i| format!("198.18.0.{i}")).collect();
    let (fed, server) = start(
        "east",
        101,
        &catalog,
        json!({ "gslb": { "zone": "mesh.example", "ingress": { "east": pool } } }),
    )
    .await;
    let echo = vip(&fed, "demo/echo", None).await;
    let echo_east = vip(&fed, "demo/echo", Some("east")).await;
    let z = "svc.clusterset.local";
    until_dig(
        &fed,
        server,
        &[&format!("echo.demo.{z}")],
        Duration::from_secs(10),
        "echo resolves",
        |d| d.answers() == [echo.clone()],
    )
    .await;

    // A, per-cluster A, SRV with the target's address in additional, SOA and NS at the apex.
    for transport in ["+notcp", "+tcp"] {
        let d = dig(server, &[transport, &format!("echo.demo.{z}")]).await;
        assert_eq!(
            (d.status(), d.answers()),
            ("NOERROR".into(), vec![echo.clone()]),
            "{transport}: {}",
            d.text
        );
        assert!(d.flags().contains("aa"), "{}", d.text);
        assert!(
            d.section("ANSWER")[0].starts_with(&format!("echo.demo.{z}. 5 IN A")),
            "TTL 5: {}",
            d.text
        );
        let d = dig(server, &[transport, &format!("east.echo.demo.{z}")]).await;
        assert_eq!(d.answers(), vec![echo_east.clone()], "{}", d.text);
        let d = dig(
            server,
            &[transport, "SRV", &format!("_http._tcp.echo.demo.{z}")],
        )
        .await;
        assert_eq!(
            d.answers(),
            vec![format!("0 100 8080 echo.demo.{z}.")],
            "{}",
            d.text
        );
        assert_eq!(
            d.section("ADDITIONAL"),
            vec![format!("echo.demo.{z}. 5 IN A {echo}")],
            "{}",
            d.text
        );
        let d = dig(
            server,
            &[transport, "SRV", &format!("_9090._tcp.echo.demo.{z}")],
        )
        .await;
        assert_eq!(
            d.answers(),
            vec![format!("0 100 9090 echo.demo.{z}.")],
            "{}",
            d.text
        );
        let d = dig(server, &[transport, "SOA", "clusterset.local"]).await;
        assert!(
            d.answers()[0].starts_with("ns.clusterset.local. hostmaster.clusterset.local. "),
            "{}",
            d.text
        );
        assert!(
            d.answers()[0].ends_with(" 14400 3600 1209600 5"),
            "SOA minimum = TTL: {}",
            d.text
        );
        let d = dig(server, &[transport, "NS", "clusterset.local"]).await;
        assert_eq!(d.answers(), vec!["ns.clusterset.local."], "{}", d.text);
        assert_eq!(
            d.section("ADDITIONAL"),
            vec![format!("ns.clusterset.local. 5 IN A {}", server.ip())]
        );
    }
    // NXDOMAIN vs NODATA, both with the SOA in authority.
    for (name, qtype, status, answers) in [
        (format!("nope.demo.{z}"), "A", "NXDOMAIN", 0),
        (format!("nope.echo.demo.{z}"), "A", "NXDOMAIN", 0),
        (format!("echo.demo.{z}"), "AAAA", "NOERROR", 0),
        (format!("echo.demo.{z}"), "TXT", "NOERROR", 0),
        (format!("demo.{z}"), "A", "NOERROR", 0),
        (format!("_tcp.echo.demo.{z}"), "SRV", "NOERROR", 0),
    ] {
        let d = dig(server, &[qtype, &name]).await;
        assert_eq!(
            (d.status().as_str(), d.answers().len()),
            (status, answers),
            "{name} {qtype}: {}",
            d.text
        );
        let auth = d.section("AUTHORITY");
        assert_eq!(auth.len(), 1, "{name}: {}", d.text);
        assert!(
            auth[0].starts_with("clusterset.local. 5 IN SOA "),
            "{name}: {}",
            d.text
        );
    }
    // REFUSED outside our zones (not a recursor), with no records at all.
    for name in ["example.com", "local", "."] {
        let d = dig(server, &[name]).await;
        assert_eq!(d.status(), "REFUSED", "{name}: {}", d.text);
        assert!(d.section("ANSWER").is_empty() && d.section("AUTHORITY").is_empty());
    }
    // ANY: one RRset (RFC 8482), over UDP and TCP.
    let d = dig(server, &["ANY", &format!("echo.demo.{z}")]).await;
    assert_eq!(d.answers(), vec![echo.clone()], "{}", d.text);
    let d = dig(server, &["+tcp", "ANY", "clusterset.local"]).await;
    assert_eq!(d.section("ANSWER").len(), 1, "{}", d.text);
    // EDNS: our payload is 1232 whatever the client offers; unknown versions get BADVERS.
    let d = dig(server, &["+bufsize=4096", &format!("echo.demo.{z}")]).await;
    assert!(d.text.contains("udp: 1232"), "{}", d.text);
    let d = dig(
        server,
        &["+edns=1", "+noednsneg", &format!("echo.demo.{z}")],
    )
    .await;
    assert_eq!(d.status(), "BADVERS", "{}", d.text);
    let k = kdig(server, &["+edns=1", &format!("echo.demo.{z}")]).await;
    assert!(k.contains("BADVERS"), "{k}");
    // TC over UDP without EDNS, and the client's retry over TCP gets everything.
    let d = dig(server, &["+noedns", "+ignore", "echo.demo.mesh.example"]).await;
    assert!(
        d.flags().contains("tc"),
        "40 A records over 512 bytes: {}",
        d.text
    );
    assert!(d.section("ANSWER").is_empty());
    let d = dig(server, &["+noedns", "echo.demo.mesh.example"]).await;
    assert_eq!(d.answers().len(), 40, "dig retried over TCP: {}", d.text);
    let k = kdig(server, &["+noedns", "echo.demo.mesh.example"]).await;
    assert_eq!(
        k.matches("IN\tA\t198.18.0.").count(),
        40,
        "kdig retried over TCP: {k}"
    );
    let d = dig(server, &["+bufsize=1232", "echo.demo.mesh.example"]).await;
    assert!(!d.flags().contains("tc"), "fits 1232 with EDNS: {}", d.text);
    assert_eq!(d.answers().len(), 40);
    // Names in any case; the answer's owner comes back as asked (dig keeps the case it sends).
    for transport in ["+notcp", "+tcp"] {
        let d = dig(server, &[transport, "ECHO.Demo.svc.Clusterset.Local"]).await;
        assert_eq!(
            d.section("ANSWER"),
            vec![format!("ECHO.Demo.svc.Clusterset.Local. 5 IN A {echo}")],
            "{}",
            d.text
        );
    }
    // kdig over TCP and UDP.
    let k = kdig(server, &["+tcp", &format!("echo.demo.{z}")]).await;
    assert!(
        k.contains(&format!("echo.demo.{z}.\t5\tIN\tA\t{echo}")),
        "{k}"
    );
    let k = kdig(
        server,
        &["+notcp", "SRV", &format!("_http._tcp.echo.demo.{z}")],
    )
    .await;
    assert!(
        k.contains("0 100 8080 echo.demo.svc.clusterset.local."),
        "{k}"
    );

    // hickory's client, over UDP and TCP.
    {
        use hickory_net::client::{Client, ClientHandle as _};
        use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
        use hickory_net::runtime::TokioRuntimeProvider;
        let name = Name::from_str(&format!("echo.demo.{z}.")).expect("name");
        let conn =
            hickory_net::udp::UdpClientStream::builder(server, TokioRuntimeProvider::default())
                .build();
        let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
        tokio::spawn(bg);
        let r = client
            .query(name.clone(), DNSClass::IN, RecordType::A)
            .await
            .expect("hickory UDP query");
        let got: Vec<String> = r
            .answers
            .iter()
            .map(|a| match &a.data {
                RData::A(a) => a.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![echo.clone()]);
        // Over TCP (hickory-server's side of Isthmus).
        let (stream, sender) =
            hickory_net::tcp::TcpClientStream::new(server, None, None, TokioRuntimeProvider::new());
        let (mut tcp_client, tcp_bg) =
            Client::<TokioRuntimeProvider>::new(stream.await.expect("hickory TCP connect"), sender);
        tokio::spawn(tcp_bg);
        let r = tcp_client
            .query(name.clone(), DNSClass::IN, RecordType::SRV)
            .await
            .expect("hickory TCP query");
        assert_eq!(r.answers.len(), 0, "SRV at the service name: NODATA");
        assert_eq!(r.authorities.len(), 1, "with the SOA");
        let r = tcp_client
            .query(
                Name::from_str(&format!("_http._tcp.echo.demo.{z}.")).expect("name"),
                DNSClass::IN,
                RecordType::SRV,
            )
            .await
            .expect("hickory TCP query");
        match r.answers.first().map(|a| &a.data) {
            Some(RData::SRV(srv)) => assert_eq!(srv.port, 8080),
            other => panic!("SRV over TCP: {other:?}"),
        }
        let r = client
            .query(
                Name::from_str(&format!("gone.demo.{z}.")).expect("name"),
                DNSClass::IN,
                RecordType::A,
            )
            .await
            .expect("query");
        assert_eq!(
            r.metadata.response_code,
            hickory_net::proto::op::ResponseCode::NXDomain
        );
    }

    // Metrics on the federation's admin port.
    assert!(
        fed.metric(
            "isthmus_dns_queries_total",
            &["qtype=\"A\"", "rcode=\"NOERROR\""]
        )
        .await
            >= 2.0
    );
    assert!(
        fed.metric("isthmus_dns_queries_total", &["rcode=\"NXDOMAIN\""])
            .await
            >= 2.0
    );
    assert!(
        fed.metric("isthmus_dns_queries_total", &["rcode=\"NODATA\""])
            .await
            >= 2.0
    );
    assert!(
        fed.metric("isthmus_dns_queries_total", &["rcode=\"REFUSED\""])
            .await
            >= 3.0
    );
    assert!(fed.metric("isthmus_dns_truncated_total", &[]).await >= 1.0);
    assert!(
        fed.metric("isthmus_dns_query_duration_seconds_count", &[])
            .await
            >= 10.0
    );
    assert!(fed.metric("isthmus_dns_snapshot_names", &[]).await >= 8.0);
    let dump = fed.http_get("/config_dump").await.expect("config dump");
    assert!(
        dump.contains("\"udp_payload\": 1232") && dump.contains("mesh.example"),
        "{dump}"
    );
}

#[tokio::test]
async fn dns_follows_catalog_and_health_within_a_ttl() {
    need("dig", "dnsutils");
    let echo = yaml_export("demo", "echo", ECHO_PORTS, true);
    let (fed, server) = start(
        "east",
        102,
        &catalog_of(std::slice::from_ref(&echo), "imports: []\n"),
        json!({}),
    )
    .await;
    let z = "svc.clusterset.local";
    let ip = vip(&fed, "demo/echo", None).await;
    until_dig(
        &fed,
        server,
        &[&format!("echo.demo.{z}")],
        Duration::from_secs(10),
        "echo resolves",
        |d| d.answers() == [ip.clone()],
    )
    .await;

    // A new export appears within one TTL of the catalog write; then goes.
    let fresh = yaml_export("demo", "fresh", "[{port: 80, protocol: http}]", true);
    fed.write_catalog(&catalog_of(&[echo.clone(), fresh], "imports: []\n"));
    let took = until_dig(
        &fed,
        server,
        &[&format!("fresh.demo.{z}")],
        TTL,
        "a new export resolves",
        |d| d.status() == "NOERROR" && d.answers().len() == 1,
    )
    .await;
    eprintln!("new export answered after {took:?}");
    fed.write_catalog(&catalog_of(std::slice::from_ref(&echo), "imports: []\n"));
    let took = until_dig(
        &fed,
        server,
        &[&format!("fresh.demo.{z}")],
        TTL,
        "a removed export is NXDOMAIN",
        |d| d.status() == "NXDOMAIN",
    )
    .await;
    eprintln!("removed export NXDOMAIN after {took:?}");

    // Health: no ready endpoint. The per-cluster name stops resolving; the service name keeps
    // its VIP (the gateway fails over behind it).
    let unready = yaml_export("demo", "echo", ECHO_PORTS, false);
    fed.write_catalog(&catalog_of(&[unready], "imports: []\n"));
    let took = until_dig(
        &fed,
        server,
        &[&format!("east.echo.demo.{z}")],
        TTL,
        "an unhealthy cluster's name is NXDOMAIN",
        |d| d.status() == "NXDOMAIN",
    )
    .await;
    eprintln!("unhealthy cluster NXDOMAIN after {took:?}");
    let d = dig(server, &[&format!("echo.demo.{z}")]).await;
    assert_eq!(d.answers(), vec![ip.clone()], "{}", d.text);
    fed.write_catalog(&catalog_of(std::slice::from_ref(&echo), "imports: []\n"));
    until_dig(
        &fed,
        server,
        &[&format!("east.echo.demo.{z}")],
        TTL,
        "a healthy cluster's name resolves again",
        |d| d.status() == "NOERROR" && d.answers().len() == 1,
    )
    .await;
}

/// `isthmus dns` on its own, started the way an operator would: once following the running
/// federation (through its admin socket), once serving a saved `isthmus catalog --json` file.
/// Both follow changes within a TTL.
#[tokio::test]
async fn standalone_dns_follows_the_federation_and_a_saved_catalog() {
    need("dig", "dnsutils");
    let echo = yaml_export("demo", "echo", ECHO_PORTS, true);
    let (fed, _) = start(
        "east",
        107,
        &catalog_of(std::slice::from_ref(&echo), "imports: []\n"),
        json!({}),
    )
    .await;
    let z = "svc.clusterset.local";
    let ip = vip(&fed, "demo/echo", None).await;
    let config = fed.dir.join("federation.yaml");
    let saved = fed.dir.join("saved-catalog.json");
    let save = |text: String| {
        let tmp = saved.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write saved catalog");
        std::fs::rename(&tmp, &saved).expect("rename saved catalog");
    };
    save(fed.cli_ok(&["catalog", "--json"]).await);
    let host = Ipv4Addr::new(127, 0, 107, 1);
    let mut servers = Vec::new();
    let mut children = Vec::new();
    for snapshot in [None, Some(&saved)] {
        let bind = SocketAddr::from((host, free_dns_port(host)));
        let mut cmd = Command::new(crate::harness::federation::exe());
        cmd.args(["dns", "--config"])
            .arg(&config)
            .args(["--bind", &bind.to_string(), "--poll-ms", "200"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(file) = snapshot {
            cmd.arg("--snapshot").arg(file);
        }
        let mut child = cmd.spawn().expect("spawn isthmus dns");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("isthmus dns ready in time")
            .expect("read")
            .expect("isthmus dns exited");
        assert!(ready.contains("ready"), "{ready}");
        children.push(child);
        servers.push(bind);
    }
    let (live, file) = (servers[0], servers[1]);
    for server in [live, file] {
        let d = dig(server, &[&format!("echo.demo.{z}")]).await;
        assert_eq!(d.answers(), vec![ip.clone()], "{server}: {}", d.text);
    }

    // A new export: the live one follows the federation; the file one follows the file.
    let fresh = yaml_export("demo", "fresh", "[{port: 80, protocol: http}]", true);
    fed.write_catalog(&catalog_of(&[echo.clone(), fresh], "imports: []\n"));
    until_dig(
        &fed,
        live,
        &[&format!("fresh.demo.{z}")],
        TTL,
        "standalone DNS follows the federation",
        |d| d.status() == "NOERROR" && d.answers().len() == 1,
    )
    .await;
    let d = dig(file, &[&format!("fresh.demo.{z}")]).await;
    assert_eq!(
        d.status(),
        "NXDOMAIN",
        "the saved file does not have it yet: {}",
        d.text
    );
    save(fed.cli_ok(&["catalog", "--json"]).await);
    until_dig(
        &fed,
        file,
        &[&format!("fresh.demo.{z}")],
        TTL,
        "standalone DNS follows its saved file",
        |d| d.status() == "NOERROR" && d.answers().len() == 1,
    )
    .await;
    // A broken file keeps the last good view.
    save("{ not json".into());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let d = dig(file, &[&format!("fresh.demo.{z}")]).await;
    assert_eq!(
        d.answers().len(),
        1,
        "a bad file must not empty the zone: {}",
        d.text
    );
}

#[tokio::test]
async fn gslb_fails_over_to_the_next_region_within_a_ttl() {
    need("dig", "dnsutils");
    let shop = |ready| {
        catalog_of(
            &[yaml_export(
                "web",
                "shop",
                "[{port: 443, protocol: tcp}]",
                ready,
            )],
            IMPORT_ALL,
        )
    };
    // Clients in 127.0.103.0/24 are nearest to east, 127.0.104.0/24 to west.
    let gslb = json!({
        "zone": "mesh.example",
        "ingress": { "east": ["198.51.100.1"], "west": ["203.0.113.2"] },
        "regions": [
            { "region": "region-east", "subnets": ["127.0.103.0/24"], "prefer": ["region-east", "region-west"] },
            { "region": "region-west", "subnets": ["127.0.104.0/24"], "prefer": ["region-west", "region-east"] },
        ],
    });
    let (east, server) = start("east", 103, &shop(true), json!({ "gslb": gslb })).await;
    let west = Federation::start(Spec::new("west", 104).catalog(&shop(true))).await;
    peer_via_cli(&east, &west).await;
    east.wait_connected(&["west"]).await;
    east.wait_catalog("east sees west serve web/shop", |c| {
        crate::harness::healthy(c, "web/shop", "west") == Some(1)
    })
    .await;
    let name = "shop.web.mesh.example";
    let from_east = ["-b", "127.0.103.1", name];
    let from_west = ["-b", "127.0.104.1", name];
    until_dig(
        &east,
        server,
        &from_east,
        Duration::from_secs(10),
        "east's clients get east",
        |d| d.answers() == ["198.51.100.1"],
    )
    .await;
    until_dig(
        &east,
        server,
        &from_west,
        Duration::from_secs(10),
        "west's clients get west",
        |d| d.answers() == ["203.0.113.2"],
    )
    .await;
    // EDNS Client Subnet decides over the source address.
    let d = dig(
        server,
        &["-b", "127.0.103.1", "+subnet=127.0.104.0/24", name],
    )
    .await;
    assert_eq!(d.answers(), vec!["203.0.113.2"], "{}", d.text);
    assert!(
        d.text.contains("CLIENT-SUBNET: 127.0.104.0/24/24"),
        "scope echoed: {}",
        d.text
    );
    // Per-cluster GSLB names.
    let d = dig(server, &["west.shop.web.mesh.example"]).await;
    assert_eq!(d.answers(), vec!["203.0.113.2"], "{}", d.text);

    // East goes unhealthy (local): east's clients move to west within one TTL.
    east.write_catalog(&shop(false));
    let took = until_dig(
        &east,
        server,
        &from_east,
        TTL,
        "east's clients fail over to west",
        |d| d.answers() == ["203.0.113.2"],
    )
    .await;
    eprintln!("local failover after {took:?}");
    let d = dig(server, &["east.shop.web.mesh.example"]).await;
    assert_eq!(d.status(), "NXDOMAIN", "{}", d.text);
    east.write_catalog(&shop(true));
    until_dig(
        &east,
        server,
        &from_east,
        TTL,
        "east's clients come back to east",
        |d| d.answers() == ["198.51.100.1"],
    )
    .await;

    // West goes unhealthy (a peer, learned over peering): west's clients move to east.
    west.write_catalog(&shop(false));
    let took = until_dig(
        &east,
        server,
        &from_west,
        TTL,
        "west's clients fail over to east",
        |d| d.answers() == ["198.51.100.1"],
    )
    .await;
    eprintln!("remote failover after {took:?}");
    west.write_catalog(&shop(true));
    until_dig(
        &east,
        server,
        &from_west,
        TTL,
        "west's clients come back to west",
        |d| d.answers() == ["203.0.113.2"],
    )
    .await;
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn good_query(name: &str, qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
    let mut p = vec![
        0x12,
        0x34,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(opt.is_some()),
    ];
    for l in name.split('.') {
        p.push(l.len() as u8);
        p.extend_from_slice(l.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    if let Some(o) = opt {
        p.extend_from_slice(o);
    }
    p
}

fn hand_made_bad_packets() -> Vec<Vec<u8>> {
    let name = "echo.demo.svc.clusterset.local";
    let opt_ecs: &[u8] = &[
        0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 2,
    ];
    let mut v = vec![
        vec![],
        vec![0; 5],
        vec![0; 11],
        vec![0xFF; 12],
        // Header only, qdcount 65535.
        vec![0, 1, 1, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0],
        // qdcount 65535 with one question.
        {
            let mut p = good_query(name, 1, None);
            p[4] = 0xFF;
            p[5] = 0xFF;
            p
        },
        // Compression loop in the question: a pointer to itself.
        vec![0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1],
        // Two pointers pointing at each other in the additional section.
        {
            let mut p = good_query(name, 1, None);
            p[11] = 1;
            let at = p.len() as u16;
            p.extend_from_slice(&(0xC000 | (at + 2)).to_be_bytes());
            p.extend_from_slice(&(0xC000 | at).to_be_bytes());
            p.extend_from_slice(&[0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
            p
        },
        // A label of 64 bytes, and one of 0x7F.
        good_query(&"x".repeat(64), 1, None),
        {
            let mut p = good_query("abc", 1, None);
            p[12] = 0x7F;
            p
        },
        // A 300-byte name.
        good_query(&vec!["y".repeat(60); 5].join("."), 1, None),
        // OPT with a bad rdlength, OPT with a non-root owner, two OPTs, ECS with junk.
        good_query(name, 1, Some(&[0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0xFF])),
        good_query(
            name,
            1,
            Some(&[1, b'a', 0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0]),
        ),
        {
            let mut p = good_query(
                name,
                1,
                Some(&[
                    0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0, 0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0,
                ]),
            );
            p[11] = 2;
            p
        },
        good_query(
            name,
            1,
            Some(&[
                0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 8, 0, 8, 0, 4, 0, 9, 200, 0,
            ]),
        ),
        // A response (must never be answered: reflection), an UPDATE, a NOTIFY, qtype OPT.
        {
            let mut p = good_query(name, 1, None);
            p[2] |= 0x80;
            p
        },
        {
            let mut p = good_query("clusterset.local", 6, None);
            p[2] = 5 << 3;
            p
        },
        {
            let mut p = good_query("clusterset.local", 6, None);
            p[2] = 4 << 3;
            p
        },
        good_query(name, 41, None),
        // Trailing garbage, a valid query with ECS then a truncation of it.
        {
            let mut p = good_query(name, 1, None);
            p.extend_from_slice(&[0xDE, 0xAD]);
            p
        },
        good_query(name, 1, Some(opt_ecs))[..40].to_vec(),
    ];
    v.push(vec![0xC0; 512]);
    v
}

#[tokio::test]
async fn malformed_packets_never_stop_the_server() {
    need("dig", "dnsutils");
    let catalog = catalog_of(
        &[yaml_export("demo", "echo", ECHO_PORTS, true)],
        "imports: []\n",
    );
    let (fed, server) = start(
        "east",
        105,
        &catalog,
        json!({ "rate_limit": { "responses_per_second": 0 } }),
    )
    .await;
    let ip = vip(&fed, "demo/echo", None).await;
    let name = "echo.demo.svc.clusterset.local";
    until_dig(
        &fed,
        server,
        &[name],
        Duration::from_secs(10),
        "echo resolves",
        |d| d.answers() == [ip.clone()],
    )
    .await;

    let sock = tokio::net::UdpSocket::bind("127.0.105.1:0")
        .await
        .expect("udp");
    let opt_ecs: &[u8] = &[
        0, 0, 41, 4, 0xD0, 0, 0, 0x80, 0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 2,
    ];
    let seeds = [
        good_query(name, 1, None),
        good_query(name, 33, Some(opt_ecs)),
        good_query("_http._tcp.echo.demo.svc.clusterset.local", 33, None),
        good_query("nope.clusterset.local", 28, Some(&opt_ecs[..11])),
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut sent = 0;
    for round in 0..5_000 {
        let mut p = seeds[round % seeds.len()].clone();
        match rng.below(4) {
            0 => {
                // Flip a few random bytes.
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(p.len());
                    p[i] = rng.next() as u8;
                }
            }
            1 => p.truncate(rng.below(p.len())),
            2 => {
                let i = rng.below(p.len());
                p.insert(i, rng.next() as u8);
            }
            _ => {
                let n = rng.below(600);
                p = (0..n).map(|_| rng.next() as u8).collect();
            }
        }
        let _ = sock.send_to(&p, server).await;
        sent += 1;
        if round % 200 == 0 {
            // Bounded rate: let the server breathe and drain our socket.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for p in hand_made_bad_packets() {
        for _ in 0..20 {
            let _ = sock.send_to(&p, server).await;
            sent += 1;
        }
    }
    // The same over TCP: bad frames, a frame cut short, then close.
    for p in hand_made_bad_packets() {
        if let Ok(mut s) = tokio::net::TcpStream::connect(server).await {
            let _ = s.write_all(&(p.len() as u16).to_be_bytes()).await;
            let _ = s.write_all(&p).await;
            let _ = s.write_all(&[0, 200, 1, 2]).await;
            let mut buf = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        }
    }
    eprintln!("sent {sent} bad UDP packets");
    // Still answering, on both transports.
    for transport in ["+notcp", "+tcp"] {
        let d = dig(server, &[transport, name]).await;
        assert_eq!(
            d.answers(),
            vec![ip.clone()],
            "{transport} after the garbage: {}",
            d.text
        );
    }
    assert!(
        fed.metric("isthmus_dns_queries_total", &["rcode=\"FORMERR\""])
            .await
            >= 100.0
    );
    assert!(fed.metric("isthmus_dns_dropped_total", &[]).await >= 20.0);
}

#[tokio::test]
async fn rate_limit_slips_and_drops_per_client() {
    need("dig", "dnsutils");
    let catalog = catalog_of(
        &[yaml_export("demo", "echo", ECHO_PORTS, true)],
        "imports: []\n",
    );
    let (fed, server) = start(
        "east",
        106,
        &catalog,
        json!({ "rate_limit": { "responses_per_second": 50, "burst_seconds": 1, "slip": 2 } }),
    )
    .await;
    let name = "echo.demo.svc.clusterset.local";
    vip(&fed, "demo/echo", None).await;
    until_dig(
        &fed,
        server,
        &[name],
        Duration::from_secs(10),
        "echo resolves",
        |d| d.answers().len() == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sock = tokio::net::UdpSocket::bind("127.0.106.1:0")
        .await
        .expect("udp");
    let q = good_query(name, 1, None);
    for _ in 0..400 {
        sock.send_to(&q, server).await.expect("send");
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 1500];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
    {
        if n >= 4 && buf[2] & 0x02 != 0 {
            truncated += 1;
        } else {
            full += 1;
        }
    }
    eprintln!("400 queries: {full} answered, {truncated} truncated (slip)");
    assert!(
        full <= 120,
        "at most the burst (+ refill) is answered in full: {full}"
    );
    assert!(full >= 40, "the burst is answered: {full}");
    assert!(
        truncated >= 50,
        "every second response over the limit slips: {truncated}"
    );
    assert!(full + truncated < 400, "the rest is dropped");
    // TCP is never limited: the slipped client's retry works.
    let d = dig(server, &["+tcp", name]).await;
    assert_eq!(d.answers().len(), 1, "{}", d.text);
    assert!(
        fed.metric("isthmus_dns_rate_limited_total", &["action=\"dropped\""])
            .await
            >= 100.0
    );
    assert!(
        fed.metric("isthmus_dns_rate_limited_total", &["action=\"slipped\""])
            .await
            >= 50.0
    );
}

/// A spoofed flood from many source ports of one address: SO_REUSEPORT spreads it over every UDP
/// worker, and the prefix still gets one budget for the whole server (with a limiter per worker it
/// got up to one per worker: ~1,200 full answers here).
#[tokio::test]
async fn rate_limit_holds_across_udp_workers_for_many_source_ports() {
    const RATE: f64 = 100.0;
    const SOCKETS: usize = 200;
    const PER_SOCKET: usize = 10;
    let catalog = catalog_of(
        &[yaml_export("demo", "echo", ECHO_PORTS, true)],
        "imports: []\n",
    );
    let (fed, server) = start(
        "east",
        108,
        &catalog,
        json!({
            "udp_workers": 4,
            "rate_limit": { "responses_per_second": 100, "burst_seconds": 1, "slip": 2 },
        }),
    )
    .await;
    let name = "echo.demo.svc.clusterset.local";
    vip(&fed, "demo/echo", None).await;
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let q = good_query(name, 1, None);
    let mut buf = [0u8; 1500];
    let started = Instant::now();
    loop {
        probe.send_to(&q, server).await.expect("send");
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), probe.recv(&mut buf)).await
            && n > 12
            && buf[7] > 0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "echo never resolved"
        );
    }
    // 2,000 queries in about 2 s from 200 source ports of 127.0.108.1, each port sending every
    // 200 ms and reading whatever comes back.
    let started = Instant::now();
    let clients: Vec<_> = (0..SOCKETS)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                let sock = tokio::net::UdpSocket::bind("127.0.108.1:0")
                    .await
                    .expect("udp");
                tokio::time::sleep(Duration::from_millis(i as u64)).await;
                let (mut full, mut truncated) = (0usize, 0usize);
                let mut buf = [0u8; 1500];
                for k in 0..PER_SOCKET {
                    sock.send_to(&q, server).await.expect("send");
                    let next = started + Duration::from_millis(i as u64 + 200 * (k as u64 + 1));
                    let wait_until = if k + 1 == PER_SOCKET {
                        Instant::now() + Duration::from_millis(500)
                    } else {
                        next
                    };
                    while let Ok(Ok(n)) =
                        tokio::time::timeout_at(wait_until, sock.recv(&mut buf)).await
                    {
                        if n >= 4 && buf[2] & 0x02 != 0 {
                            truncated += 1;
                        } else {
                            full += 1;
                        }
                    }
                }
                (full, truncated, Instant::now())
            })
        })
        .collect();
    let (mut full, mut truncated, mut last) = (0, 0, started);
    for c in clients {
        let (f, t, at) = c.await.expect("client");
        full += f;
        truncated += t;
        last = last.max(at);
    }
    let secs = last.duration_since(started).as_secs_f64();
    // What one bucket can hand out over the whole run (refill + the 1 s burst), with a margin.
    let budget = (RATE * secs + RATE + 50.0) as usize;
    eprintln!(
        "{} queries from {SOCKETS} ports in {secs:.2} s: {full} answered in full, {truncated} truncated; budget {budget}",
        SOCKETS * PER_SOCKET
    );
    assert!(
        full <= budget,
        "one prefix's answers stay within one budget for the whole server: {full} > {budget}"
    );
    assert!(full >= 100, "the burst is answered: {full}");
    assert!(truncated > 0, "responses over the limit slip: {truncated}");
    let dropped = fed
        .metric("isthmus_dns_rate_limited_total", &["action=\"dropped\""])
        .await;
    assert!(dropped >= 500.0, "the rest is dropped: {dropped}");
}

/// Runs `cmd` and fails the test (never skips) when it does not succeed.
fn must(cmd: &mut std::process::Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed (this test needs root and iproute2; it never skips): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespace (and so the server's addresses) when the test ends, pass or fail.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[tokio::test]
async fn zonemaster_finds_no_error_in_the_gslb_zone() {
    need("ip", "iproute2");
    need("zonemaster-cli", "zonemaster-cli");
    // A namespace of our own with only a loopback: the server owns port 53 there, and nothing
    // zonemaster sends can leave it. The name servers need addresses zonemaster does not flag as
    // private or reserved; inside the namespace nobody else can be reached at them anyway.
    let ns = Netns(format!("isthmus-zm-{}", std::process::id()));
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns.0])
        .status();
    must(
        std::process::Command::new("ip").args(["netns", "add", &ns.0]),
        "ip netns add",
    );
    must(
        std::process::Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]),
        "ip link set lo up",
    );
    let (ns1, ns2) = ("11.53.0.1", "11.53.0.2");
    for a in [ns1, ns2] {
        must(
            std::process::Command::new("ip").args([
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ]),
            "ip addr add",
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kek = isthmus_federation::identity::Kek::generate().expect("kek");
    std::fs::write(dir.path().join("kek"), kek.to_base64().as_bytes()).expect("kek");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            dir.path().join("kek"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }
    std::fs::write(
        dir.path().join("catalog.yaml"),
        catalog_of(
            &[yaml_export(
                "web",
                "shop",
                "[{name: https, port: 443, protocol: tcp}]",
                true,
            )],
            "imports: []\n",
        ),
    )
    .expect("catalog");
    let cfg = json!({
        "cluster": "east",
        "region": "region-east",
        "data_dir": dir.path().join("data"),
        "listen": {
            "peering": { "bind": "127.0.0.1:0" },
            "api": { "bind": "127.0.0.1:0" },
            "admin": "127.0.0.1:0",
            "admin_socket": dir.path().join("admin.sock"),
        },
        "vips": { "ipv4": "127.107.0.0/24" },
        "catalog": { "file": dir.path().join("catalog.yaml"), "poll_interval": "200ms" },
        "ca": { "kek_file": dir.path().join("kek") },
        "dns": {
            "bind": "0.0.0.0:53",
            "ttl": "300s",
            "rate_limit": { "responses_per_second": 0 },
            "nameservers": [
                { "name": "ns1.mesh.example", "addresses": [ns1] },
                { "name": "ns2.mesh.example", "addresses": [ns2] },
            ],
            "gslb": { "zone": "mesh.example", "ingress": { "east": ["11.53.1.1"] } },
        },
    });
    let cfg_path = dir.path().join("federation.yaml");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).expect("json")).expect("config");
    let log = std::fs::File::create(dir.path().join("federation.log")).expect("log");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            crate::harness::federation::exe(),
            "federation",
            "--config",
        ])
        .arg(&cfg_path)
        .env("ISTHMUS_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start the federation in the namespace");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut ready = String::new();
    use tokio::io::AsyncBufReadExt as _;
    let read = tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut ready)).await;
    let log_tail =
        || std::fs::read_to_string(dir.path().join("federation.log")).unwrap_or_default();
    assert!(
        matches!(read, Ok(Ok(n)) if n > 0),
        "federation in {} did not start:\n{}",
        ns.0,
        log_tail()
    );
    assert!(ready.contains("\"dns\":\"0.0.0.0:53\""), "{ready}");
    // The service gets its VIP and so its GSLB name (the catalog poll runs every 200 ms).
    let mut resolved = false;
    for _ in 0..50 {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "dig",
                "+short",
                &format!("@{ns1}"),
                "shop.web.mesh.example",
            ])
            .output()
            .expect("dig");
        if String::from_utf8_lossy(&out.stdout).trim() == "11.53.1.1" {
            resolved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        resolved,
        "shop.web.mesh.example never resolved:\n{}",
        log_tail()
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "zonemaster-cli",
            "--no-ipv6",
            "--show-testcase",
            "--level",
            "NOTICE",
        ])
        .args([
            "--ns",
            &format!("ns1.mesh.example/{ns1}"),
            "--ns",
            &format!("ns2.mesh.example/{ns2}"),
        ])
        .arg("mesh.example")
        .output()
        .await
        .expect("run zonemaster-cli");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("zonemaster-cli report:\n{report}{stderr}");
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" CRITICAL "))
        .collect();
    assert!(
        report.contains("ZONE09"),
        "zonemaster-cli did not run its zone tests: {report}{stderr}"
    );
    assert!(
        bad.is_empty(),
        "zonemaster-cli reported:\n{}",
        bad.join("\n")
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}
