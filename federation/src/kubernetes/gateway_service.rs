//! The gateways' `LoadBalancer` Service (`kubernetes.gateway_service`, in the namespace of the
//! federation's kubeconfig context or service account): a kube-rs watcher on that one Service
//! (a field selector on its name; never polling) turns its `status.loadBalancer.ingress[0]` and
//! ports into the [`LbAddress`] that [`crate::node::gateways`] advertises for gateways that
//! registered without an address of their own. Only the federation reads it: it has the
//! Kubernetes client and the RBAC (`get`, `list`, `watch` on services); gateways get no token.
//!
//! A failing watch (403, the API server down, 410 Gone) is logged once per distinct problem and
//! retried with backoff; the last known address stays advertised meanwhile (an API outage is
//! not a load-balancer change).
//!
//! Must not: write anything to the API server.

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::KubernetesConfig;
use super::exports::watch::{RETRY_MAX, RETRY_MIN, describe};
use crate::node::gateways::{LbAddress, LbPort};

/// What `service` (`<ns>/<name>` in messages) says about the address peers dial. Pure.
pub fn lb_address(shown: &str, service: Option<&Service>) -> LbAddress {
    let Some(svc) = service else {
        return LbAddress::Pending(format!(
            "Service {shown} (kubernetes.gateway_service) does not exist: create the gateways' \
             LoadBalancer Service, or set listen.inbound.advertise on the gateways"
        ));
    };
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first());
    let Some(ingress) = ingress else {
        return LbAddress::Pending(format!(
            "Service {shown} has no load-balancer address yet (status.loadBalancer.ingress is \
             empty): peers are told of these gateways once it has one"
        ));
    };
    let host = match (&ingress.ip, &ingress.hostname) {
        (Some(ip), _) => match ip.parse::<std::net::IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => ip.to_string(),
            _ => {
                return LbAddress::Pending(format!(
                    "Service {shown}: status.loadBalancer.ingress[0].ip {ip:?} is not an address \
                     peers can dial"
                ));
            }
        },
        // A load balancer known by name (e.g. AWS's): peers dial the name.
        (None, Some(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if crate::config::advertise_problem(&format!("{name}:1")).is_some() {
                return LbAddress::Pending(format!(
                    "Service {shown}: status.loadBalancer.ingress[0].hostname {name:?} is not a \
                     DNS name"
                ));
            }
            name
        }
        (None, None) => {
            return LbAddress::Pending(format!(
                "Service {shown}: status.loadBalancer.ingress[0] has neither ip nor hostname"
            ));
        }
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
            let target = match &p.target_port {
                None => Some(port),
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(s)) => s.parse().ok(),
            };
            Some(LbPort { port, target })
        })
        .collect();
    LbAddress::Ready {
        service: shown.to_string(),
        host,
        ports,
    }
}

/// Starts following Service `name`; the receiver holds the current address.
pub fn start(cfg: KubernetesConfig, name: String) -> (watch::Receiver<LbAddress>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(LbAddress::Pending(format!(
        "Service {name} (kubernetes.gateway_service) not read yet"
    )));
    let task = tokio::spawn(follow(cfg, name, tx));
    (rx, task)
}

fn publish(tx: &watch::Sender<LbAddress>, next: LbAddress) {
    tx.send_if_modified(|cur| {
        if *cur == next {
            return false;
        }
        match &next {
            LbAddress::Ready { service, host, .. } => {
                tracing::info!(service = %service, address = %host, "gateway Service's load-balancer address")
            }
            LbAddress::Pending(why) => tracing::warn!("gateways without an advertised address wait: {why}"),
            LbAddress::Unconfigured => {}
        }
        *cur = next;
        true
    });
}

