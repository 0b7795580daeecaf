//! Invariants of the rendered objects: every path a config names is mounted from the right
//! kind of volume, every port a config binds is the one the Services and NetworkPolicies use,
//! the pods are hardened, RBAC is exactly what the code uses, and the Dockerfile runs what the
//! manifests expect.

use clap::Parser as _;
use serde_json::Value;

use super::*;

/// Every path a config names is mounted: the KEK and the bootstrap file from Secrets, the
/// configs from ConfigMaps, the store on the StatefulSet's volume.
#[test]
fn config_paths_are_mounted_from_the_right_sources() {
    let all = objects(&east()).unwrap();
    let fed = yaml(&config_map_file(
        &all,
        "isthmus-federation",
        "federation.yaml",
    ));
    let spec = pod_spec(&all, "StatefulSet", "isthmus-federation");
    let c = &spec["containers"][0];
    let config_arg = c["args"][2].as_str().unwrap();
    assert_eq!(c["args"][1], "--config");
    let check = |path: &str, want: &str| {
        let (kind, _) = source_of_path(spec, c, path);
        assert_eq!(kind, want, "{path}");
    };
    check(config_arg, "configMap");
    check(fed["catalog"]["file"].as_str().unwrap(), "configMap");
    check(fed["ca"]["kek_file"].as_str().unwrap(), "secret");
    check(
        &format!("{}/store", fed["data_dir"].as_str().unwrap()),
        "volumeClaimTemplate",
    );
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "ISTHMUS_CONFIG" && e["value"] == config_arg)
    );

    let gw_spec = pod_spec(&all, "Deployment", "isthmus-gateway");
    let gc = &gw_spec["containers"][0];
    let gw = yaml(GATEWAY_CONFIG);
    let (kind, _) = source_of_path(gw_spec, gc, gc["args"][3].as_str().unwrap());
    assert_eq!(kind, "configMap");
    let (kind, _) = source_of_path(gw_spec, gc, gw["bootstrap_file"].as_str().unwrap());
    assert_eq!(kind, "secret");
    let pod_ip = gc["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == gw["kubernetes"]["pod_ip_env"])
        .expect("the pod IP variable is set");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    // No ConfigMap carries a secret.
    for o in all.iter().filter(|o| o["kind"] == "ConfigMap") {
        let text = o["data"].to_string().to_lowercase();
        assert!(
            !text.contains("token:") && !text.contains("private key"),
            "{text}"
        );
    }
}

/// The ports the configs bind are the container ports the Services, probes and NetworkPolicies
/// use.
#[test]
fn ports_agree_across_configs_services_and_policies() {
    let all = objects(&east()).unwrap();
    let fed = yaml(&config_map_file(
        &all,
        "isthmus-federation",
        "federation.yaml",
    ));
    let c = &pod_spec(&all, "StatefulSet", "isthmus-federation")["containers"][0];
    let want = [
        (
            "peering",
            fed["listen"]["peering"]["bind"].as_str().unwrap(),
        ),
        ("api", fed["listen"]["api"]["bind"].as_str().unwrap()),
        ("admin", fed["listen"]["admin"].as_str().unwrap()),
        ("dns-udp", fed["dns"]["bind"].as_str().unwrap()),
        ("dns-tcp", fed["dns"]["bind"].as_str().unwrap()),
    ];
    for (name, addr) in want {
        assert!(
            addr.starts_with("0.0.0.0:"),
            "{name} binds the pod's addresses: {addr}"
        );
        assert_eq!(container_port(c, name), port_of(addr), "{name}");
    }
    let gw = yaml(GATEWAY_CONFIG);
    let gc = &pod_spec(&all, "Deployment", "isthmus-gateway")["containers"][0];
    for (name, addr) in [
        ("inbound", gw["listen"]["inbound"]["bind"].as_str().unwrap()),
        ("proxy", gw["listen"]["proxy"].as_str().unwrap()),
        ("admin", gw["listen"]["admin"].as_str().unwrap()),
    ] {
        assert_eq!(container_port(gc, name), port_of(addr), "gateway {name}");
    }
    let dns = find(&all, "Service", "isthmus-dns");
    for p in dns["spec"]["ports"].as_array().unwrap() {
        assert_eq!(p["port"], 53);
        assert!(p["targetPort"].as_str().unwrap().starts_with("dns-"));
    }
    // Every Service's named targetPort exists on the pods it selects.
    for svc in all.iter().filter(|o| o["kind"] == "Service") {
        let component = &svc["spec"]["selector"]["app.kubernetes.io/component"];
        let container = if component == "federation" { c } else { gc };
        for p in svc["spec"]["ports"].as_array().unwrap() {
            container_port(container, p["targetPort"].as_str().unwrap());
        }
    }
    assert_eq!(
        find(&all, "Service", "isthmus-gateway")["spec"]["type"],
        "LoadBalancer"
    );
    assert_eq!(fed["kubernetes"]["gateway_service"], "isthmus-gateway");
    // From anywhere: exactly the peering and inbound ports.
    let mut open = Vec::new();
    for np in all.iter().filter(|o| o["kind"] == "NetworkPolicy") {
        for rule in np["spec"]["ingress"].as_array().into_iter().flatten() {
            if rule["from"].is_null() {
                open.extend(
                    rule["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["port"].clone()),
                );
            }
        }
    }
    let expected = vec![
        Value::from(container_port(c, "peering")),
        Value::from(container_port(gc, "inbound")),
    ];
    assert_eq!(open, expected);
    // The target ports the federation allocates are open in-cluster.
    let range = fed["kubernetes"]["target_ports"].as_str().unwrap();
    let (lo, hi) = range.split_once('-').unwrap();
    let gw_policy = find(&all, "NetworkPolicy", "isthmus-gateway");
    assert!(
        gw_policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| {
                r["ports"].as_array().unwrap().iter().any(|p| {
                    p["port"].as_u64() == lo.parse().ok()
                        && p["endPort"].as_u64() == hi.parse().ok()
                })
            })
    );
}

