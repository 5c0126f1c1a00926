//! A real S3-compatible server on loopback for the object store tests: moto's
//! server (PyPI `moto[server]`), which `scripts/install-deps.sh` installs into
//! `target/moto-venv`. [`Moto::start`] runs it on a free port, waits for it to
//! answer (with a deadline, no sleeps), and kills it when dropped.
//!
//! A machine without moto fails these tests with the command that installs
//! it, unless `RECSYS_SKIP_MOTO_TESTS=1` says to skip them (the skip is then
//! logged like every other, `crate::skip`); CI never sets it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recsys_bundle_store::{AccessKey, Store, StoreOptions, StoreUrl};

/// Opt-out of the tests that need moto.
pub const SKIP_MOTO_VAR: &str = "RECSYS_SKIP_MOTO_TESTS";
/// Where moto's server is taken from when not in the project's venv.
pub const MOTO_SERVER_VAR: &str = "RECSYS_MOTO_SERVER";
/// The credentials the tests sign with (moto accepts any).
pub const ACCESS_KEY_ID: &str = "recsys-test";
/// Their secret.
pub const SECRET_ACCESS_KEY: &str = "recsys-test-secret";
/// How long moto may take to answer after it starts.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A moto server on loopback; killed when dropped.
pub struct Moto {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    /// Its log.
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// moto's server executable: `$RECSYS_MOTO_SERVER`, else the project's venv.
fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os(MOTO_SERVER_VAR) {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server")
}

impl Moto {
    /// Starts moto for `test`, or returns `None` when it is not installed and
    /// `RECSYS_SKIP_MOTO_TESTS=1` (the skip recorded); without that opt-out a
    /// missing moto fails the test.
    pub fn start(test: &str) -> Option<Self> {
        let program = moto_server();
        if !program.is_file() {
            let reason = format!(
                "moto's server is not at {} (run scripts/install-deps.sh, or set {MOTO_SERVER_VAR})",
                program.display()
            );
            if std::env::var(SKIP_MOTO_VAR).as_deref() == Ok("1") {
                crate::skip::skip(test, &reason, SKIP_MOTO_VAR);
                return None;
            }
            panic!("{test} cannot run: {reason}; set {SKIP_MOTO_VAR}=1 to skip it on purpose");
        }
        let addr = crate::processes::free_addr();
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("moto.log");
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log_dir.path().join("moto.err")).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()));
        let mut moto = Self {
            child,
            addr,
            log,
            _log_dir: log_dir,
        };
        moto.wait_ready();
        Some(moto)
    }

    /// Polls until moto answers an HTTP request, failing at once if it exited.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let err = std::fs::read_to_string(self.log.with_file_name("moto.err"))
                    .unwrap_or_default();
                panic!("moto exited before it answered ({status}): {err}");
            }
            if let Ok((status, _)) = self.request("GET", "/moto-api/", &[])
                && status == 200
            {
                return;
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "moto did not answer on {} within {READY_DEADLINE:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One plain HTTP/1.1 request (moto takes unsigned ones): the status and body.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        )?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        Ok((status, response))
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = self.request("PUT", &format!("/{bucket}"), &[]).unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The flags that point a server or `recsys bundle publish` at it.
    pub fn s3_flags(&self) -> Vec<String> {
        [
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-allow-http",
            "--s3-region",
            "us-east-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The credentials a process reads, as `AWS_*` variables.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ]
    }

    /// A client of the root at `url` in this moto, for the test itself.
    pub fn store(&self, url: &str) -> Store {
        let options = StoreOptions {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            allow_http: true,
            access_key: Some(AccessKey {
                id: ACCESS_KEY_ID.into(),
                secret: SECRET_ACCESS_KEY.into(),
            }),
            ..StoreOptions::default()
        };
        Store::open(&StoreUrl::parse(url).unwrap(), &options).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
