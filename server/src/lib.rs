//! What every recsys gRPC server shares.
//!
//! Each node binary is `main` → [`telemetry::init`] → bind → the node's own
//! `run(listener, config, shutdown)` (mini-redis's shape), and each `run` builds its
//! tonic router from [`grpc::standard_services`] plus its own service. Keeping
//! these here means health, reflection and TCP settings cannot drift apart between
//! the gateway, retrieval and ranking nodes.

pub mod adaptive_limit;
pub mod admission;
pub mod allocator;
pub mod callers;
pub mod coalesced_writes;
pub mod deadline;
pub mod exact_searches;
pub mod grpc;
pub mod kernel_threads;
pub mod limits;
pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
