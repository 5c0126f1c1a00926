//! `recsys certs`: a development CA and every certificate a cluster needs, as PEM
//! files in one directory; `recsys api-key`: a new gateway API key and its line
//! for the key file.
//!
//! The layout (`DIR/`):
//!
//! | file | what | used by |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | the cluster CA (keep `ca.key` off the servers) | every server and client trusts `ca.pem` |
//! | `retrieval-shard-N.pem`, `.key` | identity `retrieval-shard-N.recsys` | retrieval nodes of shard N (`--tls-cert`) |
//! | `ranking.pem`, `.key` | identity `ranking.recsys` | ranking nodes |
//! | `gateway.pem`, `.key` | the gateway's public listener | the gateway (`--tls-cert`) |
//! | `gateway-client.pem`, `.key` | identity `gateway.recsys`, client only; the only certificate nodes serve `Search` and `Rank` to | the gateway toward nodes (`--node-tls-cert`), benchmarks calling nodes directly |
//! | `client.pem`, `.key` | identity `client.recsys`, client only; nodes answer it health and `Info` only (`PERMISSION_DENIED` otherwise) | `recsys query`, `recsys health`, the benchmarks toward the gateway |
//! | `etcd.pem`, `.key` | identity `etcd.recsys`, server and client | etcd (`--cert-file`; etcd dials itself with it) |
//! | `etcd-client.pem`, `.key` | identity `etcd-client.recsys`, client only | every process toward etcd (`--etcd-cert`) |
//!
//! The etcd client certificate only opens the TLS connection (etcd's
//! `--client-cert-auth`); which keys a process may touch comes from the etcd
//! user it logs in as (`recsys etcd-auth`). Its common name is no etcd user's, so
//! it authenticates nobody by itself.
//!
//! A node certificate names its identity (role and shard,
//! `recsys_discovery::node_identity`), which the gateway checks against the
//! node's registration; the replicas of a shard share it. Every server
//! certificate also names `localhost`, `127.0.0.1`, `::1` and each `--host`
//! (compose service names, say), so health checks and clients that dial an
//! address can verify it. Keys are ECDSA P-256, written readable by their owner
//! only. These are for development and tests: a production cluster gets its
//! certificates from its own CA (cert-manager, Vault, SPIFFE) with the same names.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use recsys_discovery::{GATEWAY_IDENTITY, Role, node_identity};

/// Options of `recsys certs`.
#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Directory to write the PEM files into (created if missing).
    #[arg(long, env = "RECSYS_CERTS_DIR")]
    pub out: PathBuf,
    /// Retrieval shards: one certificate per shard identity.
    #[arg(long, env = "RECSYS_CERTS_SHARDS", default_value_t = 2)]
    pub shards: u32,
    /// Extra DNS name or IP for every server certificate (repeatable), e.g. the
    /// compose service names.
    #[arg(long = "host", env = "RECSYS_CERTS_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, env = "RECSYS_CERTS_DAYS", default_value_t = 365)]
    pub days: u32,
    /// Leave the directory alone when it already holds a CA (`ca.pem`).
    #[arg(long, conflicts_with = "force")]
    pub if_missing: bool,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Writes the CA and every certificate; prints what it wrote.
pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=recsys_discovery::MAX_SHARD_COUNT).contains(&args.shards),
        "--shards is {}, must be in 1..={}",
        args.shards,
        recsys_discovery::MAX_SHARD_COUNT
    );
    anyhow::ensure!(args.days > 0, "--days must be at least 1");
    let ca_path = args.out.join("ca.pem");
    if ca_path.exists() {
        if args.if_missing {
            println!("{}: a CA is there, leaving it alone", args.out.display());
            return Ok(());
        }
        anyhow::ensure!(
            args.force,
            "{} exists; pass --force to replace every certificate (servers using the old CA stop trusting the new ones) or --if-missing to keep it",
            ca_path.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let validity = Validity::days(args.days);
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "recsys development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity.apply(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&args.out, "ca", &ca_cert.pem(), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut loopback: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(String::from)
        .collect();
    loopback.extend(args.hosts.iter().cloned());

    for shard in 0..args.shards {
        let identity = identity(Role::Retrieval, Some(shard))?;
        let file = format!("retrieval-shard-{shard}");
        leaf(
            &args.out,
            &file,
            &issuer,
            &identity,
            &loopback,
            Usage::Server,
            validity,
        )?;
    }
    let ranking = identity(Role::Ranking, None)?;
    leaf(
        &args.out,
        "ranking",
        &issuer,
        &ranking,
        &loopback,
        Usage::Server,
        validity,
    )?;
    leaf(
        &args.out,
        "gateway",
        &issuer,
        "gateway",
        &loopback,
        Usage::Server,
        validity,
    )?;
    leaf(
        &args.out,
        "gateway-client",
        &issuer,
        GATEWAY_IDENTITY,
        &[],
        Usage::Client,
        validity,
    )?;
    leaf(
        &args.out,
        "client",
        &issuer,
        "client.recsys",
        &[],
        Usage::Client,
        validity,
    )?;
    leaf(
        &args.out,
        "etcd",
        &issuer,
        "etcd.recsys",
        &loopback,
        Usage::ServerAndClient,
        validity,
    )?;
    leaf(
        &args.out,
        "etcd-client",
        &issuer,
        "etcd-client.recsys",
        &[],
        Usage::Client,
        validity,
    )?;
    println!(
        "{}: CA, {} retrieval shard certificates, ranking, gateway, gateway-client, client, etcd, etcd-client (valid {} days)",
        args.out.display(),
        args.shards,
        args.days
    );
    Ok(())
}

fn identity(role: Role, shard: Option<u32>) -> anyhow::Result<String> {
    node_identity(role, shard).with_context(|| format!("no identity for a {role} node"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
    /// etcd with `--client-cert-auth` dials its own gRPC gateway with its server
    /// certificate, which then must be valid for client authentication too.
    ServerAndClient,
}

/// Not-before a day ago (clock skew between hosts), not-after `days` from now.
#[derive(Debug, Clone, Copy)]
struct Validity {
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

impl Validity {
    fn days(days: u32) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(i64::from(days)),
        }
    }

    fn apply(self, params: &mut CertificateParams) {
        params.not_before = self.not_before;
        params.not_after = self.not_after;
    }
}

/// One certificate signed by the CA: `name` first among its subject alternative
/// names (and its common name), then `hosts`.
fn leaf(
    dir: &Path,
    file: &str,
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    hosts: &[String],
    usage: Usage,
    validity: Validity,
) -> anyhow::Result<()> {
    let mut names = vec![name.to_string()];
    names.extend(hosts.iter().filter(|h| h.as_str() != name).cloned());
    let mut params = CertificateParams::new(names)
        .with_context(|| format!("{file}: a name is neither a DNS name nor an IP"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write(dir, file, &cert.pem(), &key.serialize_pem())
}

/// `DIR/NAME.pem` and `DIR/NAME.key`, the key readable by its owner only.
fn write(dir: &Path, name: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    let key_path = dir.join(format!("{name}.key"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&key_path)
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    file.write_all(key.as_bytes())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    Ok(())
}

/// Options of `recsys api-key`.
#[derive(Debug, Clone, Args)]
pub struct ApiKeyArgs {
    /// The key's name in the key file (no spaces), e.g. the client's name.
    #[arg(long)]
    pub name: String,
    /// Append the key's line to this key file (the gateway's --api-keys), which
    /// the gateway picks up within a second.
    #[arg(long)]
    pub append: Option<PathBuf>,
}

/// Prints a new random key on stdout, and its `NAME SHA256-HEX` line on stderr
/// or appended to the key file.
pub fn api_key(args: &ApiKeyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.name.is_empty() && !args.name.chars().any(char::is_whitespace),
        "--name must be one word"
    );
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let key = recsys_gateway::api_keys::to_hex(&bytes);
    let hash = recsys_gateway::api_keys::to_hex(&recsys_gateway::api_keys::sha256(key.as_bytes()));
    let line = format!("{} {hash}\n", args.name);
    match &args.append {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            file.write_all(line.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => eprint!("{line}"),
    }
    println!("{key}");
    Ok(())
}
