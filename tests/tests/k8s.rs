//! The Kubernetes manifests (deploy/k8s) as `kubectl kustomize` renders them:
//! the objects exist with their names and namespace, each shard is a StatefulSet
//! of replicas behind a headless Service with a PodDisruptionBudget, every server
//! is probed through grpc.health.v1 (over mutual TLS) on the port it listens on
//! and asks for resources, one Job builds and publishes the bundle to the
//! object store root every server reads (bundle-store.yaml), every server finds the same
//! etcd over TLS, and each logs in to etcd as its role's user with only its own
//! certificate and password mounted.
//! Where kubectl is not installed (scripts/install-deps.sh installs Debian's
//! kubernetes-client) it says SKIPPED and is counted; under `CI=true` it fails
//! unless `RECSYS_SKIP_KUBECTL_TESTS=1` (see `recsys_tests::skip`). The commands
//! and environment of these objects are fed to the binaries by `deploy_config.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

const NAMESPACE: &str = "recsys";
const SHARDS: u32 = 2;

/// The rendered objects by (kind, name), or `None` without kubectl.
fn render() -> Option<BTreeMap<(String, String), Value>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let output = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(output) => output,
        Err(error) => {
            recsys_tests::skip::skip(
                "kustomize_renders_the_cluster",
                &format!("cannot run kubectl ({error}); scripts/install-deps.sh installs it"),
                recsys_tests::skip::SKIP_KUBECTL_VAR,
            );
            return None;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut objects = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object = Value::deserialize(document).unwrap();
        let kind = object["kind"].as_str().unwrap().to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        assert!(
            objects
                .insert((kind.clone(), name.clone()), object)
                .is_none(),
            "{kind} {name} twice"
        );
    }
    Some(objects)
}

fn get<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", objects.keys()))
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

fn containers(workload: &Value) -> impl Iterator<Item = &Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
}

/// Every container's probes check grpc.health.v1 on its `grpc` port, which is the
/// port of RECSYS_LISTEN, and every container and init container asks for cpu and
/// memory.
fn check_probes_and_resources(kind: &str, name: &str, workload: &Value) {
    let pod = &workload["spec"]["template"]["spec"];
    for container in containers(workload) {
        let what = format!("{kind} {name}, container {}", container["name"]);
        let ports = container["ports"].as_array().expect("ports");
        let grpc = ports
            .iter()
            .find(|p| p["name"] == "grpc" || p["name"] == "client")
            .unwrap_or_else(|| panic!("{what}: no grpc port"))["containerPort"]
            .as_u64()
            .unwrap();
        if let Some(listen) = env(container, "RECSYS_LISTEN") {
            assert_eq!(listen, format!("0.0.0.0:{grpc}"), "{what}");
        }
        // kubelet's own grpc probe speaks plaintext only: over TLS the probes
        // run `recsys health` (grpc.health.v1 over mutual TLS) or, for etcd,
        // `etcdctl endpoint health`, against the port the server listens on.
        for probe in ["readinessProbe", "livenessProbe"] {
            let command: Vec<&str> = container[probe]["exec"]["command"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: {probe} is not an exec probe"))
                .iter()
                .map(|arg| arg.as_str().unwrap())
                .collect();
            let health = command[..2] == ["recsys", "health"]
                && command.contains(&format!("--addr=127.0.0.1:{grpc}").as_str());
            let etcd = command[0] == "etcdctl"
                && command.contains(&format!("--endpoints=https://127.0.0.1:{grpc}").as_str())
                && command.ends_with(&["endpoint", "health"]);
            assert!(
                health || etcd,
                "{what}: {probe} is not a health check of port {grpc}: {command:?}"
            );
        }
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"]["requests"][resource].is_string(),
                "{what}: no {resource} request"
            );
        }
    }
    for init in pod["initContainers"].as_array().into_iter().flatten() {
        assert!(
            init["resources"]["requests"]["cpu"].is_string(),
            "{kind} {name}: init container without requests"
        );
    }
}

