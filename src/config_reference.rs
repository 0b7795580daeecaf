//! The example configs (`deploy/examples/{federation,gateway}.yaml`) and the config reference
//! pages (`docs/config-{federation,gateway}.md`) checked against the real config structs, so
//! neither can drift from the code: every field of the structs appears in the example and in
//! the page's table, the page lists nothing else, and the defaults the example and the page
//! show are the ones the structs give.
//!
//! The fields are read from the structs themselves, not from a list kept here: every config
//! struct denies unknown fields, so adding an unknown key to one mapping of the example makes
//! serde name the fields expected there (a mapping that accepts the key, or fails otherwise, is
//! a map such as `dns.gslb.ingress`: a leaf). A field added to a struct fails this test until the
//! example and the page show it; the failure prints the rows to add.
//!
//! Optional settings without a default are commented out in the examples (`# key: value`, or a
//! commented-out block); the test removes the `# ` of such lines and checks the result too.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use isthmus_federation::config::FederationConfig;
use isthmus_gateway::config::GatewayConfig;

const PROBE: &str = "zz_probe";

/// The example with its commented-out settings turned on: a line `# key: ...` or `# - ...`
/// (prose comments never start with a lowercase key and a colon, or a dash).
fn uncomment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let setting = trimmed.strip_prefix("# ").filter(|rest| {
            let body = rest.trim_start();
            let key = body.split_once(':').is_some_and(|(k, after)| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && (after.is_empty() || after.starts_with(' '))
            });
            key || body.starts_with("- ")
        });
        match setting {
            Some(rest) => out.push_str(&format!("{indent}{rest}\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn get<'a>(v: &'a Value, at: &[Seg]) -> Option<&'a Value> {
    at.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get(k),
        Seg::Index(i) => v.get(i),
    })
}

fn get_mut<'a>(v: &'a mut Value, at: &[Seg]) -> Option<&'a mut Value> {
    at.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get_mut(k),
        Seg::Index(i) => v.get_mut(i),
    })
}

/// The fields serde expects at `at` when that mapping is a struct; `None` for a map.
fn fields_of<T: DeserializeOwned>(doc: &Value, at: &[Seg]) -> Option<Vec<String>> {
    let mut probe = doc.clone();
    get_mut(&mut probe, at)?
        .as_object_mut()?
        .insert(PROBE.into(), Value::from(0));
    let err = serde_json::from_value::<T>(probe).err()?.to_string();
    // serde: "unknown field `x`, expected one of `a`, `b`" / "expected `a`" / "there are no fields"
    let (_, expected) = err.split_once(&format!("unknown field `{PROBE}`"))?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// What the example shows: for each struct (by dotted path, `[]` for list items) the fields
/// serde expects and those the example writes; and every leaf path.
#[derive(Debug, Default)]
struct Shape {
    structs: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    leaves: BTreeSet<String>,
}

fn join(dotted: &str, key: &str) -> String {
    if dotted.is_empty() {
        key.to_string()
    } else {
        format!("{dotted}.{key}")
    }
}

fn walk<T: DeserializeOwned>(doc: &Value, at: &mut Vec<Seg>, dotted: &str, shape: &mut Shape) {
    match get(doc, at) {
        Some(Value::Object(map)) => match fields_of::<T>(doc, at) {
            Some(fields) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                let entry = shape.structs.entry(dotted.to_string()).or_default();
                entry.0.extend(fields);
                entry.1.extend(keys.iter().cloned());
                for k in keys {
                    at.push(Seg::Key(k.clone()));
                    walk::<T>(doc, at, &join(dotted, &k), shape);
                    at.pop();
                }
            }
            None => {
                shape.leaves.insert(dotted.to_string());
            }
        },
        Some(Value::Array(items)) if items.iter().any(Value::is_object) => {
            for i in 0..items.len() {
                at.push(Seg::Index(i));
                walk::<T>(doc, at, &format!("{dotted}[]"), shape);
                at.pop();
            }
        }
        _ => {
            shape.leaves.insert(dotted.to_string());
        }
    }
}

