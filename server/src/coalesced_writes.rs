//! A connection that sends what HTTP/2 flushes within one turn of the runtime in
//! one write.
//!
//! Why: h2 (under tonic and hyper) writes a unary call's frames in separate
//! flushes. A client's HEADERS go out before its DATA (the stream only gets
//! send capacity once the connection task has written the headers), and a
//! server's trailers after its headers and message. With Nagle's algorithm off,
//! as every hop here has it, each flush is its own `writev` and its own TCP
//! segment, and the peer wakes for each: on a 2-vCPU VM a gateway fanning out to
//! four shards made ten writes a request where five carry the same bytes
//! (docs/benchmarks-history.md, "Coalesced writes"). Upstream knows the
//! split (hyperium/h2#711 for a DATA frame's head; the capacity wait in
//! hyper's `PipeToSendStream`) but has no switch for it.
//!
//! How: writes are copied into a buffer; the first flush of a buffer yields
//! once (the task wakes itself and returns `Pending`, so the runtime runs it
//! again after the tasks already queued, among them the request's body pipe
//! that was just given capacity), and the next flush writes everything queued
//! by then in one go. Netty's flush consolidation and Node's cork/uncork do the
//! same at the end of an event-loop turn. Nothing waits on a timer: a flush
//! with nothing behind it costs one extra poll of the connection task. A
//! write that would take the buffer past [`HIGH_WATER`] first writes the
//! buffer out, and a write larger than that goes straight to the socket, so
//! big messages are not copied.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most the buffer holds: a write that would take it further writes it
/// out first, and a larger write bypasses it (a frame this large fills
/// segments on its own).
pub const HIGH_WATER: usize = 16 * 1024;

/// `T` with its writes gathered until a flush, and that flush deferred by one
/// turn of the runtime (module docs).
#[derive(Debug)]
pub struct CoalescedWrites<T> {
    inner: T,
    /// Accepted bytes not yet written; `buf[written..]` is still to go.
    buf: Vec<u8>,
    written: usize,
    /// The flush of the current buffer has already yielded once.
    yielded: bool,
}

impl<T> CoalescedWrites<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.written
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes the whole buffer out; `Pending` while the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if this.pending() + total > HIGH_WATER {
            ready!(this.poll_write_out(cx))?;
            if total > HIGH_WATER {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, slices);
            }
        }
        for slice in slices {
            this.buf.extend_from_slice(slice);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending() > 0 {
            // (The buffer never holds more than HIGH_WATER: a write that would
            // take it past writes it out first.)
            if !this.yielded {
                // Run again after the tasks already queued: what they send
                // joins this write.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.poll_write_out(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// A connector for tonic's `Endpoint::connect_with_connector_lazy`: TCP with
/// Nagle's algorithm off, the stream wrapped by `wrap` (by default
/// [`CoalescedWrites::new`]). tonic puts its TLS (when the endpoint has it) and
/// connect timeout around it as around its own.
#[derive(Debug, Clone, Copy)]
pub struct Connector<W = CoalescedWrites<TcpStream>> {
    wrap: fn(TcpStream) -> W,
}

impl Default for Connector {
    fn default() -> Self {
        Self {
            wrap: CoalescedWrites::new,
        }
    }
}

impl<W> Connector<W> {
    /// A connector whose connections are `wrap` of the TCP stream.
    pub fn with(wrap: fn(TcpStream) -> W) -> Self {
        Self { wrap }
    }
}

impl<W> tower_service::Service<http::Uri> for Connector<W>
where
    W: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Response = hyper_util::rt::TokioIo<W>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let wrap = self.wrap;
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            // `[::1]` in a URI is `::1` to the resolver.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            let stream = TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(wrap(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_stream::StreamExt;

    /// A loopback pair: (the wrapped client side, the plain server side).
    async fn pair() -> (CoalescedWrites<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (CoalescedWrites::new(client.unwrap()), server.unwrap().0)
    }

    #[tokio::test]
    async fn writes_reach_the_peer_only_at_a_flush_and_in_order() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"head").await.unwrap();
        let slices = [IoSlice::new(b"er|"), IoSlice::new(b"data")];
        let n = client.write_vectored(&slices).await.unwrap();
        assert_eq!(n, 7);
        assert_eq!(client.pending(), 11, "nothing written before the flush");
        client.flush().await.unwrap();
        assert_eq!(client.pending(), 0);
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"header|data");
    }

    #[tokio::test]
    async fn the_first_flush_yields_once_then_writes() {
        let (mut client, _server) = pair().await;
        client.write_all(b"x").await.unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_pending());
        assert_eq!(client.pending(), 1, "the yield writes nothing");
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_ready());
        assert_eq!(client.pending(), 0);
        // An empty buffer flushes at once.
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn large_writes_bypass_the_buffer_and_keep_the_order() {
        let (mut client, mut server) = pair().await;
        let big: Vec<u8> = (0..HIGH_WATER * 4).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 3 + HIGH_WATER * 4 + 4];
            server.read_exact(&mut got).await.unwrap();
            got
        });
        client.write_all(b"abc").await.unwrap();
        client.write_all(&big).await.unwrap();
        client.write_all(b"tail").await.unwrap();
        client.flush().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..3], b"abc");
        assert_eq!(&got[3..3 + big.len()], &big[..]);
        assert_eq!(&got[3 + big.len()..], b"tail");
    }

    /// Writes that reached the client's and the server's sockets (only the
    /// test below counts).
    static CLIENT_WRITES: AtomicUsize = AtomicUsize::new(0);
    static SERVER_WRITES: AtomicUsize = AtomicUsize::new(0);

    /// A socket that counts the writes reaching it in `writes`.
    struct Counting {
        inner: TcpStream,
        writes: &'static AtomicUsize,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, data);
            if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            written
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl tonic::transport::server::Connected for CoalescedWrites<Counting> {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    /// What the wrapper is for: a unary gRPC call on an open connection is one
    /// write each way. h2 alone makes two of each (HEADERS, then DATA from the
    /// client; HEADERS and the message, then trailers from the server).
    #[tokio::test]
    async fn a_unary_call_is_one_write_each_way() {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            let inner = s?;
            inner.set_nodelay(true)?;
            let writes = &SERVER_WRITES;
            Ok::<_, io::Error>(CoalescedWrites::new(Counting { inner, writes }))
        });
        let (_health, service) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        let connector = Connector::with(|inner| {
            let writes = &CLIENT_WRITES;
            CoalescedWrites::new(Counting { inner, writes })
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(connector)
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let ask = HealthCheckRequest {
            service: String::new(),
        };
        // The first call also carries the connection's preface and settings.
        client.check(ask.clone()).await.unwrap();
        let before = (
            CLIENT_WRITES.load(Ordering::Relaxed),
            SERVER_WRITES.load(Ordering::Relaxed),
        );
        const CALLS: usize = 20;
        for _ in 0..CALLS {
            client.check(ask.clone()).await.unwrap();
        }
        let client_calls = CLIENT_WRITES.load(Ordering::Relaxed) - before.0;
        let server_calls = SERVER_WRITES.load(Ordering::Relaxed) - before.1;
        assert_eq!(client_calls, CALLS, "client writes for {CALLS} calls");
        assert_eq!(server_calls, CALLS, "server writes for {CALLS} calls");
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_buffered() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }
}