async fn follow(cfg: KubernetesConfig, name: String, tx: watch::Sender<LbAddress>) {
    let mut backoff = RETRY_MIN;
    let client = loop {
        match super::client::client(&cfg).await {
            Ok(c) => break c,
            Err(e) => {
                publish(&tx, LbAddress::Pending(e.to_string()));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    };
    let ns = client.default_namespace().to_string();
    let shown = format!("{ns}/{name}");
    let api: Api<Service> = Api::namespaced(client, &ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).boxed();
    let mut listing: Option<Service> = None;
    let mut problem: Option<String> = None;
    let mut known = false;
    backoff = RETRY_MIN;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = tx.closed() => return,
        };
        let event = match item {
            None => return,
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                let text = describe(&e, "services", &shown);
                if problem.as_deref() != Some(text.as_str()) {
                    tracing::warn!(
                        retry_in_ms = backoff.as_millis() as u64,
                        "kubernetes: {text}"
                    );
                    problem = Some(text.clone());
                }
                if !known {
                    publish(&tx, LbAddress::Pending(text));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
                continue;
            }
        };
        backoff = RETRY_MIN;
        if let Some(p) = problem.take() {
            tracing::info!(was = %p, "kubernetes: gateway Service watch recovered");
        }
        let current = match event {
            watcher::Event::Init => {
                listing = None;
                continue;
            }
            watcher::Event::InitApply(svc) => {
                listing = Some(svc);
                continue;
            }
            watcher::Event::InitDone => listing.take(),
            watcher::Event::Apply(svc) => Some(svc),
            watcher::Event::Delete(_) => None,
        };
        known = true;
        publish(&tx, lb_address(&shown, current.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("a Service")
    }

    #[test]
    fn the_address_comes_from_the_first_ingress_ip_and_the_tcp_ports() {
        let s = svc(json!({
            "metadata": {"name": "isthmus-gateway"},
            "spec": {"type": "LoadBalancer", "ports": [
                {"port": 443, "targetPort": 15008},
                {"port": 53, "protocol": "UDP", "targetPort": 5353},
                {"port": 80, "targetPort": "proxy"},
                {"port": 8443},
            ]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"ip": "203.0.113.8"}]}},
        }));
        let LbAddress::Ready { host, ports, .. } = lb_address("ns/isthmus-gateway", Some(&s))
        else {
            panic!("ready")
        };
        assert_eq!(host, "203.0.113.7");
        assert_eq!(
            ports,
            [
                LbPort {
                    port: 443,
                    target: Some(15008)
                },
                LbPort {
                    port: 80,
                    target: None
                },
                LbPort {
                    port: 8443,
                    target: Some(8443)
                },
            ]
        );
    }

    #[test]
    fn a_load_balancer_known_by_name_is_dialled_by_name() {
        let s = svc(json!({
            "metadata": {"name": "g"},
            "spec": {"ports": [{"port": 443, "targetPort": 15008}]},
            "status": {"loadBalancer": {"ingress": [{"hostname": "A1B2.elb.Example.com."}]}},
        }));
        let LbAddress::Ready { host, .. } = lb_address("ns/g", Some(&s)) else {
            panic!("ready")
        };
        assert_eq!(host, "a1b2.elb.example.com");
    }

    #[test]
    fn no_service_no_ingress_or_a_bad_address_say_what_to_do() {
        let lb = |ingress: serde_json::Value| {
            Some(
                json!({"metadata": {"name": "g"}, "status": {"loadBalancer": {"ingress": [ingress]}}}),
            )
        };
        let cases = [
            (None, "does not exist"),
            (
                Some(json!({"metadata": {"name": "g"}, "status": {"loadBalancer": {}}})),
                "no load-balancer address yet",
            ),
            (lb(json!({"hostname": "not a name!"})), "is not a DNS name"),
            (lb(json!({"ip": "nope"})), "not an address peers can dial"),
            (
                lb(json!({"ip": "0.0.0.0"})),
                "not an address peers can dial",
            ),
            (lb(json!({})), "neither ip nor hostname"),
        ];
        for (v, want) in cases {
            let s = v.map(svc);
            match lb_address("ns/g", s.as_ref()) {
                LbAddress::Pending(why) => assert!(why.contains(want), "{why}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}
