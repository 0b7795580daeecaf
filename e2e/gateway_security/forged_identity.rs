//! No byte a local client writes reaches a service in another cluster as identity, on any path
//! into east's gateway: plain HTTP/1.1 and h2c on a VIP, absolute-form on the proxy port,
//! `CONNECT` on the proxy port (HTTP/1.1 and HTTP/2, with HTTP/1.1 or h2c inside), `CONNECT` on a
//! VIP, WebSocket (HTTP/1.1 Upgrade on a VIP, on the proxy port and inside a CONNECT) and
//! extended CONNECT (RFC 8441, on a VIP and on the proxy port). Every client sends forged
//! `x-forwarded-client-cert`, `x-isthmus-source-cluster`, `isthmus-caller` and `isthmus-target`;
//! the sample service reports what it saw, which must be only what west's or south's gateway set
//! for a call from east. Also: a VIP refuses CONNECT to anything but its own service, a tunnel
//! cannot be turned into a raw one, `tcp` ports still tunnel raw bytes, and a real gRPC client
//! behind an HTTP proxy (`grpc.http_proxy`, which tunnels with CONNECT) still works, through the
//! proxy port and a VIP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::gateway_protocols::python;
use crate::harness::gateway::{Member, curl, mesh};

mod local_clients;
use local_clients::{
    complete, connect_h2_then_h1, connect_on, json_body, read_until, websocket_h1, websocket_h2,
};

const ECHO: &str = "echo.demo.svc.clusterset.local:8080";

/// What a hostile local client claims.
const FORGED: [(&str, &str); 4] = [
    (
        "x-forwarded-client-cert",
        "By=spiffe://west.mesh/isthmus/gateway/gw-1;URI=spiffe://west.mesh/ns/admin/sa/root",
    ),
    ("x-isthmus-source-cluster", "west"),
    ("isthmus-caller", "spiffe://east.mesh/ns/admin/sa/root"),
    ("isthmus-target", "tcp-echo.demo:9000"),
];

