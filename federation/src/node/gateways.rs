//! This cluster's gateway set: the leased registrations under `gateways/`, and the address each
//! is advertised to peers at — its own (`listen.inbound.advertise`), or, for a gateway on
//! Kubernetes that registered without one, the load-balancer address of the gateways' Service
//! (`kubernetes.gateway_service`, followed by [`crate::kubernetes::gateway_service`]).
//!
//! Registrations are keyed per instance (`gateways/<name>/<pod IP>` on Kubernetes), so the
//! replicas of one Deployment, which share one bootstrap Secret and so one name and identity,
//! are each listed in the derived Services' EndpointSlices; peers see one address per name and
//! address.
//!
//! Must not: talk to Kubernetes (the address arrives on a `watch` channel) or to peers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::gwapi::service::GatewayRegistration;
use crate::node::{Node, keys};
use crate::peering::update::GatewayAddr;
use crate::store::{Store, WatchEvent};

/// The gateways' Service's load-balancer address, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbAddress {
    /// No `kubernetes.gateway_service`: gateways advertise their own address.
    Unconfigured,
    /// Configured, but no usable address (yet): why, for the operator.
    Pending(String),
    /// `status.loadBalancer.ingress[0]` (its `ip`, else its `hostname`) and the Service's ports.
    Ready {
        service: String,
        host: String,
        ports: Vec<LbPort>,
    },
}

/// One port of the gateways' Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbPort {
    pub port: u16,
    /// The numeric `targetPort` (the port itself when none is set); `None` for a named one.
    pub target: Option<u16>,
}

/// The address peers dial for a gateway whose inbound listener is bound to `inbound_port`:
/// the load balancer's IP or host name on the Service port whose targetPort is that port (or
/// the Service's only port, when its targetPort is a name this federation cannot resolve).
pub fn lb_address(lb: &LbAddress, inbound_port: u16) -> Result<String, String> {
    match lb {
        LbAddress::Unconfigured => Err(
            "registered without an advertised address, and kubernetes.gateway_service is not \
             set: set listen.inbound.advertise on the gateway or kubernetes.gateway_service here"
                .into(),
        ),
        LbAddress::Pending(why) => Err(why.clone()),
        LbAddress::Ready {
            service,
            host,
            ports,
        } => {
            let by_target = ports.iter().find(|p| p.target == Some(inbound_port));
            let only_named = match ports.as_slice() {
                [only] if only.target.is_none() => Some(only),
                _ => None,
            };
            by_target
                .or(only_named)
                .map(|p| match host.parse::<IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, p.port).to_string(),
                    Err(_) => format!("{host}:{}", p.port),
                })
                .ok_or_else(|| {
                    format!(
                        "Service {service} has no port whose targetPort is the gateway's inbound \
                         port {inbound_port}: add one (or set listen.inbound.advertise)"
                    )
                })
        }
    }
}

/// The gateway set read from the registrations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GatewaySet {
    /// What peers see: one entry per name and address, sorted.
    pub advertised: Vec<GatewayAddr>,
    /// Registered gateways that are not advertised: name → why.
    pub pending: BTreeMap<String, String>,
    /// Every registered gateway name.
    pub registered: BTreeSet<String>,
}

/// The name in a registration key: `gateways/<name>` or `gateways/<name>/<instance>`.
fn name_of(key: &str) -> &str {
    let rest = key.strip_prefix(keys::GATEWAYS).unwrap_or(key);
    rest.split_once('/').map_or(rest, |(name, _)| name)
}

/// Reads registrations (`gateways/...` keys and their values) against the load balancer's
/// address. Pure.
pub fn read(items: &[(String, Vec<u8>)], lb: &LbAddress) -> GatewaySet {
    let mut set = GatewaySet::default();
    let mut advertised = BTreeSet::new();
    for (key, value) in items {
        let Ok(reg) = serde_json::from_slice::<GatewayRegistration>(value) else {
            continue;
        };
        let name = name_of(key).to_string();
        let address = match (reg.address, reg.inbound_port) {
            (Some(a), _) => Ok(a.to_string()),
            (None, Some(port)) => lb_address(lb, port),
            (None, None) => Err("registered without an address".to_string()),
        };
        match address {
            Ok(address) => {
                advertised.insert(GatewayAddr {
                    name: name.clone(),
                    address,
                    zone: reg.zone.and_then(|z| z.parse().ok()),
                });
            }
            Err(why) => {
                set.pending.insert(name.clone(), why);
            }
        }
        set.registered.insert(name);
    }
    // A name advertised by one instance is advertised (its replicas' reasons are moot).
    for g in &advertised {
        set.pending.remove(&g.name);
    }
    set.advertised = advertised.into_iter().collect();
    set
}

