//! The compose cluster of `deploy/docker-compose.yml` seen from the tests: where
//! its gateway is published and how to stop and start its containers.
//!
//! `make compose-test` (deploy/compose.sh) brings the cluster up and sets
//! `RECSYS_TEST_GATEWAY` (`host:port` of the published gateway) and
//! `RECSYS_COMPOSE` (the compose command with its file and project, e.g.
//! `docker compose -f /abs/deploy/docker-compose.yml -p recsys`); the compose
//! tests are `#[ignore]`d and fail when run without them. The cluster runs TLS:
//! `RECSYS_TEST_GATEWAY_TLS` names the CA and client certificate to present.

use std::net::SocketAddr;
use std::process::{Command, Output};

/// Variable naming the published gateway.
pub const GATEWAY_VAR: &str = "RECSYS_TEST_GATEWAY";
/// Variable holding the compose command line, split on whitespace.
pub const COMPOSE_VAR: &str = "RECSYS_COMPOSE";
/// Variable naming a directory with the compose cluster's `ca.pem`, `client.pem`
/// and `client.key` (deploy/compose.sh copies them out of its secrets volume).
pub const GATEWAY_TLS_VAR: &str = "RECSYS_TEST_GATEWAY_TLS";

/// TLS toward the compose gateway with the client certificate, when
/// [`GATEWAY_TLS_VAR`] is set.
pub fn gateway_tls() -> Option<recsys_server::tls::ClientTls> {
    let dir = std::path::PathBuf::from(std::env::var_os(GATEWAY_TLS_VAR)?);
    Some(recsys_server::tls::ClientTls {
        ca: dir.join("ca.pem"),
        identity: Some((dir.join("client.pem"), dir.join("client.key"))),
        server_name: None,
    })
}

/// The published gateway. Panics naming `test` when `RECSYS_TEST_GATEWAY` is
/// unset: the compose tests are `#[ignore]`d, so whoever runs them asked for them.
pub fn gateway(test: &str) -> SocketAddr {
    match std::env::var(GATEWAY_VAR) {
        Ok(addr) => addr
            .parse()
            .unwrap_or_else(|e| panic!("{GATEWAY_VAR}={addr} is not host:port: {e}")),
        Err(_) => panic!(
            "{test}: {GATEWAY_VAR} is not set; make compose-test starts the compose cluster and sets it"
        ),
    }
}

/// A compose project that the tests can stop and start services of.
#[derive(Debug, Clone)]
pub struct Compose {
    command: Vec<String>,
}

impl Compose {
    /// From `RECSYS_COMPOSE`; panics naming `test` when it is unset.
    pub fn from_env(test: &str) -> Self {
        match std::env::var(COMPOSE_VAR) {
            Ok(line) if !line.trim().is_empty() => Self {
                command: line.split_whitespace().map(String::from).collect(),
            },
            _ => panic!(
                "{test}: {COMPOSE_VAR} is not set (the compose command with -f and -p; make compose-test sets it)"
            ),
        }
    }

    /// `compose stop SERVICE...`: SIGTERM, so each node drains, then waits for the
    /// containers to exit.
    pub fn stop(&self, services: &[&str]) {
        self.run("stop", services);
    }

    /// `compose start SERVICE...`: starts the stopped containers again.
    pub fn start(&self, services: &[&str]) {
        self.run("start", services);
    }

    /// A guard that starts `services` again when dropped, so that a failing test
    /// leaves the cluster whole for the tests after it.
    pub fn start_on_drop(&self, services: &[&str]) -> StartOnDrop {
        StartOnDrop {
            compose: self.clone(),
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `compose exec -T` of `argv` in `service`'s running container; its output.
    pub fn exec(&self, service: &str, argv: &[&str]) -> Output {
        let (program, args) = self.command.split_first().expect("a compose command");
        Command::new(program)
            .args(args)
            .args(["exec", "-T", service])
            .args(argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// `compose run --rm --no-deps -T SERVICE argv`: `argv` in a fresh container of
    /// `service`'s image, volumes and network, without its dependencies; its output.
    pub fn run_once(&self, service: &str, argv: &[&str]) -> Output {
        let (program, args) = self.command.split_first().expect("a compose command");
        Command::new(program)
            .args(args)
            .args(["run", "--rm", "--no-deps", "-T", service])
            .args(argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// The text of `path` in `service`'s container (`docker cp`: the images
    /// have no shell or `cat`).
    pub fn read_file(&self, service: &str, path: &str) -> String {
        let (program, args) = self.command.split_first().expect("a compose command");
        let id = Command::new(program)
            .args(args)
            .args(["ps", "-q", service])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        assert!(!id.is_empty(), "no container of {service}");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let local = dir.path().join("file");
        let status = Command::new("docker")
            .arg("cp")
            .arg(format!("{id}:{path}"))
            .arg(&local)
            .status()
            .unwrap_or_else(|e| panic!("cannot run docker cp: {e}"));
        assert!(status.success(), "docker cp {service}:{path} failed");
        std::fs::read_to_string(&local).unwrap_or_else(|e| panic!("{}: {e}", local.display()))
    }

    fn run(&self, verb: &str, services: &[&str]) {
        let (program, args) = self.command.split_first().expect("a compose command");
        let status = Command::new(program)
            .args(args)
            .arg(verb)
            .args(services)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            status.success(),
            "{} {verb} {services:?} failed: {status}",
            self.command.join(" ")
        );
    }
}

/// Starts its services again on drop; see [`Compose::start_on_drop`].
#[derive(Debug)]
pub struct StartOnDrop {
    compose: Compose,
    services: Vec<String>,
}

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let services: Vec<&str> = self.services.iter().map(String::as_str).collect();
        if std::thread::panicking() {
            // No second panic while unwinding: a failed start shows in the output.
            let (program, args) = self
                .compose
                .command
                .split_first()
                .expect("a compose command");
            let _ = Command::new(program)
                .args(args)
                .arg("start")
                .args(&services)
                .status();
        } else {
            self.compose.start(&services);
        }
    }
}
