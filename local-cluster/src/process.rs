//! One server binary as a child process: what the tests need that only a process
//! can suffer (`kill -9`: no goodbye, no lease revoke, sockets reset by the
//! kernel; `SIGTERM`: the binary's own drain), and what `recsys-bench --processes`
//! measures (each server on a runtime of its own, as deployments run them).
//!
//! A server starts with exactly the flags and variables its caller gives, and
//! none of the caller's `RECSYS_*` variables: every flag of our binaries is also a
//! `RECSYS_*` variable, so a developer's exported `RECSYS_ETCD` or
//! `RECSYS_TOP_K_PROBABILITY` would otherwise change what is tested or measured;
//! nor its `OTEL_*` ones, which would turn the trace export on, nor the thread
//! counts of candle's matrix products (`RAYON_NUM_THREADS`,
//! `CANDLE_NUM_THREADS`), which the servers choose themselves.
//! Readiness is the health service reporting SERVING within a deadline, and a
//! process that exits meanwhile fails the wait at once, by name, instead of
//! after the deadline. Dropping a [`ServerProcess`] kills it, so a failing test
//! or benchmark leaves no server behind.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{ClusterError, wait_until_serving_polling};

/// How to start a server process: its binary, a name for messages, the
/// address its flags make it listen on, its flags and extra variables.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    program: PathBuf,
    name: String,
    addr: SocketAddr,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stderr: Option<PathBuf>,
}

impl ServerCommand {
    /// `program` (from [`crate::workspace_binary`]), called `name` in messages,
    /// which `args` must make listen on `addr`.
    pub fn new(program: impl Into<PathBuf>, name: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            program: program.into(),
            name: name.into(),
            addr,
            args: Vec::new(),
            env: Vec::new(),
            stderr: None,
        }
    }

    /// Adds flags.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable (`RUST_LOG`, or a `RECSYS_*` variable under test).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Writes the server's stderr (its log) to the file at `path` instead of the
    /// caller's: a test that reads what the server logged (a gateway's view
    /// changes, a node's registrations) greps that file.
    pub fn stderr_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Some(path.into());
        self
    }

    /// Starts the process (stdout discarded, stderr the caller's unless
    /// [`Self::stderr_to`] names a file, so a failing server's last words show
    /// above the failure); it is not serving yet.
    pub fn spawn(self) -> Result<ServerProcess, ClusterError> {
        let spawn_error = |source| ClusterError::Spawn {
            program: self.program.clone(),
            source,
        };
        let inherited = std::env::vars_os().map(|(key, _)| key);
        let mut command = self.command(inherited);
        if let Some(path) = &self.stderr {
            command.stderr(std::fs::File::create(path).map_err(spawn_error)?);
        }
        let child = command.spawn().map_err(spawn_error)?;
        Ok(ServerProcess {
            name: format!("{} (pid {})", self.name, child.id()),
            addr: self.addr,
            child: Some(child),
        })
    }

    /// The command, given the names of the variables this process would pass on.
    fn command(&self, inherited: impl Iterator<Item = OsString>) -> Command {
        let mut command = Command::new(&self.program);
        for key in inherited {
            let name = key.to_string_lossy();
            if name.starts_with("RECSYS_")
                || name.starts_with("OTEL_")
                || name == "RAYON_NUM_THREADS"
                || name == "CANDLE_NUM_THREADS"
            {
                command.env_remove(key);
            }
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command
    }
}

/// A running server process; `kill -9`ed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its name and process id, for messages.
    pub name: String,
    child: Option<Child>,
}

