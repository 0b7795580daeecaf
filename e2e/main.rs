//! Multi-process end-to-end scenarios: the real `isthmus` binary as separate federation
//! processes on loopback, a real etcd, real TLS clients (a VM registering with a workload
//! certificate, hand-driven hostile peers). One test binary; each scenario is a `#[tokio::test]`.
//!
//! A scenario that needs etcd fails loudly when the `etcd` binary is missing (install
//! `etcd-server` or set `ISTHMUS_ETCD_BIN`). When a scenario fails, the log tail of every
//! federation it started is printed; `ISTHMUS_E2E_LOG` sets their log filter (default `info`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod catalog_apply;
mod catalog_sync;
mod cli;
mod crash_recovery;
mod dashboard;
mod dns;
mod dns_unbound_vips;
mod failover;
mod gateway_drain;
mod gateway_fairness;
mod gateway_protocols;
mod gateway_security;
mod gateway_traffic;
mod harness;
mod hostile_peers;
mod kube_standin;
mod kubernetes_api_down;
mod kubernetes_crds;
mod kubernetes_exports;
mod kubernetes_imports;
mod kubernetes_manifests;
mod operator_cli;
mod otel_traces;
mod policy_follows_open_streams;
mod prometheus;
mod prometheus_rules;
mod registry_lease;
mod root_rotation;
mod sample_backends;
mod store_failover;
mod traffic_policy;
mod vip_exhaustion;