fn forged_lines() -> String {
    FORGED
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

fn forged_curl_args() -> Vec<String> {
    FORGED
        .iter()
        .flat_map(|(k, v)| ["-H".to_string(), format!("{k}: {v}")])
        .collect()
}

/// Whether the service saw only what its gateway set for a call from east: `None`, or what
/// is wrong.
fn judge(what: &str, seen: Result<Value, String>) -> Option<String> {
    let seen = match seen {
        Ok(v) => v,
        Err(e) => return Some(format!("{what}: no answer from the service: {e}")),
    };
    eprintln!("{what}: {seen}");
    let cluster = seen["cluster"].as_str().unwrap_or("?");
    let xfcc = format!(
        "By=spiffe://{cluster}.mesh/isthmus/gateway/gw-1;URI=spiffe://east.mesh/isthmus/gateway/gw-1"
    );
    let fine = ["west", "south"].contains(&cluster)
        && seen["source_cluster"] == "east"
        && seen["forwarded_client_cert"] == xfcc.as_str()
        && seen["isthmus_headers"] == json!([]);
    (!fine).then(|| format!("{what}: the service saw {seen}"))
}

/// curl's stdout as the service's JSON.
fn curl_seen(args: &[&str]) -> Result<Value, String> {
    let forged = forged_curl_args();
    let mut all: Vec<&str> = forged.iter().map(String::as_str).collect();
    all.extend(args);
    let out = curl(&all);
    if out.0 != 0 {
        return Err(format!("curl {args:?} exit {}: {}", out.0, out.2.trim()));
    }
    serde_json::from_str(out.1.trim()).map_err(|e| format!("{e}: {out:?}"))
}

/// Every path a local client has into east's gateway; what went wrong on each.
async fn forged_on_every_path(east: &Member, echo_vip: IpAddr) -> Vec<String> {
    let proxy = east.gw.proxy;
    let p = format!("http://{proxy}");
    let vip = SocketAddr::new(echo_vip, 8080);
    let vip_proxy = format!("http://{vip}");
    let url = |path: &str| format!("http://{ECHO}{path}");
    let vip_url = |path: &str| format!("http://{vip}{path}");
    let mut checks: Vec<(&str, Result<Value, String>)> = vec![
        ("VIP, HTTP/1.1", curl_seen(&[&vip_url("/vip-h1")])),
        (
            "VIP, h2c",
            curl_seen(&["--http2-prior-knowledge", &vip_url("/vip-h2c")]),
        ),
        (
            "proxy port, absolute form",
            curl_seen(&["-x", &p, &url("/absolute")]),
        ),
        (
            "proxy port, CONNECT (curl -p)",
            curl_seen(&["-p", "-x", &p, &url("/proxy-connect")]),
        ),
        (
            "proxy port, CONNECT with h2c inside",
            curl_seen(&[
                "-p",
                "-x",
                &p,
                "--http2-prior-knowledge",
                &url("/proxy-connect-h2c"),
            ]),
        ),
        (
            "VIP, CONNECT to its own service (curl -p)",
            curl_seen(&["-p", "-x", &vip_proxy, &url("/vip-connect")]),
        ),
    ];
    checks.push((
        "proxy port, HTTP/2 CONNECT with HTTP/1.1 inside",
        connect_h2_then_h1(proxy).await,
    ));
    let mut s = TcpStream::connect(vip).await.expect("connect");
    let head = connect_on(&mut s, &format!("{echo_vip}:8080")).await;
    checks.push(("VIP, CONNECT to its own VIP address", {
        if head.starts_with("HTTP/1.1 200") {
            let inner = format!(
                "GET /vip-connect-ip HTTP/1.1\r\nHost: {ECHO}\r\n{}\r\n",
                forged_lines()
            );
            s.write_all(inner.as_bytes()).await.expect("write");
            json_body(&read_until(&mut s, Vec::new(), complete).await)
        } else {
            Err(head)
        }
    }));
    checks.push((
        "VIP, WebSocket (HTTP/1.1 Upgrade)",
        websocket_h1(
            TcpStream::connect(vip).await.expect("connect"),
            "/ws/identity",
        )
        .await,
    ));
    checks.push((
        "proxy port, WebSocket (HTTP/1.1 Upgrade, absolute form)",
        websocket_h1(
            TcpStream::connect(proxy).await.expect("connect"),
            &url("/ws/identity"),
        )
        .await,
    ));
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let head = connect_on(&mut s, ECHO).await;
    checks.push((
        "proxy port, WebSocket inside a CONNECT",
        if head.starts_with("HTTP/1.1 200") {
            websocket_h1(s, "/ws/identity").await
        } else {
            Err(head)
        },
    ));
    checks.push(("VIP, extended CONNECT over h2c", websocket_h2(vip).await));
    checks.push((
        "proxy port, extended CONNECT over h2c",
        websocket_h2(proxy).await,
    ));
    checks
        .into_iter()
        .filter_map(|(what, seen)| judge(what, seen))
        .collect()
}

/// A VIP refuses CONNECT to any other authority (403, the reason in the body and the access
/// log), and a tunnel served as HTTP cannot be turned into a raw one to another service.
async fn foreign_connects_are_refused(east: &Member, echo_vip: IpAddr) {
    let vip = SocketAddr::new(echo_vip, 8080);
    let out = curl(&[
        "-p",
        "-x",
        &format!("http://{vip}"),
        "http://tcp-echo.demo.svc.clusterset.local:9000/",
    ]);
    assert!(
        out.0 != 0 && out.2.contains("403"),
        "curl -p through echo's VIP to tcp-echo must get 403: {out:?}"
    );
    for foreign in [
        "127.0.0.1:22",
        "tcp-echo.demo.svc.clusterset.local:9000",
        "grpc-echo.demo:50051",
        "echo.demo.svc.clusterset.local:9000",
    ] {
        let mut s = TcpStream::connect(vip).await.expect("connect");
        let head = connect_on(&mut s, foreign).await;
        assert!(
            head.starts_with("HTTP/1.1 403")
                && head.to_ascii_lowercase().contains(&format!(
                    "x-isthmus-error: connect {foreign} refused: this address serves echo.demo:8080 only"
                )),
            "CONNECT {foreign} on echo's VIP: {head}"
        );
    }
    // Inside a tunnel to echo, a CONNECT elsewhere is refused the same way.
    let mut s = TcpStream::connect(east.gw.proxy).await.expect("connect");
    let head = connect_on(&mut s, ECHO).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = connect_on(&mut s, "tcp-echo.demo.svc.clusterset.local:9000").await;
    assert!(head.starts_with("HTTP/1.1 403"), "a CONNECT inside: {head}");
    // Tunnels never nest, not even to the tunnel's own service.
    let mut s = TcpStream::connect(east.gw.proxy).await.expect("connect");
    let head = connect_on(&mut s, ECHO).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = connect_on(&mut s, ECHO).await;
    assert!(
        head.starts_with("HTTP/1.1 403") && head.contains("CONNECT inside a tunnel refused"),
        "a CONNECT to echo inside a tunnel to echo: {head}"
    );
    // Every refusal has its access-log line with the reason.
    let is_refusal = |l: &Value| {
        l["side"] == "outbound"
            && l["method"] == "CONNECT"
            && l["status"] == 403
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("serves echo.demo:8080 only"))
    };
    let log = east
        .gw
        .wait_access_log("six refused CONNECT lines", |log| {
            log.iter().filter(|l| is_refusal(l)).count() >= 6
        })
        .await;
    let refused = log.iter().filter(|l| is_refusal(l)).count();
    assert_eq!(refused, 6, "one line per refused CONNECT: {log:?}");
    assert!(
        !log.iter().any(|l| l["side"] == "outbound"
            && l["service"] == "tcp-echo.demo"
            && l["status"] == 200),
        "no tunnel to tcp-echo was opened: {log:?}"
    );
}

