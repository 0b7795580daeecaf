//! The CA at runtime: loaded or generated at start, persisted on every change, and driven
//! through root rotation. Rotation is gated by the caller's ACK tracking: signing switches only
//! when every peer and gateway has ACKed the bundle with the new root, and the old root is
//! retired only after the longest leaf lifetime has passed since the switch.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::FederationConfig;
use crate::identity::ca::Rotation;
use crate::identity::{Ca, CaState, IdentityError, IssuedCert, Kek, SpiffeId, TrustBundle};
use crate::node::keys;
use crate::node::now_ms;
use crate::store::{AnyStore, Op, Store, StoreError};

const ROTATION: &str = "ca/rotation";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "no key-encryption key: set ISTHMUS_KEK to 32 random bytes in base64 (e.g. `isthmus ca kek`) or ca.kek_file in the config"
    )]
    NoKek,
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored CA state is unreadable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    NotYet(String),
}

/// When signing switched to the new root (unix ms), persisted so `retire` can wait out leaves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RotationMeta {
    switched_at_ms: Option<i64>,
}

pub struct CaRuntime {
    ca: Ca,
    kek: Kek,
    leaf_lifetime: Duration,
    switched_at_ms: Option<i64>,
}

/// Reads the KEK from `ca.kek_file`, else `ISTHMUS_KEK`.
pub fn load_kek(cfg: &FederationConfig) -> Result<Kek, CaError> {
    let text = match &cfg.ca.kek_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| CaError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?,
        None => std::env::var("ISTHMUS_KEK").map_err(|_| CaError::NoKek)?,
    };
    Ok(Kek::parse(text.trim())?)
}

