//! The catalog file: the YAML document an operator edits to say what this cluster exports, what it
//! imports from whom, and (reserved) its policies.
//!
//! [`parse_catalog`] is a pure function: text in, a validated [`CatalogFile`] or an error naming
//! the line, the field and what to fix. Every struct denies unknown fields, so a typo is an error,
//! never a silently ignored setting. Watching the file on disk lives in
//! [`super::file_source`].
//!
//! ```yaml
//! exports:
//!   - namespace: shop
//!     name: cart
//!     ports: [{port: 8080, protocol: http, name: http}]   # http | http2 | grpc | tcp
//!     endpoints: [{address: "127.0.0.1:9001", zone: a, weight: 100, ready: true}]
//!     export_to: [west]        # absent = every peer
//!     weight: 100
//!     headless: false
//!     metadata: {team: shop}
//!     registrants: [cart]      # service accounts that may register endpoints (default: [cart])
//! imports:                     # opt-in; no rules = nothing imported
//!   - peer: west               # or "*"
//!     namespaces: [shop]       # or ["*"]
//!     services: [cart]         # optional
//! policies: {}                 # reserved: name -> document, carried opaquely
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::model::service::{
    MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, default_weight, validate_ports,
};
use crate::model::{
    ClusterName, Endpoint, ExportedService, ImportRule, Namespace, ServiceKey, ServiceName,
    ServicePort,
};

/// Largest weight accepted for a service or an endpoint. Weights are summed across endpoints and
/// clusters in `u32`; this bound keeps thousands of them from overflowing.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The validated catalog document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CatalogFile {
    /// Shared, so a re-read of an edited file keeps (and compares by pointer) every entry that
    /// did not change: see [`super::CatalogParser`].
    pub exports: Vec<Arc<ExportSpec>>,
    pub imports: Vec<ImportRule>,
    /// Reserved: policy documents by name, carried opaquely.
    pub policies: BTreeMap<String, serde_json::Value>,
}

impl CatalogFile {
    /// The export of `key`, if the catalog has one.
    pub fn export(&self, key: &ServiceKey) -> Option<&ExportSpec> {
        self.exports
            .iter()
            .find(|e| e.namespace == key.namespace && e.name == key.name)
            .map(|e| &**e)
    }
}

/// One exported service as the operator describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    pub namespace: Namespace,
    pub name: ServiceName,
    pub ports: Vec<ServicePort>,
    /// Static endpoints; may be empty when workloads register through the registry.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Peers allowed to import it; `None` = every peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_to: Option<BTreeSet<ClusterName>>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub headless: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Service accounts (in `namespace`) whose workload certificates may register endpoints for
    /// this service through the registry. `None` = one account named like the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrants: Option<Vec<String>>,
    /// When the export began, when its source knows it (a ServiceExport's creation time, unix
    /// ms): a service exported for the first time takes it as its first-export time, which MCS
    /// conflict resolution compares. Never read from a catalog file.
    #[serde(skip)]
    pub exported_since_ms: Option<i64>,
}

