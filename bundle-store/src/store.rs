//! The object store client, on a runtime of its own.
//!
//! Servers call the store from their loaders, on the blocking pool, and from
//! the task that polls `CURRENT`. `object_store` is async and needs a tokio
//! runtime to drive its connections; giving it a one-thread runtime of its own
//! means a blocking caller waits on a channel while that runtime does the I/O,
//! whatever runtime (or none, in a tool) the caller is on. Downloads stream
//! chunks back to the caller, which hashes and writes them on its own thread.

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use recsys_bundle::FileDigest;

use crate::{StoreError, StoreUrl};

/// Files up to this size are uploaded in one request; larger ones in parts of it.
const PART_BYTES: usize = 16 << 20;

/// How to reach the store; credentials come from the usual `AWS_*` variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// An S3-compatible endpoint (MinIO, Ceph, moto, ...); `None`: AWS itself.
    pub endpoint: Option<String>,
    /// The region (`None`: `AWS_DEFAULT_REGION`/`AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// Longest one request may take, body included (a large shard's download).
    pub request_timeout: Duration,
    /// Credentials given here rather than in `AWS_*` variables (a program
    /// that embeds the client, the tests); `None`: the variables.
    pub access_key: Option<AccessKey>,
}

/// An access key id and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// `AWS_ACCESS_KEY_ID`'s equivalent.
    pub id: String,
    /// `AWS_SECRET_ACCESS_KEY`'s equivalent.
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            allow_http: false,
            request_timeout: Duration::from_secs(300),
            access_key: None,
        }
    }
}

/// One message of a download, from the store's runtime to the caller.
enum Chunk {
    Size(u64),
    Bytes(Bytes),
    Failed(StoreError),
}

