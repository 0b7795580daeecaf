//! The workload registry: VMs and other hosts outside Kubernetes register endpoints of an
//! exported service under a lease and keep them alive with heartbeats (gRPC service `Registry`).
//!
//! Authorization ([`authorize`], a pure function): the caller's workload certificate must be of
//! *this* trust domain, `spiffe://<td>/ns/<ns>/sa/<sa>`, with `<ns>` the service's namespace and
//! `<sa>` one of the export's `registrants` in the current catalog file, and the service must be
//! exported there. The TLS layer verified the chain and put the ID in [`PeerInfo`]; this module
//! only decides what that ID may do.
//!
//! Persistence: each registration is a store key under its own lease (`registry_view.rs`), so
//! registrations survive a federation restart and still expire on time. Heartbeat = keep-alive
//! of that lease, allowed only to the identity that registered and only while the catalog still
//! allows it; Deregister = revoke.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::file::{CatalogFile, check_endpoint_address, check_weight};
use super::registry_view::{
    REGISTRY_PREFIX, Records, RegisteredEndpoints, Registration, parse_registration_id, run_view,
    store_key,
};
use crate::identity::{IdKind, PeerInfo, SpiffeId, TrustDomain};
use crate::model::service::{default_weight, key_from_proto};
use crate::model::{ServiceKey, Zone};
use crate::proto;
use crate::proto::registry_server::Registry;
use crate::store::{Guard, LeaseId, Op, Store, StoreError};

/// Lease and size limits of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Shortest TTL granted (requests below are raised to it). At least 1 s.
    pub min_ttl: Duration,
    /// Longest TTL granted (requests above are lowered to it).
    pub max_ttl: Duration,
    /// TTL of a request that names none (`ttl_seconds: 0`).
    pub default_ttl: Duration,
    /// Live registrations one service may have; beyond it Register fails.
    pub max_endpoints_per_service: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            default_ttl: Duration::from_secs(30),
            max_endpoints_per_service: 1024,
        }
    }
}

impl RegistryConfig {
    /// Checks `1 s <= min <= default <= max <= 1 day`. (The wire carries whole seconds; a
    /// fractional TTL is granted as configured and reported rounded down.)
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.min_ttl < Duration::from_secs(1) {
            return Err(RegistryError::Config(format!(
                "registry min_ttl is {:?}; it must be at least 1s (the wire carries whole seconds)",
                self.min_ttl
            )));
        }
        if !(self.min_ttl <= self.default_ttl && self.default_ttl <= self.max_ttl) {
            return Err(RegistryError::Config(format!(
                "registry TTLs must satisfy min ({:?}) <= default ({:?}) <= max ({:?})",
                self.min_ttl, self.default_ttl, self.max_ttl
            )));
        }
        if self.max_ttl > Duration::from_secs(86_400) {
            return Err(RegistryError::Config(
                "registry max TTL must be at most one day".into(),
            ));
        }
        if self.max_endpoints_per_service == 0 {
            return Err(RegistryError::Config(
                "registry max_endpoints_per_service must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The TTL granted for a request of `requested_secs` (0 = default).
    pub fn ttl_for(&self, requested_secs: u32) -> Duration {
        if requested_secs == 0 {
            self.default_ttl
        } else {
            Duration::from_secs(u64::from(requested_secs)).clamp(self.min_ttl, self.max_ttl)
        }
    }
}

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registry config: {0}")]
    Config(String),
    #[error("registry: {0}")]
    Store(#[from] StoreError),
}

/// Why a caller may not register for a service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "no client certificate: register with the workload certificate of a service account \
         allowed for the service"
    )]
    Unauthenticated,
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Status {
        match d {
            Denied::Unauthenticated => Status::unauthenticated(d.to_string()),
            Denied::PermissionDenied(reason) => Status::permission_denied(reason),
        }
    }
}

