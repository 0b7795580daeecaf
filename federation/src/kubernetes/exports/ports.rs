//! Service ports as Isthmus exports them: `appProtocol` to [`Protocol`], TCP ports only.
//!
//! Must not: look at endpoints (see [`super::endpoints`]).

use k8s_openapi::api::core::v1::ServicePort as KubePort;

use crate::model::{Protocol, ServicePort};

/// The protocol Isthmus serves a port with, from its `appProtocol`: `http`; `kubernetes.io/h2c`,
/// `h2c` or `http2` (HTTP/2 without TLS); `grpc`; anything else (none, `tcp`, `https`,
/// `kubernetes.io/ws`, a database protocol...) is carried as raw TCP bytes.
pub fn protocol_of(app_protocol: Option<&str>) -> Protocol {
    let Some(p) = app_protocol else {
        return Protocol::Tcp;
    };
    match p.trim().to_ascii_lowercase().as_str() {
        "http" => Protocol::Http,
        "kubernetes.io/h2c" | "h2c" | "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        _ => Protocol::Tcp,
    }
}

/// The ports of a Service that Isthmus can carry, and a note for each it cannot.
#[derive(Debug, Default)]
pub struct Ports {
    pub ports: Vec<ServicePort>,
    /// Each exported port's name as the Service (and its EndpointSlices) spell it: `""` for the
    /// unnamed port of a one-port Service.
    pub names: Vec<String>,
    pub skipped: Vec<String>,
}

/// The Service's TCP ports (UDP and SCTP are skipped: gateways carry TCP only), in its order.
pub fn service_ports(ports: &[KubePort]) -> Ports {
    let mut out = Ports::default();
    for p in ports {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let label = p
            .name
            .as_deref()
            .map_or_else(|| p.port.to_string(), |n| format!("{n} ({})", p.port));
        if !proto.eq_ignore_ascii_case("TCP") {
            out.skipped.push(format!(
                "port {label} is {proto}: Isthmus carries TCP only, so it is not exported"
            ));
            continue;
        }
        let Ok(number) = u16::try_from(p.port) else {
            out.skipped
                .push(format!("port {label} is not a port number"));
            continue;
        };
        out.ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: number,
            protocol: protocol_of(p.app_protocol.as_deref()),
        });
        out.names.push(p.name.clone().unwrap_or_default());
    }
    out
}