impl ExportSpec {
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(self.namespace.clone(), self.name.clone())
    }

    /// Whether a workload running as `service_account` (in this export's namespace) may register
    /// endpoints for it.
    pub fn allows_registrant(&self, service_account: &str) -> bool {
        match &self.registrants {
            Some(accounts) => accounts.iter().any(|a| a == service_account),
            None => self.name.as_str() == service_account,
        }
    }

    /// The model's view of this export: static endpoints followed by `registered` ones.
    /// `exported_at_ms` is when this cluster first exported it (the caller persists that).
    pub fn to_service(&self, registered: &[Endpoint], exported_at_ms: i64) -> ExportedService {
        let mut endpoints = self.endpoints.clone();
        endpoints.extend(registered.iter().cloned());
        ExportedService {
            key: self.key(),
            ports: self.ports.clone(),
            endpoints,
            headless: self.headless,
            weight: self.weight,
            metadata: self.metadata.clone(),
            export_to: self.export_to.clone(),
            exported_at_ms,
        }
    }

    /// Checks what serde cannot: ports, endpoints, weights, sizes, registrants.
    /// Returns the offending field (relative to the export) and the reason.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_ports(&self.ports).map_err(|e| FieldError::new("ports", e.to_string()))?;
        let mut seen = BTreeSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}]");
            check_endpoint_address(ep.address).map_err(|r| FieldError::new(&field, r))?;
            check_weight(ep.weight).map_err(|r| FieldError::new(&field, r))?;
            if !seen.insert(ep.address) {
                return Err(FieldError::new(
                    &field,
                    format!(
                        "address {} is listed twice; remove the duplicate",
                        ep.address
                    ),
                ));
            }
        }
        if self.export_to.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err(FieldError::new(
                "export_to",
                "an empty list exports to nobody; list peer cluster names, or omit export_to to \
                 export to every peer",
            ));
        }
        check_weight(self.weight).map_err(|r| FieldError::new("weight", r))?;
        let meta_bytes: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.metadata.len() > MAX_METADATA_ENTRIES || meta_bytes > MAX_METADATA_BYTES {
            return Err(FieldError::new(
                "metadata",
                format!(
                    "at most {MAX_METADATA_ENTRIES} entries and {MAX_METADATA_BYTES} bytes \
                     (peers refuse more)"
                ),
            ));
        }
        if let Some(accounts) = &self.registrants {
            let mut seen = BTreeSet::new();
            for (i, account) in accounts.iter().enumerate() {
                let field = format!("registrants[{i}]");
                check_service_account(account).map_err(|r| FieldError::new(&field, r))?;
                if !seen.insert(account.as_str()) {
                    return Err(FieldError::new(
                        &field,
                        format!("{account:?} is listed twice"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A validation failure inside one entry: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// An endpoint address must be one peers' traffic can be forwarded to.
pub fn check_endpoint_address(address: SocketAddr) -> Result<(), String> {
    if address.port() == 0 {
        return Err(format!(
            "address {address} has port 0; give the port the workload listens on"
        ));
    }
    let ip = address.ip();
    if ip.is_unspecified() {
        return Err(format!(
            "address {address} is a wildcard, not a reachable address; give the workload's own IP"
        ));
    }
    if ip.is_multicast() {
        return Err(format!(
            "address {address} is a multicast address; give a unicast IP"
        ));
    }
    Ok(())
}

pub fn check_weight(weight: u32) -> Result<(), String> {
    if weight > MAX_WEIGHT {
        return Err(format!("weight {weight} is above the maximum {MAX_WEIGHT}"));
    }
    Ok(())
}

/// A Kubernetes service account name (an RFC 1123 subdomain), which is also one SPIFFE path
/// segment: 1-253 characters of `a-z`, `0-9`, `-` and `.`, starting and ending alphanumeric.
pub fn check_service_account(name: &str) -> Result<(), String> {
    let ok_len = !name.is_empty() && name.len() <= 253;
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "invalid service account {:?}: use 1-253 lowercase letters, digits, '-' or '.', \
             starting and ending with a letter or digit",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// Why a catalog could not be loaded. Every message names the file (when known) and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "catalog file {}: cannot read it: {source}; check the path and the federation's \
         permissions", .path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "catalog file {}: it is {size} bytes, over the {limit}-byte limit; is this the right file?",
        .path.display()
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// Not YAML, or YAML of the wrong shape (unknown field, wrong type, invalid name).
    #[error("{}: {detail}\nfix the document and save the file again", origin(.path.as_deref()))]
    Syntax {
        path: Option<PathBuf>,
        detail: String,
    },
    /// Well-formed YAML whose content is refused.
    #[error(
        "{}: {}{field}: {reason}; fix it and save the file again",
        origin(.path.as_deref()), at_line(*.line)
    )]
    Invalid {
        path: Option<PathBuf>,
        line: u64,
        field: String,
        reason: String,
    },
}

impl CatalogError {
    /// The field path of the problem, when it is in one field (`exports[0] (shop/cart).ports`,
    /// `policies.canary.split.weights.east`).
    pub fn field(&self) -> Option<&str> {
        match self {
            CatalogError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// What is wrong with that field, without the file, line and field (see [`Self::field`]).
    pub fn reason(&self) -> Option<&str> {
        match self {
            CatalogError::Invalid { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The line the problem is on, when known.
    pub fn line(&self) -> Option<u64> {
        match self {
            CatalogError::Invalid { line, .. } => (*line > 0).then_some(*line),
            _ => None,
        }
    }

    /// Whether the file could not be read at all (as opposed to read and refused).
    pub fn is_unreadable(&self) -> bool {
        matches!(self, CatalogError::Read { .. })
    }

    /// Attaches the file the text came from.
    pub fn with_path(self, file: &Path) -> Self {
        match self {
            CatalogError::Syntax { detail, .. } => CatalogError::Syntax {
                // The parser's snippet header names its input `<input>`.
                detail: detail.replace("<input>", &file.display().to_string()),
                path: Some(file.to_owned()),
            },
            CatalogError::Invalid {
                line,
                field,
                reason,
                ..
            } => CatalogError::Invalid {
                path: Some(file.to_owned()),
                line,
                field,
                reason,
            },
            other => other,
        }
    }
}

fn origin(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("catalog file {}", p.display()),
        None => "catalog".to_owned(),
    }
}

fn at_line(line: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!("line {line}: ")
    }
}

/// The document as written, with the line of every entry for error messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    exports: Option<Vec<Spanned<ExportSpec>>>,
    #[serde(default)]
    imports: Option<Vec<Spanned<ImportRule>>>,
    #[serde(default)]
    policies: Option<BTreeMap<String, serde_json::Value>>,
}

/// The same document in JSON (which is also YAML): no line numbers, but parsed far faster, for
/// large generated catalogs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonCatalog {
    #[serde(default)]
    pub(super) exports: Option<Vec<ExportSpec>>,
    #[serde(default)]
    pub(super) imports: Option<Vec<ImportRule>>,
    #[serde(default)]
    pub(super) policies: Option<BTreeMap<String, serde_json::Value>>,
}

/// Entries with the line they start on (0 when unknown: JSON documents).
pub(super) struct Located {
    /// Each export, and whether it is already known to be valid (an entry reused unchanged from
    /// an earlier parse of the same document).
    pub(super) exports: Vec<(u64, Arc<ExportSpec>, bool)>,
    pub(super) imports: Vec<(u64, ImportRule)>,
    pub(super) policies: BTreeMap<String, serde_json::Value>,
}

fn read_document(text: &str) -> Result<Located, CatalogError> {
    let syntax = |detail: String| CatalogError::Syntax { path: None, detail };
    // A document that starts with `{` is JSON: serde_json parses it two orders of magnitude
    // faster than a YAML parser, which matters for catalogs of thousands of services.
    if text.trim_start().starts_with('{') {
        let raw: JsonCatalog = serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?;
        return Ok(Located {
            exports: raw
                .exports
                .unwrap_or_default()
                .into_iter()
                .map(|e| (0, Arc::new(e), false))
                .collect(),
            imports: raw
                .imports
                .unwrap_or_default()
                .into_iter()
                .map(|r| (0, r))
                .collect(),
            policies: raw.policies.unwrap_or_default(),
        });
    }
    let raw: RawCatalog = serde_saphyr::from_str(text)
        .map_err(|e| syntax(e.to_string().trim_start_matches("error: ").to_owned()))?;
    Ok(Located {
        exports: raw
            .exports
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.referenced.line(), Arc::new(s.value), false))
            .collect(),
        imports: raw
            .imports
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.referenced.line(), s.value))
            .collect(),
        policies: raw.policies.unwrap_or_default(),
    })
}

/// A cheap hasher for export names (operator-written text, not a peer's): a word at a time,
/// multiply and rotate. Checking 10,000 exports for duplicates costs far less than with SipHash.
#[derive(Debug, Default)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
    }
}

