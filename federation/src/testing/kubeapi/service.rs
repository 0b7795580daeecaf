//! Service semantics: defaults (type, sessionAffinity, port protocol and targetPort),
//! validation of ports, ClusterIP allocation from 10.96.0.0/16 (`None` = headless,
//! `ExternalName` gets none), NodePorts from 30000-32767 for NodePort/LoadBalancer, and the
//! immutability of an allocated ClusterIP (an update that omits it keeps it, one that changes
//! it is refused with 422, as the real server does).
//!
//! Must not: touch anything but `spec` of Service objects and the [`Allocations`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::status::{Cause, invalid_value, required};

/// The service CIDR: 10.96.0.0/16.
const CIDR_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const CIDR_SIZE: u32 = 1 << 16;
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Addresses and node ports in use.
#[derive(Debug, Default)]
pub struct Allocations {
    ips: BTreeSet<u32>,
    node_ports: BTreeSet<u16>,
    next_ip: u32,
    next_port: u16,
}

impl Allocations {
    /// Frees what a deleted Service held.
    pub fn release(&mut self, svc: &Value) {
        if let Some(ip) = cluster_ip(svc).and_then(|ip| ip.parse::<Ipv4Addr>().ok()) {
            self.ips.remove(&u32::from(ip));
        }
        for port in node_ports(svc) {
            self.node_ports.remove(&port);
        }
    }

    fn take_ip(&mut self, wanted: Option<&str>) -> Result<String, Cause> {
        if let Some(wanted) = wanted {
            let parsed = wanted.parse::<Ipv4Addr>().map(u32::from);
            let in_range = parsed
                .as_ref()
                .is_ok_and(|ip| *ip > CIDR_BASE && *ip < CIDR_BASE + CIDR_SIZE - 1);
            let Ok(ip) = parsed else {
                return Err(invalid_value(
                    "spec.clusterIPs[0]",
                    &json!(wanted),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ));
            };
            if !in_range {
                return Err(invalid_value(
                    "spec.clusterIPs[0]",
                    &json!(wanted),
                    &format!(
                        "failed to allocate IP {wanted}: the provided IP ({wanted}) is not in the valid range. The range of valid IPs is 10.96.0.0/16"
                    ),
                ));
            }
            if !self.ips.insert(ip) {
                return Err(invalid_value(
                    "spec.clusterIPs[0]",
                    &json!(wanted),
                    &format!("failed to allocate IP {wanted}: provided IP is already allocated"),
                ));
            }
            return Ok(wanted.to_string());
        }
        // 10.96.0.1 is the `kubernetes` Service's; start after the first few like a fresh cluster.
        for _ in 0..CIDR_SIZE {
            self.next_ip = (self.next_ip % (CIDR_SIZE - 12)) + 1;
            let ip = CIDR_BASE + 10 + self.next_ip;
            if self.ips.insert(ip) {
                return Ok(Ipv4Addr::from(ip).to_string());
            }
        }
        Err(invalid_value(
            "spec.clusterIPs",
            &json!([]),
            "failed to allocate a serviceIP: range is full",
        ))
    }

