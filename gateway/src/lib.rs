//! Isthmus east-west gateway: the data plane. It subscribes to its federation's gateway config
//! stream (`isthmus_federation::proto::gateway_control_client`) for routes, VIPs, bundles and
//! policies, and carries traffic between clusters over pooled mTLS HTTP/2.
//!
//! It depends on `isthmus-federation` with default features off: it uses the model, the wire API
//! and the SPIFFE verifiers, never a store backend.

pub mod control;
