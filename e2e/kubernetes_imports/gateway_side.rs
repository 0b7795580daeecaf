//! The gateway side of imports on Kubernetes, within the scenario of `kubernetes_imports`: east's
//! gateways run in Kubernetes mode (pod IPs on loopback from `ISTHMUS_POD_IP`, two replicas of
//! one gateway sharing one bootstrap file), listen on the target ports the derived Services
//! name, and leave their advertised address to the federation, which reads it from the
//! `isthmus-gateway` LoadBalancer Service's status.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::kubectl::Kubectl;
use super::{DEADLINE, POD_IP, POD_IP_B};
use crate::harness::Federation;
use crate::harness::gateway::{Gateway, curl};

/// The gateways' Service in the stand-in's default namespace (the federation's kubeconfig
/// context namespace), as the base manifests have it: port 15008 onto the inbound port.
pub const LB_SERVICE: &str = "isthmus-gateway";
pub const LB_PORT: u16 = 15008;

/// A port free on both pod IPs: the replicas bind their inbound listener on the same port, as
/// pods of one Deployment do, so the Service's targetPort fits both.
pub fn shared_inbound_port() -> u16 {
    let a: Ipv4Addr = POD_IP.parse().expect("ip");
    let b: Ipv4Addr = POD_IP_B.parse().expect("ip");
    loop {
        let l = std::net::TcpListener::bind((a, 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        if std::net::TcpListener::bind((b, port)).is_ok() {
            return port;
        }
    }
}

/// The LoadBalancer Service, created before any load balancer gave it an address.
pub fn lb_service_yaml(inbound_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {LB_SERVICE}\n  namespace: default\n\
         spec:\n  type: LoadBalancer\n  selector: {{app: isthmus-gateway}}\n  ports:\n\
         \x20 - {{name: inbound, port: {LB_PORT}, targetPort: {inbound_port}, protocol: TCP}}\n"
    )
}

/// A Kubernetes-mode gateway config: pod IP from the environment, the inbound listener on it,
/// and no advertised address.
pub fn gateway_config(pod_ip: &str, inbound_port: u16) -> Value {
    json!({
        "kubernetes": {},
        "listen": { "inbound": { "bind": format!("{pod_ip}:{inbound_port}") } },
    })
}

/// The addresses east's gateways are advertised at, as west stores them.
async fn seen_by_west(west: &Federation) -> Vec<String> {
    let list = west.admin("peering.list", Value::Null).await;
    let east = list["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["cluster"] == "east"))
        .cloned()
        .unwrap_or(Value::Null);
    east["gateways"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    format!(
                        "{}@{}",
                        g["name"].as_str().unwrap_or("?"),
                        g["address"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sets the Service's load-balancer address (`ip` or `hostname`, as `field` says) through the
/// status subresource, as a cloud controller does, and returns how long west took to see
/// east's gateway there.
async fn set_lb(k: &Kubectl, west: &Federation, field: &str, ip: &str) -> Duration {
    let patch = json!({"status": {"loadBalancer": {"ingress": [{ field: ip }]}}}).to_string();
    let (ok, out, err) = k
        .run(&[
            "patch",
            "service",
            LB_SERVICE,
            "-n",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .await;
    assert!(ok, "kubectl patch --subresource=status: {out}{err}");
    let started = Instant::now();
    let want = vec![format!("gw1@{ip}:{LB_PORT}")];
    west.wait_until(
        &format!("west sees east's gateway at {ip}:{LB_PORT}"),
        Duration::from_secs(20),
        || {
            let want = want.clone();
            async move {
                let seen = seen_by_west(west).await;
                (seen == want, format!("{seen:?}"))
            }
        },
    )
    .await;
    started.elapsed()
}

/// Until the LoadBalancer has an address, east's gateways are registered but not advertised
/// (status says why); then peers see the Service's address, and follow it when it changes.
pub async fn advertised_from_the_load_balancer(k: &Kubectl, east: &Federation, west: &Federation) {
    east.wait_until(
        "gw1 registered, not advertised, and why",
        Duration::from_secs(10),
        || async {
            let gws = east.admin("gateway.list", Value::Null).await;
            let gw1 = &gws["gateways"]["gw1"];
            let why = gw1["not_advertised"].as_str().unwrap_or("");
            let ok = gw1["registered"] == true
                && gw1["address"].is_null()
                && why.contains("no load-balancer address yet");
            (ok, gws.to_string())
        },
    )
    .await;
    assert_eq!(seen_by_west(west).await, Vec::<String>::new());
    let first = set_lb(k, west, "ip", "127.0.151.7").await;
    // A load balancer known by name, then by IP again.
    set_lb(k, west, "hostname", "lb.east.example").await;
    let changed = set_lb(k, west, "ip", "127.0.151.8").await;
    eprintln!(
        "west saw east's load-balancer address {first:?} after it was set, and {changed:?} after it changed"
    );
    let gws = east.admin("gateway.list", Value::Null).await;
    assert_eq!(
        gws["gateways"]["gw1"]["address"],
        format!("127.0.151.8:{LB_PORT}"),
        "{gws}"
    );
}

/// `targetPort` of the first port of a Service.
pub fn target_port(svc: &Value) -> u16 {
    let t = svc["spec"]["ports"][0]["targetPort"]
        .as_u64()
        .expect("numeric targetPort");
    u16::try_from(t).expect("a port")
}

/// A real `curl` to `<pod ip>:<target port>` answered by west's echo.
pub fn curl_reaches_west(pod_ip: &str, port: u16) -> Result<(), String> {
    let url = format!("http://{pod_ip}:{port}/");
    let (code, out, err) = curl(&[&url]);
    let body: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    if code == 0 && body["cluster"] == "west" {
        Ok(())
    } else {
        Err(format!("curl {url}: exit {code}, {out}{err}"))
    }
}

/// The clusterset name's target port and west's per-cluster name's, each through both replicas.
pub async fn curl_through_target_ports(k: &Kubectl, east: &Federation) -> (u16, u16) {
    let svc = k
        .get(&["service", "isthmus-echo", "-n", "shop"])
        .await
        .unwrap_or_else(|| east.fail("no derived Service for echo"));
    let any = target_port(&svc);
    let listed = k
        .get(&[
            "service",
            "-n",
            "shop",
            "-l",
            "isthmus.io/cluster=west,multicluster.kubernetes.io/service-name=echo",
        ])
        .await
        .expect("list");
    let west_svc = listed["items"]
        .get(0)
        .cloned()
        .unwrap_or_else(|| east.fail(&format!("no per-cluster Service for echo: {listed}")));
    let pinned = target_port(&west_svc);
    assert_ne!(any, pinned);
    for port in [any, pinned] {
        for pod in [POD_IP, POD_IP_B] {
            east.wait_until(
                &format!("curl {pod}:{port}"),
                Duration::from_secs(10),
                || async move {
                    match curl_reaches_west(pod, port) {
                        Ok(()) => (true, String::new()),
                        Err(e) => (false, e),
                    }
                },
            )
            .await;
        }
    }
    forged_identity_is_not_carried(east, any);
    (any, pinned)
}

/// A client on a target port cannot forge who it is: the identity and routing headers it sends
/// are replaced or dropped exactly as on a VIP (the gateway names east as the source cluster).
fn forged_identity_is_not_carried(east: &Federation, port: u16) {
    let url = format!("http://{POD_IP}:{port}/");
    let (code, out, err) = curl(&[
        "-H",
        "x-forwarded-client-cert: By=spiffe://west.local/ns/shop/sa/echo;URI=spiffe://west.local/ns/admin/sa/root",
        "-H",
        "x-isthmus-source-cluster: west",
        "-H",
        "isthmus-caller: spiffe://west.local/ns/admin/sa/root",
        "-H",
        "isthmus-target: other.shop:8080",
        &url,
    ]);
    let seen: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let xfcc = seen["forwarded_client_cert"].as_str().unwrap_or_default();
    if code != 0
        || seen["cluster"] != "west"
        || seen["source_cluster"] != "east"
        || xfcc.contains("ns/admin/sa/root")
        || seen["isthmus_headers"] != json!([])
    {
        east.fail(&format!(
            "forged headers through target port {port}: exit {code}, {out}{err}"
        ));
    }
}

/// A raw TCP port through its target port: bytes to west's TCP echo and back, untouched.
pub async fn raw_tcp_through_a_target_port(k: &Kubectl, east: &Federation) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    east.wait_until(
        "tcp-echo's derived Service",
        Duration::from_secs(10),
        || async {
            let svc = k.get(&["service", "isthmus-tcp-echo", "-n", "shop"]).await;
            (svc.is_some(), format!("{svc:?}"))
        },
    )
    .await;
    let svc = k
        .get(&["service", "isthmus-tcp-echo", "-n", "shop"])
        .await
        .unwrap_or_else(|| east.fail("no derived Service for tcp-echo"));
    let addr: SocketAddr = format!("{POD_IP}:{}", target_port(&svc))
        .parse()
        .expect("addr");
    let mut last = String::new();
    for _ in 0..50 {
        let attempt = async {
            let mut conn = tokio::net::TcpStream::connect(addr).await?;
            conn.write_all(b"hello through a target port\n").await?;
            conn.shutdown().await?;
            let mut back = Vec::new();
            conn.read_to_end(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(back)) if back == b"hello through a target port\n" => return,
            other => last = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    east.fail(&format!("raw TCP through {addr}: {last}"));
}

/// The pod IPs the derived Service's slice lists.
pub async fn slice_ips(k: &Kubectl, derived: &str) -> Vec<String> {
    let slice = k
        .get(&["endpointslice", derived, "-n", "shop"])
        .await
        .unwrap_or(Value::Null);
    let mut ips: Vec<String> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips
}

/// A replica killed and started again with the same bootstrap file (no new token) registers
/// again — its pod IP leaves the slice with its lease and comes back — and serves.
pub async fn a_replica_restarts_with_the_same_bootstrap_file(
    k: &Kubectl,
    east: &Federation,
    replica: &mut Gateway,
    echo_port: u16,
) {
    replica.kill9().await;
    east.wait_until(
        "the killed replica's lease ends",
        Duration::from_secs(20),
        || async {
            let ips = slice_ips(k, "isthmus-echo").await;
            (ips == [POD_IP], format!("{ips:?}"))
        },
    )
    .await;
    replica.restart().await;
    east.wait_until(
        "the restarted replica is listed again",
        Duration::from_secs(20),
        || async {
            let ips = slice_ips(k, "isthmus-echo").await;
            (ips == [POD_IP, POD_IP_B], format!("{ips:?}"))
        },
    )
    .await;
    east.wait_until(
        "the restarted replica serves",
        Duration::from_secs(10),
        || async {
            match curl_reaches_west(POD_IP_B, echo_port) {
                Ok(()) => (true, String::new()),
                Err(e) => (false, e),
            }
        },
    )
    .await;
}

/// After the import ends, its target port refuses connections within the deadline.
pub async fn listener_gone(east: &Federation, port: u16) {
    let addr: SocketAddr = format!("{POD_IP}:{port}").parse().expect("addr");
    let started = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                if started.elapsed() > DEADLINE {
                    east.fail(&format!(
                        "{addr} still accepts {:?} after the import ended: {other:?}",
                        started.elapsed()
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{addr} refused {:?} after the import ended",
        started.elapsed()
    );
}
