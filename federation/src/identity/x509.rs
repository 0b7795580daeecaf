//! Facts read from a DER certificate with `x509-parser`: URI SANs, CA flag, validity, keys.
//! Reading only; nothing here decides trust (that is [`super::verifier`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use super::{IdentityError, Result};

/// Parses a DER certificate, refusing trailing bytes.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(IdentityError::InvalidCertificate {
            reason: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(IdentityError::InvalidCertificate {
            reason: format!("cannot parse the certificate: {e}"),
        }),
    }
}

/// Every URI SAN of the certificate.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::InvalidCertificate {
            reason: format!("unreadable subjectAltName extension: {e}"),
        })?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether the certificate's basic constraints say CA=true.
pub(crate) fn is_ca(cert: &X509Certificate<'_>) -> Result<bool> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| IdentityError::InvalidCertificate {
            reason: format!("unreadable basicConstraints extension: {e}"),
        })?;
    Ok(bc.is_some_and(|ext| ext.value.ca))
}

/// The certificate's notAfter as a `SystemTime`.
pub(crate) fn not_after(cert: &X509Certificate<'_>) -> SystemTime {
    unix_to_system(cert.validity().not_after.timestamp())
}

/// The certificate's notBefore as a `SystemTime`.
pub(crate) fn not_before(cert: &X509Certificate<'_>) -> SystemTime {
    unix_to_system(cert.validity().not_before.timestamp())
}

fn unix_to_system(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}
