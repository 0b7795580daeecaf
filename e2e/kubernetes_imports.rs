//! Imports on Kubernetes: east runs with the API server stand-in and `kubernetes.imports`; west
//! exports through its catalog file. Checked with the real `kubectl get -o json` and `dig`:
//! the ServiceImport, derived Service and EndpointSlice appear, DNS answers the ClusterIP, a
//! foreign object holding a derived name is left untouched (and the problem is visible), a
//! restart keeps the target ports and the objects, the writer follows verdicts and gateway
//! leases within 2 s (`follow`), and a withdrawn export removes them. East's gateways (two
//! replicas sharing one bootstrap file) serve the target ports and are advertised at the
//! LoadBalancer Service's address ([`gateway_side`]).
//! Federation indexes 150 (west) and 155 (east) belong to this file, and 127.0.151.x addresses.

mod follow;
mod gateway_side;
mod kubectl;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_federation::testing::kubeapi::KubeApi;
use serde_json::{Value, json};

use self::kubectl::Kubectl;
use crate::harness::dig_a;
use crate::harness::gateway::{Gateway, Samples};
use crate::harness::{Federation, IMPORT_ALL, Spec, catalog, export, peer_via_cli};

/// What a ClusterIP import must do after its route appears or ends (the brief's 2 s).
const DEADLINE: Duration = Duration::from_secs(2);
const POD_IP: &str = "127.0.155.9";
/// The second replica of east's gateway.
const POD_IP_B: &str = "127.0.155.90";

fn dns_port(ip: std::net::Ipv4Addr) -> u16 {
    loop {
        let t = std::net::TcpListener::bind((ip, 0)).expect("bind tcp");
        let port = t.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// The objects of one import as kubectl shows them.
#[derive(Debug, Default)]
struct Objects {
    import: Option<Value>,
    service: Option<Value>,
    slice: Option<Value>,
}

async fn objects(k: &Kubectl, svc: &str) -> Objects {
    let derived = format!("isthmus-{svc}");
    Objects {
        import: k.get(&["serviceimport", svc, "-n", "shop"]).await,
        service: k.get(&["service", &derived, "-n", "shop"]).await,
        slice: k.get(&["endpointslice", &derived, "-n", "shop"]).await,
    }
}

/// Whether the three objects are complete and consistent; the reason when not.
fn complete(o: &Objects, port: u16) -> Result<(), String> {
    let (Some(si), Some(svc), Some(slice)) = (&o.import, &o.service, &o.slice) else {
        return Err(format!("missing: {o:?}"));
    };
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
    if cluster_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("no ClusterIP: {svc}"));
    }
    if si["spec"]["type"] != "ClusterSetIP"
        || si["spec"]["ports"][0]["port"] != json!(port)
        || si["spec"]["ips"] != json!([cluster_ip])
        || si["status"]["clusters"] != json!([{ "cluster": "west" }])
    {
        return Err(format!("ServiceImport not as expected: {si}"));
    }
    let owner = &svc["metadata"]["ownerReferences"][0];
    if owner["kind"] != "ServiceImport" || owner["uid"] != si["metadata"]["uid"] {
        return Err(format!("Service not owned by the ServiceImport: {svc}"));
    }
    let target = &svc["spec"]["ports"][0]["targetPort"];
    let mut pods: Vec<&str> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["addresses"][0].as_str())
        .collect();
    pods.sort_unstable();
    // Both replicas of the gateway (one name, one bootstrap file) are listed.
    if pods != [POD_IP, POD_IP_B]
        || slice["ports"][0]["port"] != *target
        || slice["metadata"]["ownerReferences"][0]["uid"] != svc["metadata"]["uid"]
    {
        return Err(format!(
            "slice not as expected (targetPort {target}): {slice}"
        ));
    }
    Ok(())
}

async fn wait_route(fed: &Federation, key: &str, present: bool) {
    fed.wait_catalog(&format!("route {key} present={present}"), |c| {
        c["routes"].get(key).is_some_and(|r| !r.is_null()) == present
    })
    .await;
}

