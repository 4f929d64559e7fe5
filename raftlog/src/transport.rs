//! How a member listens and how it dials: real TCP by default, or a network the embedder
//! supplies. The chaos crate supplies turmoil's simulated network here, so the unchanged server
//! runs inside a deterministic simulation; nothing else in the server knows the difference.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use netio::{CoalescingTcp, Gauge};

/// Client requests this process has accepted and not yet answered (their handlers' futures
/// are alive; the server counts them). While there are any, a served client connection holds
/// a write back a moment so that their responses join it (`netio`). A streaming call counts
/// until its handler returns its stream (for Watch and LeaseKeepAlive, once the first message
/// is ready): until then connections yield once per write, which costs a scheduling round,
/// never a stall.
pub static HANDLING: Gauge = Gauge::new();

/// A byte stream in either direction: what a custom network's connections are.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A future a custom network returns.
pub type NetFuture<T> = Pin<Box<dyn std::future::Future<Output = io::Result<T>> + Send>>;

/// Accepted connections.
pub type Incoming = BoxStream<'static, io::Result<Conn>>;

/// A network other than the host's TCP stack.
pub trait Network: Send + Sync + 'static {
    /// Listens on `addr`; returns the bound address and the accepted connections.
    fn listen(&self, addr: SocketAddr) -> NetFuture<(SocketAddr, Incoming)>;
    /// Opens a connection to `host:port`.
    fn connect(&self, host: String, port: u16) -> NetFuture<Box<dyn Io>>;
}

/// The network a member uses for client and peer traffic.
#[derive(Clone, Default)]
pub enum Transport {
    /// The host's TCP stack (what the `cairn` binary uses).
    #[default]
    Tcp,
    /// A network supplied by the embedder.
    Custom(Arc<dyn Network>),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Tcp => f.write_str("Tcp"),
            Transport::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl Transport {
    /// Listens on `addr`; returns the bound address and the accepted connections. TCP ones
    /// have Nagle off and coalesce their writes (`netio`) while `busy` says more responses
    /// are on their way: `clients_busy` for the client port; the peer port, whose responses
    /// are one at a time, passes `never_busy`.
    pub async fn listen(
        &self,
        addr: SocketAddr,
        busy: fn() -> bool,
    ) -> io::Result<(SocketAddr, Incoming)> {
        match self {
            Transport::Tcp => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let local = listener.local_addr()?;
                let incoming = tokio_stream_accept(listener, busy).boxed();
                Ok((local, incoming))
            }
            Transport::Custom(net) => net.listen(addr).await,
        }
    }

    /// A channel that connects on first use through this transport.
    ///
    /// In a simulation the channel forgets a stream it reset at once. h2 otherwise remembers
    /// such a stream for a second of real time, ignoring the late frames its peer still sends on
    /// it, and answers them with RST_STREAM only afterwards: whether a delayed frame draws a
    /// reset would depend on how fast the machine ran the simulation.
    pub fn channel(&self, endpoint: Endpoint) -> Channel {
        let endpoint = if crate::determinism::simulated() {
            endpoint.http2_max_concurrent_reset_streams(0)
        } else {
            endpoint
        };
        match self {
            Transport::Tcp => endpoint.connect_lazy(),
            Transport::Custom(net) => endpoint.connect_with_connector_lazy(Dialer(net.clone())),
        }
    }
}

/// Whether client requests are being handled (see `HANDLING`).
pub fn clients_busy() -> bool {
    HANDLING.get() > 0
}

/// Never hold a write back.
pub fn never_busy() -> bool {
    false
}

fn tokio_stream_accept(
    listener: tokio::net::TcpListener,
    busy: fn() -> bool,
) -> impl futures::Stream<Item = io::Result<Conn>> {
    futures::stream::unfold(listener, move |listener| async move {
        let conn = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            Conn::Tcp(CoalescingTcp::new(stream, busy))
        });
        Some((conn, listener))
    })
}

/// tonic's connector for a custom network.
#[derive(Clone)]
struct Dialer(Arc<dyn Network>);

impl Service<Uri> for Dialer {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = NetFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let net = self.0.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL has no host"))?
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            net.connect(host, port).await.map(TokioIo::new)
        })
    }
}

/// One accepted connection.
pub enum Conn {
    Tcp(CoalescingTcp),
    Custom(Box<dyn Io>),
}

impl Connected for Conn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Option<SocketAddr> {
        match self {
            Conn::Tcp(s) => s.stream().peer_addr().ok(),
            Conn::Custom(_) => None,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Custom(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Custom(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Custom(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Custom(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Custom(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Custom(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