/// A bundle root's bucket, reached from any thread.
pub struct Store {
    url: StoreUrl,
    client: Arc<dyn ObjectStore>,
    /// `Some` until dropped; shut down without waiting (a drop may happen on
    /// an async worker, where waiting for a runtime is refused).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url.to_string())
            .finish()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store {
    /// A client for the root at `url`; nothing is sent until asked.
    pub fn open(url: &StoreUrl, options: &StoreOptions) -> Result<Self, StoreError> {
        // reqwest's rustls takes the process's crypto provider: ring, as tonic's
        // `tls-ring` (rustls deprecates it for lacking post-quantum key exchange,
        // which needs aws-lc-rs and its cmake build). An error only means a
        // provider is installed already.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            .with_allow_http(options.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(options.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(options.request_timeout),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &options.access_key {
            builder = builder
                .with_access_key_id(&key.id)
                .with_secret_access_key(&key.secret);
        }
        let client = builder.build().map_err(|source| StoreError::Store {
            url: url.to_string(),
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bundle-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("bundle-store runtime", e))?;
        Ok(Self {
            url: url.clone(),
            client: Arc::new(client),
            runtime: Some(runtime),
        })
    }

    /// The root.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Runs `future` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().ok_or(StoreError::Stopped)?;
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = done.send(future.await);
        });
        outcome.recv().map_err(|_| StoreError::Stopped)?
    }

    fn failed(&self, relative: &str) -> impl Fn(object_store::Error) -> StoreError + use<> {
        let url = self.url.url_of(relative);
        move |source| StoreError::Store {
            url: url.clone(),
            source,
        }
    }

    /// The object `relative`, when it exists and is at most `limit` bytes (a
    /// larger one is refused before it is read: nothing from the store sizes
    /// an allocation unchecked).
    pub fn get_small(&self, relative: &str, limit: u64) -> Result<Option<Bytes>, StoreError> {
        let (client, key, failed) = (
            self.client.clone(),
            self.url.key(relative),
            self.failed(relative),
        );
        let url = self.url.url_of(relative);
        self.run(async move {
            let got = match client.get(&key).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(error) => return Err(failed(error)),
            };
            if got.meta.size > limit {
                return Err(StoreError::Corrupt {
                    url,
                    reason: format!("object is {} bytes, the limit is {limit}", got.meta.size),
                });
            }
            got.bytes().await.map(Some).map_err(failed)
        })
    }

    /// Whether the object `relative` exists.
    pub fn exists(&self, relative: &str) -> Result<bool, StoreError> {
        let (client, key, failed) = (
            self.client.clone(),
            self.url.key(relative),
            self.failed(relative),
        );
        self.run(async move {
            match client.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(error) => Err(failed(error)),
            }
        })
    }

    /// Deletes the object `relative` (absent already is fine).
    pub fn delete(&self, relative: &str) -> Result<(), StoreError> {
        let (client, key, failed) = (
            self.client.clone(),
            self.url.key(relative),
            self.failed(relative),
        );
        self.run(async move {
            match client.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(failed(error)),
            }
        })
    }

    /// Writes `bytes` as the object `relative` (one request).
    pub fn put_bytes(&self, relative: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (client, key, failed) = (
            self.client.clone(),
            self.url.key(relative),
            self.failed(relative),
        );
        self.run(async move {
            client
                .put(&key, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(failed)
        })
    }

    /// Uploads the local file `path` as the object `relative`: one request up
    /// to [`PART_BYTES`], a multipart upload of such parts beyond (a few parts
    /// in flight, so memory stays bounded whatever the file's size).
    pub fn put_file(&self, relative: &str, path: &Path) -> Result<(), StoreError> {
        let length = std::fs::metadata(path)
            .map_err(|e| StoreError::io(path, e))?
            .len();
        if length <= PART_BYTES as u64 {
            let bytes = std::fs::read(path).map_err(|e| StoreError::io(path, e))?;
            return self.put_bytes(relative, bytes);
        }
        let mut file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
        let (parts_tx, mut parts) = tokio::sync::mpsc::channel::<Bytes>(2);
        let (client, key, failed) = (
            self.client.clone(),
            self.url.key(relative),
            self.failed(relative),
        );
        let runtime = self.runtime.as_ref().ok_or(StoreError::Stopped)?;
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let result = async {
                let upload = client.put_multipart(&key).await.map_err(&failed)?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                while let Some(part) = parts.recv().await {
                    writer.wait_for_capacity(4).await.map_err(&failed)?;
                    writer.put(part);
                }
                writer.finish().await.map(|_| ()).map_err(&failed)
            }
            .await;
            let _ = done.send(result);
        });
        let mut sent = 0u64;
        while sent < length {
            let mut part = vec![0u8; PART_BYTES.min((length - sent) as usize)];
            file.read_exact(&mut part)
                .map_err(|e| StoreError::io(path, e))?;
            sent += part.len() as u64;
            if parts_tx.blocking_send(Bytes::from(part)).is_err() {
                break; // the upload failed; its error is below
            }
        }
        drop(parts_tx);
        outcome.recv().map_err(|_| StoreError::Stopped)?
    }

    /// Downloads the object `relative` into the new file `dest`, checking it
    /// against `expected` as it streams: its size before a byte is read, then
    /// every chunk's length and, at the end, its checksum. On any failure
    /// `dest` is removed and the error names the object.
    pub fn download(
        &self,
        relative: &str,
        expected: &FileDigest,
        dest: &Path,
    ) -> Result<(), StoreError> {
        let outcome = self.download_into(relative, expected, dest);
        if outcome.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        outcome
    }

    fn download_into(
        &self,
        relative: &str,
        expected: &FileDigest,
        dest: &Path,
    ) -> Result<(), StoreError> {
        let url = self.url.url_of(relative);
        let corrupt = |reason: String| StoreError::Corrupt {
            url: url.clone(),
            reason,
        };
        let (client, key, failed) = (
            self.client.clone(),
            self.url.key(relative),
            self.failed(relative),
        );
        let runtime = self.runtime.as_ref().ok_or(StoreError::Stopped)?;
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Chunk>(4);
        let missing_url = url.clone();
        runtime.spawn(async move {
            let got = match client.get(&key).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => {
                    let missing = StoreError::NotFound {
                        url: missing_url,
                        why: "the manifest lists it but the store has no such object (an upload that did not finish, or a removed object)",
                    };
                    let _ = chunks_tx.send(Chunk::Failed(missing)).await;
                    return;
                }
                Err(error) => {
                    let _ = chunks_tx.send(Chunk::Failed(failed(error))).await;
                    return;
                }
            };
            if chunks_tx.send(Chunk::Size(got.meta.size)).await.is_err() {
                return;
            }
            let mut stream = got.into_stream();
            while let Some(item) = stream.next().await {
                let message = match item {
                    Ok(bytes) => Chunk::Bytes(bytes),
                    Err(error) => Chunk::Failed(failed(error)),
                };
                if chunks_tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        let mut file = std::fs::File::create(dest).map_err(|e| StoreError::io(dest, e))?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut received = 0u64;
        while let Some(message) = chunks.blocking_recv() {
            match message {
                Chunk::Failed(error) => return Err(error),
                Chunk::Size(size) if size != expected.bytes => {
                    return Err(corrupt(format!(
                        "object is {size} bytes, the manifest says {} (truncated or replaced)",
                        expected.bytes
                    )));
                }
                Chunk::Size(_) => {}
                Chunk::Bytes(bytes) => {
                    received += bytes.len() as u64;
                    if received > expected.bytes {
                        return Err(corrupt(format!(
                            "object is longer than the {} bytes the manifest says",
                            expected.bytes
                        )));
                    }
                    hasher.update(&bytes);
                    file.write_all(&bytes)
                        .map_err(|e| StoreError::io(dest, e))?;
                }
            }
        }
        if received != expected.bytes {
            return Err(corrupt(format!(
                "download ended at {received} bytes, the manifest says {}",
                expected.bytes
            )));
        }
        let actual = format!("{:032x}", hasher.digest128());
        if actual != expected.xxh3_128 {
            return Err(corrupt(format!(
                "checksum mismatch: xxh3-128 is {actual}, the manifest says {}",
                expected.xxh3_128
            )));
        }
        file.sync_all().map_err(|e| StoreError::io(dest, e))
    }
}