/// Parses and validates a catalog document (YAML, or JSON for large generated catalogs). Pure:
/// no I/O, no clock. An empty document is an empty catalog (nothing exported, nothing imported).
pub fn parse_catalog(text: &str) -> Result<CatalogFile, CatalogError> {
    check_document(read_document(text)?)
}

/// Like [`parse_catalog`] (the same reading and checks, accepting exactly what it accepts), but
/// lists every problem the checks find rather than stopping at the first: `isthmus catalog
/// check`. A document that does not read (syntax, shape, types) is one problem.
pub fn parse_catalog_listing_all(text: &str) -> Result<CatalogFile, Vec<CatalogError>> {
    check_document_with(read_document(text).map_err(|e| vec![e])?, true)
}

/// Validates what [`read_document`] read (entries known valid are not checked again; duplicates
/// are checked across all of them).
pub(super) fn check_document(raw: Located) -> Result<CatalogFile, CatalogError> {
    check_document_with(raw, false).map_err(|mut errors| errors.swap_remove(0))
}

/// [`check_document`], stopping at the first problem unless `all`; the error list is never
/// empty.
fn check_document_with(raw: Located, all: bool) -> Result<CatalogFile, Vec<CatalogError>> {
    let mut errors = Vec::new();
    // Records a problem; stops at the first one unless every problem is wanted.
    macro_rules! refuse {
        ($e:expr) => {{
            errors.push($e);
            if !all {
                return Err(errors);
            }
        }};
    }
    let invalid = |line: u64, field: String, reason: String| CatalogError::Invalid {
        path: None,
        line,
        field,
        reason,
    };

    let mut exports = Vec::with_capacity(raw.exports.len());
    let mut seen: HashMap<(&str, &str), u64, BuildHasherDefault<NameHasher>> =
        HashMap::with_capacity_and_hasher(raw.exports.len(), Default::default());
    for (i, (line, export, valid)) in raw.exports.iter().enumerate() {
        let line = *line;
        let key = || export.key();
        if !valid && let Err(e) = export.validate() {
            refuse!(invalid(
                line,
                format!("exports[{i}] ({}).{}", key(), e.field),
                e.reason,
            ));
        }
        if let Some(first) = seen.insert((export.namespace.as_str(), export.name.as_str()), line) {
            let key = key();
            refuse!(invalid(
                line,
                format!("exports[{i}] ({key})"),
                format!("{key} is already exported at line {first}; merge the two entries"),
            ));
        }
        exports.push(export.clone());
    }

    let mut imports = Vec::new();
    for (i, (line, rule)) in raw.imports.into_iter().enumerate() {
        if rule.namespaces.is_empty() {
            refuse!(invalid(
                line,
                format!("imports[{i}].namespaces"),
                "an empty list imports nothing; list namespaces or use [\"*\"]".to_owned(),
            ));
        }
        if rule.services.as_ref().is_some_and(Vec::is_empty) {
            refuse!(invalid(
                line,
                format!("imports[{i}].services"),
                "an empty list imports nothing; list service names or omit services".to_owned(),
            ));
        }
        imports.push(rule);
    }

    // Policies are checked here, with the gateways' own parser, so a bad one never ships.
    for (name, doc) in &raw.policies {
        if let Err(e) = crate::model::policy::parse(name, doc) {
            refuse!(invalid(0, e.catalog_path(), e.reason));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CatalogFile {
        exports,
        imports,
        policies: raw.policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_documents_parse_like_yaml() {
        let yaml = "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 80, protocol: http}]\n    export_to: [west]\nimports:\n  - peer: west\n    namespaces: [shop]\n";
        let json = r#"{"exports": [{"namespace": "shop", "name": "cart", "ports": [{"port": 80, "protocol": "http"}], "export_to": ["west"]}],
                      "imports": [{"peer": "west", "namespaces": ["shop"]}]}"#;
        assert_eq!(
            parse_catalog(yaml).expect("yaml"),
            parse_catalog(json).expect("json")
        );
        let unknown = r#"{"exports": [{"namespace": "shop", "name": "cart", "ports": [{"port": 80, "protocol": "http"}], "weigth": 5}]}"#;
        let err = parse_catalog(unknown)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("weigth"), "{err}");
        let dup = r#"{"exports": [{"namespace": "a", "name": "b", "ports": [{"port": 1, "protocol": "tcp"}]},
                                  {"namespace": "a", "name": "b", "ports": [{"port": 1, "protocol": "tcp"}]}]}"#;
        assert!(
            parse_catalog(dup)
                .expect_err("duplicate")
                .to_string()
                .contains("already exported")
        );
    }

    const GOOD: &str = r#"
