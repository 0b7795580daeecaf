//! `isthmus catalog check <file>`: validates a catalog file before it is saved in place, with
//! the federation's own reading and checks (`isthmus_federation::catalog::check_file`).
//! Exit codes: 0 valid, 1 refused (each problem printed with its field path), 2 unreadable.

use std::path::Path;
use std::process::ExitCode;

use isthmus_federation::catalog::{CatalogError, check_file};
use serde_json::json;

/// Checks `path`; prints the verdict (stdout) or the problems (stderr), or JSON with `json`.
pub async fn check(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let verdict = check_file(path).await;
    let code = match &verdict {
        Ok(_) => 0,
        Err(errors) if errors.iter().any(CatalogError::is_unreadable) => 2,
        Err(_) => 1,
    };
    if json {
        let value = match &verdict {
            Ok(c) => json!({
                "ok": true,
                "exports": c.exports.len(),
                "imports": c.imports.len(),
                "policies": c.policies.len(),
            }),
            Err(errors) => json!({
                "ok": false,
                "errors": errors.iter().map(|e| json!({
                    "field": e.field(),
                    "line": e.line(),
                    "message": e.to_string(),
                })).collect::<Vec<_>>(),
            }),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        match &verdict {
            Ok(c) => println!(
                "ok: {} exports, {} imports, {} policies",
                c.exports.len(),
                c.imports.len(),
                c.policies.len()
            ),
            Err(errors) => {
                // Each message names the file, the line when known, and the field path.
                for e in errors {
                    eprintln!("error: {e}");
                }
                if code == 1 {
                    eprintln!(
                        "{} problem{}: the federation would refuse this file and keep its last \
                         good catalog",
                        errors.len(),
                        if errors.len() == 1 { "" } else { "s" }
                    );
                }
            }
        }
    }
    Ok(ExitCode::from(code))
}