/// The load balancer's address to follow: watched (by the returned task) when
/// `kubernetes.gateway_service` is set, else [`LbAddress::Unconfigured`] for good.
pub fn lb_source(
    cfg: &crate::config::FederationConfig,
) -> (
    watch::Receiver<LbAddress>,
    Option<tokio::task::JoinHandle<()>>,
) {
    #[cfg(feature = "kubernetes")]
    if let Some((k, service)) = cfg
        .kubernetes
        .as_ref()
        .and_then(|k| Some((k, k.gateway_service.clone()?)))
    {
        let (rx, task) = crate::kubernetes::gateway_service::start(k.clone(), service);
        return (rx, Some(task));
    }
    #[cfg(not(feature = "kubernetes"))]
    let _ = cfg;
    (watch::channel(LbAddress::Unconfigured).1, None)
}

/// Follows gateway registrations (leases expire in the store) and the load balancer's address
/// into the local gateway set.
pub async fn follow(node: Arc<Node>, mut lb: watch::Receiver<LbAddress>) {
    let mut stop = node.shutdown.clone();
    let mut lb_open = true;
    loop {
        let revision = match node.store.revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "store unavailable; retrying gateway watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(mut events) = node.store.watch(keys::GATEWAYS, revision).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut items: BTreeMap<String, Vec<u8>> = match node.store.list(keys::GATEWAYS).await {
            Ok(list) => list.into_iter().collect(),
            Err(_) => continue,
        };
        let now = lb.borrow_and_update().clone();
        apply(&node, &items, &now).await;
        loop {
            let lb_changed = async {
                if !lb_open || lb.changed().await.is_err() {
                    // The address never changes again: wait for registrations alone.
                    lb_open = false;
                    std::future::pending::<()>().await;
                }
            };
            let ev = tokio::select! {
                ev = events.recv() => Some(ev),
                () = lb_changed => None,
                _ = stop.changed() => return,
            };
            match ev {
                None => {}
                Some(None) => break,
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "gateway watch failed; restarting it");
                    break;
                }
                Some(Some(Ok(WatchEvent::Put { key, value, .. }))) => {
                    items.insert(key, value);
                }
                Some(Some(Ok(WatchEvent::Delete { key, .. }))) => {
                    items.remove(&key);
                }
                Some(Some(Ok(WatchEvent::Reset { items: all, .. }))) => {
                    items = all.into_iter().collect();
                }
            }
            let now = lb.borrow_and_update().clone();
            apply(&node, &items, &now).await;
        }
    }
}