exports:
  - namespace: shop
    name: cart
    ports: [{port: 8080, protocol: http, name: http}]
    endpoints: [{address: "127.0.0.1:9001", zone: a, weight: 100, ready: true}]
    export_to: [west]
    weight: 100
    headless: false
    metadata: {team: shop}
    registrants: [cart, cart-vm]
  - namespace: shop
    name: stock
    ports:
      - {port: 9000, protocol: grpc}
      - {port: 9001, protocol: tcp}
    endpoints:
      - address: "[fd00::1]:9000"
imports:
  - peer: west
    namespaces: [shop]
    services: [cart]
  - peer: "*"
    namespaces: ["*"]
policies:
  retry: {services: ["*"], retry: {retries: 3}}
"#;

    #[test]
    fn good_file_parses_with_defaults() {
        let catalog = parse_catalog(GOOD).expect("good catalog");
        assert_eq!(catalog.exports.len(), 2);
        let cart = catalog
            .export(&ServiceKey::parse("shop/cart").expect("key"))
            .expect("cart");
        assert_eq!(cart.endpoints.len(), 1);
        assert!(cart.allows_registrant("cart-vm"));
        assert!(!cart.allows_registrant("stock"));
        let stock = &catalog.exports[1];
        assert_eq!(stock.weight, 100);
        assert!(stock.export_to.is_none());
        assert!(stock.endpoints[0].ready);
        assert_eq!(stock.endpoints[0].weight, 100);
        assert!(
            stock.allows_registrant("stock"),
            "default registrant = service name"
        );
        assert!(!stock.allows_registrant("cart"));
        assert_eq!(catalog.imports.len(), 2);
        assert_eq!(
            catalog.policies["retry"]["retry"]["retries"],
            serde_json::json!(3)
        );
        let svc = stock.to_service(&cart.endpoints, 7);
        assert_eq!(svc.endpoints.len(), 2);
        assert_eq!(svc.exported_at_ms, 7);
    }

    #[test]
    fn empty_documents_are_empty_catalogs() {
        for text in [
            "",
            "\n",
            "# nothing yet\n",
            "exports:\nimports:\n",
            "exports: []\n",
        ] {
            assert_eq!(
                parse_catalog(text).expect(text),
                CatalogFile::default(),
                "{text:?}"
            );
        }
    }

    /// Each bad input, and fragments its error message must contain.
    #[test]
    fn bad_files_name_the_problem() {
        let export = |extra: &str| {
            format!(
                "exports:\n  - namespace: shop\n    name: cart\n    ports: [{{port: 80, protocol: http}}]\n{extra}"
            )
        };
        let cases: Vec<(&str, String, &[&str])> = vec![
            ("not yaml", "exports: [\n".into(), &["line 1"]),
            ("not a mapping", "- a\n".into(), &["line 1"]),
            ("unknown top-level field", "export: []\n".into(), &["export"]),
            ("typo in an export", export("    wieght: 5\n"), &["line 5", "wieght"]),
            ("typo in a port", "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 80, protcol: http}]\n".into(), &["line 4", "protcol"]),
            ("unknown protocol", "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 80, protocol: udp}]\n".into(), &["line 4"]),
            ("missing ports", "exports:\n  - namespace: shop\n    name: cart\n".into(), &["ports"]),
            ("uppercase name", "exports:\n  - namespace: shop\n    name: Cart\n    ports: [{port: 80, protocol: http}]\n".into(), &["line 3", "service name"]),
            ("bad namespace", "exports:\n  - namespace: shop_x\n    name: cart\n    ports: [{port: 80, protocol: http}]\n".into(), &["line 2", "namespace"]),
            ("no ports", "exports:\n  - namespace: shop\n    name: cart\n    ports: []\n".into(), &["line 2", "ports", "at least one port"]),
            ("port 0", "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 0, protocol: http}]\n".into(), &["line 2", "ports", "port 0"]),
            ("port out of range", "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 70000, protocol: http}]\n".into(), &["line 4"]),
            ("duplicate port", "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 80, protocol: http}, {port: 80, protocol: tcp}]\n".into(), &["ports", "twice"]),
            ("bad endpoint address", export("    endpoints: [{address: \"10.0.0.1\"}]\n"), &["line 5", "socket address"]),
            ("endpoint port 0", export("    endpoints: [{address: \"10.0.0.1:0\"}]\n"), &["endpoints[0]", "port 0"]),
            ("wildcard endpoint", export("    endpoints: [{address: \"[::]:80\"}]\n"), &["endpoints[0]", "wildcard"]),
            ("duplicate endpoint", export("    endpoints: [{address: \"10.0.0.1:80\"}, {address: \"10.0.0.1:80\"}]\n"), &["endpoints[1]", "twice"]),
            ("endpoint typo", export("    endpoints: [{adress: \"10.0.0.1:80\"}]\n"), &["line 5", "adress"]),
            ("bad zone", export("    endpoints: [{address: \"10.0.0.1:80\", zone: A}]\n"), &["line 5", "zone"]),
            ("huge weight", export("    weight: 4000000000\n"), &["weight", "maximum"]),
            ("bad peer", export("    export_to: [West]\n"), &["line 5", "cluster name"]),
            ("empty export_to", export("    export_to: []\n"), &["export_to", "omit"]),
            ("bad registrant", export("    registrants: [\"a/b\"]\n"), &["registrants[0]", "service account"]),
            ("too much metadata", export(&format!("    metadata: {{k: {}}}\n", "v".repeat(5000))), &["metadata"]),
            ("duplicate export", format!("{}{}", export(""), "  - namespace: shop\n    name: cart\n    ports: [{port: 81, protocol: tcp}]\n"), &["line 5", "shop/cart", "line 2"]),
            ("duplicate key", export("    weight: 1\n    weight: 2\n"), &["line 6", "weight"]),
            ("import typo", "imports:\n  - peer: west\n    namespace: [shop]\n".into(), &["line 3", "namespace"]),
            ("import bad peer", "imports:\n  - peer: West\n    namespaces: [shop]\n".into(), &["line 2", "cluster name"]),
            ("import no namespaces", "imports:\n  - peer: west\n    namespaces: []\n".into(), &["line 2", "imports[0].namespaces"]),
            ("import empty services", "imports:\n  - peer: west\n    namespaces: [shop]\n    services: []\n".into(), &["imports[0].services"]),
            ("two documents", "exports: []\n---\nexports: []\n".into(), &["multiple"]),
            ("bad policy", "policies:\n  canary:\n    services: [shop/cart]\n    split: {weights: {east: 0}}\n".into(), &["policies.canary.split.weights", "above 0"]),
            ("policy typo", "policies:\n  canary:\n    services: [shop/cart]\n    splt: {}\n".into(), &["policies.canary.splt"]),
            ("policy wrong type", "policies:\n  echo-split:\n    services: [shop/cart]\n    split: {weights: {east: half}}\n".into(), &["policies.echo-split.split.weights.east: invalid type"]),
            ("policy nested typo", "policies:\n  x:\n    services: [shop/cart]\n    split: {weights: {east: 1}, cluster_heder: true}\n".into(), &["policies.x.split.cluster_heder: unknown field"]),
            ("policy not a mapping", "policies:\n  x: 3\n".into(), &["policies.x: invalid type", "policy document"]),
        ];
        for (what, text, wants) in cases {
            let err = match parse_catalog(&text) {
                Ok(c) => panic!("{what}: accepted: {c:?}"),
                Err(e) => e.to_string(),
            };
            for want in wants {
                assert!(err.contains(want), "{what}: {want:?} not in error:\n{err}");
            }
            assert!(err.contains("fix"), "{what}: says what to do:\n{err}");
        }
    }

    #[test]
    fn listing_all_problems_accepts_what_the_federation_accepts() {
        let text = "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 0, protocol: http}]\n  - namespace: shop\n    name: cart\n    ports: [{port: 80, protocol: http}]\nimports:\n  - peer: west\n    namespaces: []\npolicies:\n  p: {services: [a/b], split: {weights: {east: half}}}\n";
        let first = parse_catalog(text).expect_err("bad").to_string();
        let all = parse_catalog_listing_all(text).expect_err("bad");
        let fields: Vec<&str> = all.iter().filter_map(CatalogError::field).collect();
        assert_eq!(
            fields,
            [
                "exports[0] (shop/cart).ports",
                "exports[1] (shop/cart)",
                "imports[0].namespaces",
                "policies.p.split.weights.east"
            ]
        );
        assert_eq!(
            all[0].to_string(),
            first,
            "the first problem is the federation's"
        );
        assert_eq!(
            parse_catalog_listing_all(GOOD).expect("good"),
            parse_catalog(GOOD).expect("good")
        );
        assert_eq!(
            parse_catalog_listing_all("exports: [\n")
                .expect_err("syntax")
                .len(),
            1
        );
    }

    #[test]
    fn the_example_catalog_is_valid() {
        let text = include_str!("../../../deploy/examples/catalog.yaml");
        let catalog = parse_catalog(text).expect("deploy/examples/catalog.yaml is valid");
        assert_eq!(catalog.policies.len(), 2);
    }

    #[test]
    fn errors_name_the_file() {
        let err = parse_catalog("exports: 3\n")
            .expect_err("bad")
            .with_path(Path::new("/etc/isthmus/catalog.yaml"));
        let msg = err.to_string();
        assert!(
            msg.starts_with("catalog file /etc/isthmus/catalog.yaml: "),
            "{msg}"
        );
        assert!(msg.contains("--> /etc/isthmus/catalog.yaml:1:"), "{msg}");
    }

    #[test]
    fn service_accounts() {
        for ok in ["cart", "cart-vm", "a", "x.y", "0a"] {
            assert!(check_service_account(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Cart", "a/b", "-a", "a.", "a_b", &"a".repeat(254)] {
            assert!(check_service_account(bad).is_err(), "{bad}");
        }
    }
}
