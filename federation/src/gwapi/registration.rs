//! What a gateway's registration holds and where it is stored: its advertised address (or, on
//! Kubernetes without one, the inbound port behind which the federation advertises its gateway
//! Service's load-balancer address), its zone and its pod IP; one record per instance when it
//! sent a pod IP, so replicas sharing one name do not overwrite each other.
//!
//! Must not: touch the store or the lease (the service does).

use std::net::{IpAddr, SocketAddr};

use tonic::Status;

use crate::node::keys;
use crate::proto::RegisterGatewayRequest;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayRegistration {
    /// What peers dial; `None` on Kubernetes when the gateway configured none: the federation
    /// advertises its gateway Service's load-balancer address instead (see `inbound_port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    pub zone: Option<String>,
    /// The gateway's own (pod) IP on Kubernetes, where derived Services' EndpointSlices point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    /// With no `address`: the port its inbound listener is bound to (the targetPort of the
    /// gateway Service's port that peers dial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_port: Option<u16>,
}

/// The store key of a registration: one per instance (pod IP) when it has one.
pub fn key(name: &str, local: Option<IpAddr>) -> String {
    match local {
        Some(ip) => keys::gateway_instance(name, ip),
        None => keys::gateway(name),
    }
}

/// What a registration advertises: its own address, or (Kubernetes, none given) the inbound
/// port, accepted only when this federation has a gateway Service (`from_service`) to read the
/// address from.
pub fn advertised(
    req: &RegisterGatewayRequest,
    from_service: bool,
) -> Result<(Option<SocketAddr>, Option<u16>), Status> {
    if !req.advertise_address.is_empty() {
        let address = req.advertise_address.parse().map_err(|_| {
            Status::invalid_argument("advertise_address must be ip:port (the address peers dial)")
        })?;
        return Ok((Some(address), None));
    }
    let port = u16::try_from(req.inbound_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Status::invalid_argument(
                "advertise_address is empty and inbound_port is not a port: set \
                 listen.inbound.advertise on the gateway",
            )
        })?;
    if !from_service {
        return Err(Status::invalid_argument(
            "no advertised address, and this federation has no kubernetes.gateway_service to \
             read one from: set listen.inbound.advertise on the gateway",
        ));
    }
    Ok((None, Some(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(advertise: &str, inbound_port: u32) -> RegisterGatewayRequest {
        RegisterGatewayRequest {
            name: "gw".into(),
            advertise_address: advertise.into(),
            inbound_port,
            ..Default::default()
        }
    }

    #[test]
    fn an_address_or_an_inbound_port_behind_the_gateway_service() {
        let own = advertised(&req("192.0.2.1:15443", 15008), true).expect("own address");
        assert_eq!(own, (Some("192.0.2.1:15443".parse().expect("a")), None));
        assert_eq!(
            advertised(&req("", 15008), true).expect("from the Service"),
            (None, Some(15008))
        );
        let cases = [
            (req("lb.example.com", 0), true, "must be ip:port"),
            (req("", 0), true, "inbound_port"),
            (req("", 70_000), true, "inbound_port"),
            (req("", 15008), false, "kubernetes.gateway_service"),
        ];
        for (r, from_service, want) in cases {
            let e = advertised(&r, from_service).expect_err(want);
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{}", e.message());
        }
    }

    #[test]
    fn replicas_with_pod_ips_have_keys_of_their_own() {
        let a = key("gw", Some("10.0.0.1".parse().expect("ip")));
        let b = key("gw", Some("10.0.0.2".parse().expect("ip")));
        assert_ne!(a, b);
        assert!(a.starts_with(&keys::gateway_instances("gw")), "{a}");
        assert_eq!(key("gw", None), keys::gateway("gw"));
        // An older record (an address, no inbound port) still reads.
        let old: GatewayRegistration =
            serde_json::from_str(r#"{"address":"192.0.2.1:15443","zone":null}"#).expect("old");
        assert_eq!(old.address, Some("192.0.2.1:15443".parse().expect("a")));
        assert_eq!(old.inbound_port, None);
    }
}