/// A `tcp` port still gets a raw byte tunnel through the proxy port.
async fn tcp_ports_still_tunnel_bytes(east: &Member) {
    let mut s = TcpStream::connect(east.gw.proxy).await.expect("connect");
    let head = connect_on(&mut s, "tcp-echo.demo.svc.clusterset.local:9000").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ping = b"GET / HTTP/1.1\r\nx-forwarded-client-cert: raw bytes\r\n\r\n";
    s.write_all(ping).await.expect("write");
    let mut back = vec![0u8; ping.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .expect("the echo within 20 s")
        .expect("read the echo");
    assert_eq!(back, ping, "bytes to a tcp port pass untouched");
}

/// grpcio with `grpc.http_proxy`: a unary and a server-streaming call, printed as JSON.
const GRPC_VIA_PROXY: &str = r#"
import json, sys
import grpc

def enc(text):
    b = text.encode()
    return b"\x0a" + bytes([len(b)]) + b

def dec(msg):
    return msg[2:].decode()

proxy, target = sys.argv[1], sys.argv[2]
out = {}
try:
    with grpc.insecure_channel(target, options=[("grpc.http_proxy", proxy)]) as ch:
        grpc.channel_ready_future(ch).result(timeout=15)
        reply, call = ch.unary_unary("/isthmus.demo.Echo/Say").with_call(enc("via proxy"), timeout=15)
        out["say"] = dec(reply)
        out["say_code"] = call.code().name
        it = ch.unary_stream("/isthmus.demo.Echo/Count")(enc("5"), timeout=15)
        out["count"] = [dec(m) for m in it]
        out["count_code"] = it.code().name
except grpc.RpcError as e:
    out["rpc_error"] = "%s: %s" % (e.code().name, e.details())
except Exception as e:
    out["error"] = repr(e)
print(json.dumps(out))
"#;

async fn grpc_behind_an_http_proxy(east: &Member, dir: &std::path::Path) {
    let grpc_vip = east.vip("demo/grpc-echo").await;
    for (how, proxy) in [
        ("the proxy port", format!("http://{}", east.gw.proxy)),
        ("grpc-echo's VIP", format!("http://{grpc_vip}:50051")),
    ] {
        let out = python(
            dir,
            "grpc_via_proxy.py",
            GRPC_VIA_PROXY,
            &[
                proxy.clone(),
                "grpc-echo.demo.svc.clusterset.local:50051".to_string(),
            ],
        )
        .await;
        eprintln!("gRPC with grpc.http_proxy={proxy} ({how}): {out}");
        let say = out["say"]
            .as_str()
            .unwrap_or_else(|| panic!("{how}: {out}"));
        let cluster = say.split(": ").next().unwrap_or_default();
        assert!(["west", "south"].contains(&cluster), "{how}: {out}");
        assert_eq!(say, format!("{cluster}: via proxy"), "{how}: {out}");
        assert_eq!(out["say_code"], "OK", "{how}: {out}");
        let count = out["count"].as_array().expect("count");
        assert_eq!(count.len(), 5, "{how}: {out}");
        assert_eq!(out["count_code"], "OK", "{how}: {out}");
    }
    // Each call crossed as its own request, not as a byte tunnel.
    let log = east.gw.access_log();
    for path in ["/isthmus.demo.Echo/Say", "/isthmus.demo.Echo/Count"] {
        let calls = log
            .iter()
            .filter(|l| l["side"] == "outbound" && l["path"] == path && l["status"] == 200)
            .count();
        assert_eq!(calls, 2, "{path}: one access-log line per call: {log:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_path_forges_caller_identity() {
    crate::gateway_protocols::venv_python();
    let m = mesh(81, "", json!({}), json!({})).await;
    let east = &m[0];
    let echo_vip = east.vip("demo/echo").await;
    let dir = tempfile::Builder::new()
        .prefix("isthmus-e2e-identity-")
        .tempdir()
        .expect("temp dir");

    let wrong = forged_on_every_path(east, echo_vip).await;
    assert!(
        wrong.is_empty(),
        "forged identity reached a service on {} path(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Inside a tunnel, each request is its own exchange in the access log.
    let log = east.gw.access_log();
    let inner = log
        .iter()
        .find(|l| l["side"] == "outbound" && l["path"] == "/proxy-connect")
        .unwrap_or_else(|| panic!("no access-log line for the request inside the tunnel: {log:?}"));
    assert_eq!(inner["status"], 200, "{inner}");
    assert_eq!(inner["service"], "echo.demo", "{inner}");

    foreign_connects_are_refused(east, echo_vip).await;
    tcp_ports_still_tunnel_bytes(east).await;
    grpc_behind_an_http_proxy(east, dir.path()).await;
}
