//! The CLI as an operator meets it, on the real binary: which config each command reads.

use std::process::Command;

use crate::harness::federation::exe;

/// Runs the binary with `args` and exactly the `ISTHMUS_*` variables in `env`.
fn isthmus(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(exe());
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ISTHMUS_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run isthmus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With the federation's ISTHMUS_CONFIG exported (as operators do for every other command),
/// `gateway run` does not read the federation's file as its own: it asks for the gateway's, and
/// takes it from ISTHMUS_GATEWAY_CONFIG or --config.
#[test]
fn gateway_run_never_reads_the_federations_config_variable() {
    let dir = tempfile::tempdir().expect("tmp");
    let federation = dir.path().join("federation.yaml");
    std::fs::write(&federation, "cluster: east\n").expect("write");
    let federation = federation.to_str().expect("utf-8");

    let (ok, err) = isthmus(&["gateway", "run"], &[("ISTHMUS_CONFIG", federation)]);
    assert!(!ok);
    assert!(
        err.contains("ISTHMUS_GATEWAY_CONFIG") && !err.contains("federation.yaml"),
        "gateway run with only ISTHMUS_CONFIG set: {err}"
    );

    let missing = dir.path().join("gw-missing.yaml");
    let missing = missing.to_str().expect("utf-8");
    let env = [
        ("ISTHMUS_CONFIG", federation),
        ("ISTHMUS_GATEWAY_CONFIG", missing),
    ];
    let (ok, err) = isthmus(&["gateway", "run"], &env);
    assert!(!ok);
    assert!(
        err.contains("gw-missing.yaml"),
        "ISTHMUS_GATEWAY_CONFIG is read: {err}"
    );

    let typed = dir.path().join("gw-typed.yaml");
    let typed = typed.to_str().expect("utf-8");
    let (ok, err) = isthmus(&["gateway", "run", "--config", typed], &env);
    assert!(!ok);
    assert!(err.contains("gw-typed.yaml"), "--config wins: {err}");
}