/// Every pod: non-root with the Dockerfile's UID, no privilege, read-only root, seccomp,
/// resources and probes; only the federation has an API token.
#[test]
fn pods_are_hardened() {
    let all = objects(&east()).unwrap();
    let uid = dockerfile_uid();
    for (kind, name) in [
        ("StatefulSet", "isthmus-federation"),
        ("Deployment", "isthmus-gateway"),
    ] {
        let spec = pod_spec(&all, kind, name);
        let sc = &spec["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["runAsUser"], uid, "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(spec[key].is_null() || spec[key] == false, "{name} {key}");
        }
        for c in spec["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert!(sc["capabilities"]["add"].is_null(), "{name}");
            assert_eq!(sc["runAsUser"], uid, "{name}");
            for r in ["cpu", "memory"] {
                assert!(c["resources"]["requests"][r].is_string(), "{name} {r}");
                assert!(c["resources"]["limits"][r].is_string(), "{name} {r}");
            }
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            // Writable: only the federation's data volume.
            for m in c["volumeMounts"].as_array().unwrap() {
                let writable = m["readOnly"] != true;
                assert_eq!(
                    writable,
                    m["name"] == "data" && kind == "StatefulSet",
                    "{name} {m}"
                );
            }
        }
    }
    assert_eq!(
        pod_spec(&all, "Deployment", "isthmus-gateway")["automountServiceAccountToken"],
        false
    );
    assert_eq!(
        find(&all, "ServiceAccount", "isthmus-gateway")["automountServiceAccountToken"],
        false
    );
    let pdb = find(&all, "PodDisruptionBudget", "isthmus-gateway");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        find(&all, "Deployment", "isthmus-gateway")["spec"]["replicas"],
        2
    );
}

/// The ClusterRole lists exactly the verbs the Kubernetes source and import writer use, and
/// nothing touches Secrets, Pods or RBAC.
#[test]
fn rbac_is_least_privilege() {
    let all = objects(&east()).unwrap();
    let role = find(&all, "ClusterRole", "isthmus-federation");
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for res in rule["resources"].as_array().unwrap() {
                let verbs: Vec<&str> = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                granted.push(format!(
                    "{}/{}: {}",
                    group.as_str().unwrap(),
                    res.as_str().unwrap(),
                    verbs.join(",")
                ));
            }
        }
    }
    let all_verbs = "get,list,watch,create,update,patch,delete";
    assert_eq!(
        granted,
        [
            "multicluster.x-k8s.io/serviceexports: get,list,watch".to_string(),
            "multicluster.x-k8s.io/serviceexports/status: update,patch".into(),
            format!("multicluster.x-k8s.io/serviceimports: {all_verbs}"),
            "multicluster.x-k8s.io/serviceimports/status: get,update,patch".into(),
            "multicluster.x-k8s.io/serviceimports/finalizers: update".into(),
            format!("/services: {all_verbs}"),
            format!("discovery.k8s.io/endpointslices: {all_verbs}"),
            "/namespaces: get,list,watch".into(),
            "events.k8s.io/events: create,patch".into(),
        ]
    );
    assert!(
        !all.iter()
            .any(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding"),
        "the gateway has no API access"
    );
}

fn dockerfile() -> &'static str {
    include_str!("../../../deploy/Dockerfile")
}

/// The numeric UID the image runs as (`USER uid:gid`).
fn dockerfile_uid() -> u64 {
    let user = dockerfile()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    let uid: u64 = user
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("USER is numeric");
    assert_ne!(uid, 0, "USER is not root");
    uid
}

/// The image's last stage runs the one binary, copied from the builder, as a numeric non-root
/// user; the containers run it (no `command`) with arguments this binary parses.
#[test]
fn the_dockerfile_runs_what_the_manifests_expect() {
    let text = dockerfile();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "multi-stage: builder and runtime");
    assert!(stages[0].contains(" AS builder"));
    assert!(stages[1].contains("distroless"), "{}", stages[1]);
    assert!(text.contains("cargo build --release --locked --bin isthmus"));
    assert!(text.contains("protobuf-compiler"));
    let entry = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert_eq!(entry.len(), 1);
    let runtime = &text[text.find(stages[1]).unwrap()..];
    let copies: Vec<&str> = runtime.lines().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies.len(), 1, "only the one binary: {copies:?}");
    assert!(copies[0].starts_with("COPY --from=builder ") && copies[0].ends_with(&entry[0]));
    dockerfile_uid();

    let all = objects(&east()).unwrap();
    for (kind, name) in [
        ("StatefulSet", "isthmus-federation"),
        ("Deployment", "isthmus-gateway"),
    ] {
        for c in pod_spec(&all, kind, name)["containers"].as_array().unwrap() {
            assert!(c["command"].is_null(), "{name} runs the image's ENTRYPOINT");
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let argv = std::iter::once("isthmus").chain(args.iter().copied());
            if let Err(e) = crate::Cli::try_parse_from(argv) {
                panic!("{name}: `isthmus {}` does not parse: {e}", args.join(" "));
            }
        }
    }
}
