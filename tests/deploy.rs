//! The deployment files under `deploy/` agree with fulcrum: the Kubernetes manifests parse, the
//! config in the ConfigMap is valid, the probes name admin endpoints on the admin listener's
//! port, the container ports are the listeners' ports, the grace period outlasts the drain,
//! and the systemd unit uses the notify protocol fulcrum speaks.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

/// Every document of every manifest in `deploy/kubernetes`, by kind and name.
fn manifests() -> BTreeMap<(String, String), Yaml> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut documents = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|ext| ext != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read a manifest");
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        for doc in docs {
            let kind = doc["kind"].as_str().expect("every manifest has a kind");
            let name = doc["metadata"]["name"].as_str().expect("and a name");
            documents.insert((kind.to_owned(), name.to_owned()), doc);
        }
    }
    documents
}

#[test]
fn kubernetes_manifests_match_the_config_and_the_admin_api() {
    let documents = manifests();
    let get = |kind: &str, name: &str| {
        documents
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    for kind in [
        "Deployment",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "Secret",
    ] {
        assert!(
            documents.keys().any(|(k, _)| k == kind),
            "a {kind} is part of the deployment"
        );
    }

    // The config parses (in a temporary directory: its token file is the Secret's mount, and
    // its backend is a cluster name that only resolves inside the cluster).
    let text = get("ConfigMap", "fulcrum")["data"]["fulcrum.toml"]
        .as_str()
        .expect("fulcrum.toml in the ConfigMap");
    let token_path = "/etc/fulcrum/secret/admin.token";
    assert!(text.contains(token_path));
    let dir = common::TempDir::new("k8s-config");
    let token = get("Secret", "fulcrum-admin-token")["stringData"]["admin.token"]
        .as_str()
        .expect("the token in the Secret");
    dir.write("admin.token", token);
    let local = text
        .replace(token_path, "admin.token")
        .replace("app.default.svc.cluster.local", "127.0.0.1");
    let config = fulcrum::Config::parse(&dir.config_file(), &local)
        .unwrap_or_else(|err| panic!("the ConfigMap's config: {err}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let admin = config
        .admin
        .as_ref()
        .expect("an admin listener for the probes");
    assert!(
        !admin.listen.ip().is_loopback(),
        "the kubelet probes the pod IP"
    );
    assert!(
        admin.token.is_some(),
        "the admin API beyond loopback has a token"
    );

    let deployment = get("Deployment", "fulcrum");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let ports: BTreeMap<&str, i64> = container["ports"]
        .as_vec()
        .expect("container ports")
        .iter()
        .map(|port| {
            (
                port["name"].as_str().expect("named ports"),
                port["containerPort"].as_i64().expect("a port number"),
            )
        })
        .collect();
    assert_eq!(ports["admin"], i64::from(admin.listen.port()));
    for listener in &config.listeners {
        let port = ports
            .get(&*listener.name)
            .unwrap_or_else(|| panic!("a container port named {}", listener.name));
        assert_eq!(*port, i64::from(listener.listen.port()));
    }
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("admin"), "{probe}");
    }
    let args: Vec<&str> = container["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config_path = args
        .windows(2)
        .find(|pair| pair[0] == "--config")
        .map(|pair| pair[1])
        .expect("--config in the args");
    let mounts = container["volumeMounts"].as_vec().expect("volume mounts");
    let mounted = |path: &str| {
        mounts.iter().any(|mount| {
            mount["mountPath"]
                .as_str()
                .is_some_and(|dir| Path::new(path).parent() == Some(Path::new(dir)))
        })
    };
    assert!(mounted(config_path), "the config file is mounted");
    assert!(mounted(token_path), "the token file is mounted");

    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("a grace period");
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    let drain = config.runtime.shutdown_timeout + Duration::from_secs(pre_stop.unsigned_abs());
    assert!(
        Duration::from_secs(grace.unsigned_abs()) > drain,
        "terminationGracePeriodSeconds {grace} must outlast preStop + shutdown_timeout ({drain:?})"
    );

    let service = get("Service", "fulcrum");
    for port in service["spec"]["ports"].as_vec().expect("service ports") {
        let target = port["targetPort"].as_str().expect("named target ports");
        assert!(ports.contains_key(target), "{target} is a container port");
    }
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        get("PodDisruptionBudget", "fulcrum")["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn the_systemd_unit_uses_what_fulcrum_speaks() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/fulcrum.service"),
    )
    .expect("the unit file");
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= in the unit"))
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(
        value("NotifyAccess"),
        "all",
        "the upgraded process notifies too"
    );
    assert!(value("ExecReload").contains("-HUP"));
    assert!(value("ExecStart").contains("--config"));
    let stop: u64 = value("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("seconds");
    assert!(
        stop > 30,
        "TimeoutStopSec outlasts the default shutdown_timeout"
    );
    assert!(value("WatchdogSec").ends_with('s'));
    let socket = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/fulcrum.socket"),
    )
    .expect("the socket unit");
    assert!(socket.contains("FileDescriptorName="));
}