fn uid(v: &Option<Value>) -> Value {
    v.as_ref()
        .map(|v| v["metadata"]["uid"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_imports_follow_the_catalog_and_never_touch_foreign_objects() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(tmp.path()).await;
    let k = Kubectl {
        kubeconfig: api.kubeconfig().to_path_buf(),
        dir: tmp.path().to_path_buf(),
    };
    k.apply(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
    )
    .await;
    // Someone else's Service already holds the derived name of `taken`.
    k.apply(
        "foreign.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: isthmus-taken\n  namespace: shop\n\
         spec:\n  selector: {app: theirs}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .await;
    let foreign = k
        .get(&["service", "isthmus-taken", "-n", "shop"])
        .await
        .expect("foreign service");

    let samples = Samples::start("west", std::net::Ipv4Addr::new(127, 0, 150, 10)).await;
    let west_catalog = |with_cart: bool| {
        let mut exports = vec![export("shop", "taken", 80, None)];
        if with_cart {
            exports.push(export("shop", "cart", 8080, None));
            // A real HTTP service, called through east's target ports.
            exports.push(format!(
                "  - namespace: shop\n    name: echo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{}\"}}]\n",
                samples.http
            ));
            exports.push(format!(
                "  - namespace: shop\n    name: tcp-echo\n    ports: [{{port: 9000, protocol: tcp}}]\n    endpoints: [{{address: \"{}\"}}]\n",
                samples.tcp
            ));
        }
        catalog(&exports, "")
    };
    // The gateways' LoadBalancer Service, with no address yet.
    let inbound_port = gateway_side::shared_inbound_port();
    k.apply(
        "gateway-service.yaml",
        &gateway_side::lb_service_yaml(inbound_port),
    )
    .await;
    let west = Federation::start(Spec::new("west", 150).catalog(&west_catalog(true))).await;
    let ip = std::net::Ipv4Addr::new(127, 0, 155, 1);
    let dns = SocketAddr::from((ip, dns_port(ip)));
    let mut east = Federation::start(
        Spec::new("east", 155)
            .catalog(&catalog(&[], IMPORT_ALL))
            .extra(json!({
                "dns": { "bind": dns.to_string(), "ttl": "1s" },
                "kubernetes": {
                    "kubeconfig": api.kubeconfig(),
                    "imports": true,
                    "exports": false,
                    "gateway_service": gateway_side::LB_SERVICE,
                },
            })),
    )
    .await;
    // West's gateway: east's gateway judges west by it (without one its verdict takes west out
    // of status.clusters, as it takes it out of DNS).
    // Its lease outlives `follow`'s stop of it, so that only a verdict changes then.
    let west_gw = Gateway::start(&west, "wgw", json!({ "registration_ttl": "60s" })).await;
    // East's gateway in Kubernetes mode, and a second replica with the same bootstrap file.
    let gw = Gateway::start_with_env(
        &east,
        "gw1",
        gateway_side::gateway_config(POD_IP, inbound_port),
        &[("ISTHMUS_POD_IP", POD_IP)],
    )
    .await;
    let mut replica = gw
        .replica(
            &east,
            "b",
            gateway_side::gateway_config(POD_IP_B, inbound_port),
            &[("ISTHMUS_POD_IP", POD_IP_B)],
        )
        .await;
    peer_via_cli(&west, &east).await;
    east.wait_connected(&["west"]).await;
    wait_route(&east, "shop/cart", true).await;

    // Within 2 s of the route: all three objects, complete (the gateway's lease is live).
    let started = Instant::now();
    let mut seen;
    loop {
        seen = objects(&k, "cart").await;
        match complete(&seen, 8080) {
            Ok(()) => break,
            Err(why) if started.elapsed() > DEADLINE => {
                east.fail(&format!("after {:?}: {why}", started.elapsed()))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    eprintln!(
        "cart's objects complete {:?} after its route",
        started.elapsed()
    );

    // The gateway side: advertised at the LoadBalancer's address once it has one; curl through
    // both target ports on both replicas; a replica restarted with the same bootstrap file.
    gateway_side::advertised_from_the_load_balancer(&k, &east, &west).await;
    wait_route(&east, "shop/echo", true).await;
    let (echo_any, echo_west) = gateway_side::curl_through_target_ports(&k, &east).await;
    wait_route(&east, "shop/tcp-echo", true).await;
    gateway_side::raw_tcp_through_a_target_port(&k, &east).await;
    gateway_side::a_replica_restarts_with_the_same_bootstrap_file(
        &k,
        &east,
        &mut replica,
        echo_any,
    )
    .await;
    let dump = gw.config_dump().await.unwrap_or_default();
    assert_eq!(
        dump["table"]["target_ports"][echo_west.to_string()]["carries"],
        "west.echo.shop:8080",
        "{dump}"
    );
    assert_eq!(
        gw.metric("isthmus_gateway_target_port_listeners_failed", &[])
            .await,
        0.0
    );
    let cluster_ip = seen.service.as_ref().expect("svc")["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    let target = seen.service.as_ref().expect("svc")["spec"]["ports"][0]["targetPort"].clone();
    let target_port = target.as_u64().expect("numeric targetPort");
    assert!((15100..=15999).contains(&target_port), "{target}");

    // DNS answers the ClusterIP, not the VIP; the per-cluster name its own Service's.
    east.wait_until("DNS answers the ClusterIP", Duration::from_secs(5), || {
        let cluster_ip = cluster_ip.clone();
        async move {
            let a = dig_a(dns, "cart.shop.svc.clusterset.local").await;
            (a == [cluster_ip], format!("{a:?}"))
        }
    })
    .await;
    let per_cluster = k
        .get(&["service", "-n", "shop", "-l", "isthmus.io/cluster=west"])
        .await
        .expect("list");
    let west_cart = per_cluster["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|s| s["metadata"]["labels"]["multicluster.kubernetes.io/service-name"] == "cart")
        .unwrap_or_else(|| east.fail(&format!("no per-cluster Service: {per_cluster}")))
        .clone();
    let west_ip = west_cart["spec"]["clusterIP"]
        .as_str()
        .expect("ip")
        .to_string();
    assert_ne!(west_ip, cluster_ip);
    assert_ne!(west_cart["spec"]["ports"][0]["targetPort"], target);
    east.wait_until(
        "DNS answers the per-cluster ClusterIP",
        Duration::from_secs(5),
        || {
            let west_ip = west_ip.clone();
            async move {
                let a = dig_a(dns, "west.cart.shop.svc.clusterset.local").await;
                (a == [west_ip], format!("{a:?}"))
            }
        },
    )
    .await;

    // The foreign Service is untouched, and the problem is visible: an Event and a metric.
    east.wait_until(
        "the taken name is reported",
        Duration::from_secs(5),
        || async {
            let events = k
                .get(&["events", "-n", "shop"])
                .await
                .unwrap_or(Value::Null);
            let found = events["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["involvedObject"]["name"] == "isthmus-taken"
                        && e["reason"] == "NameTakenByUnmanagedObject"
                })
            });
            (found, events.to_string())
        },
    )
    .await;
    assert!(
        east.metric("isthmus_federation_kubernetes_imports_names_taken", &[])
            .await
            >= 1.0
    );
    let after = k
        .get(&["service", "isthmus-taken", "-n", "shop"])
        .await
        .expect("foreign service still there");
    assert_eq!(
        after["metadata"]["resourceVersion"], foreign["metadata"]["resourceVersion"],
        "the foreign Service was modified: {after}"
    );
    assert!(after["metadata"]["labels"].is_null(), "{after}");
    assert!(
        k.get(&["serviceimport", "taken", "-n", "shop"])
            .await
            .is_some()
    );

    // Restart: the same target port and the same objects (uids).
    let before = objects(&k, "cart").await;
    east.restart().await;
    east.wait_connected(&["west"]).await;
    wait_route(&east, "shop/cart", true).await;
    // Let a few writer rounds pass (each view change and registration starts one).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = objects(&k, "cart").await;
    complete(&again, 8080).unwrap_or_else(|e| east.fail(&e));
    assert_eq!(uid(&again.import), uid(&before.import));
    assert_eq!(uid(&again.service), uid(&before.service));
    assert_eq!(uid(&again.slice), uid(&before.slice));
    assert_eq!(
        again.service.as_ref().expect("svc")["spec"]["ports"][0]["targetPort"],
        target
    );

    // status.clusters and the slice follow verdicts and leases within 2 s.
    let mut gw = gw;
    let with_cart_endpoints = |endpoints: bool| {
        let c = west_catalog(true);
        if endpoints {
            c
        } else {
            c.replace("endpoints: [{address: \"10.1.2.3:8080\"}]", "endpoints: []")
        }
    };
    follow::writer_follows_verdicts_and_leases(
        &west,
        &east,
        &k,
        &with_cart_endpoints,
        west_gw,
        &mut gw,
    )
    .await;

    // Withdrawn in west: within 2 s of the route ending, all three are gone, and so are the
    // gateways' listeners on its target ports.
    west.write_catalog(&west_catalog(false));
    wait_route(&east, "shop/echo", false).await;
    gateway_side::listener_gone(&east, echo_any).await;
    gateway_side::listener_gone(&east, echo_west).await;
    wait_route(&east, "shop/cart", false).await;
    let started = Instant::now();
    loop {
        let o = objects(&k, "cart").await;
        if o.import.is_none() && o.service.is_none() && o.slice.is_none() {
            break;
        }
        if started.elapsed() > DEADLINE {
            east.fail(&format!(
                "still there {:?} after the route ended: {o:?}",
                started.elapsed()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "cart's objects gone {:?} after its route",
        started.elapsed()
    );
}
