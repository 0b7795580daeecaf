//! Cross-cluster traffic through real gateways with real clients: curl through the proxy port
//! and to service VIPs (HTTP/1.1 and h2c), identity headers at the destination, access logs on
//! both sides, and clear refusals for names nobody serves.

use serde_json::{Value, json};

use crate::harness::gateway::{curl, mesh};

fn json_body(out: &(i32, String, String)) -> Value {
    assert_eq!(out.0, 0, "curl failed: {}{}", out.1, out.2);
    serde_json::from_str(out.1.trim()).unwrap_or_else(|e| panic!("{e}: {:?}", out.1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_crosses_clusters_through_proxy_and_vip() {
    let m = mesh(71, "", json!({}), json!({})).await;
    let east = &m[0];
    let proxy = east.gw.proxy.to_string();

    // Through the proxy port, by clusterset name: served by west or south, never east (east
    // does not export echo), with the caller's identity set by the gateways.
    let out = curl(&[
        "-x",
        &proxy,
        "-H",
        "x-forwarded-client-cert: By=spiffe://evil/forged",
        "http://echo.demo.svc.clusterset.local:8080/hello",
    ]);
    let body = json_body(&out);
    let served_by = body["cluster"].as_str().expect("cluster").to_string();
    assert!(["west", "south"].contains(&served_by.as_str()), "{body}");
    assert_eq!(body["source_cluster"], "east", "{body}");
    let xfcc = body["forwarded_client_cert"].as_str().expect("xfcc");
    assert_eq!(
        xfcc,
        format!(
            "By=spiffe://{served_by}.mesh/isthmus/gateway/gw-1;URI=spiffe://east.mesh/isthmus/gateway/gw-1"
        ),
        "the forged header was replaced by the gateways' own"
    );

    // Pinned to one cluster by name.
    for target in ["west", "south"] {
        let body = json_body(&curl(&[
            "-x",
            &proxy,
            &format!("http://{target}.echo.demo.svc.clusterset.local:8080/"),
        ]));
        assert_eq!(body["cluster"], target);
    }

    // To the service VIP on its own port, HTTP/1.1 and h2c with prior knowledge.
    let vip = east.vip("demo/echo").await;
    let url = format!("http://{vip}:8080/vip");
    let body = json_body(&curl(&[&url]));
    assert!(
        ["west", "south"].contains(&body["cluster"].as_str().unwrap_or("")),
        "{body}"
    );
    let body = json_body(&curl(&["--http2-prior-knowledge", &url]));
    assert_eq!(body["path"], "/vip");

    // A name nobody serves: a clear 503 with the reason, at once.
    let out = curl(&[
        "-x",
        &proxy,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-D",
        "-",
        "http://nothing.demo.svc.clusterset.local:8080/",
    ]);
    assert!(out.1.ends_with("503"), "{out:?}");
    assert!(
        out.1
            .contains("x-isthmus-error: no cluster serves nothing.demo"),
        "{out:?}"
    );

    // One access-log line per request on both sides.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let outbound = east.gw.access_log();
    let vip_line = outbound
        .iter()
        .find(|l| l["path"] == "/vip")
        .unwrap_or_else(|| panic!("no outbound access-log line for /vip: {outbound:?}"));
    assert_eq!(vip_line["side"], "outbound");
    assert_eq!(vip_line["service"], "echo.demo");
    assert_eq!(vip_line["status"], 200);
    assert!(
        vip_line["bytes_out"].as_u64().unwrap_or(0) > 0,
        "{vip_line}"
    );
    let dst = vip_line["dst_cluster"].as_str().expect("dst").to_string();
    let server = m.iter().find(|x| x.fed.name == dst).expect("server");
    let inbound = server.gw.access_log();
    assert!(
        inbound
            .iter()
            .any(|l| l["side"] == "inbound" && l["src_cluster"] == "east" && l["path"] == "/vip"),
        "{inbound:?}"
    );
}
