//! Scenario: the read commands and the catalog file as an operator meets them, on the real
//! binary against two running, peered federations. Words by default and the admin socket's JSON
//! with `--json`; a catalog edit refused as malformed is counted and shown (with its field) when
//! it happens, until a good edit replaces it; `isthmus catalog check` gives the federation's
//! verdict on a file before it is saved.

use std::time::Duration;

use serde_json::Value;

use crate::harness::federation::exe;
use crate::harness::{Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli};

const FAILURES: &str = "isthmus_federation_catalog_reload_failures";
/// A refusal is counted and shown within a few poll intervals (the harness polls every 200 ms).
const NOTICE: Duration = Duration::from_secs(5);

fn policy(weight: &str) -> String {
    format!(
        "policies:\n  canary:\n    services: [shop/cart]\n    split:\n      weights: {{east: {weight}}}\n"
    )
}

/// `isthmus <args>` on its own (no federation): `(exit code, stdout, stderr)`.
fn isthmus(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(exe())
        .args(args)
        .env_remove("ISTHMUS_JSON")
        .output()
        .expect("run isthmus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `isthmus status --json`.
async fn status(fed: &Federation) -> Value {
    let out = fed.cli_ok(&["status", "--json"]).await;
    serde_json::from_str(&out).unwrap_or_else(|e| fed.fail(&format!("status --json: {e}: {out}")))
}

/// The line of the human `status` that starts with `key`.
async fn status_line(fed: &Federation, key: &str) -> String {
    let out = fed.cli_ok(&["status"]).await;
    out.lines()
        .find(|l| l.starts_with(key))
        .map(str::to_string)
        .unwrap_or_else(|| fed.fail(&format!("no `{key}` line in status:\n{out}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_speak_words_and_refused_edits_show_when_they_happen() {
    let good = format!(
        "{}{}",
        catalog(&[export("shop", "cart", 8080, None)], IMPORT_ALL),
        policy("5")
    );
    let east = Federation::start(Spec::new("east", 29).catalog(&good)).await;
    let west = Federation::start(Spec::new("west", 30).catalog(&catalog(&[], IMPORT_ALL))).await;
    peer_via_cli(&east, &west).await;
    west.wait_catalog("west imports shop/cart", |c| has_route(c, "shop/cart"))
        .await;
    west.wait_connected(&["east"]).await;

    // Words by default: no JSON, aligned tables, ages.
    let words = west.cli_ok(&["status"]).await;
    assert!(!words.contains('{'), "status printed JSON:\n{words}");
    assert!(words.starts_with("cluster "), "{words}");
    let lines: Vec<&str> = words.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("PEER "))
        .unwrap_or_else(|| panic!("no peers table:\n{words}"));
    let state_at = lines[header].find("STATE").expect("STATE column");
    assert!(
        lines[header + 1].starts_with("east ")
            && lines[header + 1][state_at..].starts_with("connected"),
        "the peer's state is not under STATE:\n{words}"
    );
    assert!(
        lines[header + 1].contains(" ago") || lines[header + 1].contains("just now"),
        "no age in the peer line:\n{words}"
    );

    // `--json` is the admin socket's JSON, exactly.
    let json = status(&west).await;
    assert_eq!(json["cluster"], "west", "{json}");
    assert!(
        json["peers"].is_array() && json["catalog_apply"].is_object(),
        "{json}"
    );

    let view: Value = serde_json::from_str(&west.cli_ok(&["catalog", "--json"]).await)
        .expect("catalog --json is JSON");
    assert_eq!(
        view,
        west.catalog().await,
        "catalog --json is not the admin answer"
    );
    let vip = view["routes"]["shop/cart"]["vips"]["v4"]
        .as_str()
        .expect("a VIP")
        .to_string();
    let words = west.cli_ok(&["catalog"]).await;
    assert!(!words.contains('{'), "catalog printed JSON:\n{words}");
    let row = words
        .lines()
        .find(|l| l.starts_with("shop/cart "))
        .unwrap_or_else(|| panic!("no shop/cart row:\n{words}"));
    assert!(
        row.contains(&vip) && row.contains("8080/tcp") && row.contains("east"),
        "the row lacks the VIP {vip}, the port or the cluster:\n{words}"
    );
    for args in [
        &["peering", "list"][..],
        &["peering", "show", "east"],
        &["gateway", "list"],
        &["ca", "status"],
    ] {
        let out = west.cli_ok(args).await;
        assert!(
            !out.contains('{') && !out.trim().is_empty(),
            "{args:?}:\n{out}"
        );
        let json = west.cli_ok(&[args, &["--json"][..]].concat()).await;
        serde_json::from_str::<Value>(&json)
            .unwrap_or_else(|e| panic!("{args:?} --json is not JSON ({e}):\n{json}"));
    }

    // A malformed edit: counted and shown when it happens, not at the next good edit.
    assert_eq!(east.metric(FAILURES, &[]).await, 0.0);
    assert!(
        status_line(&east, "catalog file")
            .await
            .ends_with(": in force")
    );
    let broken = format!(
        "{}{}",
        catalog(&[export("shop", "cart", 8080, None)], IMPORT_ALL),
        policy("half")
    );
    east.write_catalog(&broken);
    let field = "policies.canary.split.weights.east";
    east.wait_until("east counts the refused edit", NOTICE, || async {
        let n = east.metric(FAILURES, &[]).await;
        (n == 1.0, format!("{FAILURES} {n}"))
    })
    .await;
    let refused = &status(&east).await["catalog_file"]["last_refused"];
    assert_eq!(refused["field"], field, "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|m| m.starts_with("invalid type"))
            && refused["message"]
                .as_str()
                .is_some_and(|m| m.contains("catalog.yaml") && m.contains(field))
            && refused["at_ms"].as_i64().is_some_and(|t| t > 0),
        "{refused}"
    );
    let line = status_line(&east, "catalog file").await;
    assert!(
        line.contains("EDIT REFUSED") && line.contains(field),
        "status does not show the refusal: {line}"
    );
    // Counted once, however many polls see the same broken file.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(east.metric(FAILURES, &[]).await, 1.0);

    // `catalog check` gives the same verdict on the same file, with the field, exit code 1.
    let path = east.dir.join("catalog.yaml");
    let path = path.to_str().expect("utf-8");
    let (code, out, err) = isthmus(&["catalog", "check", path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(field) && err.contains("invalid type"), "{err}");

    // Fixed: the refusal is gone, the count stays.
    east.write_catalog(&good);
    east.wait_until("east clears the refusal", NOTICE, || async {
        let s = status(&east).await;
        let r = &s["catalog_file"]["last_refused"];
        (r.is_null(), r.to_string())
    })
    .await;
    assert!(
        status_line(&east, "catalog file")
            .await
            .ends_with(": in force")
    );
    assert_eq!(east.metric(FAILURES, &[]).await, 1.0);
    let (code, out, err) = isthmus(&["catalog", "check", path]);
    assert_eq!(
        (code, out.trim()),
        (0, "ok: 1 exports, 1 imports, 1 policies"),
        "{err}"
    );
    let missing = east.dir.join("no-such-catalog.yaml");
    let (code, _, err) = isthmus(&["catalog", "check", missing.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "an unreadable file: {err}");
    assert!(err.contains("no-such-catalog.yaml"), "{err}");
}
