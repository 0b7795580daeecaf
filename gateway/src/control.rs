//! The gateway's link to its federation: first certificate from a bootstrap file (token + CSR;
//! the key never leaves the gateway), then an mTLS channel with that certificate for renewals,
//! registration and the config stream.

use std::time::Duration;

use isthmus_federation::gwapi::BootstrapFile;
use isthmus_federation::identity::{
    CertStore, SpiffeId, SpiffeServerVerifier, TrustBundle, TrustDomain, TrustStore, tls, transport,
};
use isthmus_federation::proto::BootstrapRequest;
use isthmus_federation::proto::gateway_control_client::GatewayControlClient;
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bootstrap file: {0}")]
    Bootstrap(String),
    #[error("identity: {0}")]
    Identity(#[from] isthmus_federation::identity::IdentityError),
    #[error("the federation refused: {0} (is the bootstrap token still valid?)")]
    Refused(String),
}

/// A gateway's authenticated connection to its federation.
pub struct ControlClient {
    pub gateway: String,
    pub trust_domain: TrustDomain,
    pub certs: CertStore,
    pub trust: TrustStore,
    channel: Channel,
}

impl ControlClient {
    /// Obtains the first certificate with the bootstrap token, then connects with it.
    pub async fn bootstrap(file: &BootstrapFile) -> Result<Self, ControlError> {
        let td: TrustDomain = file
            .trust_domain
            .parse()
            .map_err(|e| ControlError::Bootstrap(format!("trust_domain: {e}")))?;
        let trust = TrustStore::new();
        trust.set(TrustBundle::from_pem(td.clone(), 0, &file.ca_bundle_pem)?);
        // The federation must prove it is this cluster's federation, by this cluster's CA.
        let federation = SpiffeId::federation(&td, &file.cluster)?;
        let verifier =
            || SpiffeServerVerifier::for_id(trust.clone(), federation.clone()).into_arc();
        let plain = tls::client_config(None, verifier(), &[tls::ALPN_H2])?;
        let channel = transport::connect(&file.federation, plain, CONNECT_TIMEOUT).await?;
        let id = SpiffeId::gateway(&td, &file.gateway)?;
        let (key, csr) = tls::generate_key_and_csr(&id)?;
        let signed = GatewayControlClient::new(channel)
            .bootstrap(BootstrapRequest {
                token: file.token.clone(),
                gateway: file.gateway.clone(),
                csr_der: csr,
            })
            .await
            .map_err(|s| ControlError::Refused(s.message().to_string()))?
            .into_inner();
        let certs = CertStore::new();
        certs.set_from_pem(&signed.chain_pem, &key)?;
        for b in &signed.bundles {
            if let Ok(bundle) = TrustBundle::from_proto(b) {
                trust.set(bundle);
            }
        }
        let config = tls::client_config(Some(&certs), verifier(), &[tls::ALPN_H2])?;
        let channel = transport::connect(&file.federation, config, CONNECT_TIMEOUT).await?;
        tracing::info!(gateway = %file.gateway, federation = %file.federation, "bootstrapped");
        Ok(Self {
            gateway: file.gateway.clone(),
            trust_domain: td,
            certs,
            trust,
            channel,
        })
    }

    pub fn client(&self) -> GatewayControlClient<Channel> {
        GatewayControlClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }
}