#[test]
fn kustomize_renders_the_cluster() {
    let Some(objects) = render() else {
        return;
    };
    let mut want: Vec<(&str, String)> = vec![
        ("Namespace", NAMESPACE.into()),
        ("Service", "etcd".into()),
        ("StatefulSet", "etcd".into()),
        ("Job", "etcd-auth".into()),
        ("Job", "bundle-publish".into()),
        ("ConfigMap", "recsys-bundle-store".into()),
        ("Service", "ranking".into()),
        ("Deployment", "ranking".into()),
        ("Service", "gateway".into()),
        ("Deployment", "gateway".into()),
        ("PodDisruptionBudget", "gateway".into()),
    ];
    for shard in 0..SHARDS {
        for kind in ["Service", "StatefulSet", "PodDisruptionBudget"] {
            want.push((kind, format!("retrieval-{shard}")));
        }
    }
    let mut want: Vec<(String, String)> = want
        .into_iter()
        .map(|(kind, name)| (kind.to_string(), name))
        .collect();
    want.sort();
    let have: Vec<(String, String)> = objects.keys().cloned().collect();
    assert_eq!(have, want);
    for ((kind, name), object) in &objects {
        if kind != "Namespace" {
            assert_eq!(object["metadata"]["namespace"], NAMESPACE, "{kind} {name}");
        }
    }

    let mut bundle_commands = Vec::new();
    let mut etcd_urls = Vec::new();
    let mut clusters = Vec::new();
    for ((kind, name), workload) in &objects {
        if kind != "StatefulSet" && kind != "Deployment" {
            continue;
        }
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&workload["spec"]["selector"]["matchLabels"], labels),
            "{kind} {name}: selector does not select its pods"
        );
        check_probes_and_resources(kind, name, workload);
        let pod = &workload["spec"]["template"]["spec"];
        for init in pod["initContainers"].as_array().into_iter().flatten() {
            bundle_commands.push(init["command"].clone());
        }
        for container in containers(workload) {
            etcd_urls.extend(env(container, "RECSYS_ETCD").map(String::from));
            clusters.extend(env(container, "RECSYS_CLUSTER").map(String::from));
        }
    }

    // One Job builds the bundle, with as many shards as there are shard
    // StatefulSets, and publishes it to the root every server reads from the
    // object store (their ConfigMap), each into a cache of its own.
    assert!(
        bundle_commands.is_empty(),
        "servers build no bundle: {bundle_commands:?}"
    );
    let publish = get(&objects, "Job", "bundle-publish");
    let build = publish["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap();
    assert_eq!(build.len(), 1);
    assert!(
        build[0]["command"]
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("--shards={SHARDS}")))
    );
    let store = &get(&objects, "ConfigMap", "recsys-bundle-store")["data"];
    let root = store["RECSYS_BUNDLE_ROOT"].as_str().unwrap();
    assert!(root.starts_with("s3://"), "{root}");
    let publish_command = &containers(publish).next().unwrap()["command"];
    assert!(
        publish_command
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("--to={root}"))),
        "{publish_command}"
    );
    for ((kind, name), workload) in &objects {
        if kind != "StatefulSet" && kind != "Deployment" || name == "etcd" {
            continue;
        }
        let container = containers(workload).next().unwrap();
        let from = container["envFrom"].as_array().unwrap();
        assert!(
            from.iter()
                .any(|source| source["configMapRef"]["name"] == "recsys-bundle-store"),
            "{kind} {name} does not read the bundle store's settings"
        );
        assert!(env(container, "RECSYS_BUNDLE").is_none(), "{kind} {name}");
    }
    // Every server finds the one etcd under one cluster name.
    assert_eq!(etcd_urls.len(), SHARDS as usize + 2);
    assert!(etcd_urls.iter().all(|u| u == "https://etcd:2379"));
    assert!(clusters.iter().all(|c| *c == clusters[0]));
    let etcd_service = get(&objects, "Service", "etcd");
    assert_eq!(etcd_service["spec"]["ports"][0]["port"], 2379);
    let etcd = get(&objects, "StatefulSet", "etcd");
    assert_eq!(etcd["spec"]["replicas"], 1);
    // etcd holds the change log and the desired versions: its data dir is on
    // a claim of the StatefulSet, not an emptyDir a rescheduled pod loses.
    let claims = etcd["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(claims[0]["metadata"]["name"], "data");
    let mounts = etcd["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/etcd")
    );
    let volumes = etcd["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(volumes.iter().all(|v| v["name"] != "data"), "{volumes:?}");
    assert!(selects(
        &etcd_service["spec"]["selector"],
        &etcd["spec"]["template"]["metadata"]["labels"]
    ));

    // One StatefulSet of 2 replicas per shard behind a headless Service, and a
    // PodDisruptionBudget that selects that shard's pods and only those.
    for shard in 0..SHARDS {
        let name = format!("retrieval-{shard}");
        let set = get(&objects, "StatefulSet", &name);
        assert_eq!(set["spec"]["replicas"], 2, "{name}");
        assert_eq!(set["spec"]["serviceName"], name.as_str());
        let labels = &set["spec"]["template"]["metadata"]["labels"];
        let container = containers(set).next().unwrap();
        assert_eq!(
            env(container, "RECSYS_SHARD"),
            Some(shard.to_string().as_str())
        );
        assert_eq!(container["command"][0], "retrieval-node");
        let service = get(&objects, "Service", &name);
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{name} is not headless"
        );
        assert!(selects(&service["spec"]["selector"], labels));
        let budget = get(&objects, "PodDisruptionBudget", &name);
        assert_eq!(budget["spec"]["minAvailable"], 1);
        assert!(selects(&budget["spec"]["selector"]["matchLabels"], labels));
        for other in (0..SHARDS).filter(|other| *other != shard) {
            let other_set = get(&objects, "StatefulSet", &format!("retrieval-{other}"));
            assert!(
                !selects(
                    &budget["spec"]["selector"]["matchLabels"],
                    &other_set["spec"]["template"]["metadata"]["labels"]
                ),
                "the budget of {name} also covers shard {other}"
            );
        }
    }

    let ranking = get(&objects, "Deployment", "ranking");
    assert_eq!(ranking["spec"]["replicas"], 2);
    assert_eq!(
        containers(ranking).next().unwrap()["command"][0],
        "ranking-node"
    );
    let gateway = get(&objects, "Deployment", "gateway");
    assert!(gateway["spec"]["replicas"].as_u64().unwrap() >= 1);
    let gateway_container = containers(gateway).next().unwrap();
    assert_eq!(gateway_container["command"][0], "gateway");
    let service = get(&objects, "Service", "gateway");
    assert_eq!(service["spec"]["ports"][0]["port"], 50051);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "grpc");
    assert!(selects(
        &service["spec"]["selector"],
        &gateway["spec"]["template"]["metadata"]["labels"]
    ));
    let budget = get(&objects, "PodDisruptionBudget", "gateway");
    assert!(selects(
        &budget["spec"]["selector"]["matchLabels"],
        &gateway["spec"]["template"]["metadata"]["labels"]
    ));

    // Each server logs in to etcd as its role's user and is given only its own
    // private keys: its certificate's, the etcd client's, and (the gateway) its
    // client certificate toward the nodes. The CA's key is in no pod.
    for (kind, name, role, cert) in [
        (
            "StatefulSet",
            "retrieval-0",
            "retrieval",
            "retrieval-shard-0",
        ),
        (
            "StatefulSet",
            "retrieval-1",
            "retrieval",
            "retrieval-shard-1",
        ),
        ("Deployment", "ranking", "ranking", "ranking"),
        ("Deployment", "gateway", "gateway", "gateway"),
    ] {
        let workload = get(&objects, kind, name);
        let container = containers(workload).next().unwrap();
        assert_eq!(
            env(container, "RECSYS_ETCD_USER"),
            Some(format!("recsys-recsys-{role}").as_str()),
            "{name}"
        );
        assert_eq!(
            env(container, "RECSYS_TLS_CERT"),
            Some(format!("/tls/{cert}.pem").as_str())
        );
        let volumes = workload["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        let keys: Vec<&str> = volumes
            .iter()
            .filter(|v| v["secret"]["secretName"] == "recsys-tls")
            .flat_map(|v| v["secret"]["items"].as_array().unwrap())
            .map(|item| item["key"].as_str().unwrap())
            .filter(|key| key.ends_with(".key"))
            .collect();
        let mut want = vec![format!("{cert}.key"), "etcd-client.key".to_string()];
        if role == "gateway" {
            want.push("gateway-client.key".into());
        }
        let mut keys: Vec<String> = keys.into_iter().map(String::from).collect();
        keys.sort();
        want.sort();
        assert_eq!(keys, want, "{name}: private keys mounted");
        let passwords: Vec<&str> = volumes
            .iter()
            .filter(|v| v["secret"]["secretName"] == "recsys-etcd-users")
            .flat_map(|v| v["secret"]["items"].as_array().unwrap())
            .map(|item| item["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            passwords,
            [format!("recsys-recsys-{role}.password")],
            "{name}: etcd passwords mounted"
        );
    }
}
