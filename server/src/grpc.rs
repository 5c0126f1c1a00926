//! Health, reflection and the accepted-connection stream.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::transport::Server;
use tonic::transport::server::{Connected, Router, TcpConnectInfo};
use tonic_health::server::HealthReporter;

use crate::callers::{CallerPolicy, ClientCertLayer};
use crate::coalesced_writes::CoalescedWrites;
use crate::limits::ServerLimits;
use crate::tls::ServerAccess;

/// The router every recsys server starts from: the metrics layer around its
/// services; inside it the client-certificate and caller-identity check
/// ([`crate::callers`]), so refused calls are counted too; and inside that the
/// layer that blames the caller for bytes tonic cannot frame (so metrics count
/// the code the caller saw).
pub type StandardRouter = Router<
    tower_layer::Stack<
        crate::limits::CallerFaultLayer,
        tower_layer::Stack<
            crate::callers::ClientCertLayer,
            tower_layer::Stack<crate::metrics::GrpcMetricsLayer, tower_layer::Identity>,
        >,
    >,
>;

/// A plaintext server router that already offers `grpc.health.v1` and reflection
/// over the recsys and health protos (so `grpcurl` needs no `.proto` files) and
/// counts every call in the Prometheus metrics ([`crate::metrics`]), and the
/// reporter that flips health statuses; every status starts unknown. The
/// server has the default [`ServerLimits`].
pub fn standard_router() -> Result<(HealthReporter, StandardRouter), ReflectionError> {
    standard_router_with(&ServerLimits::default())
}

/// [`standard_router`] with the transport limits `limits`.
pub fn standard_router_with(
    limits: &ServerLimits,
) -> Result<(HealthReporter, StandardRouter), ReflectionError> {
    finish(limits.builder(), None, true)
}

/// [`standard_router_with`] as `access` says: over TLS when it has TLS material
/// (client certificates required when it names a client CA, and their identity
/// checked against `callers`), reflection only when asked.
pub fn router_with(
    access: &ServerAccess,
    limits: &ServerLimits,
    callers: CallerPolicy,
) -> Result<(HealthReporter, StandardRouter), RouterError> {
    let mut builder = limits.builder();
    if let Some(tls) = &access.tls {
        builder = builder
            .tls_config(tls.load()?)
            .map_err(crate::tls::TlsError::from)?;
    }
    let client_cert_required = access
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    let callers = client_cert_required.then_some(callers);
    Ok(finish(builder, callers, access.reflection)?)
}

/// Layers and the standard services on `builder`; `callers` given: a client
/// certificate is required and its identity checked against it.
fn finish(
    builder: Server,
    callers: Option<CallerPolicy>,
    reflection: bool,
) -> Result<(HealthReporter, StandardRouter), ReflectionError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let client_certs = match callers {
        Some(policy) => ClientCertLayer::new(true, policy),
        None => ClientCertLayer::new(false, CallerPolicy::any_certificate()),
    };
    let router = builder
        .layer(crate::metrics::GrpcMetricsLayer)
        .layer(client_certs)
        .layer(crate::limits::CallerFaultLayer)
        .add_service(health_service);
    let router = if reflection {
        let reflection_service = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(recsys_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        router.add_service(reflection_service)
    } else {
        router
    };
    Ok((health, router))
}

/// Why a server's router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] ReflectionError),
    /// The TLS material is unusable; the message names the file.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Connections accepted on `listener`, with Nagle's algorithm off: responses are
/// small and latency-bound, and a delayed ACK would add 40 ms to a hop.
/// Each gathers what one turn of the runtime flushes into one write
/// ([`CoalescedWrites`]): a response's headers, message and trailers.
pub fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<CoalescedWrites<TcpStream>>> {
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(CoalescedWrites::new(stream))
    })
}

impl Connected for CoalescedWrites<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

/// Sets both the named service and the whole server (`""`) to `status`, since
/// clients and orchestrators probe either.
pub async fn set_health(
    reporter: &HealthReporter,
    service_name: &str,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status(service_name, status).await;
    reporter.set_service_status("", status).await;
}

/// Error of building the reflection service.
pub use tonic_reflection::server::Error as ReflectionError;

/// Loads a server's data on the blocking pool while the server already answers
/// health checks: on success hands the value to `ready` and reports `SERVING`
/// (unless shutdown has begun); on failure logs and hands the error to
/// `failed`, and health stays `NOT_SERVING`. `what` names the data in logs.
pub fn spawn_loader<T, E, L, R, F>(
    health: HealthReporter,
    service_name: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
    what: &'static str,
    load: L,
    ready: R,
    failed: F,
) where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    L: FnOnce() -> Result<T, E> + Send + 'static,
    R: FnOnce(T) + Send + 'static,
    F: FnOnce(LoadFailure<E>) + Send + 'static,
{
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let outcome = match tokio::task::spawn_blocking(load).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(LoadFailure::Load(error)),
            Err(join) => Err(LoadFailure::Panicked(join.to_string())),
        };
        match outcome {
            Ok(value) => {
                tracing::info!(
                    what,
                    load_ms = started.elapsed().as_millis() as u64,
                    "loaded"
                );
                ready(value);
                if !shutdown.is_cancelled() {
                    set_health(&health, service_name, tonic_health::ServingStatus::Serving).await;
                }
            }
            Err(error) => {
                tracing::error!(what, %error, "failed to load, not serving");
                failed(error);
            }
        }
    });
}

/// Reports `NOT_SERVING` as soon as shutdown begins, so load balancers and the
/// gateway stop routing here while in-flight requests finish.
pub fn not_serving_on_shutdown(
    health: HealthReporter,
    service_name: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        set_health(
            &health,
            service_name,
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    });
}

/// Why loading a server's data failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure<E> {
    /// The loader's own error; it names the file (and, for a ranker, the tensor).
    #[error(transparent)]
    Load(E),
    /// The loader panicked (a bug, not bad data).
    #[error("loader failed: {0}")]
    Panicked(String),
}

/// Where loading a node's data (a shard, a ranker) stands; services read it per
/// call and answer `UNAVAILABLE` until it is `Ready`.
#[derive(Debug)]
pub enum LoadState<T, E> {
    /// Being loaded.
    Loading,
    /// Loaded and serving.
    Ready(std::sync::Arc<T>),
    /// Loading failed.
    Failed(LoadFailure<E>),
}

/// Size of a node's blocking work pool: `configured`, or one per core when 0.
pub fn pool_size(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    }
}
