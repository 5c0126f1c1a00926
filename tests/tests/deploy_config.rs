//! The deploy files checked without Docker or a cluster: every container command
//! (and compose healthcheck) of `deploy/docker-compose.yml` and of the Kubernetes
//! manifests (`deploy/k8s`, rendered by `kubectl kustomize` when kubectl is
//! installed, else read from the files kustomization.yaml lists) is run through
//! the real binary with `--check-config`, with exactly the container's
//! environment and nothing else. The binary parses its flags and `RECSYS_*`
//! variables as it would in the container, validates them, and exits without
//! binding or loading: a renamed flag, a variable with a bad value or an
//! advertise address missing from a node listening on 0.0.0.0 fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use recsys_tests::processes::binary;
use serde::Deserialize;
use serde_yaml::Value;

/// Our binaries, which take `--check-config`.
const OURS: [&str; 4] = ["gateway", "retrieval-node", "ranking-node", "recsys"];
/// Programs in the deploy files that are not ours (etcd's image).
const FOREIGN: [&str; 2] = ["etcd", "etcdctl"];

/// One command a container runs, with its environment.
#[derive(Debug)]
struct Invocation {
    /// Where it comes from, for messages.
    what: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Compose's `${VAR:-default}` and `${VAR}` as they read on a machine where the
/// variables are unset: the default, or nothing.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A compose command: a list, or a string split on whitespace.
fn compose_argv(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().map(|v| interpolate(&text(v))).collect(),
        Value::String(line) => line.split_whitespace().map(interpolate).collect(),
        other => panic!("command is neither a list nor a string: {other:?}"),
    }
}

fn compose_invocations() -> Vec<Invocation> {
    let path = deploy_dir().join("docker-compose.yml");
    let mut file: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // The services share settings through `<<: *anchor` merge keys.
    file.apply_merge().unwrap();
    let services = file["services"].as_mapping().expect("services");
    let mut invocations = Vec::new();
    for (name, service) in services {
        let name = text(name);
        let mut env = BTreeMap::new();
        match &service["environment"] {
            Value::Mapping(vars) => {
                for (k, v) in vars {
                    env.insert(text(k), interpolate(&text(v)));
                }
            }
            Value::Sequence(vars) => {
                for line in vars {
                    let line = text(line);
                    let (k, v) = line.split_once('=').expect("KEY=value");
                    env.insert(k.to_string(), interpolate(v));
                }
            }
            Value::Null => {}
            other => panic!("service {name}: environment {other:?}"),
        }
        let command = compose_argv(&service["command"]);
        assert!(
            !command.is_empty(),
            "service {name} has no command: the image's default would run"
        );
        invocations.push(Invocation {
            what: format!("compose service {name}"),
            argv: command,
            env: env.clone(),
        });
        // A healthcheck runs in the container, with its environment.
        let test = match &service["healthcheck"]["test"] {
            Value::Null => Vec::new(),
            test => compose_argv(test),
        };
        if let Some((form, argv)) = test.split_first() {
            assert_eq!(form, "CMD", "service {name}: healthcheck form {form}");
            invocations.push(Invocation {
                what: format!("compose service {name} healthcheck"),
                argv: argv.to_vec(),
                env,
            });
        }
    }
    invocations
}