impl ServerProcess {
    /// Waits until the server reports SERVING, at most `timeout`; fails as soon as
    /// the process has exited.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        self.wait_serving_polling(timeout, Duration::from_millis(100))
            .await
    }

    /// [`Self::wait_serving`] with the longest pause between two health checks
    /// (see [`wait_until_serving_polling`]): a benchmark of start-up passes a few
    /// milliseconds.
    pub async fn wait_serving_polling(
        &mut self,
        timeout: Duration,
        max_delay: Duration,
    ) -> Result<(), ClusterError> {
        // Health is polled in slices, between which the process is checked: one
        // that exited is reported within a slice, not at the deadline.
        const SLICE: Duration = Duration::from_millis(250);
        let started = Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            match wait_until_serving_polling(self.addr, SLICE.min(left), max_delay).await {
                Ok(()) => return self.check_running(),
                Err((_, detail)) => {
                    self.check_running()?;
                    if started.elapsed() >= timeout {
                        return Err(ClusterError::NotServing {
                            what: self.name.clone(),
                            addr: self.addr,
                            waited: started.elapsed(),
                            detail,
                        });
                    }
                }
            }
        }
    }

    /// Fails when the process has exited (or was killed here): a server that
    /// could not bind its port exits, and its port may then answer for another.
    pub fn check_running(&mut self) -> Result<(), ClusterError> {
        let Some(child) = self.child.as_mut() else {
            return Err(ClusterError::NotRunning {
                name: self.name.clone(),
            });
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(ClusterError::Exited {
                name: self.name.clone(),
                status,
            }),
            Err(source) => Err(ClusterError::Wait {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.check_running().is_ok()
    }

    /// Its process id, while it has not been reaped here.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` and reap: the process vanishes without a word.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only when it has exited already; the wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -TERM`, then waits at most `timeout` for the process to exit by
    /// itself: its exit status, or an error once it had to be killed.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, ClusterError> {
        let Some(mut child) = self.child.take() else {
            return Err(ClusterError::NotRunning {
                name: self.name.clone(),
            });
        };
        // `kill(1)` rather than libc: the workspace has no unsafe code.
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(source) = signalled {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ClusterError::Signal {
                name: self.name.clone(),
                source,
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {}
                outcome => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(match outcome {
                        Err(source) => ClusterError::Wait {
                            name: self.name.clone(),
                            source,
                        },
                        _ => ClusterError::NoExitAfterSigterm {
                            name: self.name.clone(),
                            waited: timeout,
                        },
                    });
                }
            }
            // Polls the exit, with the deadline above; std's Child has no async wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn free() -> SocketAddr {
        crate::free_loopback_addr().unwrap()
    }

    #[tokio::test]
    async fn a_process_that_exits_fails_the_wait_at_once_by_name() {
        let mut process = ServerCommand::new("sh", "quitter", free())
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let started = Instant::now();
        let error = process
            .wait_serving(Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let message = error.to_string();
        assert!(message.contains("quitter (pid"), "{message}");
        assert!(message.contains("exited"), "{message}");
    }

    #[test]
    fn only_the_given_variables_reach_the_server_never_the_callers_recsys_ones() {
        let inherited = [
            "PATH",
            "RECSYS_ETCD",
            "RECSYS_MAX_K",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .map(OsString::from);
        let command = ServerCommand::new("gateway", "gateway", free())
            .env("RECSYS_MAX_K", "10")
            .env("RUST_LOG", "warn")
            .command(inherited.into_iter());
        let envs: Vec<(String, Option<String>)> = command
            .get_envs()
            .map(|(k, v)| {
                let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
                (text(k), v.map(text))
            })
            .collect();
        assert!(envs.contains(&("RECSYS_ETCD".into(), None)), "{envs:?}");
        assert!(
            envs.contains(&("OTEL_EXPORTER_OTLP_ENDPOINT".into(), None)),
            "{envs:?}"
        );
        assert!(
            envs.contains(&("RECSYS_MAX_K".into(), Some("10".into()))),
            "{envs:?}"
        );
        assert!(
            envs.contains(&("RUST_LOG".into(), Some("warn".into()))),
            "{envs:?}"
        );
        assert!(!envs.iter().any(|(k, _)| k == "PATH"), "{envs:?}");
    }

    #[tokio::test]
    async fn sigterm_returns_the_exit_status() {
        let mut process = ServerCommand::new("sleep", "sleeper", free())
            .args(["30"])
            .spawn()
            .unwrap();
        assert!(process.is_running());
        let status = process.terminate(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success());
        assert!(!process.is_running());
    }
}
