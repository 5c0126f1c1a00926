//! How a process reaches etcd: the endpoints, TLS toward them, and the etcd user it
//! authenticates as. One value, [`EtcdAccess`], is passed wherever a list of etcd
//! URLs used to be, so every etcd user (registration, membership, the change log,
//! the rollout watch) connects the same way.
//!
//! TLS is rustls with ring, through etcd-client's `tls-ring` feature (the same
//! tonic and rustls as the gRPC services). With a CA the endpoints must be
//! `https://`; a client certificate and key are optional (etcd's
//! `--client-cert-auth` requires one). The password is read from a file at every
//! connect, never taken as a flag value that `ps` would show, and a file rewritten
//! with a new password is picked up on the next reconnect.

use std::path::PathBuf;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::DiscoveryError;

/// Where etcd is and how to authenticate to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// etcd client URLs, `http://` without TLS, `https://` with it.
    pub endpoints: Vec<String>,
    /// TLS toward etcd; `None` is plaintext.
    pub tls: Option<EtcdTls>,
    /// The etcd user to authenticate as; `None` when etcd runs without auth.
    pub credentials: Option<EtcdCredentials>,
}

/// PEM files for TLS toward etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA etcd's server certificate chains to.
    pub ca: PathBuf,
    /// A client certificate and its key, for an etcd with `--client-cert-auth`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// An etcd user and the file holding its password (the first line; surrounding
/// white space is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    /// The etcd user name.
    pub user: String,
    /// The file whose first line is the password.
    pub password_file: PathBuf,
}

impl From<&EtcdAccess> for EtcdAccess {
    fn from(access: &EtcdAccess) -> Self {
        access.clone()
    }
}

impl From<Vec<String>> for EtcdAccess {
    fn from(endpoints: Vec<String>) -> Self {
        Self::plain(endpoints)
    }
}

impl From<&[String]> for EtcdAccess {
    fn from(endpoints: &[String]) -> Self {
        Self::plain(endpoints.to_vec())
    }
}

impl<const N: usize> From<&[String; N]> for EtcdAccess {
    fn from(endpoints: &[String; N]) -> Self {
        Self::plain(endpoints.to_vec())
    }
}

impl EtcdAccess {
    /// Plaintext, no authentication: a local etcd, `make demo`, most tests.
    pub fn plain(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            credentials: None,
        }
    }

    /// The same etcd as another user.
    pub fn with_credentials(mut self, credentials: Option<EtcdCredentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Whether no endpoint is given (no etcd).
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Checks what can be checked without the network: the endpoints' schemes
    /// agree with TLS being on, and a user name is given with its password file.
    pub fn check(&self) -> Result<(), DiscoveryError> {
        for endpoint in &self.endpoints {
            let https = endpoint.starts_with("https://");
            match (&self.tls, https) {
                (Some(_), false) => {
                    return Err(DiscoveryError::EtcdConfig(format!(
                        "etcd endpoint {endpoint:?} is not https:// but --etcd-ca is given"
                    )));
                }
                (None, true) => {
                    return Err(DiscoveryError::EtcdConfig(format!(
                        "etcd endpoint {endpoint:?} is https://: give the CA its certificate chains to with --etcd-ca"
                    )));
                }
                _ => {}
            }
        }
        if let Some(credentials) = &self.credentials
            && credentials.user.is_empty()
        {
            return Err(DiscoveryError::EtcdConfig(
                "--etcd-user is empty".to_string(),
            ));
        }
        Ok(())
    }

    /// The client options: TLS material and the password, read from their files now.
    pub(crate) async fn connect_options(&self) -> Result<ConnectOptions, DiscoveryError> {
        self.check()?;
        let mut options = ConnectOptions::new();
        if let Some(tls) = &self.tls {
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca).await?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(read(cert).await?, read(key).await?));
            }
            options = options.with_tls(config);
        }
        if let Some(credentials) = &self.credentials {
            let file = read(&credentials.password_file).await?;
            let password = String::from_utf8(file)
                .ok()
                .and_then(|text| text.lines().next().map(|line| line.trim().to_string()))
                .filter(|password| !password.is_empty())
                .ok_or_else(|| {
                    DiscoveryError::EtcdConfig(format!(
                        "{}: no password on its first line",
                        credentials.password_file.display()
                    ))
                })?;
            // Tokens expire (etcd's --auth-token-ttl, 5 minutes by default) while a
            // node sits idle between keepalives; a refresh keeps the client working.
            options = options
                .with_user(credentials.user.clone(), password)
                .with_auto_token_refresh(true);
        }
        Ok(options)
    }
}

async fn read(path: &PathBuf) -> Result<Vec<u8>, DiscoveryError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| DiscoveryError::Io {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_must_agree_with_tls() {
        let tls = Some(EtcdTls {
            ca: "ca.pem".into(),
            identity: None,
        });
        let access = |endpoint: &str, tls: Option<EtcdTls>| EtcdAccess {
            endpoints: vec![endpoint.to_string()],
            tls,
            credentials: None,
        };
        assert!(access("http://etcd:2379", None).check().is_ok());
        assert!(access("https://etcd:2379", tls.clone()).check().is_ok());
        assert!(access("http://etcd:2379", tls).check().is_err());
        assert!(access("https://etcd:2379", None).check().is_err());
    }

    #[tokio::test]
    async fn a_password_file_without_a_password_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("recsys-etcd-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("empty");
        std::fs::write(&file, "\n").unwrap_or_else(|e| panic!("{e}"));
        let access = EtcdAccess::plain(vec!["http://etcd:2379".into()]).with_credentials(Some(
            EtcdCredentials {
                user: "u".into(),
                password_file: file.clone(),
            },
        ));
        let error = access
            .connect_options()
            .await
            .err()
            .unwrap_or_else(|| panic!("an empty password was taken"));
        assert!(error.to_string().contains("no password"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }
}