/// The rendered manifests: `kubectl kustomize` when kubectl runs, else the files
/// kustomization.yaml lists (as kustomize would read them, minus its edits: the
/// namespace and image tags, which commands and environment do not depend on).
fn k8s_documents() -> Vec<Value> {
    let dir = deploy_dir().join("k8s");
    let text = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(output) => {
            assert!(
                output.status.success(),
                "kubectl kustomize {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        }
        Err(error) => {
            eprintln!(
                "kubectl cannot run ({error}): reading the files of {} directly",
                dir.display()
            );
            let kustomization: Value = serde_yaml::from_str(
                &std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap(),
            )
            .unwrap();
            kustomization["resources"]
                .as_sequence()
                .expect("resources")
                .iter()
                .map(|file| std::fs::read_to_string(dir.join(text(file))).unwrap())
                .collect::<Vec<_>>()
                .join("\n---\n")
        }
    };
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

/// What the kubelet would put in a `valueFrom.fieldRef` variable.
fn field_ref(path: &str) -> String {
    match path {
        "metadata.name" => "pod-0".into(),
        "metadata.namespace" => "recsys".into(),
        "status.podIP" => "10.0.0.7".into(),
        other => panic!("no stand-in for fieldRef {other}: add one"),
    }
}

/// Kubernetes' `$(VAR)` expansion: a variable defined earlier is substituted,
/// anything else is left as written.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

fn k8s_invocations() -> Vec<Invocation> {
    let mut invocations = Vec::new();
    let documents = k8s_documents();
    // `envFrom` ConfigMaps, by name (Secrets hold credentials no check needs).
    let config_maps: BTreeMap<String, Value> = documents
        .iter()
        .filter(|object| text(&object["kind"]) == "ConfigMap")
        .map(|object| (text(&object["metadata"]["name"]), object["data"].clone()))
        .collect();
    for object in documents {
        let kind = text(&object["kind"]);
        if kind != "Deployment" && kind != "StatefulSet" && kind != "Job" {
            continue;
        }
        let name = text(&object["metadata"]["name"]);
        let pod = &object["spec"]["template"]["spec"];
        let containers = ["initContainers", "containers"]
            .iter()
            .flat_map(|key| pod[*key].as_sequence().into_iter().flatten());
        for container in containers {
            let mut env = BTreeMap::new();
            for source in container["envFrom"].as_sequence().into_iter().flatten() {
                let Some(map) = source["configMapRef"]["name"].as_str() else {
                    continue;
                };
                let data = config_maps.get(map).unwrap_or_else(|| {
                    panic!("{kind} {name}: no ConfigMap {map} in the manifests")
                });
                for (key, value) in data.as_mapping().into_iter().flatten() {
                    env.insert(text(key), text(value));
                }
            }
            for var in container["env"].as_sequence().into_iter().flatten() {
                let key = text(&var["name"]);
                let value = if let Some(value) = var.get("value") {
                    expand(&text(value), &env)
                } else {
                    field_ref(&text(&var["valueFrom"]["fieldRef"]["fieldPath"]))
                };
                env.insert(key, value);
            }
            let argv: Vec<String> = ["command", "args"]
                .iter()
                .flat_map(|key| container[*key].as_sequence().into_iter().flatten())
                .map(|arg| expand(&text(arg), &env))
                .collect();
            assert!(
                !argv.is_empty(),
                "{kind} {name}: container {:?} has no command",
                container["name"]
            );
            // Exec probes run in the container, with its environment.
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let command: Vec<String> = container[probe]["exec"]["command"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|arg| expand(&text(arg), &env))
                    .collect();
                if !command.is_empty() {
                    invocations.push(Invocation {
                        what: format!(
                            "{kind} {name}, container {} {probe}",
                            text(&container["name"])
                        ),
                        argv: command,
                        env: env.clone(),
                    });
                }
            }
            invocations.push(Invocation {
                what: format!("{kind} {name}, container {}", text(&container["name"])),
                argv,
                env,
            });
        }
    }
    invocations
}

/// Runs `argv --check-config` with exactly `env`; the exit status and output.
fn check(argv: &[String], env: &BTreeMap<String, String>) -> (bool, String) {
    let (program, args) = argv.split_first().unwrap();
    let output = Command::new(binary(program))
        .args(args)
        .arg("--check-config")
        .env_clear()
        .envs(env)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// Checks every invocation of ours; returns which of our programs were seen.
fn check_all(invocations: &[Invocation]) -> Vec<String> {
    let mut seen = Vec::new();
    for invocation in invocations {
        let program = invocation.argv[0].as_str();
        if FOREIGN.contains(&program) {
            continue;
        }
        assert!(
            OURS.contains(&program),
            "{}: runs {program}, which is neither ours nor etcd's",
            invocation.what
        );
        let (ok, said) = check(&invocation.argv, &invocation.env);
        assert!(
            ok,
            "{}: `{}` with {:?} is refused:\n{said}",
            invocation.what,
            invocation.argv.join(" "),
            invocation.env
        );
        eprintln!("{}: {}", invocation.what, said.trim());
        seen.push(program.to_string());
    }
    seen.sort();
    seen.dedup();
    seen
}

#[test]
fn compose_commands_and_environment_are_accepted() {
    let invocations = compose_invocations();
    let seen = check_all(&invocations);
    assert_eq!(
        seen,
        ["gateway", "ranking-node", "recsys", "retrieval-node"]
    );
    println!(
        "checked {} compose commands and healthchecks",
        invocations.len()
    );
}

/// etcd holds the change log, the desired versions and the users: its data dir
/// is a named volume, which outlives the container.
#[test]
fn compose_keeps_etcds_data_on_a_named_volume() {
    let path = deploy_dir().join("docker-compose.yml");
    let file: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mounts: Vec<String> = file["services"]["etcd"]["volumes"]
        .as_sequence()
        .expect("etcd volumes")
        .iter()
        .map(text)
        .collect();
    let data = mounts
        .iter()
        .find_map(|m| m.strip_suffix(":/var/lib/etcd"))
        .unwrap_or_else(|| panic!("no volume at /var/lib/etcd: {mounts:?}"));
    assert!(
        file["volumes"].as_mapping().unwrap().contains_key(data),
        "{data} is not a named volume"
    );
}

#[test]
fn kubernetes_commands_and_environment_are_accepted() {
    let invocations = k8s_invocations();
    let seen = check_all(&invocations);
    assert_eq!(
        seen,
        ["gateway", "ranking-node", "recsys", "retrieval-node"]
    );
    println!("checked {} Kubernetes containers", invocations.len());
}

/// The check is a check: configurations the servers would refuse are refused
/// here, with a message that names the problem.
#[test]
fn check_config_refuses_what_the_servers_would() {
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let argv = |program: &str| vec![program.to_string()];
    let node = [
        ("RECSYS_BUNDLE", "/bundle/current"),
        ("RECSYS_SHARD", "0"),
        ("RECSYS_LISTEN", "0.0.0.0:7000"),
        ("RECSYS_ETCD", "http://etcd:2379"),
    ];
    let refused = [
        // Registered in etcd, listening everywhere, no address to advertise.
        (argv("retrieval-node"), env(&node), "advertise"),
        (
            argv("ranking-node"),
            env(&[
                ("RECSYS_BUNDLE", "/b"),
                ("RECSYS_ETCD", "http://etcd:2379"),
                ("RECSYS_ADVERTISE_ADDR", "ranking-a"),
            ]),
            "host:port",
        ),
        (
            argv("retrieval-node"),
            env(&[("RECSYS_BUNDLE", "/b"), ("RECSYS_SHARD", "one")]),
            "--shard",
        ),
        // No way to find nodes.
        (argv("gateway"), env(&[("RECSYS_BUNDLE", "/b")]), "--etcd"),
        // An https etcd without the CA to check it by, a user without a password.
        (
            argv("gateway"),
            env(&[
                ("RECSYS_BUNDLE", "/b"),
                ("RECSYS_ETCD", "https://etcd:2379"),
            ]),
            "--etcd-ca",
        ),
        (
            argv("ranking-node"),
            env(&[
                ("RECSYS_BUNDLE", "/b"),
                ("RECSYS_ETCD", "http://etcd:2379"),
                ("RECSYS_ADVERTISE_ADDR", "ranking-a:7100"),
                ("RECSYS_ETCD_USER", "recsys-c-ranking"),
            ]),
            "--etcd-password-file",
        ),
        (
            argv("gateway"),
            env(&[
                ("RECSYS_BUNDLE", "/b"),
                ("RECSYS_ETCD", "http://etcd:2379"),
                ("RECSYS_TOP_K_PROBABILITY", "1.5"),
            ]),
            "top-k-probability",
        ),
        // A gateway that would accept more than its nodes take, and nodes that
        // would refuse what a gateway accepts (recsys_proto::limits).
        (
            argv("gateway"),
            env(&[
                ("RECSYS_BUNDLE", "/b"),
                ("RECSYS_ETCD", "http://etcd:2379"),
                ("RECSYS_MAX_RETRIEVE_K", "20000"),
            ]),
            "--max-retrieve-k",
        ),
        (
            argv("retrieval-node"),
            env(&[
                ("RECSYS_BUNDLE", "/b"),
                ("RECSYS_SHARD", "0"),
                ("RECSYS_MAX_SEARCH_K", "100"),
            ]),
            "--max-search-k",
        ),
        (
            argv("ranking-node"),
            env(&[("RECSYS_BUNDLE", "/b"), ("RECSYS_MAX_CANDIDATES", "100")]),
            "--max-candidates",
        ),
        (
            vec!["recsys".into(), "bundle".into(), "--out=/b".into()],
            env(&[]),
            "--synthetic",
        ),
        (
            vec![
                "recsys".into(),
                "bundle".into(),
                "--synthetic".into(),
                "--metric=hamming".into(),
                "--out=/b".into(),
            ],
            env(&[]),
            "hamming",
        ),
    ];
    for (argv, env, expected) in refused {
        let (ok, said) = check(&argv, &env);
        assert!(
            !ok,
            "`{}` with {env:?} was accepted: {said}",
            argv.join(" ")
        );
        assert!(
            said.contains(expected),
            "`{}` with {env:?}: the refusal does not mention {expected}: {said}",
            argv.join(" ")
        );
    }
    // The same node, given its address, is fine: the refusal above was the address.
    let mut fixed = env(&node);
    fixed.insert("RECSYS_ADVERTISE_ADDR".into(), "retrieval-0a:7000".into());
    let (ok, said) = check(&argv("retrieval-node"), &fixed);
    assert!(ok, "{said}");
}