impl CaRuntime {
    /// Loads the CA from the store, or creates it (generated root or operator intermediate).
    pub async fn open(
        store: &AnyStore,
        cfg: &FederationConfig,
        kek: &Kek,
    ) -> Result<Self, CaError> {
        let td = cfg.trust_domain();
        let stored: Option<CaState> = match store.get(keys::CA_STATE).await? {
            Some(bytes) => {
                Some(serde_json::from_slice(&bytes).map_err(|e| CaError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        let ca = match (&cfg.ca.intermediate, stored) {
            (Some(files), previous) => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p).map_err(|e| CaError::Read {
                        path: p.display().to_string(),
                        detail: e.to_string(),
                    })
                };
                let mut ca = Ca::from_intermediate(
                    td,
                    &read(&files.cert)?,
                    &read(&files.key)?,
                    &read(&files.chain)?,
                )?;
                if let Some(previous) = previous {
                    ca.continue_from(&previous);
                }
                ca
            }
            (None, Some(state)) => Ca::load(state, kek)?,
            (None, None) => {
                tracing::info!(trust_domain = %td, "generating this cluster's root CA");
                Ca::generate(td, kek, cfg.ca.root_validity)?
            }
        };
        let meta: RotationMeta = match store.get(ROTATION).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| CaError::Corrupt(e.to_string()))?
            }
            None => RotationMeta::default(),
        };
        let rt = Self {
            ca,
            kek: kek.clone(),
            leaf_lifetime: cfg.ca.leaf_lifetime,
            switched_at_ms: meta.switched_at_ms,
        };
        rt.persist(store).await?;
        Ok(rt)
    }

    async fn persist(&self, store: &AnyStore) -> Result<(), CaError> {
        let state =
            serde_json::to_vec(&self.ca.state()).map_err(|e| CaError::Corrupt(e.to_string()))?;
        let meta = serde_json::to_vec(&RotationMeta {
            switched_at_ms: self.switched_at_ms,
        })
        .map_err(|e| CaError::Corrupt(e.to_string()))?;
        store
            .commit(
                Vec::new(),
                vec![
                    Op::Put {
                        key: keys::CA_STATE.into(),
                        value: state,
                    },
                    Op::Put {
                        key: ROTATION.into(),
                        value: meta,
                    },
                ],
            )
            .await?;
        Ok(())
    }

    pub fn bundle(&self) -> TrustBundle {
        self.ca.bundle()
    }

    pub fn rotation(&self) -> Rotation {
        self.ca.rotation()
    }

    pub fn leaf_lifetime(&self) -> Duration {
        self.leaf_lifetime
    }

    pub fn sign(&self, csr_der: &[u8], expected: &SpiffeId) -> Result<IssuedCert, CaError> {
        Ok(self.ca.sign_csr(csr_der, expected, self.leaf_lifetime)?)
    }

    pub fn issue_own(&self, id: &SpiffeId) -> Result<(IssuedCert, String), CaError> {
        let (cert, key) = self.ca.issue_local(id, self.leaf_lifetime)?;
        Ok((cert, key.to_string()))
    }

    /// Runs a state transition; if it cannot be persisted, memory goes back to the stored state.
    async fn transition(
        &mut self,
        store: &AnyStore,
        f: impl FnOnce(&mut Ca) -> Result<(), IdentityError>,
    ) -> Result<(), CaError> {
        let before = self.ca.state();
        f(&mut self.ca)?;
        if let Err(e) = self.persist(store).await {
            if let Ok(ca) = Ca::load(before, &self.kek) {
                self.ca = ca;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Publishes a new root beside the old one (the old one keeps signing).
    pub async fn begin_rotation(&mut self, store: &AnyStore) -> Result<(), CaError> {
        self.transition(store, Ca::begin_rotation).await
    }

    /// Switches signing to the new root. The caller checked every peer and gateway ACKed it.
    pub async fn switch_signing(&mut self, store: &AnyStore) -> Result<(), CaError> {
        let previous = self.switched_at_ms.replace(now_ms());
        let r = self.transition(store, Ca::switch_signing).await;
        if r.is_err() {
            self.switched_at_ms = previous;
        }
        r
    }

    /// Retires the old root once no leaf it signed can still be valid.
    pub async fn retire_old(&mut self, store: &AnyStore, force: bool) -> Result<(), CaError> {
        if self.ca.rotation() != Rotation::NewRootSigning {
            return Err(CaError::NotYet(
                "no root to retire: `isthmus ca rotate` first and wait until signing switched"
                    .into(),
            ));
        }
        let wait_ms = i64::try_from(self.leaf_lifetime.as_millis()).unwrap_or(i64::MAX);
        let since = now_ms() - self.switched_at_ms.unwrap_or(0);
        if since < wait_ms && !force {
            return Err(CaError::NotYet(format!(
                "leaves signed by the old root may be valid for {} ms more; retry then",
                wait_ms - since
            )));
        }
        let previous = self.switched_at_ms.take();
        let r = self.transition(store, Ca::retire_old).await;
        if r.is_err() {
            self.switched_at_ms = previous;
        }
        r
    }
}

/// A step of the CA's life that peers and gateways must learn about.
#[derive(Debug, Clone, Copy)]
pub enum CaStep {
    BeginRotation,
    SwitchSigning,
    RetireOld { force: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Announce(#[from] crate::node::state::StateError),
}

impl crate::node::Node {
    /// Runs a CA step and makes it visible, in the one order that is safe: persist the CA state,
    /// trust the new bundle locally, re-issue our own certificate after a signing switch, then
    /// bump the catalog version so every peer session and gateway stream carries the bundle.
    pub async fn ca_step(&self, step: CaStep) -> Result<(), StepError> {
        {
            let mut ca = self.ca.lock().await;
            match step {
                CaStep::BeginRotation => ca.begin_rotation(&self.store).await?,
                CaStep::SwitchSigning => ca.switch_signing(&self.store).await?,
                CaStep::RetireOld { force } => ca.retire_old(&self.store, force).await?,
            }
            self.trust.set(ca.bundle());
        }
        if matches!(step, CaStep::SwitchSigning)
            && let Err(e) = crate::node::run::renew_now(self).await
        {
            tracing::error!(error = %e, "renewing our certificate after the signing switch failed; the renewal loop retries");
        }
        self.bump_local(|s| {
            s.local.bump();
            true
        })
        .await?;
        Ok(())
    }
}