/// Leaf path -> value, descending only into what `shape` knows as structs (and list items).
fn leaf_values(v: &Value, dotted: &str, shape: &Shape, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if shape.structs.contains_key(dotted) => {
            for (k, c) in m {
                leaf_values(c, &join(dotted, k), shape, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for c in items {
                leaf_values(c, &format!("{dotted}[]"), shape, out);
            }
        }
        _ => {
            out.entry(dotted.to_string()).or_insert_with(|| v.clone());
        }
    }
}

/// A value as the pages write it (inside backticks).
fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// The page's reference rows: `` | `path` | type | default | meaning | `` -> (type, default).
fn doc_rows(page: &str) -> BTreeMap<String, (String, String)> {
    page.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let path = cells.get(1)?.trim_matches('`').to_string();
            Some((path, (cells.get(2)?.to_string(), cells.get(3)?.to_string())))
        })
        .collect()
}

fn yaml_value(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("YAML: {e}"))
}

/// Every way `example` and `page` disagree with the structs of `T`. `load` is the component's
/// real loader (parse + validate); `minimal` holds only what has no default (and the optional
/// sections whose defaults are checked), so what it does not write is a default; `page_only`
/// are rows the page may add (another variant of an enum the example shows one of).
fn problems<T: DeserializeOwned + Serialize>(
    load: impl Fn(&str) -> Result<T, String>,
    example: &str,
    minimal: &str,
    page: &str,
    page_only: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = load(example) {
        out.push(format!("the example does not load: {e}"));
    }
    let full_text = uncomment(example);
    let full = match load(&full_text) {
        Ok(cfg) => serde_json::to_value(cfg).expect("serialize"),
        Err(e) => {
            out.push(format!(
                "the example with its commented-out settings turned on does not load: {e}\n{full_text}"
            ));
            return out;
        }
    };
    let doc = yaml_value(&full_text);
    let mut shape = Shape::default();
    walk::<T>(&doc, &mut Vec::new(), "", &mut shape);
    if !shape.structs.contains_key("") {
        out.push("the probe found no fields at the top level".into());
        return out;
    }
    let defaults = {
        let cfg = load(minimal).unwrap_or_else(|e| panic!("minimal config: {e}"));
        let mut all = BTreeMap::new();
        leaf_values(
            &serde_json::to_value(cfg).expect("serialize"),
            "",
            &shape,
            &mut all,
        );
        let mut written = BTreeMap::new();
        leaf_values(&yaml_value(minimal), "", &shape, &mut written);
        all.retain(|p, _| !written.contains_key(p));
        all
    };
    let mut in_example = BTreeMap::new();
    leaf_values(&full, "", &shape, &mut in_example);
    let rows = doc_rows(page);
    let under = |row: &str, field: &str| {
        row == field
            || row
                .strip_prefix(field)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    let mut to_add = Vec::new();
    let mut missing = Vec::new();
    for (path, (expected, written)) in &shape.structs {
        for field in expected.difference(written) {
            let p = join(path, field);
            out.push(format!("the example does not show `{p}`"));
            if !rows.keys().any(|r| under(r, &p)) {
                let default = defaults.get(&p).map(|v| format!("`{}`", render(v)));
                to_add.push(format!(
                    "| `{p}` | ? | {} | ? |",
                    default.unwrap_or_else(|| "—".into())
                ));
            }
            missing.push(p);
        }
    }
    for (path, default) in &defaults {
        if in_example.get(path) != Some(default) {
            out.push(format!(
                "the example sets `{path}` to {:?}; its default is {default}",
                in_example.get(path)
            ));
        }
    }
    for leaf in &shape.leaves {
        match rows.get(leaf) {
            None => {
                let default = defaults.get(leaf).map(|v| format!("`{}`", render(v)));
                to_add.push(format!(
                    "| `{leaf}` | ? | {} | ? |",
                    default.unwrap_or_else(|| "—".into())
                ));
            }
            Some((kind, _)) if kind.is_empty() => {
                out.push(format!("the page gives `{leaf}` no type"));
            }
            Some(_) => {}
        }
    }
    for (path, (_, default_cell)) in &rows {
        let known = shape.leaves.contains(path)
            || page_only.contains(&path.as_str())
            || missing.iter().any(|m| under(path, m));
        if !known {
            out.push(format!(
                "the page lists `{path}`, which is not a config field"
            ));
        }
        if let Some(d) = defaults.get(path) {
            let want = format!("`{}`", render(d));
            if *default_cell != want {
                out.push(format!(
                    "the page gives `{path}` the default {default_cell}; the struct's is {want}"
                ));
            }
        }
    }
    if !to_add.is_empty() {
        out.push(format!(
            "the page lacks these rows (fill in the type and meaning):\n{}",
            to_add.join("\n")
        ));
    }
    out
}

const FEDERATION_MINIMAL: &str = "
cluster: east
region: us-east
data_dir: /var/lib/isthmus
listen: {peering: {bind: 127.0.0.1:15443}}
vips: {ipv4: 127.77.0.0/24}
store: {backend: etcd, endpoints: ['http://127.0.0.1:2379'], prefix: /isthmus/east/}
dns: {gslb: {zone: mesh.example, ingress: {east: [203.0.113.10]}}}
";

const GATEWAY_MINIMAL: &str = "
bootstrap_file: /etc/isthmus/gw-1.json
listen: {inbound: {bind: 127.0.0.1:15008}}
";

fn load_federation(text: &str) -> Result<FederationConfig, String> {
    let cfg = FederationConfig::from_yaml("federation.yaml", text).map_err(|e| e.to_string())?;
    if let Some(store) = &cfg.store {
        store.validate().map_err(|e| e.to_string())?;
    }
    Ok(cfg)
}

fn load_gateway(text: &str) -> Result<GatewayConfig, String> {
    GatewayConfig::from_yaml("gateway.yaml", text).map_err(|e| e.to_string())
}

#[test]
fn federation_example_and_reference_show_every_field_and_default() {
    let found = problems(
        load_federation,
        include_str!("../deploy/examples/federation.yaml"),
        FEDERATION_MINIMAL,
        include_str!("../docs/config-federation.md"),
        &["store.data_dir"],
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn gateway_example_and_reference_show_every_field_and_default() {
    let found = problems(
        load_gateway,
        include_str!("../deploy/examples/gateway.yaml"),
        GATEWAY_MINIMAL,
        include_str!("../docs/config-gateway.md"),
        &[],
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The checker itself finds each kind of drift (so a passing run above means something).
#[test]
fn the_checker_finds_missing_fields_wrong_defaults_and_stale_rows() {
    let example = include_str!("../deploy/examples/federation.yaml");
    let page = include_str!("../docs/config-federation.md");
    let check = |example: &str, page: &str| {
        problems(
            load_federation,
            example,
            FEDERATION_MINIMAL,
            page,
            &["store.data_dir"],
        )
        .join("\n")
    };
    let cases = [
        (
            example.replace("  reconnect_max_backoff: 10s\n", ""),
            page.to_string(),
            "the example does not show `peering.reconnect_max_backoff`",
        ),
        (
            example.replace("poll_interval: 500ms", "poll_interval: 1s"),
            page.to_string(),
            "the example sets `catalog.poll_interval`",
        ),
        (
            example.replace("#   connect_timeout_ms: 5000\n", ""),
            page.to_string(),
            "`store.connect_timeout_ms`",
        ),
        (
            example.to_string(),
            page.replace("| `vips.quarantine` |", "| `vips.quarantin` |"),
            "the page lists `vips.quarantin`",
        ),
        (
            example.to_string(),
            page.replace("| `ca.root_validity` |", "| `ca.root_validity_x` |"),
            "| `ca.root_validity` | ? | `3650d` | ? |",
        ),
        (
            example.to_string(),
            page.replace("`20s`", "`30s`"),
            "the page gives `peering.silence_timeout` the default `30s`",
        ),
    ];
    for (example, page, needle) in cases {
        let found = check(&example, &page);
        assert!(found.contains(needle), "{needle:?} not in:\n{found}");
    }
    assert!(
        uncomment("  # max: 1  # note\n# Prose: no\n#   - a\n")
            .contains("  max: 1  # note\n# Prose: no\n  - a\n")
    );
}