async fn apply(node: &Arc<Node>, items: &BTreeMap<String, Vec<u8>>, lb: &LbAddress) {
    let list: Vec<(String, Vec<u8>)> = items.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let set = read(&list, lb);
    {
        let mut infos = node.gateways.lock().unwrap_or_else(|p| p.into_inner());
        infos.retain(|name, _| set.registered.contains(name));
        for name in &set.registered {
            let info = infos.entry(name.clone()).or_default();
            let g = set.advertised.iter().find(|g| &g.name == name);
            info.registered = true;
            info.address = g.map(|g| g.address.to_string());
            info.zone = g.and_then(|g| g.zone.as_ref().map(ToString::to_string));
            let why = set.pending.get(name).cloned();
            if why != info.not_advertised {
                match &why {
                    Some(why) => tracing::warn!(gateway = %name, reason = %why,
                        "gateway registered but not advertised to peers"),
                    None if info.not_advertised.is_some() => tracing::info!(gateway = %name,
                        address = info.address.as_deref().unwrap_or(""), "gateway advertised to peers"),
                    None => {}
                }
                info.not_advertised = why;
            }
        }
    }
    if let Err(e) = node
        .bump_local(|s| s.local.set_gateways(set.advertised))
        .await
    {
        tracing::error!(error = %e, "publishing the gateway set failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(address: Option<&str>, inbound: Option<u16>, local: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&GatewayRegistration {
            address: address.map(|a| a.parse().expect("addr")),
            zone: None,
            local: local.map(|l| l.parse().expect("ip")),
            inbound_port: inbound,
        })
        .expect("json")
    }

    fn lb(ip: &str, ports: &[(u16, Option<u16>)]) -> LbAddress {
        LbAddress::Ready {
            service: "isthmus-gateway".into(),
            host: ip.into(),
            ports: ports
                .iter()
                .map(|(port, target)| LbPort {
                    port: *port,
                    target: *target,
                })
                .collect(),
        }
    }

    #[test]
    fn the_load_balancer_port_is_the_one_targeting_the_inbound_port() {
        let two = lb("203.0.113.7", &[(443, Some(15008)), (80, Some(15001))]);
        assert_eq!(lb_address(&two, 15008), Ok("203.0.113.7:443".to_string()));
        let e = lb_address(&two, 15009).expect_err("no such target");
        assert!(e.contains("targetPort") && e.contains("15009"), "{e}");
        // One named targetPort: the only port.
        let named = lb("203.0.113.7", &[(15008, None)]);
        assert_eq!(
            lb_address(&named, 4000),
            Ok("203.0.113.7:15008".to_string())
        );
        let two_named = lb("203.0.113.7", &[(1, None), (2, None)]);
        // A load balancer known by name (AWS's), and an IPv6 one.
        let named_lb = lb("a1b2.elb.example.com", &[(443, Some(15008))]);
        assert_eq!(
            lb_address(&named_lb, 15008),
            Ok("a1b2.elb.example.com:443".to_string())
        );
        assert_eq!(
            lb_address(&lb("2001:db8::7", &[(443, Some(15008))]), 15008),
            Ok("[2001:db8::7]:443".to_string())
        );
        assert!(lb_address(&two_named, 4000).is_err());
        let pending = LbAddress::Pending("no ingress yet".into());
        assert_eq!(lb_address(&pending, 15008), Err("no ingress yet".into()));
        let e = lb_address(&LbAddress::Unconfigured, 15008).expect_err("unconfigured");
        assert!(e.contains("kubernetes.gateway_service"), "{e}");
    }

    #[test]
    fn replicas_are_one_gateway_to_peers_and_wait_for_the_load_balancer() {
        let items = vec![
            (
                "gateways/gw/10.0.0.1".to_string(),
                reg(None, Some(15008), Some("10.0.0.1")),
            ),
            (
                "gateways/gw/10.0.0.2".to_string(),
                reg(None, Some(15008), Some("10.0.0.2")),
            ),
            (
                "gateways/vm".to_string(),
                reg(Some("192.0.2.1:15443"), None, None),
            ),
            ("gateways/broken".to_string(), b"not json".to_vec()),
        ];
        let waiting = read(&items, &LbAddress::Pending("no ingress yet".into()));
        assert_eq!(
            waiting
                .advertised
                .iter()
                .map(|g| (g.name.as_str(), g.address.to_string()))
                .collect::<Vec<_>>(),
            [("vm", "192.0.2.1:15443".to_string())]
        );
        assert_eq!(
            waiting.pending.into_iter().collect::<Vec<_>>(),
            [("gw".to_string(), "no ingress yet".to_string())]
        );
        assert_eq!(
            waiting.registered.into_iter().collect::<Vec<_>>(),
            ["gw", "vm"]
        );
        let ready = read(&items, &lb("203.0.113.7", &[(443, Some(15008))]));
        assert_eq!(
            ready
                .advertised
                .iter()
                .map(|g| (g.name.as_str(), g.address.to_string()))
                .collect::<Vec<_>>(),
            [
                ("gw", "203.0.113.7:443".to_string()),
                ("vm", "192.0.2.1:15443".to_string())
            ]
        );
        assert!(ready.pending.is_empty());
    }
}