/// May `caller` register endpoints of `key`? Pure.
pub fn authorize(
    caller: Option<&SpiffeId>,
    our_td: &TrustDomain,
    key: &ServiceKey,
    catalog: &CatalogFile,
) -> Result<(), Denied> {
    let caller = caller.ok_or(Denied::Unauthenticated)?;
    if caller.trust_domain() != our_td {
        return Err(Denied::PermissionDenied(format!(
            "{caller} belongs to trust domain {}; this registry accepts only workloads of {our_td}",
            caller.trust_domain()
        )));
    }
    let IdKind::Workload {
        namespace,
        service_account,
    } = caller.kind()
    else {
        return Err(Denied::PermissionDenied(format!(
            "{caller} is not a workload identity; register with a certificate for \
             spiffe://{our_td}/ns/<namespace>/sa/<service-account>"
        )));
    };
    if namespace != key.namespace.as_str() {
        return Err(Denied::PermissionDenied(format!(
            "{caller} is in namespace {namespace}; only workloads of namespace {} may register \
             endpoints for {key}",
            key.namespace
        )));
    }
    let Some(export) = catalog.export(key) else {
        return Err(Denied::PermissionDenied(format!(
            "{key} is not exported; add it to the exports of the catalog file first"
        )));
    };
    if !export.allows_registrant(&service_account) {
        return Err(Denied::PermissionDenied(format!(
            "service account {service_account} may not register endpoints for {key}; add it to \
             the export's registrants in the catalog file"
        )));
    }
    Ok(())
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct RegistryStats {
    pub registrations: AtomicU64,
    pub heartbeats: AtomicU64,
    pub deregistrations: AtomicU64,
    /// Calls refused for identity or authorization reasons.
    pub denied: AtomicU64,
    /// Heartbeats for registrations that had already expired.
    pub expired: AtomicU64,
}

/// The `Registry` gRPC service. Serve it with `RegistryServer::new(service)` behind the TLS
/// accept stream that inserts [`PeerInfo`].
pub struct RegistryService<S: Store + Clone> {
    store: S,
    trust_domain: TrustDomain,
    catalog: watch::Receiver<Arc<CatalogFile>>,
    config: RegistryConfig,
    rng: SystemRandom,
    stats: Arc<RegistryStats>,
}

impl<S: Store + Clone> std::fmt::Debug for RegistryService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryService")
            .field("trust_domain", &self.trust_domain)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: Store + Clone> RegistryService<S> {
    /// Loads the registrations in the store and starts following it. Returns the service and
    /// the view of registered endpoints (filtered by the current catalog). The view's task stops
    /// when every clone of the returned receiver is dropped.
    pub async fn new(
        store: S,
        trust_domain: TrustDomain,
        catalog: watch::Receiver<Arc<CatalogFile>>,
        config: RegistryConfig,
    ) -> Result<(Self, watch::Receiver<Arc<RegisteredEndpoints>>), RegistryError> {
        config.validate()?;
        // Revision first, then the list: replaying events after `revision` over a list taken at
        // or after it converges, because every event carries the whole value.
        let revision = store.revision().await?;
        let records = Records::from_items(store.list(REGISTRY_PREFIX).await?);
        let stream = store.watch(REGISTRY_PREFIX, revision).await?;
        let view = records.view(&trust_domain, &catalog.borrow());
        tracing::info!(
            services = view.len(),
            endpoints = view.values().map(Vec::len).sum::<usize>(),
            "registry loaded"
        );
        let (tx, rx) = watch::channel(Arc::new(view));
        tokio::spawn(run_view(
            store.clone(),
            trust_domain.clone(),
            catalog.clone(),
            records,
            revision,
            stream,
            tx,
        ));
        let service = Self {
            store,
            trust_domain,
            catalog,
            config,
            rng: SystemRandom::new(),
            stats: Arc::default(),
        };
        Ok((service, rx))
    }

    pub fn stats(&self) -> Arc<RegistryStats> {
        self.stats.clone()
    }

    fn authorize(&self, caller: Option<&SpiffeId>, key: &ServiceKey) -> Result<(), Status> {
        let catalog = self.catalog.borrow().clone();
        authorize(caller, &self.trust_domain, key, &catalog).map_err(|d| self.deny(d))
    }

    fn deny(&self, denied: Denied) -> Status {
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(reason = %denied, "registry call denied");
        denied.into()
    }

    fn new_token(&self) -> Result<String, Status> {
        let mut bytes = [0u8; 16];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| Status::internal("the system random number generator failed"))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Looks up a registration by id and checks that `caller` made it.
    async fn owned_registration(
        &self,
        caller: &SpiffeId,
        registration_id: &str,
    ) -> Result<Option<(ServiceKey, String, Registration)>, Status> {
        let Some((service, _)) = parse_registration_id(registration_id) else {
            return Err(Status::invalid_argument(
                "malformed registration_id; use the id returned by Register",
            ));
        };
        let key = store_key(registration_id);
        let Some(bytes) = self.store.get(&key).await.map_err(store_status)? else {
            return Ok(None);
        };
        let record: Registration = serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(key, error = %e, "undecodable registration in the store");
            Status::internal("stored registration is corrupt; register again")
        })?;
        if record.identity != *caller {
            return Err(self.deny(Denied::PermissionDenied(format!(
                "registration {registration_id} belongs to another identity; only the workload \
                 that registered it may renew or remove it"
            ))));
        }
        Ok(Some((service, key, record)))
    }

    async fn register_endpoint(
        &self,
        caller: Option<SpiffeId>,
        req: proto::RegisterEndpointRequest,
    ) -> Result<proto::RegisterEndpointResponse, Status> {
        let service = key_from_proto(req.service.as_ref())
            .map_err(|e| Status::invalid_argument(format!("service: {e}")))?;
        self.authorize(caller.as_ref(), &service)?;
        let caller = caller.ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let address: SocketAddr = req.address.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "address {:?} is not ip:port (IPv6 as [addr]:port)",
                req.address.chars().take(80).collect::<String>()
            ))
        })?;
        check_endpoint_address(address).map_err(Status::invalid_argument)?;
        let zone = if req.zone.is_empty() {
            None
        } else {
            Some(Zone::new(req.zone).map_err(|e| Status::invalid_argument(format!("zone: {e}")))?)
        };
        let weight = if req.weight == 0 {
            default_weight()
        } else {
            req.weight
        };
        check_weight(weight).map_err(Status::invalid_argument)?;
        let ttl = self.config.ttl_for(req.ttl_seconds);

        // Registrations this one replaces: the same workload registering the same address
        // again (e.g. after a restart, before its old lease ran out).
        let prefix = format!("{REGISTRY_PREFIX}{}/", service.path());
        let existing = self.store.list(&prefix).await.map_err(store_status)?;
        let mut replaced: Vec<LeaseId> = Vec::new();
        let mut others = 0usize;
        for (_, bytes) in &existing {
            match serde_json::from_slice::<Registration>(bytes) {
                Ok(r) if r.identity == caller && r.address == address => replaced.push(r.lease),
                _ => others += 1,
            }
        }
        if others >= self.config.max_endpoints_per_service {
            return Err(Status::resource_exhausted(format!(
                "{service} already has {others} registered endpoints (limit {}); deregister \
                 stale ones or raise the limit",
                self.config.max_endpoints_per_service
            )));
        }

        let registration_id = format!("{}/{}", service.path(), self.new_token()?);
        let key = store_key(&registration_id);
        let lease = self.store.grant_lease(ttl).await.map_err(store_status)?;
        let record = Registration {
            address,
            zone,
            weight,
            identity: caller.clone(),
            registered_at_ms: unix_ms(),
            lease,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|_| Status::internal("cannot encode the registration"))?;
        let put = Op::PutLeased {
            key: key.clone(),
            value,
            lease,
        };
        if let Err(e) = self
            .store
            .commit(vec![Guard::Absent { key: key.clone() }], vec![put])
            .await
        {
            if let Err(revoke) = self.store.revoke_lease(lease).await {
                tracing::warn!(error = %revoke, "could not revoke the lease of a failed registration");
            }
            return Err(store_status(e));
        }
        for old in replaced {
            if let Err(e) = self.store.revoke_lease(old).await {
                tracing::warn!(error = %e, "could not revoke a replaced registration; it expires");
            }
        }
        self.stats.registrations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            service = %service, %address, identity = %caller, ttl_secs = ttl.as_secs(),
            "endpoint registered"
        );
        Ok(proto::RegisterEndpointResponse {
            registration_id,
            ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1),
        })
    }

    async fn heartbeat_registration(
        &self,
        caller: Option<SpiffeId>,
        registration_id: &str,
    ) -> Result<(), Status> {
        let caller = caller.ok_or_else(|| self.deny(Denied::Unauthenticated))?;
        let expired = || Status::not_found("registration expired or unknown; register again");
        let Some((service, _, record)) = self.owned_registration(&caller, registration_id).await?
        else {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            return Err(expired());
        };
        // The catalog may have changed since: a registrant no longer allowed is removed now.
        if let Err(status) = self.authorize(Some(&caller), &service) {
            if let Err(e) = self.store.revoke_lease(record.lease).await {
                tracing::warn!(error = %e, "could not revoke a registration no longer allowed");
            }
            return Err(status);
        }
        match self.store.keep_alive(record.lease).await {
            Ok(true) => {
                self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) | Err(StoreError::LeaseNotFound { .. }) => {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                Err(expired())
            }
            Err(e) => Err(store_status(e)),
        }
    }

    async fn deregister_registration(
        &self,
        caller: Option<SpiffeId>,
        registration_id: &str,
    ) -> Result<(), Status> {
        let caller = caller.ok_or_else(|| self.deny(Denied::Unauthenticated))?;
        // Unknown or already expired: nothing to do.
        if let Some((service, _, record)) =
            self.owned_registration(&caller, registration_id).await?
        {
            self.store
                .revoke_lease(record.lease)
                .await
                .map_err(store_status)?;
            self.stats.deregistrations.fetch_add(1, Ordering::Relaxed);
            tracing::info!(service = %service, address = %record.address, "endpoint deregistered");
        }
        Ok(())
    }
}

