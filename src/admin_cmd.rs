//! Subcommands that talk to a running federation over its admin socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{Target, render};

const TIMEOUT: Duration = Duration::from_secs(30);

pub fn socket_path(target: &Target) -> anyhow::Result<PathBuf> {
    if let Some(p) = &target.admin_socket {
        return Ok(p.clone());
    }
    if let Some(c) = &target.config {
        let cfg = isthmus_federation::config::FederationConfig::load(c)?;
        return Ok(cfg.admin_socket());
    }
    anyhow::bail!(
        "say which federation: --config <file> (or ISTHMUS_CONFIG), or --admin-socket <path>"
    )
}

pub async fn call(target: &Target, op: &str, body: Value) -> anyhow::Result<Value> {
    let socket = socket_path(target)?;
    Ok(isthmus_federation::admin::admin_call(&socket, op, &body, TIMEOUT).await?)
}

/// Calls `op` and prints the answer: the JSON as the socket gave it with `--json`, else in words
/// (see [`crate::render`]).
pub async fn call_and_print(target: &Target, op: &str, body: Value) -> anyhow::Result<()> {
    let value = call(target, op, body).await?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    print!("{}", words(op, &value, render::now_ms()));
    Ok(())
}

/// An answer in words.
fn words(op: &str, value: &Value, now_ms: i64) -> String {
    match op {
        "status" => render::status::render(value, now_ms),
        "catalog" => render::catalog::render(value, now_ms),
        "peering.token" => format!("{}\n", value["token"].as_str().unwrap_or_default()),
        "peering.list" => render::peering::list(
            value["peers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ),
        "peering.show" => render::peering::show(value),
        "peering.establish" | "peering.remove" => render::peering::done(op, value),
        "gateway.list" => render::gateway::list(&value["gateways"]),
        "gateway.revoke" => render::gateway::revoked(value),
        "ca.status" | "ca.rotate" | "ca.retire" => render::ca::status(value),
        // Every operation has words above; JSON for one added without them.
        _ => format!("{value:#}\n"),
    }
}

pub async fn gateway_bootstrap(
    target: &Target,
    name: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let file = call(target, "gateway.bootstrap", json!({ "name": name })).await?;
    let text = serde_json::to_string_pretty(&file)?;
    match out {
        None => println!("{text}"),
        Some(path) => {
            write_private(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote bootstrap file for gateway {name} to {}",
                path.display()
            );
        }
    }
    Ok(())
}

/// `isthmus workload issue`: sends a CSR (PEM or DER) and prints or writes the signed chain.
pub async fn workload_issue(
    target: &Target,
    namespace: &str,
    service_account: &str,
    csr: &Path,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = std::fs::read(csr).with_context(|| format!("reading {}", csr.display()))?;
    let der = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => {
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<Vec<_>>()
                .concat();
            engine
                .decode(body.trim())
                .with_context(|| format!("{} is not a PEM CSR", csr.display()))?
        }
        _ => bytes,
    };
    let value = call(
        target,
        "workload.issue",
        json!({
            "namespace": namespace,
            "service_account": service_account,
            "csr_der_b64": engine.encode(der),
        }),
    )
    .await?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let chain = value["chain_pem"].as_str().unwrap_or_default();
    match out {
        None => print!("{chain}"),
        Some(path) => {
            std::fs::write(path, chain).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote the certificate for {} to {}",
                value["spiffe_id"].as_str().unwrap_or("?"),
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes a file only its owner can read (bootstrap tokens, key-encryption keys).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
