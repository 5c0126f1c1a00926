//! etcd users and roles of a cluster, and the setup that creates them and turns
//! etcd's auth on (`recsys etcd-auth setup`, the compose and Kubernetes init steps,
//! the tests).
//!
//! One etcd user per kind of process, each with a role of the same name:
//!
//! | user | reads | writes |
//! |---|---|---|
//! | `recsys-{C}-retrieval` | `/recsys/{C}/` | `/recsys/{C}/nodes/retrieval/` |
//! | `recsys-{C}-ranking` | `/recsys/{C}/` | `/recsys/{C}/nodes/ranking/` |
//! | `recsys-{C}-gateway` | `/recsys/{C}/` | `/recsys/{C}/catalog/` (the gateway appends item changes) |
//! | `recsys-{C}-rollout` | `/recsys/{C}/` | the key `/recsys/{C}/desired_version` |
//! | `root` | everything | everything (setup only) |
//!
//! What this bounds: a leaked node password cannot touch the change log, the
//! desired version, another role's registrations or another cluster's keys, and
//! a leaked gateway password cannot register a node. What etcd's key-range RBAC
//! cannot bound without one user per node: a retrieval user writes every key
//! under `nodes/retrieval/`, so it can overwrite or delete another retrieval
//! node's registration, or register any shard, address and version. The gateway's
//! mutual TLS check closes the part of that which matters for answers: it routes
//! to a registration only if the node behind the address proves, with a
//! certificate of the cluster's CA, the identity (role and shard) the
//! registration claims, so a forged registration gets no traffic. Deleting other
//! nodes' keys stays possible for a holder of that password (an availability
//! attack, visible in the gateway's view and logs).
//!
//! Passwords are random, one file per user, `{dir}/{user}.password`, created if
//! missing, readable by their owner only; running setup again makes etcd agree
//! with the files (delete one to rotate that password).

use std::path::{Path, PathBuf};

use etcd_client::{Client, Permission};
use tracing::info;

use crate::etcd::{connect, request};
use crate::{DiscoveryError, EtcdAccess, EtcdCredentials};

/// etcd's superuser, which must exist with the `root` role before auth is enabled.
pub const ROOT_USER: &str = "root";

/// The kinds of etcd users of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterUser {
    /// Retrieval nodes: register under `nodes/retrieval/`.
    Retrieval,
    /// Ranking nodes: register under `nodes/ranking/`.
    Ranking,
    /// Gateways: read the registrations, append item changes to `catalog/`.
    Gateway,
    /// Whoever sets the cluster's desired bundle version.
    Rollout,
}

/// One permission of a role: read, or read and write, of a key or a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key, or the prefix when `prefix`.
    pub key: String,
    /// Whether `key` is a prefix.
    pub prefix: bool,
    /// Whether writes are allowed too.
    pub write: bool,
}

impl ClusterUser {
    /// Every kind, in the order setup creates them.
    pub const ALL: [ClusterUser; 4] = [
        ClusterUser::Retrieval,
        ClusterUser::Ranking,
        ClusterUser::Gateway,
        ClusterUser::Rollout,
    ];

    /// The short name: `retrieval`, `ranking`, `gateway`, `rollout`.
    pub fn name(self) -> &'static str {
        match self {
            ClusterUser::Retrieval => "retrieval",
            ClusterUser::Ranking => "ranking",
            ClusterUser::Gateway => "gateway",
            ClusterUser::Rollout => "rollout",
        }
    }

    /// The etcd user (and role) name in `cluster`: `recsys-{cluster}-{name}`. No
    /// certificate `recsys certs` writes has it as its common name, which etcd
    /// with `--client-cert-auth` would otherwise take as that user's login.
    pub fn user(self, cluster: &str) -> String {
        format!("recsys-{cluster}-{}", self.name())
    }

    /// What the role may touch in `cluster`.
    pub fn grants(self, cluster: &str) -> Vec<Grant> {
        let base = format!("/recsys/{cluster}/");
        let mut grants = vec![Grant {
            key: base.clone(),
            prefix: true,
            write: false,
        }];
        let write = |key: String, prefix: bool| Grant {
            key,
            prefix,
            write: true,
        };
        grants.push(match self {
            ClusterUser::Retrieval => write(format!("{base}nodes/retrieval/"), true),
            ClusterUser::Ranking => write(format!("{base}nodes/ranking/"), true),
            ClusterUser::Gateway => write(format!("{base}catalog/"), true),
            ClusterUser::Rollout => write(format!("{base}desired_version"), false),
        });
        grants
    }

    /// The credentials of this user of `cluster` whose password file is in `dir`.
    pub fn credentials(self, cluster: &str, dir: &Path) -> EtcdCredentials {
        let user = self.user(cluster);
        EtcdCredentials {
            password_file: password_file(dir, &user),
            user,
        }
    }
}

/// The password file of `user` in `dir`.
pub fn password_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.password"))
}

/// The root user's credentials, from `dir`.
pub fn root_credentials(dir: &Path) -> EtcdCredentials {
    EtcdCredentials {
        user: ROOT_USER.to_string(),
        password_file: password_file(dir, ROOT_USER),
    }
}

