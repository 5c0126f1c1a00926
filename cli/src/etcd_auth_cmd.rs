//! `recsys etcd-auth setup`: the etcd users and roles of a cluster, with random
//! passwords in a directory, and etcd's auth turned on
//! (`recsys_discovery::etcd_auth` holds the layout and what it can bound). The
//! compose and Kubernetes init steps run it before any node starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use recsys_discovery::DiscoveryError;
use recsys_discovery::etcd_auth::{ClusterUser, ensure_passwords, password_file, setup};
use recsys_discovery::flags::EtcdAccessFlags;

/// `recsys etcd-auth ...`
#[derive(Debug, Subcommand)]
pub enum EtcdAuthCommand {
    /// Create the root user and the cluster's users and roles (retrieval, ranking,
    /// gateway, rollout), write their passwords into --secrets, enable auth.
    /// Idempotent: run again, it makes etcd agree with the password files.
    Setup(SetupArgs),
    /// Write the missing password files of root and the cluster's users into
    /// --secrets, without etcd (for a Kubernetes Secret: deploy/k8s/secrets.sh).
    Passwords(PasswordsArgs),
}

/// Options of `recsys etcd-auth passwords`.
#[derive(Debug, Args)]
pub struct PasswordsArgs {
    /// Cluster name: its users are recsys-{cluster}-{role}.
    #[arg(long, env = "RECSYS_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Directory of the password files (`{user}.password`), created if missing.
    #[arg(long, env = "RECSYS_ETCD_SECRETS")]
    pub secrets: PathBuf,
}

/// Options of `recsys etcd-auth setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The etcd (`--etcd`, and `--etcd-ca`/`--etcd-cert`/`--etcd-key` when it
    /// serves TLS); the login is root's, from --secrets.
    #[command(flatten)]
    pub etcd: EtcdAccessFlags,
    /// Cluster name: its users are recsys-{cluster}-{role}.
    #[arg(long, env = "RECSYS_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Directory of the password files (`{user}.password`), created if missing;
    /// missing files get a new random password.
    #[arg(long, env = "RECSYS_ETCD_SECRETS")]
    pub secrets: PathBuf,
    /// Keep retrying an etcd that does not answer yet for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

/// Runs the command.
pub async fn run(command: EtcdAuthCommand) -> anyhow::Result<()> {
    let args = match command {
        EtcdAuthCommand::Setup(args) => args,
        EtcdAuthCommand::Passwords(args) => {
            ensure_passwords(&args.secrets, &args.cluster)?;
            println!(
                "{}: etcd passwords of cluster {}",
                args.secrets.display(),
                args.cluster
            );
            return Ok(());
        }
    };
    anyhow::ensure!(
        args.etcd.etcd_user.is_none(),
        "etcd-auth setup logs in as root with the password in --secrets; drop --etcd-user"
    );
    let access = args
        .etcd
        .access()?
        .context("give the etcd with --etcd URL")?;
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        match setup(&access, &args.cluster, &args.secrets).await {
            Ok(()) => break,
            // etcd not up yet (compose starts everything at once): try again.
            Err(error @ (DiscoveryError::Timeout { .. } | DiscoveryError::Etcd { .. }))
                if Instant::now() < deadline =>
            {
                tracing::warn!(%error, "etcd not ready, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("etcd auth setup failed"),
        }
    }
    for kind in ClusterUser::ALL {
        let user = kind.user(&args.cluster);
        println!(
            "{user}: password in {}",
            password_file(&args.secrets, &user).display()
        );
    }
    println!("etcd auth is on for cluster {}", args.cluster);
    Ok(())
}
