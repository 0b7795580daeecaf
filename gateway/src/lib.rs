//! Isthmus east-west gateway: the data plane. It subscribes to its federation's gateway config
//! stream for routes, VIPs, bundles and policies, and carries traffic between clusters over
//! pooled mTLS HTTP/2: local clients reach the outbound side ([`outbound`]) on a service's VIP
//! or the proxy port; peer gateways reach the inbound side ([`inbound`]), which forwards to
//! local endpoints only.
//!
//! It depends on `isthmus-federation` with default features off: it uses the model, the wire API
//! and the SPIFFE verifiers, never a store backend. The control plane reaches the request path
//! only through a `watch::Receiver<Arc<table::Snapshot>>`.

pub mod accesslog;
pub mod body;
pub mod cancel;
pub mod coalesce;
pub mod config;
pub mod control;
pub mod down;
pub mod explain;
pub mod fair;
pub mod h1guard;
pub mod headers;
pub mod health;
pub mod inbound;
pub mod latency;
pub mod lb;
pub mod linewriter;
pub mod live;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod pool;
pub mod probe;
pub mod refusals;
pub mod retry;
pub mod run;
pub mod serve;
pub mod sync;
pub mod table;
pub mod trace;
pub mod traffic;
pub mod tunnel;

pub use config::GatewayConfig;
pub use run::{Bound, Running, StartError, start};
