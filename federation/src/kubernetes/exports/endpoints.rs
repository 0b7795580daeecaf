//! Endpoints of an exported Service, from its EndpointSlices.
//!
//! Rules (those of kube-proxy): `ready` endpoints serve; `serving && terminating` endpoints
//! serve only while no endpoint of the Service is ready (a rolling restart's last pods keep
//! answering instead of the Service going dark); every other endpoint is listed as not ready.
//! The port of an endpoint is the EndpointSlice port named like the Service's first exported
//! port: the real target port (a named `targetPort` is resolved by Kubernetes into the slice).
//!
//! Must not: decide whether the Service may be exported (see [`super::build`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};

use crate::model::service::default_weight;
use crate::model::{Endpoint, Zone};

/// Endpoints and what was left out (and why), for the ServiceExport's `Valid` message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub list: Vec<Endpoint>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    NotReady,
    /// Serving while terminating: used only while nothing is ready.
    Draining,
    Ready,
}

fn slice_port<'a>(ports: &'a [EndpointPort], name: &str) -> Option<&'a EndpointPort> {
    ports.iter().find(|p| {
        p.name.as_deref().unwrap_or("") == name
            && p.protocol
                .as_deref()
                .unwrap_or("TCP")
                .eq_ignore_ascii_case("TCP")
    })
}

/// The endpoints of the Service whose exported ports are named `port_names` (in the Service's
/// order; the first decides the endpoint port), from `slices` (those labelled with its name).
pub fn endpoints(port_names: &[String], slices: &[&EndpointSlice]) -> Endpoints {
    let mut notes = Vec::new();
    let Some(first) = port_names.first() else {
        return Endpoints::default();
    };
    let shown = |n: &str| {
        if n.is_empty() {
            "(unnamed)".to_owned()
        } else {
            n.to_owned()
        }
    };
    let mut sorted: Vec<&EndpointSlice> = slices.to_vec();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut found: BTreeMap<SocketAddr, (State, Option<Zone>)> = BTreeMap::new();
    for slice in sorted {
        let slice_name = slice.metadata.name.as_deref().unwrap_or("?");
        if slice.address_type == "FQDN" {
            notes.push(format!(
                "EndpointSlice {slice_name} holds FQDN addresses, which Isthmus cannot forward to"
            ));
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let Some(target) = slice_port(ports, first).and_then(|p| p.port) else {
            if !slice.endpoints.is_empty() {
                notes.push(format!(
                    "EndpointSlice {slice_name} has no TCP port named {}; its endpoints are left out",
                    shown(first)
                ));
            }
            continue;
        };
        let Ok(target) = u16::try_from(target) else {
            notes.push(format!(
                "EndpointSlice {slice_name}: port {target} is out of range"
            ));
            continue;
        };
        for other in &port_names[1..] {
            if let Some(p) = slice_port(ports, other).and_then(|p| p.port)
                && p != i32::from(target)
            {
                notes.push(format!(
                    "port {} targets {p} but Isthmus forwards every port of a service to one \
                     port per endpoint ({target}, the target of port {})",
                    shown(other),
                    shown(first)
                ));
            }
        }
        for ep in &slice.endpoints {
            // Addresses are fungible (Kubernetes): the first is the endpoint's.
            let Some(text) = ep.addresses.first() else {
                continue;
            };
            let Ok(ip) = text.parse::<IpAddr>() else {
                notes.push(format!(
                    "EndpointSlice {slice_name}: {text:?} is not an IP address; left out"
                ));
                continue;
            };
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let state = if ready {
                State::Ready
            } else if serving && terminating {
                State::Draining
            } else {
                State::NotReady
            };
            let zone = ep.zone.as_deref().and_then(|z| {
                let z = z.to_ascii_lowercase();
                match Zone::new(z) {
                    Ok(z) => Some(z),
                    Err(e) => {
                        notes.push(format!(
                            "endpoint {ip}: zone {:?} {}; counted in this cluster's zone",
                            e.value, e.reason
                        ));
                        None
                    }
                }
            });
            // An endpoint listed twice (slices being rebalanced) counts once, at its best.
            let entry = found
                .entry(SocketAddr::new(ip, target))
                .or_insert((state, zone.clone()));
            if state > entry.0 {
                *entry = (state, zone);
            }
        }
    }
    let any_ready = found.values().any(|(s, _)| *s == State::Ready);
    let serving = if any_ready {
        State::Ready
    } else {
        State::Draining
    };
    notes.dedup();
    Endpoints {
        list: found
            .into_iter()
            .map(|(address, (state, zone))| Endpoint {
                address,
                ready: state == serving,
                zone,
                weight: default_weight(),
            })
            .collect(),
        notes,
    }
}