    fn take_node_port(&mut self, wanted: Option<u64>, field: &str) -> Result<u16, Cause> {
        if let Some(wanted) = wanted {
            let port = u16::try_from(wanted)
                .ok()
                .filter(|p| NODE_PORTS.contains(p));
            let Some(port) = port else {
                return Err(invalid_value(
                    field,
                    &json!(wanted),
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            };
            if !self.node_ports.insert(port) {
                return Err(invalid_value(
                    field,
                    &json!(wanted),
                    "provided port is already allocated",
                ));
            }
            return Ok(port);
        }
        for _ in NODE_PORTS {
            self.next_port =
                if NODE_PORTS.contains(&self.next_port) && self.next_port < *NODE_PORTS.end() {
                    self.next_port + 1
                } else {
                    *NODE_PORTS.start()
                };
            if self.node_ports.insert(self.next_port) {
                return Ok(self.next_port);
            }
        }
        Err(invalid_value(field, &json!(0), "range is full"))
    }
}

fn cluster_ip(svc: &Value) -> Option<&str> {
    svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

fn node_ports(svc: &Value) -> Vec<u16> {
    svc["spec"]["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn svc_type(svc: &Value) -> &str {
    svc["spec"]["type"].as_str().unwrap_or("ClusterIP")
}

/// Defaults the real server fills in.
pub fn defaults(svc: &mut Value) {
    if !svc["spec"].is_object() {
        svc["spec"] = json!({});
    }
    let spec = &mut svc["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    if spec["type"] == "ExternalName" {
        return;
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    if spec["internalTrafficPolicy"].is_null() {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for port in ports.iter_mut().filter(|p| p.is_object()) {
            if port["protocol"].is_null() {
                port["protocol"] = json!("TCP");
            }
            if port["targetPort"].is_null() && !port["port"].is_null() {
                port["targetPort"] = port["port"].clone();
            }
        }
    }
}

/// Field checks of a Service (422 causes).
pub fn validate(svc: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let kind = svc_type(svc);
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(invalid_value(
            "spec.type",
            &json!(kind),
            "supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ));
    }
    let headless = svc["spec"]["clusterIP"] == "None";
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && !headless {
        causes.push(required("spec.ports"));
    }
    let mut seen = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        match port["port"].as_u64() {
            Some(p) if (1..=65535).contains(&p) => {}
            Some(_) => causes.push(invalid_value(
                &format!("{field}.port"),
                &port["port"],
                "must be between 1 and 65535, inclusive",
            )),
            None => causes.push(required(&format!("{field}.port"))),
        }
        if ports.len() > 1 && port["name"].as_str().is_none_or(str::is_empty) {
            causes.push(required(&format!("{field}.name")));
        }
        let protocol = port["protocol"].as_str().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            causes.push(invalid_value(
                &format!("{field}.protocol"),
                &port["protocol"],
                "supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ));
        }
        let id = (port["port"].clone(), protocol.to_string());
        if seen.contains(&id) {
            causes.push((
                "FieldValueDuplicate",
                field,
                format!(
                    "Duplicate value: {}",
                    json!({"port": id.0, "protocol": id.1})
                ),
            ));
        } else {
            seen.push(id);
        }
    }
    causes
}

/// Allocates the ClusterIP (and node ports) of a created Service, or carries and checks those
/// of an updated one against `old`.
pub fn allocate(
    svc: &mut Value,
    old: Option<&Value>,
    alloc: &mut Allocations,
) -> Result<(), Cause> {
    let kind = svc_type(svc).to_string();
    let given = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    let old_ip = old.and_then(cluster_ip).map(str::to_string);
    if let Some(old_ip) = &old_ip {
        if kind == "ExternalName" {
            alloc.release(old.unwrap_or(&Value::Null));
            if let Some(spec) = svc["spec"].as_object_mut() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            return Ok(());
        }
        if given.is_empty() {
            svc["spec"]["clusterIP"] = json!(old_ip);
        } else if &given != old_ip {
            return Err(invalid_value(
                "spec.clusterIPs[0]",
                &json!([given]),
                "may not change once set",
            ));
        }
        svc["spec"]["clusterIPs"] = json!([old_ip]);
    } else if kind == "ExternalName" {
        return Ok(());
    } else if given == "None" {
        svc["spec"]["clusterIPs"] = json!(["None"]);
    } else {
        let ip = alloc.take_ip(Some(given.as_str()).filter(|g| !g.is_empty()))?;
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
    }
    svc["spec"]["ipFamilies"] = json!(["IPv4"]);
    if svc["spec"]["ipFamilyPolicy"].is_null() {
        svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    let needs_node_ports = matches!(kind.as_str(), "NodePort" | "LoadBalancer");
    let old_ports = old.map(node_ports).unwrap_or_default();
    let Some(ports) = svc["spec"]["ports"].as_array_mut() else {
        return Ok(());
    };
    for (i, port) in ports.iter_mut().enumerate() {
        let field = format!("spec.ports[{i}].nodePort");
        if !needs_node_ports {
            if let Some(p) = port.as_object_mut() {
                p.remove("nodePort");
            }
            continue;
        }
        let wanted = port["nodePort"].as_u64();
        // Kept across updates: same port number keeps its node port.
        let previous = old.and_then(|o| {
            o["spec"]["ports"]
                .as_array()?
                .iter()
                .find(|p| p["port"] == port["port"])?["nodePort"]
                .as_u64()
        });
        let chosen = match (wanted, previous) {
            (None, Some(prev)) => prev as u16,
            (Some(w), Some(prev)) if w == prev => prev as u16,
            (w, _) => alloc.take_node_port(w, &field)?,
        };
        port["nodePort"] = json!(chosen);
    }
    for gone in old_ports {
        if !node_ports(svc).contains(&gone) {
            alloc.node_ports.remove(&gone);
        }
    }
    Ok(())
}