/// Creates (or brings up to date) the root user and `cluster`'s users and roles
/// in the etcd `access` names, with passwords from (or new ones written to)
/// `dir`, and enables auth. Safe to run again: against an etcd whose auth is on
/// it logs in as root with the password in `dir`.
pub async fn setup(access: &EtcdAccess, cluster: &str, dir: &Path) -> Result<(), DiscoveryError> {
    std::fs::create_dir_all(dir).map_err(|source| DiscoveryError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let root_password = ensure_password(dir, ROOT_USER)?;
    let anonymous = EtcdAccess {
        credentials: None,
        ..access.clone()
    };
    let mut client = connect(&anonymous).await?;
    // Listing users works without a login only while auth is off.
    let auth_on = match request("user list", client.user_list()).await {
        Ok(_) => false,
        Err(DiscoveryError::Denied { .. }) => true,
        Err(other) => return Err(other),
    };
    if auth_on {
        client = connect(&EtcdAccess {
            credentials: Some(root_credentials(dir)),
            ..access.clone()
        })
        .await?;
    }
    ensure_role(&mut client, ROOT_USER).await?;
    ensure_user(&mut client, ROOT_USER, &root_password).await?;
    request(
        "user grant role",
        client.user_grant_role(ROOT_USER, ROOT_USER),
    )
    .await?;
    for kind in ClusterUser::ALL {
        let user = kind.user(cluster);
        let password = ensure_password(dir, &user)?;
        ensure_role(&mut client, &user).await?;
        for grant in kind.grants(cluster) {
            let permission = if grant.write {
                Permission::read_write(grant.key.clone())
            } else {
                Permission::read(grant.key.clone())
            };
            let permission = if grant.prefix {
                permission.with_prefix()
            } else {
                permission
            };
            request(
                "role grant permission",
                client.role_grant_permission(user.clone(), permission),
            )
            .await?;
        }
        ensure_user(&mut client, &user, &password).await?;
        request(
            "user grant role",
            client.user_grant_role(user.clone(), user.clone()),
        )
        .await?;
        info!(user = %user, "etcd user ready");
    }
    request("auth enable", client.auth_enable()).await?;
    info!(cluster, "etcd auth enabled");
    Ok(())
}

/// Writes the password file of root and of every user of `cluster` that `dir`
/// lacks, without etcd: for a Secret made before the cluster is up.
pub fn ensure_passwords(dir: &Path, cluster: &str) -> Result<(), DiscoveryError> {
    std::fs::create_dir_all(dir).map_err(|source| DiscoveryError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    ensure_password(dir, ROOT_USER)?;
    for kind in ClusterUser::ALL {
        ensure_password(dir, &kind.user(cluster))?;
    }
    Ok(())
}

async fn ensure_role(client: &mut Client, role: &str) -> Result<(), DiscoveryError> {
    match request("role add", client.role_add(role)).await {
        Err(error) if already_exists(&error) => Ok(()),
        other => other.map(drop),
    }
}

/// Adds `user`, or sets its password to `password` when it exists.
async fn ensure_user(
    client: &mut Client,
    user: &str,
    password: &str,
) -> Result<(), DiscoveryError> {
    match request("user add", client.user_add(user, password, None)).await {
        Err(error) if already_exists(&error) => request(
            "user change password",
            client.user_change_password(user, password),
        )
        .await
        .map(drop),
        other => other.map(drop),
    }
}

fn already_exists(error: &DiscoveryError) -> bool {
    matches!(error, DiscoveryError::Etcd { source: etcd_client::Error::GRpcStatus(status), .. }
        if status.message().contains("already exists"))
}

/// The password in `dir`'s file for `user`, written first (random, owner-only)
/// when the file is missing.
fn ensure_password(dir: &Path, user: &str) -> Result<String, DiscoveryError> {
    let path = password_file(dir, user);
    let io = |source| DiscoveryError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let password = text.lines().next().unwrap_or_default().trim().to_string();
            if password.is_empty() {
                return Err(DiscoveryError::EtcdConfig(format!(
                    "{}: no password on its first line",
                    path.display()
                )));
            }
            Ok(password)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 24] = rand::random();
            let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&path).map_err(io)?;
            std::io::Write::write_all(&mut file, format!("{password}\n").as_bytes()).map_err(io)?;
            Ok(password)
        }
        Err(error) => Err(io(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_writes_only_its_own_part_of_its_cluster() {
        for kind in ClusterUser::ALL {
            let grants = kind.grants("prod");
            assert!(grants.iter().all(|g| g.key.starts_with("/recsys/prod/")));
            let writes: Vec<&Grant> = grants.iter().filter(|g| g.write).collect();
            assert_eq!(writes.len(), 1, "{kind:?}");
            assert_ne!(writes[0].key, "/recsys/prod/", "{kind:?} writes everything");
            assert!(
                !writes[0].key.starts_with("/recsys/prod/nodes/") || kind != ClusterUser::Gateway
            );
        }
        assert_eq!(ClusterUser::Ranking.user("prod"), "recsys-prod-ranking");
    }
}
