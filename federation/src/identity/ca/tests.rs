//! The CA on its own: CSR checks, the leaf profile, lifetimes, persisted state, rotation
//! order, operator intermediates.

#![allow(clippy::unwrap_used)]
use rustls::server::danger::ClientCertVerifier as _;

use super::*;
use crate::identity::verifier::{Accept, SpiffeClientVerifier, TrustStore};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn gateway_id(td: &TrustDomain) -> SpiffeId {
    SpiffeId::gateway(td, "gw-1").unwrap()
}

fn verify(ca: &Ca, chain_pem: &str, now: UnixTime) -> Result<(), rustls::Error> {
    let store = TrustStore::new();
    store.set(ca.bundle());
    let chain = pem::parse_certs(chain_pem).unwrap();
    SpiffeClientVerifier::new(store, Accept::Any)
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map(|_| ())
}

fn csr_with(sans: Vec<SanType>, alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

#[test]
fn signs_a_good_csr_with_the_leaf_profile() {
    let west = td("west");
    let ca = Ca::generate(west.clone(), &Kek::generate().unwrap(), DAY).unwrap();
    let id = gateway_id(&west);
    let (_key, csr) = crate::identity::tls::generate_key_and_csr(&id).unwrap();
    let issued = ca.sign_csr(&csr, &id, Duration::from_secs(3600)).unwrap();
    let chain = pem::parse_certs(&issued.chain_pem).unwrap();
    assert_eq!(chain.len(), 1);
    let leaf = x509::parse(&chain[0]).unwrap();
    assert_eq!(
        x509::uri_sans(&leaf).unwrap(),
        vec![id.to_string().as_str()]
    );
    assert!(!x509::is_ca(&leaf).unwrap());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let now = SystemTime::now();
    let nb = x509::not_before(&leaf);
    assert!(nb <= now - Duration::from_secs(55) && nb >= now - Duration::from_secs(65));
    assert_eq!(x509::not_after(&leaf), issued.not_after);
    verify(&ca, &issued.chain_pem, UnixTime::now()).unwrap();
}

#[test]
fn refuses_bad_csrs() {
    let west = td("west");
    let ca = Ca::generate(west.clone(), &Kek::generate().unwrap(), DAY).unwrap();
    let id = gateway_id(&west);
    let hour = Duration::from_secs(3600);
    let refused = |csr: &[u8], expected: &SpiffeId| match ca.sign_csr(csr, expected, hour) {
        Err(IdentityError::CsrRefused { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };

    let two_uris = csr_with(
        vec![
            uri(&id.to_string()),
            uri("spiffe://west/isthmus/gateway/gw-2"),
        ],
        &PKCS_ECDSA_P256_SHA256,
    );
    assert!(refused(&two_uris, &id).contains("exactly one SAN"));
    let uri_and_dns = csr_with(
        vec![
            uri(&id.to_string()),
            SanType::DnsName(Ia5String::try_from("gw.west").unwrap()),
        ],
        &PKCS_ECDSA_P256_SHA256,
    );
    assert!(refused(&uri_and_dns, &id).contains("exactly one SAN"));
    let none = csr_with(vec![], &PKCS_ECDSA_P256_SHA256);
    assert!(refused(&none, &id).contains("exactly one SAN"));

    let other = csr_with(
        vec![uri("spiffe://west/isthmus/gateway/gw-2")],
        &PKCS_ECDSA_P256_SHA256,
    );
    assert!(refused(&other, &id).contains("may only obtain"));
    let not_spiffe = csr_with(vec![uri("https://west/x")], &PKCS_ECDSA_P256_SHA256);
    assert!(refused(&not_spiffe, &id).contains("scheme"));

    let (_k, mut tampered) = crate::identity::tls::generate_key_and_csr(&id).unwrap();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x55;
    assert!(refused(&tampered, &id).contains("self-signature"));

    let p384 = csr_with(vec![uri(&id.to_string())], &rcgen::PKCS_ECDSA_P384_SHA384);
    assert!(refused(&p384, &id).contains("P-256"));

    assert!(refused(b"garbage", &id).contains("parsed"));
    assert!(refused(&[], &id).contains("parsed"));

    // A CA cannot issue outside its trust domain, even for a matching CSR.
    let south_id = gateway_id(&td("south"));
    let (_k, south_csr) = crate::identity::tls::generate_key_and_csr(&south_id).unwrap();
    assert!(matches!(
        ca.sign_csr(&south_csr, &south_id, hour),
        Err(IdentityError::Issue { .. })
    ));
}

#[test]
fn two_second_leaf_expires() {
    let west = td("west");
    let ca = Ca::generate(west.clone(), &Kek::generate().unwrap(), DAY).unwrap();
    let (issued, _key) = ca
        .issue_local(&gateway_id(&west), Duration::from_secs(2))
        .unwrap();
    let now = SystemTime::now();
    let at = |t: SystemTime| UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap());
    verify(&ca, &issued.chain_pem, at(now)).unwrap();
    assert!(issued.not_after <= now + Duration::from_secs(2));
    let err = verify(&ca, &issued.chain_pem, at(now + Duration::from_secs(3))).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
    );
    // One second works too.
    let (one, _key) = ca
        .issue_local(&gateway_id(&west), Duration::from_secs(1))
        .unwrap();
    verify(&ca, &one.chain_pem, at(now)).unwrap();
    assert!(ca.issue_local(&gateway_id(&west), Duration::ZERO).is_err());
}

#[test]
fn state_round_trip_and_wrong_kek() {
    let west = td("west");
    let kek = Kek::generate().unwrap();
    let ca = Ca::generate(west.clone(), &kek, DAY).unwrap();
    let json = serde_json::to_string(&ca.state()).unwrap();
    let state: CaState = serde_json::from_str(&json).unwrap();
    assert_eq!(state, ca.state());
    // The private key is sealed, never stored in the clear.
    let key_b64 = {
        use base64::Engine as _;
        let (_, key) = ca
            .issue_local(&gateway_id(&west), Duration::from_secs(5))
            .unwrap();
        let der = pem::parse_key(&key).unwrap();
        base64::engine::general_purpose::STANDARD.encode(der.secret_der())
    };
    assert!(!json.contains(&key_b64));

    let wrong = Kek::generate().unwrap();
    let err = Ca::load(state.clone(), &wrong).unwrap_err();
    assert!(matches!(err, IdentityError::KekMismatch));
    assert!(
        err.to_string()
            .contains("does not match the one the CA was created with")
    );

    let loaded = Ca::load(state, &kek).unwrap();
    assert_eq!(loaded.bundle(), ca.bundle());
    let (issued, _) = loaded
        .issue_local(&gateway_id(&west), Duration::from_secs(60))
        .unwrap();
    verify(&ca, &issued.chain_pem, UnixTime::now()).unwrap();
}

#[test]
fn rotation_steps_in_order_only() {
    let west = td("west");
    let mut ca = Ca::generate(west.clone(), &Kek::generate().unwrap(), DAY).unwrap();
    assert_eq!(ca.rotation(), Rotation::Idle);
    assert!(matches!(
        ca.switch_signing(),
        Err(IdentityError::RotationOrder { .. })
    ));
    assert!(matches!(
        ca.retire_old(),
        Err(IdentityError::RotationOrder { .. })
    ));
    let s0 = ca.sequence();
    ca.begin_rotation().unwrap();
    assert_eq!(ca.rotation(), Rotation::NewRootPublished);
    assert_eq!(ca.bundle().roots().len(), 2);
    assert!(matches!(
        ca.begin_rotation(),
        Err(IdentityError::RotationOrder { .. })
    ));
    assert!(matches!(
        ca.retire_old(),
        Err(IdentityError::RotationOrder { .. })
    ));
    ca.switch_signing().unwrap();
    assert_eq!(ca.rotation(), Rotation::NewRootSigning);
    assert!(matches!(
        ca.begin_rotation(),
        Err(IdentityError::RotationOrder { .. })
    ));
    assert!(matches!(
        ca.switch_signing(),
        Err(IdentityError::RotationOrder { .. })
    ));
    ca.retire_old().unwrap();
    assert_eq!(ca.rotation(), Rotation::Idle);
    assert_eq!(ca.bundle().roots().len(), 1);
    assert_eq!(ca.sequence(), s0 + 3);
}

#[test]
fn operator_intermediate() {
    // An operator root (RSA-free, P-256) and an intermediate under it.
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Operator root");
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut int_params = CertificateParams::default();
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Operator intermediate");
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    int_params.use_authority_key_identifier_extension = true;
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();
    let key_pem = pem::pkcs8_to_pem(int_key.serialized_der());

    let west = td("west");
    let ca = Ca::from_intermediate(west.clone(), &int.pem(), &key_pem, &root.pem()).unwrap();
    assert_eq!(ca.bundle().roots(), &[root.der().clone()]);
    let (issued, _) = ca
        .issue_local(&gateway_id(&west), Duration::from_secs(60))
        .unwrap();
    assert_eq!(pem::parse_certs(&issued.chain_pem).unwrap().len(), 2);
    verify(&ca, &issued.chain_pem, UnixTime::now()).unwrap();
    let mut ca2 = Ca::from_intermediate(west.clone(), &int.pem(), &key_pem, &root.pem()).unwrap();
    let mut previous = ca.state();
    previous.sequence = 7;
    ca2.continue_from(&previous);
    assert_eq!(ca2.sequence(), 7);
    assert!(matches!(
        ca2.begin_rotation(),
        Err(IdentityError::RotationOrder { .. })
    ));
    assert!(Ca::load(ca.state(), &Kek::generate().unwrap()).is_err());

    // Wrong key, a leaf as "intermediate", and a chain that does not lead to the root.
    let other_key = pem::pkcs8_to_pem(KeyPair::generate().unwrap().serialized_der());
    let err = Ca::from_intermediate(west.clone(), &int.pem(), &other_key, &root.pem()).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    let (leaf, leaf_key) = ca
        .issue_local(&gateway_id(&west), Duration::from_secs(60))
        .unwrap();
    let first_leaf = pem::certs_to_pem(&pem::parse_certs(&leaf.chain_pem).unwrap()[..1]);
    let err = Ca::from_intermediate(west.clone(), &first_leaf, &leaf_key, "").unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
    let stranger = Ca::generate(td("x"), &Kek::generate().unwrap(), DAY).unwrap();
    let err =
        Ca::from_intermediate(west, &int.pem(), &key_pem, &stranger.bundle().to_pem()).unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}
