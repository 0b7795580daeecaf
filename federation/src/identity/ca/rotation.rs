//! Root rotation in three steps, each refused out of order: publish a new root beside the old
//! one, switch signing to it once every peer and gateway has ACKed, retire the old one after
//! the longest leaf lifetime. Operator-provided intermediates are rotated by replacing them.

use std::time::Duration;

use super::{Ca, GeneratedRoot, RootPhase, Source, new_root};
use crate::identity::sealed::Kek;
use crate::identity::{IdentityError, Result};

/// Where the CA is in a root rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// One root; `begin_rotation` may be called.
    Idle,
    /// New root published, old root signing; call `switch_signing` once every peer and
    /// gateway has ACKed the bundle.
    NewRootPublished,
    /// New root signing, old root published; call `retire_old` after the longest leaf lifetime.
    NewRootSigning,
}

impl Ca {
    /// Where the CA is in a root rotation (always `Idle` for an operator intermediate).
    pub fn rotation(&self) -> Rotation {
        match &self.source {
            Source::Intermediate { .. } => Rotation::Idle,
            Source::Generated { roots, .. } => {
                if roots.iter().any(|r| r.phase == RootPhase::Incoming) {
                    Rotation::NewRootPublished
                } else if roots.iter().any(|r| r.phase == RootPhase::Outgoing) {
                    Rotation::NewRootSigning
                } else {
                    Rotation::Idle
                }
            }
        }
    }

    fn generated_roots(&mut self, step: &'static str) -> Result<(&Kek, &mut Vec<GeneratedRoot>)> {
        match &mut self.source {
            Source::Generated { kek, roots } => Ok((kek, roots)),
            Source::Intermediate { .. } => Err(IdentityError::RotationOrder {
                step,
                reason: "this CA signs with an operator-provided intermediate: rotate by replacing its files",
            }),
        }
    }

    /// Step 1: generates a new root and publishes it beside the old one, which keeps signing.
    /// The new root gets the same validity period as the current one.
    pub fn begin_rotation(&mut self) -> Result<()> {
        const STEP: &str = "begin_rotation";
        let (kek, roots) = self.generated_roots(STEP)?;
        if roots.len() != 1 {
            return Err(IdentityError::RotationOrder {
                step: STEP,
                reason: "a rotation is already in progress",
            });
        }
        let validity = roots
            .first()
            .and_then(|r| r.signer.not_after.duration_since(r.created).ok())
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let root = new_root(kek, validity, RootPhase::Incoming)?;
        roots.push(root);
        self.sequence += 1;
        Ok(())
    }

    /// Step 2: the new root signs; the old one stays published. Call only after every peer and
    /// gateway has ACKed the bundle from step 1.
    pub fn switch_signing(&mut self) -> Result<()> {
        const STEP: &str = "switch_signing";
        let (_, roots) = self.generated_roots(STEP)?;
        if !roots.iter().any(|r| r.phase == RootPhase::Incoming) {
            return Err(IdentityError::RotationOrder {
                step: STEP,
                reason: "no new root is published: call begin_rotation first",
            });
        }
        for root in roots.iter_mut() {
            root.phase = match root.phase {
                RootPhase::Active => RootPhase::Outgoing,
                RootPhase::Incoming => RootPhase::Active,
                RootPhase::Outgoing => RootPhase::Outgoing,
            };
        }
        self.sequence += 1;
        Ok(())
    }

    /// Step 3: removes the old root from the bundle. Call after the longest leaf lifetime has
    /// passed since step 2, so no live leaf chains to it.
    pub fn retire_old(&mut self) -> Result<()> {
        const STEP: &str = "retire_old";
        let (_, roots) = self.generated_roots(STEP)?;
        if !roots.iter().any(|r| r.phase == RootPhase::Outgoing) {
            return Err(IdentityError::RotationOrder {
                step: STEP,
                reason: "no root is outgoing: call begin_rotation, then switch_signing first",
            });
        }
        roots.retain(|r| r.phase != RootPhase::Outgoing);
        self.sequence += 1;
        Ok(())
    }
}