fn caller<T>(request: &Request<T>) -> Option<SpiffeId> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.id.clone())
}

#[tonic::async_trait]
impl<S: Store + Clone> Registry for RegistryService<S> {
    async fn register(
        &self,
        request: Request<proto::RegisterEndpointRequest>,
    ) -> Result<Response<proto::RegisterEndpointResponse>, Status> {
        let caller = caller(&request);
        self.register_endpoint(caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let caller = caller(&request);
        let id = request.into_inner().registration_id;
        self.heartbeat_registration(caller, &id).await?;
        Ok(Response::new(proto::HeartbeatResponse {}))
    }

    async fn deregister(
        &self,
        request: Request<proto::DeregisterRequest>,
    ) -> Result<Response<proto::DeregisterResponse>, Status> {
        let caller = caller(&request);
        let id = request.into_inner().registration_id;
        self.deregister_registration(caller, &id).await?;
        Ok(Response::new(proto::DeregisterResponse {}))
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable { .. } | StoreError::Closed => {
            Status::unavailable(format!("{e}; retry later"))
        }
        StoreError::LeaseNotFound { .. } => {
            Status::not_found("registration expired or unknown; register again")
        }
        StoreError::GuardFailed => Status::aborted("registration id collision; retry"),
        other => {
            tracing::error!(error = %other, "registry store call failed");
            Status::internal("the federation's store failed; see the federation's logs")
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
